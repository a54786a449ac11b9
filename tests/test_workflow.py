"""The real DAG on a small demo config, and a partial rerun after one score shard is lost."""

import json
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from prefselect.data import content_id

REPO = Path(__file__).resolve().parents[1]
# Every path of the README's output contract that the e2e config makes (no influence, no likelihood judge).
CONTRACT = [
    "data/train.parquet",
    "data/val.parquet",
    "data/test.parquet",
    "data/dev.parquet",
    "data/quarantine.jsonl",
    "data/report.json",
    *(f"logps/ref/{split}/{i}-of-2.parquet" for split in ("train", "val", "dev") for i in (0, 1)),
    "scores/shards/0-of-2.parquet",
    "scores/shards/1-of-2.parquet",
    "scores/scores.parquet",
    "scores/external/rated.parquet",
    "scores/external/ap.parquet",
    "scores/crossfit/0-of-2.parquet",
    "scores/crossfit/1-of-2.parquet",
    "scores/crossfit.parquet",
    "eval/results.json",
    "eval/results.md",
    "eval/deciles.json",
    "eval/deciles.md",
    "eval/dev/choice.json",
    "eval/tournament.json",
    "eval/tournament.md",
    "eval/tournament.png",
    *(f"eval/plots/{name}" for name in ("scores.png", "training.png", "results.png", "results.html", "data.html")),
    "benchmarks/aux.tsv",
    "benchmarks/score/0-of-2.tsv",
    "benchmarks/score/1-of-2.tsv",
    *(
        f"demo/{name}"
        for name in (
            "snippets.parquet",
            "train.jsonl",
            "val.jsonl",
            "dev.jsonl",
            "eval_prompts.jsonl",
            "pairs_stats.json",
        )
    ),
]
SCORE_COLUMNS = [
    "id",
    "ref_chosen_logp",
    "ref_rejected_logp",
    "chosen_logp",
    "rejected_logp",
    "aux_chosen_logp",
    "aux_rejected_logp",
    "irm",
    "aux_irm",
    "loss",
    "aux_loss",
    "lossdiff",
]
CANDIDATES = ["lossdiff_irm", "full", "aux_irm_top50"]  # the auto selector's: two named, one from its grid
GRID_ONLY = {"aux_irm_top50"}  # a candidate with no selector of its own in the config
SELECTORS = [
    "lossdiff_irm",
    "full",
    "random",
    "oracle",
    "rated",
    "ap",
    "rdpo",
    "selective_dpo",
    "auto",
    "aux_irm_top50",
]

pytestmark = pytest.mark.e2e


