"""The built-in demo: controlled-sentiment continuation of movie-review snippets, judged by VADER.

Data: the human-rated movie-review snippets shipped inside the vaderSentiment 3.3.2 source distribution.
Model: a byte-level BPE tokenizer and a tiny GPT-2 trained from scratch on those snippets (SFT).
Pairs: best-of-n vs worst-of-n sampled continuations by VADER score, with a known share of flipped labels.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from prefselect.fetch import pip_download
from prefselect.generation import sample_continuations
from prefselect.io import atomic_path, write_json, write_jsonl, write_parquet

SNIPPETS_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_TAR = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
GROUND_TRUTH = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
EOS, PAD = "<|endoftext|>", "<|pad|>"


# ---------------------------------------------------------------------------------------------- snippets


def _tar_member(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.extractfile(name).read()


def _verified_sdist(path: Path) -> bytes:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SNIPPETS_SHA256:
        raise ValueError(
            f"{path}: sha256 {digest} does not match the vaderSentiment 3.3.2 source "
            f"distribution ({SNIPPETS_SHA256}); the file is corrupted or a different release"
        )
    return data


def hutto_file(path: Path, name: str) -> bytes:
    """File `name` of the hutto_ICWSM_2014 archive, from the sdist (hash checked) or from that archive itself."""
    archive = path.read_bytes() if path.name == Path(INNER_TAR).name else _tar_member(_verified_sdist(path), INNER_TAR)
    return _tar_member(archive, f"{Path(GROUND_TRUTH).parent}/{name}")


def _ground_truth(path: Path) -> bytes:
    """The GroundTruth text from the sdist, the inner hutto tarball, or the .txt itself."""
    return path.read_bytes() if path.suffix == ".txt" else hutto_file(path, Path(GROUND_TRUTH).name)


def download_sdist(dest: str) -> Path:
    """The vaderSentiment 3.3.2 sdist via pip (the user's index and cache settings apply); not yet verified."""
    return pip_download("vaderSentiment==3.3.2", dest, sdist=True)


def parse_snippets(raw: bytes) -> pd.DataFrame:
    """Lines `id<TAB>mean_rating<TAB>text` (CRLF in the original) into columns id, rating, text."""
    lines = [line for line in raw.decode("utf-8").replace("\r\n", "\n").split("\n") if line.strip()]
    rows = [line.split("\t", 2) for line in lines]
    if not rows or any(len(r) != 3 for r in rows):
        raise ValueError("snippet file is not `id<TAB>rating<TAB>text` lines")
    df = pd.DataFrame(rows, columns=["id", "rating", "text"])
    return df.assign(rating=df.rating.astype(float), text=df.text.str.strip())


def fetch_snippets(out: str, local_copy: str | None = None) -> None:
    """Write the ~10,600 human-rated movie-review snippets to parquet (id, rating, text)."""
    if local_copy:
        raw = _ground_truth(Path(local_copy))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            raw = _ground_truth(download_sdist(tmp))
    write_parquet(parse_snippets(raw), out)


# ---------------------------------------------------------------------------------------------- tokenizer


def build_tokenizer(snippets: str, out_dir: str, vocab_size: int = 2048) -> None:
    """Byte-level BPE on the snippet texts; ids 0..N-1 with EOS=BOS=0, PAD=1, nothing appended on encode."""
    texts = pd.read_parquet(snippets).text.tolist()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Special tokens first, then all 256 byte symbols, then merges: contiguous ids, no unknown bytes.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD, clean_up_tokenization_spaces=False
    )
    ids = sorted(tok.get_vocab().values())
    if ids != list(range(len(hf))) or hf("a b")["input_ids"][-1] == hf.eos_token_id:
        raise RuntimeError("tokenizer ids are not contiguous or encoding appends EOS")
    with atomic_path(out_dir, is_dir=True) as tmp:
        hf.save_pretrained(tmp)


# ---------------------------------------------------------------------------------------------- SFT model


