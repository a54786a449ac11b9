"""What each step runs with: the workflow's config as one typed object per section, every default from the schema.

A step reads only the config keys that `step_keys` names for it. The workflow hands a job exactly those keys, as
JSON (`step_config`), so that a job reruns when one of them changes and not when another does; a step run by hand
reads them from a config file in the workflow's format, or takes the schema's defaults. Both go through `load`,
and a key the step was not given raises when read, so the workflow cannot leave out a setting that a step uses.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

FORWARD = ("model.trust_remote_code", "data.max_length")  # what every forward pass over pairs needs
DATA_SPLITS = tuple(
    f"data.{key}"
    for key in (
        "split",
        "validation_split",
        "val_fraction",
        "dev_split",
        "dev_fraction",
        "test_split",
        "test_fraction",
        "max_length",
        "min_rows",
    )
)
DPO = (
    "seed",
    *FORWARD,
    "method",
    *(
        f"training.{key}"
        for key in (
            "learning_rate",
            "batch_size",
            "micro_batch_size",
            "gradient_checkpointing",
            "save_steps",
            "deepspeed",
            "lora",
        )
    ),
)
GRADIENTS = ("seed", *FORWARD, "method", "influence.params", "influence.batch_size")


def selector_keys(*keys: str) -> tuple[str, ...]:
    return tuple(f"selectors.{{selector}}.{key}" for key in keys)


# What an external score reads of its selector's rule (how many pairs it keeps, and how its model trains, not).
EXTERNAL_SCORE_KEYS = selector_keys("kind", "column", "minus", "reward_model", "trust_remote_code", "weight")

# The config keys each step reads; `{selector}` is the selector a job is for, `{auto}` the auto selector.
STEP_KEYS = {
    "demo-tokenizer": ("demo.vocab_size",),
    "demo-sft": ("seed", "demo.model", "demo.sft"),
    "demo-pairs": ("seed", "demo.pairs"),
    "demo-rated-snippets": ("demo.ratings.texts", "demo.ratings.ratings"),
    "demo-rated-pairs": ("seed", *FORWARD, "demo.ratings"),
    "fetch-file": ("data.package",),
    "gguf-model": ("model.gguf",),
    "prepare": ("seed", "model.trust_remote_code", *DATA_SPLITS),
    "logps": (*FORWARD, "scoring.batch_size"),
    "train": DPO,
    "score": (*FORWARD, "method", "scoring.batch_size"),
    "crossfit-score": ("seed", *FORWARD, "method", "scoring.batch_size", "crossfit.folds"),
    "external-score": (*FORWARD, *EXTERNAL_SCORE_KEYS),
    "select": ("seed", "selectors.{selector}"),
    "export": ("data.split",),
    # The auto selector's candidates are the files a job is given, not keys it reads.
    "screen-rung": ("method", *selector_keys("criterion", "finalists", "fallback")),
    "tournament": ("method", *selector_keys("criterion", "fallback", "confidence", "guard")),
    "tournament-report": ("selectors",),
    "sample": ("seed", "model.trust_remote_code", "evaluation.samples", "evaluation.max_new_tokens"),
    "evaluate": ("seed", "evaluation.judge", "evaluation.opponent"),
    "val-grad": GRADIENTS,
    "influence": (*GRADIENTS, "influence.projection_dim"),
    "agreement": ("influence.agreement_band",),
    "plots": ("selectors",),
}
# Parts of those keys that a step does not read: a selection does not depend on how its final model trains.
STEP_EXCEPT = {step: ("selectors.{selector}.final",) for step in ("select", "screen-rung", "tournament")}
# Keys that change how a job computes and never what it writes: the log-probs are the same bit for bit at any forward
# batch size (tests/test_scoring.py). The workflow hands them to a job as options of their own (`--batch-size`, from
# the job's resources) rather than in its `--config`, so that a new value reruns no job, as new `threads` do not.
EXECUTION_KEYS = {"scoring.batch_size": "batch_size"}
# A DPO run's length and pairs by stage: a stage's job does not rerun when another stage's epochs change.
TRAIN_STAGES = {
    "warmup": ("training.warmup_epochs", "training.warmup_fraction"),
    "aux": ("training.aux_epochs",),
    "final": ("training.final_epochs", "selectors.{selector}.final"),
    # A screen run is its final run, stopped early: the same keys, and where it stops.
    "screen": (
        "training.final_epochs",
        "selectors.{selector}.final",
        "selectors.{auto}.kind",
        "selectors.{auto}.screen_epochs",
    ),
    "crossfit": ("training.warmup_epochs", "crossfit.folds"),
}


class UnsetKey(LookupError):
    """A step read a config key that it was not given."""


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


class Section:
    """A config section. A key that the step was not given (not among its `step_keys`) raises when read."""

    KEY = ""

    def __getattribute__(self, name: str):
        value = object.__getattribute__(self, name)
        if value is UNSET:
            key = f"{type(self).KEY}.{name}".lstrip(".")
            raise UnsetKey(f"config key {key}: not among the settings this step was given (settings.STEP_KEYS)")
        return value


@dataclass(frozen=True)
class DemoModel(Section):
    KEY = "demo.model"
    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int


@dataclass(frozen=True)
class DemoSFT(Section):
    KEY = "demo.sft"
    steps: int
    batch_size: int
    learning_rate: float


@dataclass(frozen=True)
class DemoPairs(Section):
    KEY = "demo.pairs"
    train: int
    val: int
    dev: int
    eval_prompts: int
    prompt_words: int
    samples: int
    max_new_tokens: int
    noise: float
    noise_model: str
    tau: float
    val_noise: float
    dev_noise: float


@dataclass(frozen=True)
class DemoRatings(Section):
    KEY = "demo.ratings"
    texts: str
    ratings: str
    prompt: str
    train: int
    val: int
    dev: int
    test: int
    test_min_gap: float


@dataclass(frozen=True)
class Demo(Section):
    KEY = "demo"
    enabled: bool
    task: str
    snippets: str | None
    vocab_size: int
    model: DemoModel
    sft: DemoSFT
    pairs: DemoPairs
    ratings: DemoRatings


@dataclass(frozen=True)
class Model(Section):
    KEY = "model"
    path: str | None
    gguf: dict | None
    trust_remote_code: bool


@dataclass(frozen=True)
class Data(Section):
    KEY = "data"
    source: str | None
    package: dict | None
    split: str
    validation: str | None
    validation_split: str
    val_fraction: float
    dev: str | None
    dev_split: str
    dev_fraction: float
    test: str | None
    test_split: str
    test_fraction: float
    max_length: int
    min_rows: int


@dataclass(frozen=True)
class Method(Section):
    KEY = "method"
    beta: float
    loss_type: str


@dataclass(frozen=True)
class Training(Section):
    KEY = "training"
    learning_rate: float
    batch_size: int
    micro_batch_size: int
    gradient_checkpointing: bool
    warmup_epochs: float
    warmup_fraction: float
    aux_epochs: float
    final_epochs: float
    save_steps: int
    gpus: int
    deepspeed: str
    threads: int
    mem_mb: int
    runtime: int
    lora: dict | None  # the LoRA adapter of every DPO stage (r, alpha, dropout, target_modules, merge); None: full


@dataclass(frozen=True)
class Aux(Section):
    KEY = "aux"
    init: str


@dataclass(frozen=True)
class Scoring(Section):
    KEY = "scoring"
    shards: int
    batch_size: int
    gpus: int
    threads: int
    mem_mb: int
    runtime: int


@dataclass(frozen=True)
class Crossfit(Section):
    KEY = "crossfit"
    folds: int | None


@dataclass(frozen=True)
class Influence(Section):
    KEY = "influence"
    enabled: bool
    params: list | None
    projection_dim: int | None
    shards: int
    batch_size: int
    agreement_band: list
    group_training: bool


@dataclass(frozen=True)
class Evaluation(Section):
    KEY = "evaluation"
    judge: dict
    opponent: str
    prompts: str | None
    samples: int
    max_new_tokens: int
    gpus: int
    threads: int
    mem_mb: int
    runtime: int


@dataclass(frozen=True)
class Settings(Section):
    """The whole config: `selectors` maps each selector's name to its rule (a dict, as the schema defines it)."""

    outdir: str
    seed: int
    demo: Demo
    model: Model
    data: Data
    method: Method
    training: Training
    aux: Aux
    scoring: Scoring
    crossfit: Crossfit
    influence: Influence
    selectors: dict
    evaluation: Evaluation

    def selector(self, name: str) -> dict:
        if name not in self.selectors:
            raise ValueError(f"config key selectors.{name}: no such selector in the given config")
        return self.selectors[name]

    def auto(self) -> tuple[str, dict]:
        """The auto selector (name, rule), as its tournament needs it."""
        found = [(name, spec) for name, spec in self.selectors.items() if spec["kind"] == "auto"]
        if not found:
            raise ValueError("config key selectors: no selector of kind 'auto' in the given config")
        return found[0]