def snakemake(workdir: Path, *args: str, config: str = "config.yaml") -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(REPO / "tests" / "e2e" / config),
        "--cores",
        "2",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def jobs_of(dry_run_output: str) -> dict[str, int]:
    """Job counts from the 'Job stats' table of a dry run."""
    lines = dry_run_output.split("Job stats:")[1].splitlines()[3:]
    counts = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The completed small run that every test shares; a test that changes it works on its own copy (own_copy)."""
    workdir = tmp_path_factory.mktemp("e2e")
    snakemake(workdir)
    return workdir


def own_copy(run: Path, where: Path) -> Path:
    """A copy of a completed run (mtimes and Snakemake's records kept, so that it plans what the run would)."""
    return shutil.copytree(run, where / "run", symlinks=True)


def test_every_output_of_the_contract_exists(workdir):
    out = workdir / "results"
    for path in CONTRACT:
        assert (out / path).is_file(), path
    assert (out / "demo/tokenizer/tokenizer.json").is_file()
    for model in ["sft", "warmup", "aux", "xfit-0", "xfit-1"] + [f"final-{s}" for s in SELECTORS]:
        assert (out / "models" / model / "model.safetensors").is_file(), model
        if model != "sft":  # every DPO folder holds TRL's log
            assert json.loads((out / "models" / model / "training_log.json").read_text()), model
    for model in ["sft"] + [f"final-{s}" for s in SELECTORS]:
        assert (out / "eval/samples" / f"{model}.parquet").is_file(), model
    for selector in CANDIDATES:
        assert (out / "eval/dev/logps" / f"final-{selector}.parquet").is_file(), selector
    assert not (out / "checkpoints").exists()  # removed once every model is complete
    assert not [p for p in out.rglob(".*") if p.name != ".snakemake_timestamp"]  # no temporary left behind
    logs = {p.relative_to(out / "logs").as_posix() for p in (out / "logs").rglob("*.log")}
    assert {"prepare.log", "warmup.log", "aux.log", "tournament.log", "evaluate.log"} <= logs
    assert {f"final-{s}.log" for s in SELECTORS if s != "auto"} <= logs and "adopt_winner.log" in logs
    scores = pd.read_parquet(out / "scores/scores.parquet")
    assert list(scores.columns) == SCORE_COLUMNS
    train = pd.read_parquet(out / "data/train.parquet")
    assert sorted(scores["id"]) == sorted(train["id"])
    assert len(pd.read_parquet(out / "data/test.parquet")) == 0  # data.test_fraction is 0
    for selector in SELECTORS:
        selection = pd.read_parquet(out / "selection" / f"{selector}.parquet")
        assert list(selection.columns) == ["id", "selected"] and len(selection) == len(train)
        for ext in ("jsonl", "parquet"):
            assert (out / "selected" / f"{selector}.{ext}").is_file(), selector
    for split in ("train", "val", "dev"):
        ref = pd.concat([pd.read_parquet(out / f"logps/ref/{split}/{i}-of-2.parquet") for i in (0, 1)])
        assert list(ref.columns) == ["id", "chosen_logp", "rejected_logp"], split
        assert sorted(ref["id"]) == sorted(pd.read_parquet(out / f"data/{split}.parquet")["id"]), split


def test_results_report_every_selector(workdir):
    out = workdir / "results"
    results = json.loads((out / "eval/results.json").read_text())["selectors"]
    assert set(results) == set(SELECTORS)
    assert results["full"]["kept_fraction"] == 1.0
    assert results["oracle"]["flipped_share_kept"] == 0.0
    assert results["random"]["kept"] == results["lossdiff_irm"]["kept"] == results["rated"]["kept"]
    train = pd.read_parquet(out / "data/train.parquet").set_index("id")
    rated = pd.read_parquet(out / "selection/rated.parquet").set_index("id")["selected"]
    margin = train.loc[rated.index, "oracle_margin"]
    assert margin[rated].min() >= margin[~rated].max()  # the external selector keeps the best-rated pairs
    for r in results.values():
        assert r["ci_low"] <= r["win_rate"] <= r["ci_high"]
        assert r["n"] == 32 * 2
    assert results["ap"]["kept_fraction"] == pytest.approx(0.4, abs=0.01)


def test_results_say_where_they_came_from(workdir):
    """results.json and the tournament's json carry the seed, prefselect's version, the config keys their step
    read, and the record of each input: each final model's samples name that model's fingerprint."""
    from prefselect import __version__, provenance

    out = workdir / "results"
    made = json.loads((out / "eval/results.json").read_text())["provenance"]
    assert made["seed"] == 0 and made["package"] == __version__
    assert made["config"]["evaluation"]["opponent"] == "sft"
    for selector in SELECTORS:
        samples = made["inputs"][f"samples/{selector}"]
        assert samples["inputs"]["model"] == provenance.model_fingerprint(str(out / f"models/final-{selector}"))
        assert samples["config"]["seed"] == 0
        assert made["inputs"][f"selection/{selector}"]["fingerprint"] == provenance.fingerprint_of(
            out / f"selection/{selector}.parquet"
        )
    tournament = json.loads((out / "eval/tournament.json").read_text())["provenance"]
    choice = json.loads((out / "eval/dev/choice.json").read_text())
    assert (
        tournament["inputs"]["choice"]["fingerprint"] == f"file:{provenance.file_digest(out / 'eval/dev/choice.json')}"
    )
    for name in CANDIDATES:
        dev = choice["provenance"]["inputs"][f"dev_logps/{name}"]
        assert dev["inputs"]["model"] == provenance.model_fingerprint(str(out / f"models/final-{name}"))


def test_rivals_train_with_their_own_loss_and_alignment_potential_keeps_its_top_share(workdir):
    out = workdir / "results"
    for selector, loss, smoothing in (("full", ["sigmoid"], 0.0), ("rdpo", ["robust"], 0.3)):
        args = torch.load(out / f"models/final-{selector}/training_args.bin", weights_only=False)  # TRL's DPOConfig
        assert (args.loss_type, args.label_smoothing) == (loss, smoothing), selector
    assert pd.read_parquet(out / "selection/rdpo.parquet")["selected"].all()
    scores = pd.read_parquet(out / "scores/external/ap.parquet").set_index("id")
    kept = pd.read_parquet(out / "selection/ap.parquet").set_index("id")["selected"]
    assert list(scores.columns) == ["external", "ap"]
    assert scores.loc[kept[kept].index, "ap"].min() >= scores.loc[kept[~kept].index, "ap"].max()


def test_selective_dpo_keeps_the_lowest_cross_fitted_losses(workdir):
    out = workdir / "results"
    crossfit = pd.read_parquet(out / "scores/crossfit.parquet").set_index("id")
    assert list(crossfit.columns) == SCORE_COLUMNS[1:] + ["xfit_irm", "xfit_loss"]
    kept = pd.read_parquet(out / "selection/selective_dpo.parquet").set_index("id")["selected"]
    assert kept.mean() == pytest.approx(0.5, abs=0.05)
    assert crossfit.loc[kept[kept].index, "xfit_loss"].max() <= crossfit.loc[kept[~kept].index, "xfit_loss"].min()
    # A pair's cross-fitted margin is not the warm-up's: that model trained on it, the fold's model did not.
    assert (crossfit["xfit_irm"] - crossfit["irm"]).abs().max() > 1e-3
    deciles = json.loads((out / "eval/deciles.json").read_text())
    assert list(deciles) == ["lossdiff", "irm", "aux_irm", "xfit_irm"]  # where the flipped labels sit in each
    report = json.loads((out / "data/report.json").read_text())
    assert report["dev"] == len(pd.read_parquet(out / "data/dev.parquet")) > 40  # of 48 made, less quarantined ones
    assert (
        sum(report["rows_read"].values())
        == report["train"] + report["val"] + report["dev"] + report["quarantined_total"]
    )


def test_auto_adopts_the_selection_and_model_of_the_candidate_its_dev_criterion_prefers(workdir):
    out = workdir / "results"
    choice = json.loads((out / "eval/dev/choice.json").read_text())
    assert list(choice["candidates"]) == CANDIDATES
    chosen = choice["chosen"]
    assert choice["criterion"] == "dev_margin"  # the default
    assert choice["best"] == max(CANDIDATES, key=lambda name: choice["candidates"][name]["margin"])
    assert choice["gate"]["fallback"] == "full"  # the default: kept unless the dev pairs separate the best from it
    assert chosen == (choice["best"] if choice["gate"]["passed"] else "full")
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "selection/auto.parquet"),
        pd.read_parquet(out / f"selection/{chosen}.parquet"),
        check_exact=True,
    )
    for file in ("model.safetensors", "config.json", "training_log.json"):
        assert (out / "models/final-auto" / file).read_bytes() == (out / f"models/final-{chosen}" / file).read_bytes()
    dev_ids = set(pd.read_parquet(out / "data/dev.parquet")["id"])
    for split in ("train", "val", "test"):
        assert not dev_ids & set(pd.read_parquet(out / f"data/{split}.parquet")["id"]), split
    for name in CANDIDATES:
        assert set(pd.read_parquet(out / f"eval/dev/logps/final-{name}.parquet")["id"]) == dev_ids
    results = json.loads((out / "eval/results.json").read_text())["selectors"]
    tournament = json.loads((out / "eval/tournament.json").read_text())
    assert tournament["chosen"] == chosen and set(tournament["candidates"]) == set(CANDIDATES)
    rates = {name: results[name]["win_rate"] for name in CANDIDATES}
    assert tournament["regret"] == pytest.approx(max(rates.values()) - rates[chosen])
    assert results["auto"]["kept"] == results[chosen]["kept"]


