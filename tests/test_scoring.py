"""Log-probs, IRM, losses and LossDiff against hand computations and TRL's own numbers."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from prefselect.logps import pair_logps, tokenize_pairs
from prefselect.models import load_model, load_tokenizer
from prefselect.scoring import implicit_reward_margin, merge_shards, pair_loss, score_table, shard_rows
from prefselect.training import DPOSettings, build_trainer, with_ref_logps


def loop_logps(model, tokenized) -> tuple[list[float], list[float]]:
    """One unpadded full-logits forward per sequence: the plainest possible computation."""
    result = {"chosen": [], "rejected": []}
    for row in tokenized:
        for side in result:
            ids = torch.tensor([row["prompt_ids"] + row[f"{side}_ids"]])
            with torch.no_grad():
                logprobs = model(ids).logits[0, :-1].log_softmax(-1)
            targets = ids[0, 1:]
            start = len(row["prompt_ids"]) - 1
            result[side].append(float(logprobs[start:].gather(1, targets[start:, None]).sum()))
    return result["chosen"], result["rejected"]


def test_pair_logps_equal_a_plain_loop(tiny_lm, pairs):
    model, tokenizer = load_model(tiny_lm), load_tokenizer(tiny_lm)
    scored = pair_logps(model, pairs, tokenizer, max_length=64, batch_size=5)
    chosen, rejected = loop_logps(model, tokenize_pairs(pairs, tokenizer, 64))
    np.testing.assert_allclose(scored["chosen_logp"], chosen, atol=1e-4)
    np.testing.assert_allclose(scored["rejected_logp"], rejected, atol=1e-4)
    assert list(scored["id"]) == list(pairs["id"])


@pytest.mark.parametrize("max_length", [64, 12])
def test_pair_logps_agree_with_trl(tiny_lm, pairs, max_length, tmp_path):
    """Same numbers as TRL's per-example path, including where max_length truncates completions."""
    model, tokenizer = load_model(tiny_lm), load_tokenizer(tiny_lm)
    pairs = pairs[[len(tokenizer(p)["input_ids"]) < max_length for p in pairs["prompt"]]]
    ours = pair_logps(model, pairs, tokenizer, max_length=max_length)
    ref = ours.assign(chosen_logp=0.0, rejected_logp=0.0)
    settings = DPOSettings(batch_size=8, max_length=max_length)
    trainer = build_trainer(tiny_lm, with_ref_logps(pairs, ref), settings, str(tmp_path))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    chosen, rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    np.testing.assert_allclose(ours["chosen_logp"], chosen.numpy(), atol=1e-4)
    np.testing.assert_allclose(ours["rejected_logp"], rejected.numpy(), atol=1e-4)
    if max_length < 64:
        assert batch["input_ids"].shape[1] == max_length  # the case truncates


def test_irm_and_losses_by_hand():
    irm = implicit_reward_margin(np.array([-10.0]), np.array([-12.0]), np.array([-11.0]), np.array([-11.0]), 0.1)
    assert irm[0] == pytest.approx(0.2)
    assert pair_loss(irm, "sigmoid")[0] == pytest.approx(math.log(1 + math.exp(-0.2)))
    assert pair_loss(irm, "hinge")[0] == pytest.approx(0.8)
    assert pair_loss(np.array([1000.0, -1000.0]), "sigmoid") == pytest.approx([0.0, 1000.0])
    with pytest.raises(ValueError, match="loss_type"):
        pair_loss(irm, "ipo")


def test_score_table_lossdiff():
    ref = pd.DataFrame({"id": ["a", "b"], "chosen_logp": [-11.0, -5.0], "rejected_logp": [-11.0, -6.0]})
    warm = pd.DataFrame({"id": ["a", "b"], "chosen_logp": [-10.0, -5.0], "rejected_logp": [-12.0, -5.0]})
    aux = pd.DataFrame({"id": ["b", "a"], "chosen_logp": [-4.0, -11.0], "rejected_logp": [-7.0, -11.0]})
    table = score_table(ref, warm, aux, beta=0.1, loss_type="sigmoid").set_index("id")
    assert table.loc["a", "irm"] == pytest.approx(0.2)
    assert table.loc["a", "aux_irm"] == pytest.approx(0.0)
    assert table.loc["b", "irm"] == pytest.approx(0.1 * (0 - 1))
    assert table.loc["b", "aux_irm"] == pytest.approx(0.1 * (1 - (-1)))
    expected = math.log(1 + math.exp(0.1)) - math.log(1 + math.exp(-0.2))
    assert table.loc["b", "lossdiff"] == pytest.approx(expected)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge"])
def test_margin_and_loss_equal_trl_evaluation(tiny_lm, tiny_lm_other, pairs, loss_type, tmp_path):
    """TRL's evaluation loss and mean reward margin of θ against π_ref equal the mean of our loss and IRM."""
    ref = pair_logps(load_model(tiny_lm), pairs, load_tokenizer(tiny_lm), 64)
    warm = pair_logps(load_model(tiny_lm_other), pairs, load_tokenizer(tiny_lm_other), 64)
    ours = score_table(ref, warm, warm, beta=0.1, loss_type=loss_type)
    dataset = with_ref_logps(pairs, ref)
    settings = DPOSettings(batch_size=len(pairs), loss_type=loss_type)
    metrics = build_trainer(tiny_lm_other, dataset, settings, str(tmp_path)).evaluate(dataset)
    assert metrics["eval_loss"] == pytest.approx(ours["loss"].mean(), abs=1e-4)
    assert metrics["eval_rewards/margins"] == pytest.approx(ours["irm"].mean(), abs=1e-4)


@pytest.mark.parametrize("shards", [1, 2, 3, 7])
def test_shards_cover_every_row_once(shards):
    rows = np.concatenate([np.arange(20)[shard_rows(20, i, shards)] for i in range(shards)])
    assert list(rows) == list(range(20))


def test_merge_refuses_missing_and_duplicate_ids():
    ids = pd.Series(["a", "b", "c"])
    part = pd.DataFrame({"id": ["a", "b"], "irm": [1.0, 2.0]})
    with pytest.raises(ValueError, match="miss 1 training ids"):
        merge_shards([part], ids)
    with pytest.raises(ValueError, match="more than one score shard"):
        merge_shards([part, part], ids)
    merged = merge_shards([pd.DataFrame({"id": ["c"], "irm": [3.0]}), part], ids)
    assert list(merged["id"]) == ["a", "b", "c"]