def step_keys(step: str, stage: str | None = None) -> tuple[str, ...]:
    """The config keys that `step` (a `prefselect` subcommand; for `train`, of `stage`) reads."""
    return STEP_KEYS.get(step, ()) + (TRAIN_STAGES[stage] if step == "train" else ())


def _pick(config: dict, key: str, into: dict) -> None:
    *parents, last = key.split(".")
    node, target = config, into
    for part in parents:
        node, target = node[part], target.setdefault(part, {})
    if last in node:  # a selector's keys differ by kind: one its kind lacks is no key of the job
        target[last] = copy.deepcopy(node[last])  # the picked keys may lose parts (STEP_EXCEPT); the config may not


def step_config(config: dict, step: str, stage: str | None = None, selector: str | None = None) -> str:
    """The keys of the validated workflow `config` that a job of `step` reads, as JSON for its `--config`."""
    auto = next((name for name, spec in config["selectors"].items() if spec["kind"] == "auto"), None)
    picked: dict = {}
    names = {"selector": selector, "auto": auto}
    for key in step_keys(step, stage):
        if key in EXECUTION_KEYS:
            continue
        # A run of no selector (a group study's) reads no selector's rule.
        if all(names[name] is not None for name in ("selector", "auto") if f"{{{name}}}" in key):
            _pick(config, key.format(**names), picked)
    for key in STEP_EXCEPT.get(step, ()):
        *parents, last = key.format(**names).split(".")
        node = picked
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return json.dumps(picked, sort_keys=True)