def test_the_exports_are_the_demo_rows_of_the_kept_ids(workdir):
    """Every selector's export (a band selector, those `like` it, `auto`) holds the demo's own input lines of the
    pairs it keeps, byte for byte with the id put first (the demo's rows have no id column), in input order; the
    auto selector's is its chosen candidate's."""
    out = workdir / "results"
    rows: dict[str, bytes] = {}
    for line in (out / "demo/train.jsonl").read_bytes().split(b"\n")[:-1]:
        rows.setdefault(content_id(json.loads(line)), line)
    for selector in SELECTORS:
        selection = pd.read_parquet(out / f"selection/{selector}.parquet")
        kept = [row_id for row_id in rows if row_id in set(selection.loc[selection["selected"], "id"])]
        assert len(kept) == selection["selected"].sum(), selector
        exported = (out / f"selected/{selector}.jsonl").read_bytes().split(b"\n")
        assert exported.pop() == b"" and exported == [f'{{"id": "{i}", '.encode() + rows[i][1:] for i in kept]
        table = pd.read_parquet(out / f"selected/{selector}.parquet")
        assert table["id"].tolist() == kept, selector
        pd.testing.assert_frame_equal(table, pd.DataFrame([{"id": i, **json.loads(rows[i])} for i in kept]))
    chosen = json.loads((out / "eval/dev/choice.json").read_text())["chosen"]
    assert (out / "selected/auto.jsonl").read_bytes() == (out / f"selected/{chosen}.jsonl").read_bytes()
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "selected/auto.parquet"),
        pd.read_parquet(out / f"selected/{chosen}.parquet"),
        check_exact=True,
    )