def _token_matrix(texts: list[str], tokenizer, n_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each text + EOS, truncated to n_positions, right-padded into one matrix; also the lengths."""
    seqs = [(ids + [tokenizer.eos_token_id])[:n_positions] for ids in tokenizer(texts)["input_ids"]]
    data = torch.full((len(seqs), n_positions), tokenizer.pad_token_id)
    for i, s in enumerate(seqs):
        data[i, : len(s)] = torch.tensor(s)
    return data, torch.tensor([len(s) for s in seqs])


def _lr(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_sft(
    snippets: str,
    tokenizer_dir: str,
    out_dir: str,
    *,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_positions: int,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> dict:
    """Train a tiny GPT-2 from scratch on snippet + EOS sequences; save model and tokenizer to out_dir."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    data, lengths = _token_matrix(pd.read_parquet(snippets).text.tolist(), tokenizer, n_positions)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=pad,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )  # a few epochs at most: too short to overfit
    model = GPT2LMHeadModel(config).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]  # no weight decay on biases and norms
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=learning_rate,
        betas=(0.9, 0.99),
    )
    losses, t0 = [], time.time()
    for step in range(steps):
        idx = torch.randint(len(data), (batch_size,))
        x = data[idx, : lengths[idx].max()]  # trim the batch to its longest sequence
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, learning_rate, warmup=max(1, steps // 20))
        loss = model(input_ids=x, attention_mask=x != pad, labels=x.masked_fill(x == pad, -100)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    window = max(1, steps // 10)  # average over a tenth of the run: single batches are noisy
    stats = {
        "params": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "initial_loss": float(np.mean(losses[:window])),
        "final_loss": float(np.mean(losses[-window:])),
        "seconds": round(time.time() - t0, 1),
    }
    model.generation_config.update(bos_token_id=eos, eos_token_id=eos, pad_token_id=pad)
    with atomic_path(out_dir, is_dir=True) as tmp:
        model.eval().save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(stats, tmp / "sft_stats.json")
    return stats


# ---------------------------------------------------------------------------------------------- judge and pairs


@functools.cache
def _analyzer() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()  # loads the lexicon: once per process


def vader_scores(texts: list[str]) -> np.ndarray:
    """VADER compound score in [-1, 1] of each text: the demo's ground-truth judge."""
    return np.array([_analyzer().polarity_scores(t)["compound"] for t in texts], dtype=float)


def _prompt_pool(snippets: str, prompt_words: int, rng: np.random.Generator) -> list[str]:
    """Distinct prompts (the first words of snippets that have more to continue), in shuffled order."""
    texts = pd.read_parquet(snippets).text.tolist()
    words = (texts[i].split() for i in rng.permutation(len(texts)))
    return list(dict.fromkeys(" ".join(w[:prompt_words]) for w in words if len(w) > prompt_words))


def _best_vs_worst(model_dir: str, prompts: list[str], samples: int, max_new_tokens: int, seed: int) -> pd.DataFrame:
    """Per prompt, the highest- and the lowest-scoring of `samples` sampled continuations."""
    df = sample_continuations(model_dir, prompts, samples, max_new_tokens, seed)
    df["score"] = vader_scores([prompts[i] + c for i, c in zip(df.prompt_index, df.continuation)])
    by_prompt = df.groupby("prompt_index").score  # sorted by prompt_index, so rows line up with `prompts`
    best, worst = df.loc[by_prompt.idxmax()], df.loc[by_prompt.idxmin()]
    return pd.DataFrame(
        {
            "prompt": prompts,
            "chosen": best.continuation.to_numpy(),
            "rejected": worst.continuation.to_numpy(),
            "oracle_margin": best.score.to_numpy() - worst.score.to_numpy(),
        }
    )


def _draw_pairs(
    model_dir: str, pool: list[str], n: int, rng: np.random.Generator, **sampling
) -> tuple[pd.DataFrame, int, list[str]]:
    """The first n untied pairs from the head of the pool, judging ~30% spare prompts per round for ties.

    Returns the pairs, the ties dropped before the last kept prompt, and the untouched rest of the pool.
    """
    judged, found = [], 0
    while found < n:
        size = math.ceil((n - found) * 1.3) + 8
        take, pool = pool[:size], pool[size:]
        if not take:
            raise ValueError(f"ran out of distinct prompts after {found} of {n} untied pairs")
        judged.append(_best_vs_worst(model_dir, take, seed=int(rng.integers(2**31)), **sampling))
        found += int((judged[-1].oracle_margin > 0).sum())
    df = pd.concat(judged, ignore_index=True)
    untied = df.oracle_margin > 0
    kept = df[untied].head(n)
    return kept.reset_index(drop=True), int((~untied.loc[: kept.index[-1]]).sum()), pool


NOISE_MODELS = ("uniform", "bradley_terry")


def _flip_mask(gaps: np.ndarray, noise: float, noise_model: str, tau: float, rng: np.random.Generator) -> np.ndarray:
    """Which pairs to flip. uniform: exactly round(noise * n) pairs chosen at random, so the realised rate is
    the configured one. bradley_terry: each pair with P = sigmoid(-gap / tau), ambiguous pairs most; ignores noise."""
    if noise_model == "uniform":
        mask = np.zeros(len(gaps), dtype=bool)
        mask[rng.choice(len(gaps), round(noise * len(gaps)), replace=False)] = True
        return mask
    return rng.random(len(gaps)) < 1 / (1 + np.exp(gaps / tau))


def _labelled(pairs: pd.DataFrame, flip: np.ndarray) -> pd.DataFrame:
    """Swap chosen and rejected where `flip`; oracle_margin stays judge(chosen) - judge(rejected) as labelled."""
    gap = pairs.oracle_margin.to_numpy()
    return pd.DataFrame(
        {
            "prompt": pairs.prompt,
            "chosen": np.where(flip, pairs.rejected, pairs.chosen),
            "rejected": np.where(flip, pairs.chosen, pairs.rejected),
            "flipped": flip,
            "oracle_margin": np.where(flip, -gap, gap),
        }
    )


def make_pairs(
    model_dir: str,
    snippets: str,
    out_dir: str,
    *,
    n_train: int,
    n_val: int,
    n_eval_prompts: int,
    n_dev: int = 0,
    prompt_words: int = 3,
    samples: int = 4,
    max_new_tokens: int = 20,
    noise: float = 0.3,
    noise_model: str = "uniform",
    tau: float = 0.1,
    val_noise: float = 0.0,
    dev_noise: float = 0.0,
    seed: int = 0,
) -> dict:
    """Best-of-n vs worst-of-n pairs from the SFT model, judged by VADER, with a known share of flipped labels.

    Writes train.jsonl, val.jsonl, dev.jsonl, eval_prompts.jsonl and pairs_stats.json into out_dir; the four
    prompt sets are disjoint. Dev pairs are drawn last, so they change none of the others. noise_model "uniform"
    flips exactly round(noise * n_train) training pairs; "bradley_terry" flips each with P = sigmoid(-gap / tau)
    and ignores noise. val_noise and dev_noise flip exactly that share of the validation and dev pairs, uniformly
    (held-out pairs labelled as noisily as a user's), from a random stream of their own: at 0, nothing else moves.
    """
    noises_ok = all(0 <= share <= 1 for share in (noise, val_noise, dev_noise))
    if noise_model not in NOISE_MODELS or not noises_ok or tau <= 0 or min(n_train, n_val) < 1:
        raise ValueError(f"need noise_model in {NOISE_MODELS}, noises in [0, 1], tau > 0, n_train, n_val >= 1")
    t0, rng = time.time(), np.random.default_rng(seed)
    pool = _prompt_pool(snippets, prompt_words, rng)
    if len(pool) < n_eval_prompts:
        raise ValueError(f"only {len(pool)} distinct prompts for {n_eval_prompts} evaluation prompts")
    eval_prompts, pool = pool[:n_eval_prompts], pool[n_eval_prompts:]
    sampling = {"samples": samples, "max_new_tokens": max_new_tokens}
    train, train_ties, pool = _draw_pairs(model_dir, pool, n_train, rng, **sampling)
    val, val_ties, pool = _draw_pairs(model_dir, pool, n_val, rng, **sampling)
    train = _labelled(train, _flip_mask(train.oracle_margin.to_numpy(), noise, noise_model, tau, rng))
    dev = _draw_pairs(model_dir, pool, n_dev, rng, **sampling)[0] if n_dev else pd.DataFrame(columns=train.columns)
    heldout_rng = np.random.default_rng([seed, 1])
    val = _labelled(val, _flip_mask(val.oracle_margin.to_numpy(), val_noise, "uniform", tau, heldout_rng))
    dev = _labelled(dev, _flip_mask(dev.oracle_margin.to_numpy(), dev_noise, "uniform", tau, heldout_rng))
    stats = {
        "train_pairs": len(train),
        "val_pairs": len(val),
        "dev_pairs": len(dev),
        "eval_prompts": len(eval_prompts),
        "train_flipped": int(train.flipped.sum()),
        "flip_rate": float(train.flipped.mean()),
        "val_flipped": int(val.flipped.sum()),
        "dev_flipped": int(dev.flipped.sum()),
        "train_ties_dropped": train_ties,
        "val_ties_dropped": val_ties,
        "noise_model": noise_model,
        "noise": noise if noise_model == "uniform" else None,
        "tau": tau if noise_model == "bradley_terry" else None,
        "seconds": round(time.time() - t0, 1),
    }
    out = Path(out_dir)
    write_jsonl(train.to_dict("records"), out / "train.jsonl")
    write_jsonl(val.to_dict("records"), out / "val.jsonl")
    write_jsonl(dev.to_dict("records"), out / "dev.jsonl")
    write_jsonl(({"prompt": p} for p in eval_prompts), out / "eval_prompts.jsonl")
    write_json(stats, out / "pairs_stats.json")  # last: its presence means the folder is complete
    return stats
