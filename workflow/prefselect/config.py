"""The workflow configuration: schema validation with defaults, checks across keys, and demo paths."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"


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


def validate(config: dict) -> dict:
    """Return a validated copy of `config` with defaults filled in; raise ConfigError naming the bad key."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    config = copy.deepcopy(config)
    errors = sorted(_with_defaults(Draft202012Validator)(schema).iter_errors(config), key=lambda e: list(e.path))
    if errors:
        raise ConfigError("\n".join(f"config key {_key(e.absolute_path)}: {e.message}" for e in errors))
    _check_selectors(config["selectors"])
    _check_sources(config)
    return resolve_demo(config)


def _check_selectors(selectors: dict) -> None:
    for name, spec in selectors.items():
        key = f"selectors.{name}"
        kind = spec["kind"]
        if (kind == "bands") != ("bands" in spec):
            raise ConfigError(f"config key {key}.bands: required for kind 'bands' and only allowed there")
        for column, (lo, hi) in spec.get("bands", {}).items():
            if not lo < hi:
                raise ConfigError(f"config key {key}.bands.{column}: lower bound {lo} must be below upper bound {hi}")
        if kind != "random" and ({"like", "fraction"} & spec.keys()):
            raise ConfigError(f"config key {key}: `like` and `fraction` apply to kind 'random' only")
        if kind == "random":
            like = spec.get("like")
            if (like is None) == ("fraction" not in spec):
                raise ConfigError(f"config key {key}: a random selector needs exactly one of `like` or `fraction`")
            if like is not None and (like not in selectors or selectors[like]["kind"] == "random"):
                allowed = sorted(n for n, s in selectors.items() if s["kind"] != "random")
                raise ConfigError(f"config key {key}.like: {like!r} is not a selector; allowed values: {allowed}")


def _check_sources(config: dict) -> None:
    if config["demo"]["enabled"]:
        for key in ("model", "data"):
            given = config[key]["path" if key == "model" else "source"]
            if given is not None:
                raise ConfigError(f"config key {key}: the demo builds its own; set demo.enabled: false to use {given!r}")
        return
    if config["model"]["path"] is None:
        raise ConfigError("config key model.path: required (a hub id or local folder) unless demo.enabled is true")
    if config["data"]["source"] is None:
        raise ConfigError("config key data.source: required (a hub id or local file) unless demo.enabled is true")
    if any(spec["kind"] == "oracle" for spec in config["selectors"].values()):
        raise ConfigError("config key selectors: the oracle selector needs the demo's ground truth (demo.enabled)")


def resolve_demo(config: dict) -> dict:
    """Point model, data and evaluation prompts at the files that the demo rules build."""
    if not config["demo"]["enabled"]:
        return config
    out = config["outdir"]
    config["model"]["path"] = f"{out}/models/sft"
    config["data"]["source"] = f"{out}/demo/train.jsonl"
    config["data"]["validation"] = f"{out}/demo/val.jsonl"
    config["evaluation"]["prompts"] = config["evaluation"]["prompts"] or f"{out}/demo/eval_prompts.jsonl"
    return config


def load(path: str) -> dict:
    return validate(yaml.safe_load(Path(path).read_text()) or {})
