"""The configuration schema: defaults, and errors that name the key before any job runs."""

import ast
import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prefselect import settings
from prefselect.config import ConfigError, default, validate

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
        (
            "selectors.rated",
            {"kind": "external", "fraction": 0.5},
            "selectors.rated: an external selector needs exactly",
        ),
        (
            "selectors.rated",
            {"kind": "external", "reward_model": "m", "minus": "r", "fraction": 0.5},
            "selectors.rated.minus: only together with `column`",
        ),
        (
            "selectors.lossdiff_irm.column",
            "rating",
            "selectors.lossdiff_irm.column: allowed for kinds external and alignment_potential only",
        ),
        (
            "selectors.ap",
            {"kind": "alignment_potential", "column": "r"},
            "selectors.ap: a alignment_potential selector needs exactly one of `like` or `fraction`",
        ),
        (
            "selectors.ap",
            {"kind": "alignment_potential", "fraction": 0.4},
            "selectors.ap: an alignment_potential selector needs exactly one of `column` or `reward_model`",
        ),
        ("selectors.rated.weight", 2, "selectors.rated.weight: allowed for kind 'alignment_potential' only"),
        ("selectors.ap.weight", -1, "selectors.ap.weight"),
        ("selectors.full.final", {"loss_type": "kto"}, "selectors.full.final.loss_type"),
        (
            "selectors.full.final",
            {"loss_type": "robust", "label_smoothing": 0.5},
            "selectors.full.final.label_smoothing",
        ),
        (
            "selectors.full.final",
            {"label_smoothing": 0.1},
            "selectors.full.final.label_smoothing: only loss_type robust uses it",
        ),
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
    config["selectors"]["auto"]["fallback"] = None
    with pytest.raises(ConfigError, match="evaluation.opponent"):
        validate(config)


def test_target_fractions_and_external_selectors_validate():
    config = with_change("selectors.matched", {"bands": {"lossdiff": [30, 100]}, "like": "lossdiff_irm"})
    config["selectors"]["rated"] = {
        "kind": "external",
        "column": "score_chosen",
        "minus": "score_rejected",
        "fraction": 0.64,
    }
    config["selectors"]["rm"] = {"kind": "external", "reward_model": "org/rm", "like": "lossdiff_irm"}
    selectors = validate(config)["selectors"]
    assert selectors["matched"]["kind"] == "bands" and selectors["rm"]["kind"] == "external"


def dry_run(workdir: Path, *args: str) -> str:
    """What `snakemake -n` plans with these arguments in a working directory that holds the demo's config, as a
    checkout does."""
    (workdir / "config").mkdir(exist_ok=True)
    shutil.copyfile(REPO / "config" / "config.yaml", workdir / "config" / "config.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--directory", str(workdir), "--cores", "1", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
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
    own.write_text(
        yaml.safe_dump(
            {
                "model": {"path": str(tmp_path)},
                "data": {"source": str(extra)},
                "selectors": {"upper_half": {"bands": {"lossdiff": [50, 100]}}},
            }
        )
    )
    replaced = dry_run(tmp_path, "--configfile", str(own))
    assert "results/selection/upper_half.parquet" in replaced
    assert "lossdiff_irm" not in replaced and "rule demo_" not in replaced  # nothing of the demo's config carried over


def test_snakemake_stops_on_a_bad_config_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_change("selectors.lossdiff_irm.bands.lossdiff", [90, 10])))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(bad),
            "--cores",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert (
        "selectors.lossdiff_irm.bands.lossdiff: lower bound 90 must be below upper bound 10"
        in result.stdout + result.stderr
    )
    assert not (tmp_path / "results").exists()


# Keys that say where things are or what a job may use, which the workflow reads and no step does.
WORKFLOW_ONLY = {
    "outdir",
    "demo.enabled",
    "demo.task",
    "demo.snippets",
    "data.test",
    "model.path",
    "data.source",
    "data.validation",
    "data.dev",
    "aux.init",
    "scoring.shards",
    "influence.enabled",
    "influence.shards",
    "influence.group_training",
    "evaluation.prompts",
    *(
        f"{section}.{key}"
        for section in ("training", "scoring", "evaluation")
        for key in ("gpus", "threads", "mem_mb", "runtime")
    ),
}


def schema_leaves(node: dict, at: str = "") -> set[str]:
    """Every config key the schema defines, down to the sections' own keys (a judge or selector is one key)."""
    keys = set()
    for name, sub in node.get("properties", {}).items():
        inside = "properties" in sub and name not in ("judge", "gguf", "package")
        keys |= schema_leaves(sub, f"{at}{name}.") if inside else {f"{at}{name}"}
    return keys