def readme_selection_only() -> tuple[str, str]:
    """The README's selection-only lines: its shell command and its Python lines."""
    section = (REPO / "README.md").read_text().split("**Selection only")[1]
    return section.split("```bash\n")[1].split("\n```")[0], section.split("```python\n")[1].split("\n```")[0]


def test_the_readme_selection_only_lines_run_on_the_demo(workdir):
    """The README's five lines as written, on a copy of the small demo's run as `results-mymodel` with its config as
    `my.yaml`: the exports made again, no final run, then a DPO run of TRL's own on one of them. The
    SFT model is the demo's, and the Snakefile is named, since the command runs outside the checkout."""
    shell, python = readme_selection_only()
    assert len(shell.splitlines()) + len(python.splitlines()) == 5
    config = yaml.safe_load((REPO / "tests/e2e/config.yaml").read_text())
    (workdir / "my.yaml").write_text(yaml.safe_dump({**config, "outdir": "results-mymodel"}))
    shutil.copytree(workdir / "results", workdir / "results-mymodel")
    shutil.rmtree(workdir / "results-mymodel/selected")
    command = [sys.executable, "-m", *shlex.split(shell), "--snakefile", str(REPO / "Snakefile")]
    run = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-5000:]
    rules = set(re.findall(r"^(?:local)?rule (\w+):", run.stderr, re.MULTILINE))
    assert "export" in rules and not {"final", "sample", "heldout_logps", "evaluate", "tournament"} & rules, rules
    assert (workdir / "results-mymodel/selected/lossdiff_irm.jsonl").is_file()
    code = python.replace("/models/my-sft-model", "results-mymodel/models/sft")
    run = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-5000:]
    assert list((workdir / "dpo-mymodel").glob("checkpoint-*/model.safetensors"))


def planned_jobs(dry_run_output: str) -> set[str]:
    """The jobs of a dry run, each as `rule` or `rule:wildcard values` (e.g. `final:final,rated`)."""
    jobs = set()
    for rule, body in re.findall(r"^rule (\w+):\n((?:    .*\n?)*)", dry_run_output, re.M):
        wildcards = re.search(r"^    wildcards: (.*)$", body, re.M)
        values = [part.split("=", 1)[1] for part in wildcards.group(1).split(", ")] if wildcards else []
        jobs.add(":".join([rule, ",".join(values)]) if values else rule)
    return jobs


def of(rule: str, *wildcards: str) -> set[str]:
    return {f"{rule}:{w}" for w in wildcards}


