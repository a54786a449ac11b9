"""`model.trust_remote_code: true` reaches every step that loads the model, and each judge and external reward
model gets its own flag: a model whose code lives in its folder loads with the flag and is refused without it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import build_tiny_lm, config_arg, make_pairs

from prefselect.cli import main

REPO = Path(__file__).resolve().parents[1]
MODELING = """from transformers import GPT2Config, GPT2LMHeadModel


class TinyRemoteConfig(GPT2Config):
    model_type = "tiny_remote"


class TinyRemoteForCausalLM(GPT2LMHeadModel):
    config_class = TinyRemoteConfig
"""
# The steps that load the policy or the SFT model, by the flag they get it with.
MODEL_STEPS = ("prepare", "logps", "train", "score", "sample", "val-grad", "influence")


@pytest.fixture(scope="module")
def remote_lm(tmp_path_factory) -> str:
    """A tiny causal LM whose model class is code in its own folder (as hub models with `auto_map` have)."""
    folder = Path(build_tiny_lm(tmp_path_factory.mktemp("remote_lm")))
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="tiny_remote",
        architectures=["TinyRemoteForCausalLM"],
        auto_map={
            "AutoConfig": "modeling_tiny.TinyRemoteConfig",
            "AutoModelForCausalLM": "modeling_tiny.TinyRemoteForCausalLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_tiny.py").write_text(MODELING)
    return str(folder)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("remote_data")
    pairs = make_pairs(8)
    pairs.to_parquet(folder / "pairs.parquet")
    logps = -np.arange(8.0) - 20
    pd.DataFrame({"id": pairs["id"], "chosen_logp": logps, "rejected_logp": logps - 1}).to_parquet(
        folder / "ref.parquet"
    )
    (folder / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in pairs["prompt"][:2]))
    return folder


POLICY_CODE = '"model": {"trust_remote_code": true}'


def step_argv(step: str, model: str, files: Path, out: Path) -> list[str]:
    data, ref = str(files / "pairs.parquet"), str(files / "ref.parquet")
    return {
        "logps": ["logps", "--model", model, "--data", data, "--out", str(out / "logps.parquet")],
        "train": ["train", "--model", model, "--data", data, "--ref", ref, "--out", str(out / "model")],
        "score": [
            "score",
            "--warmup",
            model,
            "--aux",
            model,
            "--data",
            data,
            "--ref",
            ref,
            "--out",
            str(out / "scores.parquet"),
        ],
        "sample": [
            "sample",
            "--model",
            model,
            "--prompts",
            str(files / "prompts.jsonl"),
            "--out",
            str(out / "samples.parquet"),
        ],
    }[step]


@pytest.mark.parametrize("step", ["logps", "train", "score", "sample"])
def test_each_model_step_loads_remote_code_only_with_the_flag(step, remote_lm, files, tmp_path, capsys):
    argv = step_argv(step, remote_lm, files, tmp_path)
    small = {
        "train": {"training": {"batch_size": 4, "warmup_epochs": 0.5}},
        "sample": {"evaluation": {"samples": 1, "max_new_tokens": 3}},
    }.get(step, {})
    with pytest.raises(SystemExit):
        main([*argv, *config_arg(**small)])
    assert "contains custom code" in capsys.readouterr().err
    main([*argv, *config_arg(**small, model={"trust_remote_code": True})])
    assert any(tmp_path.iterdir())


def test_the_workflow_hands_every_model_step_its_flag_and_the_judge_and_reward_model_theirs(tmp_path):
    """A dry run of every rule with model code allowed: each command that loads the model carries the flag; the
    reward-model judge and an external reward model carry their own, and only theirs."""
    (tmp_path / "pairs.jsonl").write_text("")
    config = {
        "model": {"path": "org/policy", "trust_remote_code": True},
        "data": {"source": "pairs.jsonl", "test_fraction": 0.1},
        "influence": {"enabled": True, "group_training": True},
        "selectors": {
            "tif": {"bands": {"influence": [10, 90]}},
            "full": {"kind": "full"},
            "rm": {"kind": "external", "reward_model": "org/rm", "trust_remote_code": True, "fraction": 0.5},
            "auto": {"kind": "auto", "candidates": ["tif", "full"]},
        },
        "evaluation": {"judge": {"kind": "reward_model", "model": "org/judge", "trust_remote_code": True}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(tmp_path / "config.yaml"),
        "-n",
        "-p",
        "--cores",
        "1",
    ]
    plan = subprocess.run(command, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    commands = [line for line in plan.stdout.splitlines() if "-m prefselect" in line]
    steps = {}
    for line in commands:
        step = re.search(r"-m prefselect (?:--(?:threads|gpus|batch-size) \S+ )*(\S+)", line).group(1)
        steps.setdefault(step, []).append(line)
    assert set(MODEL_STEPS) <= steps.keys()
    for step in MODEL_STEPS:
        for line in steps[step]:
            assert POLICY_CODE in line, line
    (judge,) = steps["evaluate"]
    assert '"trust_remote_code": true' in judge and '"model": "org/judge"' in judge
    (external,) = steps["external-score"]
    assert '"trust_remote_code": true' in external and '"reward_model": "org/rm"' in external
    # Only theirs: the policy's setting does not reach the judge (external-score reads it for the SFT model's
    # tokenizer, which alignment_potential needs, never for the reward model).
    assert '"model": {"trust_remote_code"' not in judge
    config["model"]["trust_remote_code"] = False
    config["selectors"]["rm"]["trust_remote_code"] = False
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    plan = subprocess.run(command, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    assert POLICY_CODE not in plan.stdout and '"model": {"trust_remote_code": false}' in plan.stdout