def _given(key: str, keys: set[str]) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:n]) in keys for n in range(1, len(parts) + 1))


def _build(cls, values: dict, keys: set[str], at: str = ""):
    types = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for field in fields(cls):
        key = f"{at}{field.name}"
        if is_dataclass(types[field.name]):
            inside = _given(key, keys) or any(k.startswith(f"{key}.") for k in keys)
            kwargs[field.name] = _build(types[field.name], values[field.name], keys, f"{key}.") if inside else UNSET
        else:
            kwargs[field.name] = values[field.name] if _given(key, keys) else UNSET
    return cls(**kwargs)


def read_config(value: str | None) -> dict:
    """A `--config` value: a YAML config file, or config keys as inline JSON; nothing gives {}."""
    if value is None:
        return {}
    # Inline keys are JSON, read as JSON: YAML 1.1 reads JSON's 1e-05 as a string.
    inline = value.lstrip().startswith("{")
    loaded = json.loads(value) if inline else yaml.safe_load(Path(value).read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"--config {value!r}: a config is a mapping of keys, like config/config.yaml")
    return loaded


def load(value: str | None, step: str, stage: str | None = None, **execution: Any) -> Settings:
    """The settings of `step` from its `--config` (see `read_config`), with the schema's defaults for the rest;
    `execution` (e.g. batch_size=8, None: not given) replaces the EXECUTION_KEYS of the config."""
    from .config import fill_defaults

    config = fill_defaults(read_config(value))
    for key, option in EXECUTION_KEYS.items():
        if execution.get(option) is not None:
            section, name = key.split(".")
            config[section][name] = execution[option]
    keys = {key.split(".{")[0] for key in step_keys(step, stage)}  # a selector's rule: among the given selectors
    return _build(Settings, config, keys)