def flat(section, at: str = "") -> dict:
    """A step's settings as {dotted key: value}, without the keys it was not given."""
    from dataclasses import fields, is_dataclass

    from prefselect.settings import UNSET

    values = {}
    for field in fields(section):
        value = object.__getattribute__(section, field.name)
        if is_dataclass(value):
            values |= flat(value, f"{at}{field.name}.")
        elif value is not UNSET and field.name != "selectors":
            values[f"{at}{field.name}"] = value
    return values


def step_runs():
    from prefselect.settings import STEP_KEYS, TRAIN_STAGES

    return [("train", stage) for stage in TRAIN_STAGES] + [(step, None) for step in STEP_KEYS if step != "train"]


def test_every_setting_of_the_schema_is_read_by_a_step_or_is_the_workflows():
    from prefselect.settings import step_keys

    read = {key.split(".{")[0] for step, stage in step_runs() for key in step_keys(step, stage)}
    schema = schema_leaves(yaml.safe_load((REPO / "workflow/prefselect/schemas/config.schema.yaml").read_text()))
    uncovered = {key for key in schema if not any(key == r or key.startswith(f"{r}.") for r in read | WORKFLOW_ONLY)}
    assert not uncovered
    assert WORKFLOW_ONLY <= schema


@pytest.mark.parametrize("step, stage", step_runs())
def test_a_step_run_by_hand_takes_the_workflows_settings(step, stage):
    """`prefselect <step>` with no --config gets, for every key it reads, what the workflow hands it from a config
    that sets none of them: the schema's default. Its arguments have no defaults of their own."""
    from prefselect import settings

    workflow = validate(
        {
            "model": {"path": "org/m"},
            "data": {"source": "pairs.jsonl"},
            "selectors": {
                "lossdiff_irm": {"bands": {"lossdiff": [10, 90], "irm": [10, 90]}},
                "full": {"kind": "full"},
                "auto": {"kind": "auto", "candidates": ["lossdiff_irm", "full"]},
            },
        }
    )
    selector = "auto" if step == "tournament" else "lossdiff_irm"
    given = settings.load(settings.step_config(workflow, step, stage, selector), step, stage)
    by_hand = settings.load(None, step, stage)
    assert flat(given) == flat(by_hand)
    keys = {key for key in settings.step_keys(step, stage) if "{" not in key and key != "selectors"}
    assert all(any(k == key or k.startswith(f"{key}.") for k in flat(given)) for key in keys)
    spec = workflow["selectors"][selector]
    for key in settings.step_keys(step, stage):
        if key == "selectors.{selector}":
            assert given.selector(selector) == spec
        elif key.startswith("selectors.{selector}."):
            name = key.rsplit(".", 1)[1]
            assert given.selector(selector).get(name) == spec.get(name)  # a key its kind lacks is absent from both


@pytest.mark.parametrize("step", ["logps", "score", "crossfit-score"])
def test_the_forward_batch_size_is_an_option_of_the_job_and_no_key_that_reruns_it(step):
    """scoring.batch_size changes no number (test_scoring), so the workflow hands it as `--batch-size` (a job
    resource) and not in the job's --config, which Snakemake compares to rerun a job."""
    from prefselect import settings

    workflow = validate({"model": {"path": "org/m"}, "data": {"source": "pairs.jsonl"}, "scoring": {"batch_size": 3}})
    keys = json.loads(settings.step_config(workflow, step))
    assert "batch_size" not in keys.get("scoring", {}) and "scoring.batch_size" in settings.step_keys(step)
    assert settings.load(json.dumps(keys), step, batch_size=3).scoring.batch_size == 3
    assert settings.load(json.dumps(keys), step).scoring.batch_size == default("scoring.batch_size")
    assert settings.load(json.dumps(workflow), step).scoring.batch_size == 3  # by hand, from a config file's keys


def test_a_key_a_step_was_not_given_is_an_error_to_read():
    from prefselect import settings

    given = settings.load('{"method": {"beta": 0.5}}', "score")
    assert given.method.beta == 0.5 and given.scoring.batch_size == default("scoring.batch_size")
    with pytest.raises(settings.UnsetKey, match="config key training: not among"):
        _ = given.training.learning_rate


def test_no_argument_of_a_step_has_a_default_that_a_setting_should_give():
    from prefselect.cli import build_parser

    subcommands = next(a for a in build_parser()._actions if a.dest == "step").choices
    own = {"help", "shard", "shards", "stage", "baselines", "benchmarks", "models"}  # which job, or what to read
    for name, parser in subcommands.items():
        for action in parser._actions:
            if action.dest not in own:
                assert action.default in (None, False), (name, action.dest, action.default)


