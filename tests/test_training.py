"""DPO through TRL on prefselect's precomputed reference log-probs."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import (
    completion_tokens,
    config_arg,
    dpo_settings,
    kill_at_first_checkpoint,
    loop_logps,
    made_up_run,
    make_pairs,
    one_torch_thread,
)
from datasets import Dataset
from transformers import TrainerCallback

from prefselect.cli import main
from prefselect.logps import pair_logps
from prefselect.models import load_model, load_tokenizer
from prefselect.training import build_trainer, last_checkpoint, run_key, stable_share, train_dpo, with_ref_logps

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ref(tiny_lm, pairs):
    return pair_logps(load_model(tiny_lm), pairs, load_tokenizer(tiny_lm), 64)


def test_no_reference_forward_runs_during_training(tiny_lm, pairs, ref, tmp_path):
    settings = dpo_settings(batch_size=8, epochs=2)
    trainer = build_trainer(tiny_lm, with_ref_logps(pairs, ref), settings, str(tmp_path))
    forwards = []
    trainer.model.register_forward_hook(lambda module, args, output: forwards.append(1))
    trainer.train()
    steps = 2 * len(pairs) // 8
    assert trainer.state.global_step == steps
    assert len(forwards) == steps  # one policy forward per step (chosen and rejected batched), no reference pass


def test_gradient_accumulation_makes_the_same_steps_as_whole_batches(tiny_lm, pairs, ref, tmp_path):
    """A batch of 8 pairs in forward passes of 2 (4 accumulation steps, with gradient checkpointing) gives the same
    optimizer steps and weights as passes of 8: the memory settings change nothing that is learned."""
    whole = dpo_settings(batch_size=8, epochs=1, learning_rate=1e-3)
    split = replace(whole, micro_batch_size=2, gradient_checkpointing=True)
    trained = {}
    for name, settings in (("whole", whole), ("split", split)):
        trainer = build_trainer(tiny_lm, with_ref_logps(pairs, ref), settings, str(tmp_path / name))
        trainer.train()
        assert trainer.state.global_step == len(pairs) // 8
        trained[name] = trainer.model.state_dict()
    for key, weight in trained["whole"].items():
        torch.testing.assert_close(trained["split"][key], weight, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="micro_batch_size 3"):
        build_trainer(tiny_lm, with_ref_logps(pairs, ref), replace(whole, micro_batch_size=3), str(tmp_path / "bad"))


@pytest.mark.parametrize("loss_type, label_smoothing", [("robust", 0.3), ("ipo", 0.0)])
def test_the_robust_and_ipo_losses_are_trls_on_our_reference_log_probs(
    tiny_lm, pairs, tmp_path, loss_type, label_smoothing
):
    """rDPO: [(1−ε)(−log σ(βh)) − ε(−log σ(−βh))]/(1−2ε); IPO: (h_c/n_c − h_r/n_r − 1/(2β))² with n the completion
    tokens: TRL's loss on one batch of all pairs equals each, from log-probs computed one pair at a time."""
    policy = loop_logps(tiny_lm, pairs, 64)
    shift = np.linspace(-3, 3, len(pairs))  # a reference other than the policy, so that h is not 0
    ref = policy.assign(chosen_logp=policy["chosen_logp"] + shift, rejected_logp=policy["rejected_logp"] - shift / 2)
    settings = dpo_settings(batch_size=len(pairs), loss_type=loss_type, label_smoothing=label_smoothing, beta=0.5)
    trainer = build_trainer(tiny_lm, with_ref_logps(pairs, ref), settings, str(tmp_path))
    trainer.model.eval()  # no dropout: the loop's forward passes are deterministic
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, next(iter(trainer.get_train_dataloader()))))
    chosen, rejected = policy["chosen_logp"] - ref["chosen_logp"], policy["rejected_logp"] - ref["rejected_logp"]
    if loss_type == "robust":
        h, eps = settings.beta * (chosen - rejected), label_smoothing

        def log_sigmoid(x):
            return -np.logaddexp(0, -x)

        expected = ((1 - eps) * -log_sigmoid(h) - eps * -log_sigmoid(-h)) / (1 - 2 * eps)
    else:
        tokens = completion_tokens(tiny_lm, pairs)
        expected = (chosen / tokens["chosen"] - rejected / tokens["rejected"] - 1 / (2 * settings.beta)) ** 2
    assert loss == pytest.approx(expected.mean(), rel=1e-4)