# What a new choice of the auto selector reruns: the tournament, and the adopted winner's export and samples.
TOURNAMENT = {"tournament", "adopt_winner", "export:auto", "sample:final-auto"}
REPORTS = {"evaluate", "plots", "tournament_report", "all"}  # the results of any new model
FINALS = [s for s in SELECTORS if s != "auto"]  # the final runs (auto adopts its winner's)
# One config change each on the completed run, and exactly the jobs that must rerun: those that read the key
# (settings.STEP_KEYS) and those downstream of them. `None`: every job of the DAG but the demo's snippets and
# tokenizer, which no seed draws.
RERUNS = {
    # How a selector's model trains, not what it selects: no selection reruns, nor the selections `like` it.
    "selectors.lossdiff_irm.final": (
        {"loss_type": "ipo"},
        {"final:final,lossdiff_irm", "heldout_logps:dev/logps,final-lossdiff_irm", "sample:final-lossdiff_irm"}
        | TOURNAMENT
        | REPORTS,
    ),
    # Its selection, and those that keep as many pairs as it does.
    "selectors.lossdiff_irm.bands": (
        {"lossdiff": [5, 90], "irm": [10, 90]},
        {"select:lossdiff_irm", "heldout_logps:dev/logps,final-lossdiff_irm"}
        | of("select_matched", "random", "rated")
        | of("export", "lossdiff_irm", "random", "rated")
        | of("final", "final,lossdiff_irm", "final,random", "final,rated")
        | of("sample", "final-lossdiff_irm", "final-random", "final-rated")
        | TOURNAMENT
        | REPORTS,
    ),
    # How many pairs it keeps, not its external score.
    "selectors.rated.like": (
        "ap",
        {"select_matched:rated", "export:rated", "final:final,rated", "sample:final-rated"} | REPORTS,
    ),
    "seed": (1, None),
    # The tournament's choice, not the candidates' runs.
    "selectors.auto.criterion": ("dev_loss", TOURNAMENT | REPORTS),
    # A new candidate with a model of its own: its dev log-probs and the choice.
    "selectors.auto.candidates": (
        ["lossdiff_irm", "full", "random"],
        {"heldout_logps:dev/logps,final-random"} | TOURNAMENT | REPORTS,
    ),
    # Screening: a screen run per candidate and the choice among them; the winner's full run is final-auto. The
    # candidates with selectors of their own continue their screen runs to their final models (the remaining steps
    # only; the same models bit for bit, test_training), and the grid's candidate keeps no final model.
    "selectors.auto.screen_epochs": (
        0.5,
        of("final", *(f"screen,{c}" for c in CANDIDATES), "final,auto", "final,lossdiff_irm", "final,full")
        | of("heldout_logps", *(f"dev/logps,screen-{c}" for c in CANDIDATES))
        | of("sample", "final-auto", "final-lossdiff_irm", "final-full")
        | {"tournament", "export:auto"}
        | REPORTS,
    ),
    "training.final_epochs": (
        2,
        of("final", *(f"final,{s}" for s in FINALS))
        | of("heldout_logps", *(f"dev/logps,final-{c}" for c in CANDIDATES))
        | of("sample", *(f"final-{s}" for s in SELECTORS))
        | TOURNAMENT
        | REPORTS,
    ),
    # Sampling, not the models.
    "evaluation.samples": (3, of("sample", "sft", *(f"final-{s}" for s in SELECTORS)) | REPORTS),
    # The judge, not the samples.
    "evaluation.judge": ({"kind": "reward_model", "model": "{reward_model}"}, REPORTS),
    # A forward batch size changes no number (test_scoring): it is the job's resource, not a key that reruns it.
    "scoring.batch_size": (7, set()),
}


@pytest.fixture(scope="module")
def settled_run(workdir, tmp_path_factory) -> Path:
    """A copy of the completed run with nothing left to do."""
    copy = own_copy(workdir, tmp_path_factory.mktemp("reruns"))
    assert "Nothing to be done" in snakemake(copy, "-n").stdout
    return copy


@pytest.mark.parametrize("key", RERUNS)
def test_a_changed_key_reruns_exactly_the_jobs_that_read_it_and_what_follows(key, settled_run, reward_model, tmp_path):
    value, expected = RERUNS[key]
    config = yaml.safe_load((REPO / "tests/e2e/config.yaml").read_text())
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = json.loads(json.dumps(value).replace("{reward_model}", reward_model))
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(config, sort_keys=False))  # the selectors in their order
    planned = planned_jobs(snakemake(settled_run, "-n", config=str(tmp_path / "changed.yaml")).stdout)
    if expected is None:
        everything = planned_jobs(snakemake(settled_run, "-n", "--forceall").stdout)
        expected = everything - {"demo_snippets", "demo_tokenizer"}
    assert planned == expected, (
        f"planned but not expected: {planned - expected}; expected, not planned: {expected - planned}"
    )