@pytest.mark.parametrize(
    "step, required, optional",
    [
        ("select", ["--selector", "s", "--scores", "x", "--data", "d", "--out", "o"], "--like"),
        ("external-score", ["--selector", "s", "--data", "d", "--out", "o"], "--ref"),
        ("external-score", ["--selector", "s", "--data", "d", "--out", "o"], "--tokenizer"),
        ("prepare", ["--source", "s", "--tokenizer", "t", "--out", "o"], "--validation"),
        ("prepare", ["--source", "s", "--tokenizer", "t", "--out", "o"], "--dev"),
        ("prepare", ["--source", "s", "--tokenizer", "t", "--out", "o"], "--test"),
        (
            "evaluate",
            [
                "--names",
                "n",
                "--selections",
                "s",
                "--samples",
                "x",
                "--opponent",
                "p",
                "--data",
                "d",
                "--out-json",
                "j",
                "--out-md",
                "m",
            ],
            "--prompts",
        ),
        (
            "group-study",
            ["--data", "d", "--influence", "i", "--groups", "g", "--out-json", "j", "--out-md", "m"],
            "--out-png",
        ),
        (
            "group-study",
            ["--data", "d", "--influence", "i", "--groups", "g", "--out-json", "j", "--out-md", "m"],
            "--models",
        ),
        ("demo-snippets", ["--out", "o"], "--local-copy"),
        ("demo-rated-snippets", ["--out", "o"], "--local-copy"),
    ],
)
def test_an_optional_argument_given_empty_means_none(step, required, optional):
    """A rule passes each optional argument always, empty where there is none (`--like {input.like}`), and the
    step reads that as left out; `--help` says what empty means."""
    from prefselect.cli import build_parser

    parser = build_parser()
    dest = optional.removeprefix("--").replace("-", "_")
    left_out = getattr(parser.parse_args([step, *required]), dest)
    given = getattr(parser.parse_args([step, *required, optional, "path"]), dest)
    assert given in ("path", ["path"])
    # Empty: no value, or (a single path) the empty string.
    for empty in ([optional],) if isinstance(given, list) else ([optional], [optional, ""]):
        value = getattr(parser.parse_args([step, *required, *empty]), dest)
        assert not value and not left_out, (empty, value)
    subcommands = next(a for a in parser._actions if a.dest == "step").choices
    (action,) = [a for a in subcommands[step]._actions if optional in a.option_strings]
    assert "empty" in action.help.lower(), action.help


def test_small_numbers_reach_a_step_as_numbers():
    """The JSON a rule hands a step writes 1e-05 without a dot, which YAML 1.1 would read as a string."""
    from prefselect import settings

    config = validate(
        {"model": {"path": "org/m"}, "data": {"source": "pairs.jsonl"}, "training": {"learning_rate": 1.0e-5}}
    )
    handed = settings.step_config(config, "train", "warmup")
    assert '"learning_rate": 1e-05' in handed
    assert settings.load(handed, "train", "warmup").training.learning_rate == 1e-5


def prefselect_imports(source: str) -> set[str]:
    """The prefselect modules a module or rule file imports, at any level (a function's imports too)."""
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and (node.level or node.module.startswith("prefselect")):
            module = node.module.removeprefix("prefselect").lstrip(".")
            imported |= {module} if module else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            imported |= {a.name.removeprefix("prefselect.") for a in node.names if a.name.startswith("prefselect.")}
    return imported - {""}


def test_planning_imports_no_numpy_pandas_torch_or_transformers():
    """What the Snakefile and its rules import of the package runs on a cluster's login node, for every plan."""
    rules = [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]
    # Snakemake's own syntax is no Python: only its import lines are parsed.
    lines = "\n".join(
        line
        for path in rules
        for line in path.read_text().splitlines()
        if line.startswith(("import prefselect", "from prefselect"))
    )
    modules = sorted(prefselect_imports(lines))
    assert {"config", "settings", "kinds", "deploy"} <= set(modules)
    code = (
        f"import sys; import {', '.join(f'prefselect.{m}' for m in modules)}; "
        "print(sorted(m for m in ('numpy', 'pandas', 'torch', 'transformers') if m in sys.modules))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "workflow")},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_the_package_has_no_import_circle():
    package = REPO / "workflow/prefselect"
    graph = {path.stem: prefselect_imports(path.read_text()) for path in package.glob("*.py")}
    graph = {module: {m.split(".")[0] for m in imports} & set(graph) for module, imports in graph.items()}
    visiting, done = [], set()

    def visit(module):
        assert module not in visiting, f"import circle: {' -> '.join(visiting[visiting.index(module) :] + [module])}"
        if module in done:
            return
        visiting.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_a_step_config_leaves_out_what_its_step_does_not_read_and_changes_no_config():
    config = validate(yaml.safe_load((REPO / "tests/e2e/config.yaml").read_text()))
    before = copy.deepcopy(config)
    select = json.loads(settings.step_config(config, "select", selector="rdpo"))
    assert "final" not in select["selectors"]["rdpo"] and select["selectors"]["rdpo"]["kind"] == "full"
    assert config == before
    final = json.loads(settings.step_config(config, "train", "final", "rdpo"))
    assert final["selectors"]["rdpo"]["final"] == {"loss_type": "robust", "label_smoothing": 0.3}
