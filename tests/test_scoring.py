"""Log-probs, IRM, losses and LossDiff against hand computations and TRL's own numbers."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import dpo_settings, make_pairs

from prefselect import provenance
from prefselect.logps import (
    packable,
    padded_length,
    pair_logps,
    read_pairs,
    stream_logps,
    token_budget_batches,
    tokenize_pairs,
)
from prefselect.models import load_model, load_tokenizer
from prefselect.scoring import implicit_reward_margin, merge_shards, pair_loss, score_table, shard_rows
from prefselect.training import build_trainer, with_ref_logps


def loop_logps(model, tokenized) -> tuple[list[float], list[float]]:
    """One unpadded full-logits forward per sequence: the plainest possible computation."""
    result = {"chosen": [], "rejected": []}
    for row in tokenized:
        for side in result:
            ids = torch.tensor([row["prompt_ids"] + row[f"{side}_ids"]])
            with torch.no_grad():
                logprobs = model(ids).logits[0, :-1].log_softmax(-1)
            targets = ids[0, 1:]
            start = max(len(row["prompt_ids"]) - 1, 0)  # after an empty prompt, nothing predicts the first token
            result[side].append(float(logprobs[start:].gather(1, targets[start:, None]).sum()))
    return result["chosen"], result["rejected"]


# The forward layouts of pair_logps: packed (prompt once, chosen hidden from rejected by the mask) under the two
# attention kernels that take a mask, and TRL's padded batches.
LAYOUTS = {"packed-sdpa": ("sdpa", True), "packed-eager": ("eager", True), "padded": ("sdpa", False)}


def layout_logps(path, layout, pairs, max_length, **kwargs):
    attention, packed = LAYOUTS[layout]
    model = load_model(path)
    model.set_attn_implementation(attention)
    return pair_logps(model, pairs, load_tokenizer(path), max_length, packed=packed, **kwargs)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pair_logps_equal_a_plain_loop(tiny_lm, pairs, layout):
    model, tokenizer = load_model(tiny_lm), load_tokenizer(tiny_lm)
    pairs.loc[0, "prompt"] = ""  # nothing predicts the first completion tokens: every path must skip them
    scored = layout_logps(tiny_lm, layout, pairs, max_length=64, batch_size=5)
    chosen, rejected = loop_logps(model, tokenize_pairs(pairs, tokenizer, 64))
    np.testing.assert_allclose(scored["chosen_logp"], chosen, atol=1e-4)
    np.testing.assert_allclose(scored["rejected_logp"], rejected, atol=1e-4)
    assert list(scored["id"]) == list(pairs["id"])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("max_length", [64, 12])
def test_pair_logps_agree_with_trl(tiny_lm, pairs, max_length, layout, tmp_path):
    """Same numbers as TRL's per-example path, including where max_length truncates completions."""
    tokenizer = load_tokenizer(tiny_lm)
    pairs = pairs[[len(tokenizer(p)["input_ids"]) < max_length for p in pairs["prompt"]]]
    ours = layout_logps(tiny_lm, layout, pairs, max_length, batch_size=3)
    ref = ours.assign(chosen_logp=0.0, rejected_logp=0.0)
    settings = dpo_settings(batch_size=8, max_length=max_length)
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
    settings = dpo_settings(batch_size=len(pairs), loss_type=loss_type)
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


def test_token_budget_batches_cover_every_pair_once_within_the_budget():
    lengths = np.random.default_rng(0).integers(3, 120, size=500)
    batches = token_budget_batches(lengths, budget=400)
    assert sorted(np.concatenate(batches)) == list(range(500))
    for batch in batches:
        padded = set(padded_length(lengths[batch]))
        assert len(padded) == 1  # one padded length per batch: a pair's numbers do not depend on its batch
        assert len(batch) * padded.pop() <= 400 or len(batch) == 1
    assert all(0 <= padded_length(n) - n < n / 8 for n in range(32, 5000))
    assert len(token_budget_batches(np.array([1000]), budget=400)) == 1  # longer than the budget: alone


def test_a_pairs_log_probs_do_not_depend_on_the_other_pairs(tiny_lm):
    """Bit for bit, so that scores and the selections made from them are the same from any number of shards."""
    model, tokenizer = load_model(tiny_lm), load_tokenizer(tiny_lm)
    pairs = make_pairs(23)
    whole = pair_logps(model, pairs, tokenizer, 64, batch_size=4)
    for part in (pairs.iloc[:12], pairs.iloc[12:], pairs.iloc[5:6]):
        alone = pair_logps(model, part, tokenizer, 64, batch_size=1)
        pd.testing.assert_frame_equal(
            alone, whole[whole["id"].isin(part["id"])].reset_index(drop=True), check_exact=True
        )


def test_packed_only_where_it_is_exact(tiny_lm):
    model = load_model(tiny_lm)
    assert packable(model, 64)
    model.config.sliding_window = 32  # a custom mask would bypass the window, which TRL's forward applies
    assert not packable(model, 64) and packable(model, 32)
    model.config.sliding_window = None
    model.config._attn_implementation = "flash_attention_2"  # takes no (rows, 1, L, L) mask
    assert not packable(model, 64)


def test_read_pairs_streams_a_row_range_or_the_rows_of_given_ids(tmp_path):
    pairs = make_pairs(50).assign(extra=1)
    path = tmp_path / "pairs.parquet"
    pairs.to_parquet(path, row_group_size=7)
    columns = ["id", "prompt", "chosen", "rejected"]
    chunks = list(read_pairs(str(path), slice(10, 33), chunk=5))
    assert max(len(c) for c in chunks) <= 5 and list(chunks[0].columns) == columns
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), pairs[columns][10:33].reset_index(drop=True))
    by_id = pd.concat(read_pairs(str(path), ids=pairs["id"][20:41], chunk=6), ignore_index=True)
    pd.testing.assert_frame_equal(by_id, pairs[columns][20:41].reset_index(drop=True))
    with pytest.raises(ValueError, match="1 of 2 pair ids are not in"):
        list(read_pairs(str(path), ids=["p1", "nope"]))
    # Provenance reads the file in slices too, with the digest of the whole frame.
    assert provenance.pairs_fingerprint(str(path)) == provenance.pairs_fingerprint(pairs)


def test_streamed_log_probs_equal_those_of_the_whole_frame(tiny_lm, tmp_path):
    model, tokenizer = load_model(tiny_lm), load_tokenizer(tiny_lm)
    pairs = make_pairs(30)
    pairs.to_parquet(tmp_path / "pairs.parquet", row_group_size=8)
    streamed = stream_logps(model, read_pairs(str(tmp_path / "pairs.parquet"), chunk=7), tokenizer, 64, batch_size=4)
    pd.testing.assert_frame_equal(streamed, pair_logps(model, pairs, tokenizer, 64, batch_size=4))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bf16_autocast_as_on_a_gpu_stays_near_float32(tiny_lm, pairs, layout):
    """On a GPU the forward runs under bf16 autocast, as TRL trains there; the same code runs under it on a CPU."""
    exact = layout_logps(tiny_lm, layout, pairs, 64)
    assert exact.equals(layout_logps(tiny_lm, layout, pairs, 64, autocast=None))  # float32 on a CPU by default
    bf16 = layout_logps(tiny_lm, layout, pairs, 64, autocast=True)
    columns = ["chosen_logp", "rejected_logp"]
    assert not np.array_equal(bf16[columns], exact[columns])
    np.testing.assert_allclose(bf16[columns], exact[columns], rtol=2e-2)