def test_the_benchmarks_no_op_rerun_times_a_rerun_that_plans_nothing(settled_run):
    """benchmarks/scoring.py's no-op rerun row, measured on a completed run: Snakemake's planning alone."""
    benchmark = runpy.run_path(str(REPO / "benchmarks/scoring.py"))
    row = benchmark["noop_rerun"](settled_run, "results", configfile=REPO / "tests/e2e/config.yaml")
    assert row["seconds"] > 0 and row["cpu_seconds"] > 0, row  # no `skipped`: it ran, and did nothing
    assert "Nothing to be done" in snakemake(settled_run, "-n").stdout


def halving_config(directory: Path, **auto) -> str:
    """The e2e config with successive halving: each candidate's final run screened after half of its one epoch."""
    config = yaml.safe_load((REPO / "tests/e2e/config.yaml").read_text())
    config["selectors"]["auto"].update({"screen_epochs": 0.5, "finalists": 1, **auto})
    path = directory / "halving.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def halving_workdir(workdir, tmp_path_factory) -> Path:
    """A copy of the completed run, rerun with successive halving (one finalist, and the fallback `full`)."""
    copy = own_copy(workdir, tmp_path_factory.mktemp("halving"))
    for name in GRID_ONLY:  # the full tournament's model of a candidate with no selector of its own
        shutil.rmtree(copy / f"results/models/final-{name}")
    run = snakemake(copy, "-p", config=halving_config(copy))
    (copy / "halving.log").write_text(run.stdout + run.stderr)
    return copy


