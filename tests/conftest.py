"""Shared fixtures: a tiny causal LM and tokenizer built locally (no hub), and small preference data."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

SENTENCES = [
    "the movie was great fun and the cast was wonderful",
    "a dull and boring film with a terrible plot",
    "I loved every minute of this charming story",
    "the acting is bad and the script is worse",
    "an absolute joy to watch from start to finish",
    "it was fine but nothing special happened at all",
] * 20


@contextmanager
def one_torch_thread():
    """Torch on one CPU thread, as a command run with `--threads 1`: a sum split over threads rounds differently."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_tiny_lm(folder, seed: int = 0) -> str:
    """Save a ~50k-parameter GPT-2 and its byte-level BPE tokenizer into `folder`; return the path."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(SENTENCES, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> str:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def tiny_lm_other(tmp_path_factory) -> str:
    """A second tiny LM with different weights, standing in for a trained model."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm_other"), seed=1)


def make_pairs(n: int = 24) -> pd.DataFrame:
    rows = []
    for i in range(n):
        a, b = SENTENCES[i % 6].split(), SENTENCES[(i + 1) % 6].split()
        rows.append(
            {
                "id": f"p{i}",
                "prompt": " ".join(a[: 2 + i % 3]),
                "chosen": " " + " ".join(a[2 + i % 3 :]),
                "rejected": " " + " ".join(b[: 3 + i % 4]),
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def pairs() -> pd.DataFrame:
    return make_pairs()


CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


@pytest.fixture(scope="session")
def reward_model(tmp_path_factory) -> str:
    """A GPT-2 reward model whose reward is high exactly when the last token is '!' and near 0 otherwise.

    Without blocks and position embeddings, the last hidden state is the layer norm of the last token's
    embedding; the score head reads its dimension 0, which is 0 for every token but '!'.
    """
    folder = build_tiny_lm(tmp_path_factory.mktemp("reward_model"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    model = GPT2ForSequenceClassification(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=64,
            n_embd=32,
            n_layer=0,
            n_head=2,
            num_labels=1,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    with torch.no_grad():
        model.transformer.wpe.weight.zero_()
        model.transformer.wte.weight[:, 0] = 0.0
        model.transformer.wte.weight[tokenizer.convert_tokens_to_ids("!"), 0] = 10.0
        model.score.weight.zero_()
        model.score.weight[0, 0] = 1.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def loop_logps(folder: str, pairs: pd.DataFrame, max_length: int) -> pd.DataFrame:
    """Summed completion log-probs, one pair and one completion at a time, from the full logits.

    The completion is the text with EOS appended, and its tokens are those of prompt + completion after the
    tokens of the prompt alone (the test pairs start every completion with a space, so the two agree).
    """
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = []
    for pair in pairs.itertuples():
        prompt = tokenizer(pair.prompt)["input_ids"]
        logps = {}
        for key in ("chosen", "rejected"):
            ids = tokenizer(pair.prompt + getattr(pair, key) + tokenizer.eos_token)["input_ids"]
            assert ids[: len(prompt)] == prompt and len(ids) <= max_length
            with torch.no_grad():
                log_probs = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
            logps[key] = sum(float(log_probs[t - 1, ids[t]]) for t in range(len(prompt), len(ids)))
        rows.append({"id": pair.id, "chosen_logp": logps["chosen"], "rejected_logp": logps["rejected"]})
    return pd.DataFrame(rows)


def completion_tokens(folder: str, pairs: pd.DataFrame) -> pd.DataFrame:
    """Tokens of each completion (with its EOS), as `loop_logps` counts them."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = pairs["prompt"].map(lambda text: len(tokenizer(text)["input_ids"]))
    return pd.DataFrame(
        {
            key: (pairs["prompt"] + pairs[key] + tokenizer.eos_token).map(
                lambda text: len(tokenizer(text)["input_ids"])
            )
            - prompt
            for key in ("chosen", "rejected")
        }
    )


def made_up_run(n: int, folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`n` pairs with made-up reference log-probs (each rejected 1 below its chosen), also written to
    `folder` as pairs.parquet and ref.parquet for a step run as a command."""
    pairs = make_pairs(n)
    logps = -np.arange(float(n)) - 20
    ref = pd.DataFrame({"id": pairs["id"], "chosen_logp": logps, "rejected_logp": logps - 1})
    pairs.to_parquet(folder / "pairs.parquet")
    ref.to_parquet(folder / "ref.parquet")
    return pairs, ref


def kill_at_first_checkpoint(command: list[str], env: dict, checkpoints: Path) -> None:
    """Run `command` and SIGKILL it as soon as a checkpoint under `checkpoints` is complete."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not list(checkpoints.glob("run-*/checkpoint-*/trainer_state.json")):
        assert process.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


def config_arg(**keys) -> list[str]:
    """The `--config` of a step run by hand: config keys as JSON (the schema's defaults for the rest)."""
    return ["--config", json.dumps(keys)]


def dpo_settings(**changes):
    """A warm-up's DPO settings with the schema's defaults, but for `changes`."""
    from prefselect import settings
    from prefselect.training import DPOSettings

    return DPOSettings.of(settings.load(None, "train", "warmup"), "warmup", **changes)


def influence_settings(**changes):
    from prefselect import settings
    from prefselect.influence import InfluenceSettings

    return InfluenceSettings.of(settings.load(None, "influence"), **changes)
