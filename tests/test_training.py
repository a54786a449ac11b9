"""DPO through TRL on prefselect's precomputed reference log-probs."""

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from prefselect.logps import pair_logps
from prefselect.models import load_model, load_tokenizer
from prefselect.training import DPOSettings, build_trainer, train_dpo, with_ref_logps


@pytest.fixture
def ref(tiny_lm, pairs):
    return pair_logps(load_model(tiny_lm), pairs, load_tokenizer(tiny_lm), 64)


def test_no_reference_forward_runs_during_training(tiny_lm, pairs, ref, tmp_path):
    settings = DPOSettings(batch_size=8, epochs=2)
    trainer = build_trainer(tiny_lm, with_ref_logps(pairs, ref), settings, str(tmp_path))
    forwards = []
    trainer.model.register_forward_hook(lambda module, args, output: forwards.append(1))
    trainer.train()
    steps = 2 * len(pairs) // 8
    assert trainer.state.global_step == steps
    assert len(forwards) == steps  # one policy forward per step (chosen and rejected batched), no reference pass


def test_missing_reference_log_probs_are_an_error(tiny_lm, pairs, tmp_path):
    dataset = Dataset.from_pandas(pairs[["prompt", "chosen", "rejected"]], preserve_index=False)
    with pytest.raises(ValueError, match="precomputed reference log-probs"):
        build_trainer(tiny_lm, dataset, DPOSettings(), str(tmp_path))


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge"])
def test_train_saves_a_loadable_model_that_learned(tiny_lm, pairs, ref, tmp_path, loss_type):
    out = tmp_path / "model"
    settings = DPOSettings(batch_size=8, epochs=3, learning_rate=1e-3, loss_type=loss_type)
    history = train_dpo(tiny_lm, pairs, ref, str(out), settings)
    model = load_model(str(out))
    after = pair_logps(model, pairs, load_tokenizer(str(out)), 64)
    margin_gain = (after["chosen_logp"] - ref["chosen_logp"]) - (after["rejected_logp"] - ref["rejected_logp"])
    assert margin_gain.mean() > 0  # DPO raised chosen relative to rejected
    assert json.loads((out / "training_log.json").read_text())[0]["loss"] == pytest.approx(history[0]["loss"])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left behind
    assert torch.isfinite(torch.tensor(after["chosen_logp"].to_numpy())).all()