def test_a_warmup_on_a_fraction_trains_on_exactly_its_stable_share(tiny_lm, tmp_path):
    pairs = make_pairs(48)
    share = stable_share(pairs, 0.5, seed=3)
    assert 12 < len(share) < 36 and set(share["id"]) <= set(pairs["id"])
    shuffled = pd.concat([make_pairs(60).iloc[48:], pairs.iloc[::-1]])  # more pairs, another order
    assert set(stable_share(shuffled, 0.5, seed=3)["id"]) & set(pairs["id"]) == set(share["id"])
    assert set(stable_share(pairs, 0.5, seed=4)["id"]) != set(share["id"])
    ref = pd.DataFrame(
        {"id": pairs["id"], "chosen_logp": -20.0 - np.arange(48), "rejected_logp": -21.0 - np.arange(48)}
    )
    pairs.to_parquet(tmp_path / "pairs.parquet")
    ref.to_parquet(tmp_path / "ref.parquet")
    main(
        [
            "train",
            "--model",
            tiny_lm,
            "--data",
            str(tmp_path / "pairs.parquet"),
            "--ref",
            str(tmp_path / "ref.parquet"),
            *config_arg(seed=3, training={"warmup_fraction": 0.5, "batch_size": 2}, data={"max_length": 48}),
            "--out",
            str(tmp_path / "share"),
        ]
    )
    train_dpo(tiny_lm, share, ref, str(tmp_path / "direct"), dpo_settings(batch_size=2, max_length=48, seed=3))
    steps = [
        json.loads((tmp_path / name / "training_log.json").read_text())[-1]["step"] for name in ("share", "direct")
    ]
    assert steps == [-(-len(share) // 2)] * 2  # one step per batch of 2, the last one maybe short
    trained = {name: load_model(str(tmp_path / name)).state_dict() for name in ("share", "direct")}
    for key, weight in trained["direct"].items():
        assert torch.equal(trained["share"][key], weight), key
    with pytest.raises(ValueError, match="warmup_fraction 0"):
        stable_share(pairs, 0, seed=0)


def test_label_smoothing_belongs_to_the_robust_loss():
    with pytest.raises(ValueError, match="label_smoothing 0.1: only the robust loss"):
        dpo_settings(loss_type="sigmoid", label_smoothing=0.1)


def test_missing_reference_log_probs_are_an_error(tiny_lm, pairs, tmp_path):
    dataset = Dataset.from_pandas(pairs[["prompt", "chosen", "rejected"]], preserve_index=False)
    with pytest.raises(ValueError, match="precomputed reference log-probs"):
        build_trainer(tiny_lm, dataset, dpo_settings(), str(tmp_path))


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge"])
def test_train_saves_a_loadable_model_that_learned(tiny_lm, pairs, ref, tmp_path, loss_type):
    out = tmp_path / "model"
    settings = dpo_settings(batch_size=8, epochs=3, learning_rate=1e-3, loss_type=loss_type)
    history = train_dpo(tiny_lm, pairs, ref, str(out), settings)
    model = load_model(str(out))
    after = pair_logps(model, pairs, load_tokenizer(str(out)), 64)
    margin_gain = (after["chosen_logp"] - ref["chosen_logp"]) - (after["rejected_logp"] - ref["rejected_logp"])
    assert margin_gain.mean() > 0  # DPO raised chosen relative to rejected
    assert json.loads((out / "training_log.json").read_text())[0]["loss"] == pytest.approx(history[0]["loss"])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left behind
    assert torch.isfinite(torch.tensor(after["chosen_logp"].to_numpy())).all()


def test_a_killed_training_resumes_from_its_last_checkpoint_and_ends_as_an_uninterrupted_one(tiny_lm, tmp_path):
    pairs, ref = made_up_run(48, tmp_path)
    settings = dpo_settings(batch_size=2, epochs=2, max_length=48)
    steps = 2 * 48 // 2
    with one_torch_thread():  # as the command below
        train_dpo(tiny_lm, pairs, ref, str(tmp_path / "uninterrupted"), settings)

    out, checkpoints = tmp_path / "models" / "warmup", tmp_path / "checkpoints" / "warmup"
    command = [
        sys.executable,
        "-m",
        "prefselect",
        "--threads",
        "1",
        "train",
        "--model",
        tiny_lm,
        "--data",
        str(tmp_path / "pairs.parquet"),
        "--ref",
        str(tmp_path / "ref.parquet"),
        *config_arg(training={"batch_size": 2, "warmup_epochs": 2, "save_steps": 5}, data={"max_length": 48}),
        "--checkpoint-dir",
        str(checkpoints),
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    kill_at_first_checkpoint(command, env, checkpoints)
    assert not out.exists()
    (last,) = checkpoints.glob("run-*/checkpoint-*")
    done = int(last.name.split("-")[1])
    assert 0 < done < steps
    # What a kill while saving the next checkpoint leaves: its folder, without the trainer state written last.
    partial = shutil.copytree(last, last.parent / f"checkpoint-{steps}")
    (partial / "trainer_state.json").unlink()

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"resuming from {last} (step {done})" in rerun.stdout
    # The rerun made only the remaining optimizer steps (one log line each), not the whole run again...
    assert sum(line.startswith("{'loss'") for line in rerun.stdout.splitlines()) == steps - done
    log = json.loads((out / "training_log.json").read_text())
    assert log[-1]["step"] == steps
    assert [entry["step"] for entry in log if "loss" in entry] == list(range(1, steps + 1))
    # ...on the same batches, with the same optimizer state: the same model as an uninterrupted run.
    resumed, uninterrupted = load_model(str(out)).state_dict(), load_model(str(tmp_path / "uninterrupted")).state_dict()
    for name, value in uninterrupted.items():
        assert torch.equal(resumed[name], value), name  # bit for bit
    assert not checkpoints.exists()  # removed once the model is complete


class StopAfter(TrainerCallback):
    """Ends training after a step, as a kill right after that step's checkpoint would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def other_pairs(pairs, ref, settings):
    changed = pairs.copy()
    changed.loc[0, "rejected"] = changed.loc[0, "rejected"] + " indeed"
    return changed, ref, settings


def other_reference(pairs, ref, settings):
    return pairs, ref.assign(chosen_logp=ref["chosen_logp"] - 0.5), settings


def other_settings(pairs, ref, settings):
    return pairs, ref, replace(settings, learning_rate=2e-3)


@pytest.mark.parametrize("change", [other_settings, other_pairs, other_reference])
def test_checkpoints_of_a_run_with_other_inputs_or_settings_are_not_resumed(
    tiny_lm, pairs, ref, tmp_path, capsys, change
):
    checkpoints = tmp_path / "checkpoints"
    before = dpo_settings(batch_size=8, epochs=2, save_steps=3, learning_rate=1e-3)
    stale = checkpoints / f"run-{run_key(tiny_lm, pairs, ref, before, None, None)}"
    trainer = build_trainer(tiny_lm, with_ref_logps(pairs, ref), before, str(stale))
    trainer.add_callback(StopAfter(3))
    trainer.train()
    assert last_checkpoint(stale).name == "checkpoint-3"
    # The same stage in the same checkpoint folder after a config change, or after an upstream job changed its data.
    new_pairs, new_ref, settings = change(pairs, ref, before)
    history = train_dpo(tiny_lm, new_pairs, new_ref, str(tmp_path / "model"), settings, checkpoint_dir=str(checkpoints))
    assert "resuming" not in capsys.readouterr().out
    steps = [entry for entry in history if "loss" in entry]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6] and {e["learning_rate"] for e in steps} == {
        settings.learning_rate
    }
    assert not checkpoints.exists()


def test_a_final_run_continued_from_its_screen_run_is_bit_for_bit_an_uninterrupted_final_run(tiny_lm, tmp_path):
    """Successive halving: a screen run stops after screen_epochs of its final run's steps; its final run, through
    the CLI as the workflow runs it, makes only the remaining steps and ends with the uninterrupted run's model."""
    pairs = make_pairs(40)
    logps = -np.arange(40.0) - 20
    ref = pd.DataFrame({"id": pairs["id"], "chosen_logp": logps, "rejected_logp": logps - 1})
    pairs.to_parquet(tmp_path / "pairs.parquet")
    ref.to_parquet(tmp_path / "ref.parquet")
    selection = pd.DataFrame({"id": pairs["id"], "selected": True})
    selection.to_parquet(tmp_path / "selection.parquet")
    config = {
        "training": {"batch_size": 4, "final_epochs": 2, "save_steps": 0},
        "data": {"max_length": 48},
        "selectors": {"full": {"kind": "full"}, "auto": {"kind": "auto", "screen_epochs": 0.5}},
    }
    with one_torch_thread():
        uninterrupted = train_dpo(
            tiny_lm,
            pairs,
            ref,
            str(tmp_path / "uninterrupted"),
            dpo_settings(batch_size=4, epochs=2, max_length=48, save_steps=0),
        )
    steps = 2 * 40 // 4

    def train(stage, out, *extra):
        command = [
            sys.executable,
            "-m",
            "prefselect",
            "--threads",
            "1",
            "train",
            "--stage",
            stage,
            "--selector",
            "full",
            "--model",
            tiny_lm,
            "--data",
            str(tmp_path / "pairs.parquet"),
            "--ref",
            str(tmp_path / "ref.parquet"),
            "--selection",
            str(tmp_path / "selection.parquet"),
            *config_arg(**config),
            "--out",
            str(tmp_path / out),
            *extra,
        ]
        run = subprocess.run(
            command,
            env={**os.environ, "PYTHONPATH": str(REPO / "workflow")},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        return run.stdout

    train("screen", "screen-full")
    screen_log = json.loads((tmp_path / "screen-full/training_log.json").read_text())
    assert [e["step"] for e in screen_log if "loss" in e] == list(range(1, steps // 4 + 1))  # 0.5 of 2 epochs
    assert json.loads((tmp_path / "screen-full/resume/trainer_state.json").read_text())["max_steps"] == steps
    out = train("final", "final-full", "--continue-from", str(tmp_path / "screen-full"))
    assert f"resuming from {tmp_path / 'screen-full/resume'} (step {steps // 4})" in out
    assert sum(line.startswith("{'loss'") for line in out.splitlines()) == steps - steps // 4
    log = json.loads((tmp_path / "final-full/training_log.json").read_text())
    assert [e["loss"] for e in log if "loss" in e] == [e["loss"] for e in uninterrupted if "loss" in e]
    continued = load_model(str(tmp_path / "final-full")).state_dict()
    for name, value in load_model(str(tmp_path / "uninterrupted")).state_dict().items():
        assert torch.equal(continued[name], value), name  # bit for bit
    assert not (tmp_path / "final-full/resume").exists()


def test_a_final_run_does_not_continue_a_screen_run_of_other_settings(tiny_lm, pairs, ref, tmp_path):
    screen = dpo_settings(batch_size=8, epochs=2, stop_epochs=0.5, save_steps=0)
    train_dpo(tiny_lm, pairs, ref, str(tmp_path / "screen"), screen)
    assert (tmp_path / "screen/resume/trainer_state.json").is_file()
    with pytest.raises(ValueError, match="is no screen run of this final run"):
        train_dpo(
            tiny_lm,
            pairs,
            ref,
            str(tmp_path / "final"),
            replace(screen, stop_epochs=None, learning_rate=2e-3),
            continue_from=str(tmp_path / "screen"),
        )
