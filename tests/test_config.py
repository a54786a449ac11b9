"""The configuration schema: defaults, and errors that name the key before any job runs."""

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prefselect.config import ConfigError, validate

REPO = Path(__file__).parents[1]
DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def with_change(path: str, value) -> dict:
    config = copy.deepcopy(DEMO)
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return config


def test_demo_config_validates_and_fills_defaults():
    config = validate(DEMO)
    assert config["model"]["path"] == "results/models/sft"
    assert config["data"]["validation"] == "results/demo/val.jsonl"
    assert config["scoring"]["batch_size"] == 64
    assert config["selectors"]["full"]["kind"] == "full"


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("method.beta_typo", 0.1, "method: Additional properties"),
        ("method.beta", "high", "method.beta"),
        ("method.loss_type", "ipo", "method.loss_type"),
        ("scoring.shards", 0, "scoring.shards"),
        ("selectors.lossdiff_irm.bands.lossdiff", [10, 120], "selectors.lossdiff_irm.bands.lossdiff.1"),
        ("selectors.lossdiff_irm.bands.lossdiff", [90, 10], "selectors.lossdiff_irm.bands.lossdiff"),
        ("selectors.lossdiff_irm.bands.margin", [10, 90], "selectors.lossdiff_irm.bands"),
        ("selectors.random.like", "nonexistent", "selectors.random.like: 'nonexistent' is not a selector"),
        ("selectors.random.like", "random", "selectors.random.like: 'random' is not a selector without `like`"),
        ("selectors.random.fraction", 0.5, "selectors.random: a random selector needs exactly one of"),
        ("selectors.full.fraction", 0.5, "selectors.full: `like` and `fraction` do not apply to kind 'full'"),
        ("selectors.rated", {"kind": "external", "column": "r"}, "selectors.rated: a external selector needs"),
        ("selectors.rated", {"kind": "external", "fraction": 0.5}, "selectors.rated: an external selector needs exactly"),
        ("selectors.rated", {"kind": "external", "reward_model": "m", "minus": "r", "fraction": 0.5},
         "selectors.rated.minus: only together with `column`"),
        ("selectors.lossdiff_irm.column", "rating",
         "selectors.lossdiff_irm.column: allowed for kinds external and alignment_potential only"),
        ("selectors.ap", {"kind": "alignment_potential", "column": "r"},
         "selectors.ap: a alignment_potential selector needs exactly one of `like` or `fraction`"),
        ("selectors.ap", {"kind": "alignment_potential", "fraction": 0.4},
         "selectors.ap: an alignment_potential selector needs exactly one of `column` or `reward_model`"),
        ("selectors.rated.weight", 2, "selectors.rated.weight: allowed for kind 'alignment_potential' only"),
        ("selectors.ap.weight", -1, "selectors.ap.weight"),
        ("selectors.full.final", {"loss_type": "kto"}, "selectors.full.final.loss_type"),
        ("selectors.full.final", {"loss_type": "robust", "label_smoothing": 0.5}, "selectors.full.final.label_smoothing"),
        ("selectors.full.final", {"label_smoothing": 0.1},
         "selectors.full.final.label_smoothing: only loss_type robust uses it"),
        ("selectors.auto.final", {"loss_type": "ipo"}, "selectors.auto.final: the auto selector adopts its winner's"),
        ("selectors.lossdiff_irm.like", "random", "selectors.lossdiff_irm.like: 'random' is not a selector without"),
        ("aux.init", "scratch", "aux.init"),
        ("evaluation.judge", "gpt", "evaluation.judge.kind"),
        ("evaluation.judge", {"kind": "reward_model"}, "evaluation.judge.model: required"),
        ("evaluation.judge", {"kind": "llm", "model": "m", "timeout_s": 0}, "evaluation.judge.timeout_s"),
        ("evaluation.opponent", "warmup", "evaluation.opponent"),
    ],
)
def test_bad_values_name_the_key(path, value, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate(with_change(path, value))


def test_real_data_needs_a_model_and_a_source():
    config = with_change("demo.enabled", False)
    del config["selectors"]["oracle"]
    with pytest.raises(ConfigError, match="model.path"):
        validate(config)
    config["model"] = {"path": "org/model"}
    with pytest.raises(ConfigError, match="data.source"):
        validate(config)
    config["data"]["source"] = "pairs.jsonl"
    config["selectors"]["oracle"] = {"kind": "oracle"}
    with pytest.raises(ConfigError, match="oracle"):
        validate(config)


def test_judge_name_stands_for_its_defaults():
    judge = validate(with_change("evaluation.judge", "vader"))["evaluation"]["judge"]
    assert judge == validate(with_change("evaluation.judge", {"kind": "vader"}))["evaluation"]["judge"]
    assert judge == validate({**DEMO, "evaluation": {}})["evaluation"]["judge"]
    assert judge["kind"] == "vader" and judge["api_key_env"] == "OPENAI_API_KEY"


def test_api_key_env_names_a_variable_and_is_never_echoed():
    with pytest.raises(ConfigError, match="api_key_env") as err:
        validate(with_change("evaluation.judge", {"kind": "llm", "model": "m", "api_key_env": "sk-abc123"}))
    assert "sk-abc123" not in str(err.value)


def test_full_opponent_needs_the_full_selector():
    config = with_change("evaluation.opponent", "full")
    assert validate(config)["evaluation"]["opponent"] == "full"
    del config["selectors"]["full"]
    config["selectors"]["auto"]["candidates"].remove("full")
    with pytest.raises(ConfigError, match="evaluation.opponent"):
        validate(config)


def test_target_fractions_and_external_selectors_validate():
    config = with_change("selectors.matched", {"bands": {"lossdiff": [30, 100]}, "like": "lossdiff_irm"})
    config["selectors"]["rated"] = {"kind": "external", "column": "score_chosen", "minus": "score_rejected",
                                    "fraction": 0.64}
    config["selectors"]["rm"] = {"kind": "external", "reward_model": "org/rm", "like": "lossdiff_irm"}
    selectors = validate(config)["selectors"]
    assert selectors["matched"]["kind"] == "bands" and selectors["rm"]["kind"] == "external"


def dry_run(workdir: Path, *args: str) -> str:
    """What `snakemake -n` plans with these arguments in a working directory that holds the demo's config, as a
    checkout does."""
    (workdir / "config").mkdir(exist_ok=True)
    shutil.copyfile(REPO / "config" / "config.yaml", workdir / "config" / "config.yaml")
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--directory", str(workdir), "--cores", "1",
                             *args], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_the_demo_is_extended_by_keys_and_replaced_by_a_config_that_names_a_model_data_or_the_demo(tmp_path):
    moved = dry_run(tmp_path, "--config", "outdir=elsewhere")
    assert "rule demo_pairs" in moved and "elsewhere/demo/train.jsonl" in moved and " results/" not in moved
    extra = tmp_path / "extra-selector.yaml"
    extra.write_text("selectors: {upper_half: {bands: {lossdiff: [50, 100]}}}\n")
    extended = dry_run(tmp_path, "--configfile", str(extra))
    assert "results/selection/upper_half.parquet" in extended and "results/selection/lossdiff_irm.parquet" in extended
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump({"model": {"path": str(tmp_path)}, "data": {"source": str(extra)},
                                   "selectors": {"upper_half": {"bands": {"lossdiff": [50, 100]}}}}))
    replaced = dry_run(tmp_path, "--configfile", str(own))
    assert "results/selection/upper_half.parquet" in replaced
    assert "lossdiff_irm" not in replaced and "rule demo_" not in replaced  # nothing of the demo's config carried over


