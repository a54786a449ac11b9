"""A model by hub id or local folder, pairs by hub id or local file, standard or conversational: one code path.

The hub is a Hugging Face cache built here, in the layout that `hf download` leaves (blobs, snapshots/<commit>,
refs/main), and every load runs offline, so a hub id can only resolve through that cache. The outputs of
`prefselect prepare` and `prefselect logps` must not depend on where the model and the pairs came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import huggingface_hub.constants
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SENTENCES, build_tiny_lm, config_arg, one_torch_thread
from transformers import AutoTokenizer

from prefselect.cli import main

REPO = Path(__file__).resolve().parents[1]
MODEL_ID = "tiny-org/Tiny-Chat-0.1B"  # a dot, as in meta-llama/Llama-3.1-8B-Instruct
DATA_ID = "tiny-org/tiny-prefs"
SPLITS = {"train": "train_prefs", "val": "test_prefs"}  # the split names of HuggingFaceH4/ultrafeedback_binarized
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CARD = """---
configs:
- config_name: default
  data_files:
  - split: train_prefs
    path: data/train_prefs-*
  - split: test_prefs
    path: data/test_prefs-*
---
# tiny-prefs
"""
MAX_LENGTH = 48


def records(fmt: str, first: int, n: int) -> list[dict]:
    """Pairs in TRL's standard format, or conversational as ultrafeedback_binarized has them: a prompt string
    beside chosen/rejected whole conversations, plus its extra columns."""
    rows = []
    for i in range(first, first + n):
        words, other = SENTENCES[i % 6].split(), SENTENCES[(i + 1) % 6].split()
        cut = 2 + i % 3
        prompt, chosen, rejected = f"{i} " + " ".join(words[:cut]), " ".join(words[cut:]), " ".join(other[: 3 + i % 4])
        if fmt == "standard":
            rows.append({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected})
            continue
        user = {"role": "user", "content": prompt}
        conversation = [user, {"role": "assistant", "content": chosen}]
        rows.append(
            {
                "prompt": prompt,
                "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(),
                "chosen": conversation,
                "rejected": [user, {"role": "assistant", "content": rejected}],
                "messages": conversation,
                "score_chosen": float(8 + i % 3),
                "score_rejected": float(i % 5),
            }
        )
    return rows


def cache_repo(cache: Path, repo_type: str, repo_id: str, folder: Path) -> None:
    """Put `folder` into the hub cache `cache` as the main revision of `repo_id`, the way huggingface_hub does."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, blob)
        link = repo / "snapshots" / commit / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def write_parquet(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def same_threads_as_the_command_line():
    """Every score here on one thread, as the offline command line's, so that all of them can agree to the bit."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """The same tiny chat model and pairs, as local folder and files and as hub repositories in a cache."""
    root = tmp_path_factory.mktemp("sources")
    model = Path(build_tiny_lm(root / "model"))
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(model)
    hf_home = root / "hf_home"
    cache_repo(hf_home / "hub", "model", MODEL_ID, model)
    files = {}
    for fmt in ("standard", "conversational"):
        rows = {"train": records(fmt, 0, 30), "val": records(fmt, 100, 10)}
        repo = root / f"repo-{fmt}"
        (repo / "README.md").parent.mkdir()
        (repo / "README.md").write_text(CARD)
        for side, split in SPLITS.items():
            write_parquet(repo / "data" / f"{split}-00000-of-00001.parquet", rows[side])
            files[fmt, "jsonl", side] = write_jsonl(root / f"{fmt}-{side}.jsonl", rows[side])
            files[fmt, "parquet", side] = write_parquet(root / f"{fmt}-{side}.parquet", rows[side])
        cache_repo(hf_home / "hub", "dataset", f"{DATA_ID}-{fmt}", repo)
    return {"model": str(model), "hf_home": hf_home, "files": files}


@pytest.fixture
def offline_hub(world, monkeypatch, tmp_path) -> None:
    """HF_HOME=<the cache built above>, HF_HUB_OFFLINE=1, for this process (whose libraries read them at import)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(world["hf_home"] / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")


def arguments(world: dict, model: str, data: str, fmt: str) -> tuple[str, list[str]]:
    """The model argument and the data arguments of `prepare` for one combination."""
    model_arg = MODEL_ID if model == "hub" else world["model"]
    if data == "hub":
        data_id = f"{DATA_ID}-{fmt}"
        data_args = [
            "--source",
            data_id,
            "--validation",
            data_id,
            *config_arg(data={"split": SPLITS["train"], "validation_split": SPLITS["val"], "max_length": MAX_LENGTH}),
        ]
    else:
        data_args = [
            "--source",
            world["files"][fmt, data, "train"],
            "--validation",
            world["files"][fmt, data, "val"],
            *config_arg(data={"max_length": MAX_LENGTH}),
        ]
    return model_arg, data_args


def prepare_and_score(out: Path, model: str, data_args: list[str], run=main) -> None:
    run(["prepare", *data_args, "--tokenizer", model, "--out", str(out / "data")])
    for split in ("train", "val"):
        run(
            [
                "logps",
                "--model",
                model,
                "--data",
                str(out / "data" / f"{split}.parquet"),
                *config_arg(data={"max_length": MAX_LENGTH}, scoring={"batch_size": 8}),
                "--out",
                str(out / f"logps-{split}.parquet"),
            ]
        )


def outputs(out: Path) -> dict:
    report = json.loads((out / "data" / "report.json").read_text())
    return {
        "train": pd.read_parquet(out / "data" / "train.parquet"),
        "val": pd.read_parquet(out / "data" / "val.parquet"),
        "logps-train": pd.read_parquet(out / "logps-train.parquet"),
        "logps-val": pd.read_parquet(out / "logps-val.parquet"),
        "quarantine": (out / "data" / "quarantine.jsonl").read_text(),
        "rows_read": list(report.pop("rows_read").values()),
        "report": report,
    }


def assert_same(ours: dict, reference: dict) -> None:
    for key in ("train", "val", "logps-train", "logps-val"):
        pd.testing.assert_frame_equal(ours[key], reference[key], check_exact=True, obj=key)
    assert ours["quarantine"] == reference["quarantine"] == ""
    assert (ours["rows_read"], ours["report"]) == (reference["rows_read"], reference["report"])


@pytest.fixture(scope="module")
def references(world, tmp_path_factory) -> dict:
    """Per format, the outputs from the local model folder and local JSON Lines files (no hub involved)."""
    found = {}
    for fmt in ("standard", "conversational"):
        out = tmp_path_factory.mktemp(f"reference-{fmt}")
        prepare_and_score(out, *arguments(world, "local", "jsonl", fmt))
        found[fmt] = outputs(out)
        assert found[fmt]["report"]["format"] == fmt
        assert (found[fmt]["report"]["train"], found[fmt]["report"]["val"]) == (30, 10)
    return found


@pytest.mark.parametrize("fmt", ["standard", "conversational"])
@pytest.mark.parametrize("data", ["hub", "jsonl", "parquet"])
@pytest.mark.parametrize("model", ["hub", "local"])
def test_every_source_gives_the_same_pairs_and_logps(world, references, offline_hub, tmp_path, model, data, fmt):
    prepare_and_score(tmp_path, *arguments(world, model, data, fmt))
    ours = outputs(tmp_path)
    assert_same(ours, references[fmt])
    if data == "hub":  # the report names the dataset by id and split
        report = json.loads((tmp_path / "data" / "report.json").read_text())
        assert list(report["rows_read"]) == [f"{DATA_ID}-{fmt}:{SPLITS['train']}", f"{DATA_ID}-{fmt}:{SPLITS['val']}"]
    if fmt == "conversational":  # rendered with the model's chat template, extra columns passed through
        first = ours["train"].iloc[0]
        assert first["prompt"].startswith("<|user|>") and first["prompt"].endswith("<|assistant|>")
        assert {"prompt_id", "messages", "score_chosen", "score_rejected"} <= set(ours["train"].columns)


def error_of(argv: list[str], capsys) -> str:
    """The message with which `prefselect <argv>` stops."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 1
    return capsys.readouterr().err


def test_a_split_of_the_source_cannot_be_its_validation(world, offline_hub, tmp_path, capsys):
    data_id = f"{DATA_ID}-standard"
    argv = [
        "prepare",
        "--source",
        data_id,
        "--validation",
        data_id,
        "--tokenizer",
        MODEL_ID,
        "--out",
        str(tmp_path),
        *config_arg(data={"split": "train_prefs", "validation_split": "train_prefs"}),
    ]
    assert f"validation is the same as source ('{data_id}:train_prefs')" in error_of(argv, capsys)


def test_a_missing_split_or_uncached_repo_is_a_clear_error(world, offline_hub, tmp_path, capsys):
    data_id = f"{DATA_ID}-standard"
    no_split = error_of(["prepare", "--source", data_id, "--tokenizer", MODEL_ID, "--out", str(tmp_path)], capsys)
    assert f"data source '{data_id}': not a local file, and loading split 'train' from the hub failed" in no_split
    no_repo = error_of(
        ["prepare", "--source", data_id, "--tokenizer", "tiny-org/not-cached", "--out", str(tmp_path)], capsys
    )
    assert "cannot load a tokenizer from 'tiny-org/not-cached'" in no_repo
    source = world["files"]["standard", "jsonl", "train"]
    typo = error_of(
        ["prepare", "--source", source, "--tokenizer", "missing/models/sft", "--out", str(tmp_path)], capsys
    )
    assert "model path 'missing/models/sft' does not exist (and is not a hub id)" in typo


def test_command_line_with_offline_environment(world, references, tmp_path):
    """What a user on an offline node runs: HF_HOME and HF_HUB_OFFLINE in the environment, hub ids as arguments."""
    env = {
        **os.environ,
        "HF_HOME": str(world["hf_home"]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": str(REPO / "workflow"),
    }
    env.pop("HF_HUB_CACHE", None)
    env.pop("HF_DATASETS_CACHE", None)

    logs = []

    def run(argv: list[str]) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "prefselect", "--threads", "1", *argv], env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr[-3000:]
        logs.append(result.stderr)

    prepare_and_score(tmp_path, *arguments(world, "hub", "hub", "conversational"), run=run)
    assert "prefselect.data: prepare: {" in logs[0]  # the step's report, in its log
    assert_same(outputs(tmp_path), references["conversational"])
    assert (world["hf_home"] / "datasets").is_dir()  # datasets' own cache went under HF_HOME too