def test_halving_screens_every_candidate_and_continues_only_the_finalists(halving_workdir, tmp_path):
    out = halving_workdir / "results"
    rung = json.loads((out / "eval/dev/screen_rung.json").read_text())
    assert set(rung["candidates"]) == set(CANDIDATES) and rung["finalists"][-1] == "full"
    assert len(rung["finalists"]) == 1 + (rung["finalists"][0] != "full")
    assert sorted(rung["finalists"] + rung["cut"]) == sorted(CANDIDATES)
    for name in CANDIDATES:  # N screen jobs: each candidate's final run, stopped after half its steps
        state = json.loads((out / f"models/screen-{name}/resume/trainer_state.json").read_text())
        assert state["global_step"] == -(-state["max_steps"] // 2)
    log = (halving_workdir / "halving.log").read_text()
    assert log.count("--stage screen") == len(CANDIDATES)
    # k continuations, each from its screen run, and those of candidates with a final model of their own
    continued = set(re.findall(r"--continue-from results/models/screen-(\w+) ", log))
    assert continued == set(rung["finalists"]) | (set(CANDIDATES) - GRID_ONLY)
    for name in continued:
        assert f"resuming from results/models/screen-{name}/resume" in (out / f"logs/final-{name}.log").read_text()
    for name in set(rung["cut"]) & GRID_ONLY:  # a cut candidate with no selector of its own has no full run
        assert not (out / f"models/final-{name}").exists()
    choice = json.loads((out / "eval/dev/choice.json").read_text())
    assert list(choice["candidates"]) == rung["finalists"]
    adopted, winner = out / "models/final-auto", out / f"models/final-{choice['chosen']}"
    assert (adopted / "model.safetensors").stat().st_ino == (winner / "model.safetensors").stat().st_ino
    report = json.loads((out / "eval/tournament.json").read_text())
    cost = report["cost"]
    assert cost["steps"] == cost["screen_steps"] + cost["finalist_steps"] < cost["full_tournament_steps"]
    assert cost["screen_seconds"] > 0 and cost["finalist_seconds"] > 0
    assert "## Screen rung" in (out / "eval/tournament.md").read_text()

    # More finalists, or another criterion: no screen run again, and no finalist that is already complete.
    copy = own_copy(halving_workdir, tmp_path)
    rerun = snakemake(copy, "-p", config=halving_config(copy, finalists=len(CANDIDATES), criterion="dev_loss"))
    log = rerun.stdout + rerun.stderr
    assert "--stage screen" not in log and "checkpoint screen_rung:" in log
    retrained = set(re.findall(r"train --stage final --selector (\w+)", log))
    assert retrained == GRID_ONLY - set(rung["finalists"])  # the named candidates' final runs are complete


@pytest.mark.parametrize("run", ["workdir", "halving_workdir"])
def test_the_choice_reads_no_ground_truth_and_no_test_pair(run, request, tmp_path):
    """Scramble the demo's ground truth (`flipped`, `oracle_margin`) and the test pairs, and rerun everything the
    tournament depends on: warm-up, θ_val, scores, the candidates' selections, final models and dev log-probs, and
    the choice itself (with successive halving, its screen rung too). The same choice, on the same numbers."""
    workdir = own_copy(request.getfixturevalue(run), tmp_path)
    config = str(workdir / "halving.yaml") if run == "halving_workdir" else "config.yaml"
    out = workdir / "results"
    decisions = ["eval/dev/choice.json"] + (["eval/dev/screen_rung.json"] if run == "halving_workdir" else [])
    before = [json.loads((out / path).read_text()) for path in decisions]
    train = pd.read_parquet(out / "data/train.parquet")
    train["flipped"] = ~train["flipped"]
    train["oracle_margin"] = -train["oracle_margin"].sample(frac=1, random_state=1).to_numpy()
    train.to_parquet(out / "data/train.parquet")
    train.head(5).to_parquet(out / "data/test.parquet")
    rerun = snakemake(workdir, "--until", "tournament", config=config)
    for rule in ("warmup", "aux", "score", "select", "final", "heldout_logps", "tournament"):
        assert f"rule {rule}:" in rerun.stdout + rerun.stderr, rule  # really recomputed
    after = [json.loads((out / path).read_text()) for path in decisions]
    assert after[0]["chosen"] == before[0]["chosen"]
    assert after[-1].get("finalists") == before[-1].get("finalists")
    for old, new in zip(before, after):
        for name, row in old["candidates"].items():
            assert new["candidates"][name] == pytest.approx(row, rel=1e-9), name


def test_screening_trains_short_candidate_runs_and_only_the_winner_in_full(tmp_path):
    """With screen_epochs, the candidates' models are shorter screen- runs, and final-auto trains from the chosen
    selection like any selector (no adoption)."""
    config = yaml.safe_load((REPO / "tests/e2e/config.yaml").read_text())
    config["selectors"]["auto"]["screen_epochs"] = 0.25
    (tmp_path / "screen.yaml").write_text(yaml.safe_dump(config))
    plan = snakemake(tmp_path, "-n", "-p", config=str(tmp_path / "screen.yaml")).stdout
    planned = jobs_of(plan)
    assert "adopt_winner" not in planned
    # every selector but the grid-only candidate trains in full (auto too); the three candidates train short runs
    assert planned["final"] == len(SELECTORS) - 1 + len(CANDIDATES)
    assert planned["heldout_logps"] == len(CANDIDATES)
    for name in CANDIDATES:
        assert f"--out results/models/screen-{name}" in plan
    screens = [line for line in plan.splitlines() if "train --stage screen" in line]
    assert len(screens) == len(CANDIDATES) and all('"screen_epochs": 0.25' in line for line in screens)
    assert "models/final-aux_irm_top50" not in plan


def test_the_selections_target_stops_after_the_selections(tmp_path):
    """`snakemake selections` plans the data, reference log-probs, warm-ups, θ_val, scores, every selection and its
    export, but no final run, sampling, evaluation or tournament; auto's export waits for those, so it is not one."""
    plan = snakemake(tmp_path, "-n", "selections").stdout
    planned = jobs_of(plan)
    assert not {
        "final",
        "sample",
        "heldout_logps",
        "evaluate",
        "tournament",
        "adopt_winner",
        "tournament_report",
        "diagnose",
        "plots",
    } & set(planned)
    assert planned["export"] == planned["select"] + planned["select_matched"] == len(SELECTORS) - 1
    assert {"warmup", "aux", "score", "merge_scores", "select_matched"} <= set(planned)
    assert planned["ref_logps"] == 4  # of the training and validation pairs; the dev pairs are the tournament's
    assert "results/selected/auto" not in plan


def test_html_report_holds_the_figures(workdir, tmp_path):
    snakemake(workdir, "--report", str(tmp_path / "report.zip"))
    names = [Path(n).name for n in zipfile.ZipFile(tmp_path / "report.zip").namelist()]
    for figure in [
        "scores.png",
        "training.png",
        "results.png",
        "results.html",
        "data.html",
        "tournament.png",
        "tournament.md",
        "report.html",
    ]:
        assert figure in names, figure


def test_rerun_after_a_lost_score_shard_recomputes_only_that_shard_and_its_dependents(workdir, tmp_path):
    """The state a failed scoring job leaves: its shard and everything downstream missing, the rest intact."""
    workdir = own_copy(workdir, tmp_path)
    out = workdir / "results"
    before = pd.read_parquet(out / "scores/scores.parquet")
    (out / "scores/shards/1-of-2.parquet").unlink()
    (out / "scores/scores.parquet").unlink()
    shutil.rmtree(out / "selection")
    for selector in SELECTORS:
        shutil.rmtree(out / f"models/final-{selector}")
        (out / f"eval/samples/final-{selector}.parquet").unlink()
    for path in ["eval/results.json", "eval/results.md"]:
        (out / path).unlink()
    planned = jobs_of(snakemake(workdir, "-n").stdout)
    n = len(SELECTORS)
    # Not planned: demo, prepare, ref_logps, warmup, aux, the other shard, nor sampling the SFT model again.
    # The auto selector's selection and model come from its tournament, which reads its candidates' dev log-probs;
    # random and rated keep as many pairs as lossdiff_irm (select_matched). The cross-fitted scores are joined to
    # the new scores again, but neither their warm-ups nor their scoring rerun.
    assert planned == {
        "all": 1,
        "score": 1,
        "merge_scores": 1,
        "join_crossfit": 1,
        "select": n - 3,
        "select_matched": 2,
        "export": n,
        "final": n - 1,
        "sample": n,
        "evaluate": 1,
        "diagnose": 1,
        "plots": 1,
        "heldout_logps": len(CANDIDATES),
        "tournament": 1,
        "adopt_winner": 1,
        "tournament_report": 1,
    }
    snakemake(workdir)
    pd.testing.assert_frame_equal(before, pd.read_parquet(out / "scores/scores.parquet"), check_exact=True)
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout


def test_the_dag_runs_with_lora_adapters_in_every_stage(workdir, tmp_path):
    """training.lora on the e2e demo, tournament included. A copy of the shared run keeps its SFT model, data and
    reference log-probs (no LoRA key reaches them); every DPO stage and all that reads its models runs again."""
    lora = own_copy(workdir, tmp_path)
    planned = jobs_of(snakemake(lora, "-n", config="config_lora.yaml").stdout)
    assert not {"demo_sft", "demo_pairs", "prepare", "ref_logps"} & set(planned)
    assert {
        "warmup",
        "aux",
        "score",
        "final",
        "heldout_logps",
        "tournament",
        "adopt_winner",
        "sample",
        "evaluate",
    } <= set(planned)
    snakemake(lora, config="config_lora.yaml")
    out = lora / "results"
    choice = json.loads((out / "eval/dev/choice.json").read_text())
    trained = ["warmup", "aux", *(f"final-{name}" for name in ("lossdiff_irm", "full", "random", "aux_irm_top50"))]
    for name in trained:
        adapter = json.loads((out / "models" / name / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == "results/models/sft", name
        assert not (out / "models" / name / "model.safetensors").exists(), name  # the adapter only
    winner = out / "models" / f"final-{choice['chosen']}"
    assert (out / "models/final-auto/adapter_model.safetensors").samefile(winner / "adapter_model.safetensors")
    results = json.loads((out / "eval/results.json").read_text())["selectors"]
    assert set(results) == {"lossdiff_irm", "full", "random", "auto", "aux_irm_top50"}
    assert (out / "eval/tournament.md").is_file() and not (out / "checkpoints").exists()
    # the SFT model, its log-probs and the data are the shared run's, untouched
    for path in ("models/sft/model.safetensors", "logps/ref/train/0-of-2.parquet", "data/train.parquet"):
        assert (out / path).read_bytes() == (workdir / "results" / path).read_bytes(), path