def test_snakemake_stops_on_a_bad_config_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_change("selectors.lossdiff_irm.bands.lossdiff", [90, 10])))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(bad), "--cores", "1"],
        capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "selectors.lossdiff_irm.bands.lossdiff: lower bound 90 must be below upper bound 10" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


# Each setting a step takes, as (step, argument) -> the config key whose value the workflow passes for it.
STEP_SETTINGS = {
    ("demo-tokenizer", "vocab_size"): "demo.vocab_size",
    **{("demo-sft", name): f"demo.model.{name}" for name in ("n_layer", "n_embd", "n_head", "n_positions")},
    **{("demo-sft", name): f"demo.sft.{name}" for name in ("steps", "batch_size", "learning_rate")},
    **{("demo-pairs", name): f"demo.pairs.{name}" for name in ("train", "val", "dev", "eval_prompts", "prompt_words",
                                                                "samples", "max_new_tokens", "noise", "noise_model",
                                                                "tau")},
    **{("prepare", name): f"data.{name}" for name in ("split", "validation_split", "dev_split", "val_fraction",
                                                       "test_fraction", "max_length", "min_rows")},
    ("logps", "batch_size"): "scoring.batch_size",
    **{("train", name): f"training.{name}" for name in ("learning_rate", "batch_size", "micro_batch_size",
                                                         "save_steps", "deepspeed", "gradient_checkpointing")},
    ("train", "epochs"): "training.warmup_epochs",
    ("train", "fraction"): "training.warmup_fraction",
    ("train", "folds"): "crossfit.folds",
    ("train", "label_smoothing"): "selectors.*.final.label_smoothing",
    ("score", "batch_size"): "scoring.batch_size",
    ("crossfit-score", "batch_size"): "scoring.batch_size",
    ("val-grad", "batch_size"): "influence.batch_size",
    ("influence", "batch_size"): "influence.batch_size",
    ("agreement", "tif_band"): "influence.agreement_band",
    ("sample", "samples"): "evaluation.samples",
    ("sample", "max_new_tokens"): "evaluation.max_new_tokens",
    ("evaluate", "opponent_name"): "evaluation.opponent",
    ("evaluate", "judge"): "evaluation.judge.kind",
    **{(step, "seed"): "seed" for step in ("demo-sft", "demo-pairs", "prepare", "train", "crossfit-score", "influence",
                                           "select", "sample")},
    **{(step, "max_length"): "data.max_length" for step in ("prepare", "logps", "train", "score", "crossfit-score",
                                                             "val-grad", "influence", "external-score")},
    **{(step, name): f"method.{name}" for step in ("train", "score", "crossfit-score", "tournament", "val-grad",
                                                    "influence") for name in ("beta", "loss_type")},
}


def schema_default(key: str):
    node = yaml.safe_load((REPO / "workflow/prefselect/schemas/config.schema.yaml").read_text())
    for part in key.split("."):
        node = node["additionalProperties"] if part == "*" else node["properties"][part]
    return node["default"]


def test_a_step_run_by_hand_takes_the_workflows_defaults():
    """`prefselect <step>` with only its required arguments gets, for every setting, the default the workflow would
    pass from the config: the schema's."""
    from prefselect.cli import build_parser

    subcommands = next(a for a in build_parser()._actions if a.dest == "step").choices
    for (step, dest), key in STEP_SETTINGS.items():
        action = next(a for a in subcommands[step]._actions if a.dest == dest)
        assert action.default == schema_default(key), (step, dest, key)
    # No other argument of a step has a default of its own that the schema defines under the same name.
    named = {key.rsplit(".", 1)[-1] for key in STEP_SETTINGS.values()}
    for step, parser in subcommands.items():
        for action in parser._actions:
            if action.dest in named and (step, action.dest) not in STEP_SETTINGS and action.default is not None:
                assert action.dest in ("shards", "dev_fraction"), (step, action.dest)
