"""The human-label case: pairs of human-rated texts, labelled as one annotator labels them, judged by the crowd.

Each text of the corpus (by default the movie-review snippets of the vaderSentiment 3.3.2 sdist) carries about 18
individual ratings from -4 to 4. A pair is two texts under one fixed prompt. A training, validation or dev pair is
labelled by one rating drawn from each text's list, as a user's own single-rater annotation labels it (the lists
are anonymous, so two draws are two different annotators' disagreement, not one annotator's); equal ratings are
dropped, as a tie. A test pair is labelled by the two texts' mean ratings (the gold) and kept only where the means
differ by at least `test_min_gap`. Each row keeps `flipped` (the single-rater label against the means) and
`oracle_margin` (mean of chosen minus mean of rejected, as labelled); only diagnostics read them.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .demo import download_sdist, hutto_file, parse_snippets
from .io import write_json, write_jsonl, write_parquet

SPLITS = ("train", "val", "dev", "test")


def parse_ratings(raw: bytes) -> pd.DataFrame:
    """Lines `id<TAB>mean<TAB>std<TAB>[r1, r2, ...]` (CRLF, maybe a BOM) into columns id, mean, ratings."""
    rows = []
    for number, line in enumerate(raw.decode("utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            ratings = json.loads(parts[3])
            if len(parts) != 4 or not ratings or not all(isinstance(r, (int, float)) for r in ratings):
                raise ValueError
        except (IndexError, ValueError) as error:
            raise ValueError(
                f"ratings line {number}: not `id<TAB>mean<TAB>std<TAB>[r1, r2, ...]`: {line[:80]!r}"
            ) from error
        rows.append((parts[0], float(parts[1]), [float(r) for r in ratings]))
    return pd.DataFrame(rows, columns=["id", "mean", "ratings"])


def _read(name: str, archive: Path | None) -> bytes:
    """A local file, or else the file of that name in the hutto_ICWSM_2014 archive."""
    return Path(name).read_bytes() if Path(name).is_file() else hutto_file(archive, name)


def rated_texts(texts: bytes, ratings: bytes) -> pd.DataFrame:
    """Each text with its mean rating and its individual ratings (id, rating, text, ratings); every text must have
    its ratings and every ratings line its text."""
    df = parse_snippets(texts).merge(parse_ratings(ratings), on="id", how="outer", indicator=True, sort=False)
    unmatched = df[df["_merge"] != "both"]
    if len(unmatched):
        raise ValueError(
            f"{len(unmatched)} ids are in only one of the texts and ratings files, e.g. {unmatched.id.head(3).tolist()}"
        )
    return df.assign(rating=df["mean"])[["id", "rating", "text", "ratings"]]


def fetch_rated_texts(out: str, texts: str, ratings: str, local_copy: str | None = None) -> int:
    """Write the rated texts to parquet; `texts` and `ratings` are local files or files of the archive, which
    comes from `local_copy` (the sdist or hutto_ICWSM_2014.tar.gz) or a download. Returns the number of texts."""
    with tempfile.TemporaryDirectory() as tmp:
        needs_archive = not (Path(texts).is_file() and Path(ratings).is_file())
        archive = (Path(local_copy) if local_copy else download_sdist(tmp)) if needs_archive else None
        df = rated_texts(_read(texts, archive), _read(ratings, archive))
    write_parquet(df, out)
    return len(df)


def _fits(texts: pd.Series, prompt: str, tokenizer, max_length: int) -> np.ndarray:
    """Whether prompt + " " + text + EOS fits in max_length tokens, so that training never truncates a text."""
    lengths = np.array([len(ids) for ids in tokenizer([f"{prompt} {t}" for t in texts])["input_ids"]])
    return lengths + 1 <= max_length


def share_apart(values: np.ndarray, gap: float) -> float:
    """The share of pairs of distinct items whose values differ by at least `gap`."""
    n = len(values)
    if gap <= 0 or n < 2:
        return 1.0
    ordered = np.sort(values)
    apart = np.searchsorted(ordered, values - gap, "right") + n - np.searchsorted(ordered, values + gap, "left")
    return float(apart.sum() / (n * (n - 1)))


def _pools(n_texts: int, wanted: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Disjoint sets of text positions, one per split, sized by the pairs each split wants: no two splits share
    a text, so no pair either, and the test texts are unseen by every stage."""
    order = rng.permutation(n_texts)
    cuts = np.cumsum([0, *wanted.values()]) / sum(wanted.values()) * n_texts
    return {name: order[round(cuts[i]) : round(cuts[i + 1])] for i, name in enumerate(wanted)}


def _draw(
    texts: pd.DataFrame, pool: np.ndarray, n: int, gold: bool, min_gap: float, rng: np.random.Generator
) -> tuple[pd.DataFrame, int]:
    """n distinct pairs of texts from `pool`, in passes of random pairings. gold: labelled by the means, kept
    where they differ by min_gap; else by one rating drawn from each text's list, ties dropped. Also the count of
    pairs dropped."""
    means, ratings = texts.rating.to_numpy(), texts.ratings.to_numpy()
    rows, seen, dropped = [], set(), 0
    for _ in range(50):  # each pass pairs every text of the pool once more
        order = rng.permutation(pool)
        for a, b in zip(order[0::2], order[1::2]):
            if len(rows) == n:
                return pd.DataFrame(rows), dropped
            if (min(a, b), max(a, b)) in seen:
                continue
            seen.add((min(a, b), max(a, b)))
            gap = means[a] - means[b]
            label = gap if gold else rng.choice(ratings[a]) - rng.choice(ratings[b])
            if (gold and abs(gap) < min_gap) or label == 0:
                dropped += 1
                continue
            chosen, rejected = (a, b) if label > 0 else (b, a)
            rows.append(
                {"chosen_text": chosen, "rejected_text": rejected, "oracle_margin": means[chosen] - means[rejected]}
            )
    raise ValueError(f"{len(pool)} texts gave only {len(rows)} of {n} pairs; ask for fewer pairs or use more texts")


def _rendered(texts: pd.DataFrame, drawn: pd.DataFrame, prompt: str) -> pd.DataFrame:
    ids, text = texts.id.to_numpy(), texts.text.to_numpy()
    return pd.DataFrame(
        {
            "prompt": prompt,
            "chosen": [" " + t for t in text[drawn.chosen_text]],
            "rejected": [" " + t for t in text[drawn.rejected_text]],
            "flipped": drawn.oracle_margin.to_numpy() < 0,
            "oracle_margin": drawn.oracle_margin.to_numpy(),
            "chosen_text_id": ids[drawn.chosen_text],
            "rejected_text_id": ids[drawn.rejected_text],
        }
    )


def noise_stats(pairs: pd.DataFrame) -> dict:
    """Where the single-rater labels disagree with the means: overall, on close pairs (means less than 0.5 apart)
    and on clear ones (1.0 or more), and the share of all flipped labels that sit on close pairs."""
    gap, flipped = pairs.oracle_margin.abs(), pairs.flipped
    close, clear = gap < 0.5, gap >= 1.0

    def share(mask):
        return float(flipped[mask].mean()) if mask.any() else None

    return {
        "flipped": float(flipped.mean()),
        "close_pairs": float(close.mean()),
        "flipped_where_means_differ_below_0.5": share(close),
        "flipped_where_means_differ_1_or_more": share(clear),
        "flipped_on_close_pairs": float((flipped & close).sum() / flipped.sum()) if flipped.any() else None,
    }


def make_rated_pairs(
    model: str,
    texts: str,
    out_dir: str,
    *,
    prompt: str,
    n_train: int,
    n_val: int,
    n_dev: int,
    n_test: int,
    test_min_gap: float,
    max_length: int,
    seed: int,
    trust_remote_code: bool = False,
) -> dict:
    """Write train/val/dev (single-rater labels) and test (gold labels) pairs as jsonl, and pairs_stats.json, into
    out_dir. Texts too long for max_length with the prompt, in the tokens of `model`, are left out."""
    from .models import load_tokenizer

    t0, rng = time.time(), np.random.default_rng(seed)
    df = pd.read_parquet(texts)
    fits = _fits(df.text, prompt, load_tokenizer(model, trust_remote_code), max_length)
    df = df[fits].reset_index(drop=True)
    wanted = {"train": n_train, "val": n_val, "dev": n_dev, "test": n_test}
    # A test pair needs a clear gap, so its pool is sized for the pairs that a random pairing keeps.
    share_clear = max(share_apart(df.rating.to_numpy(), test_min_gap), 0.05)
    pools = _pools(len(df), {**wanted, "test": math.ceil(n_test / share_clear)}, rng)
    stats = {"texts": len(df) + int((~fits).sum()), "texts_too_long": int((~fits).sum()), "prompt": prompt}
    out = Path(out_dir)
    for name in SPLITS:
        drawn, dropped = _draw(df, pools[name], wanted[name], name == "test", test_min_gap, rng)
        pairs = _rendered(df, drawn, prompt)
        stats[name] = {
            "pairs": len(pairs),
            "texts": len(pools[name]),
            ("dropped_small_gap" if name == "test" else "ties_dropped"): dropped,
            **noise_stats(pairs),
        }
        write_jsonl(pairs.to_dict("records"), out / f"{name}.jsonl")
    stats["seconds"] = round(time.time() - t0, 1)
    write_json(stats, out / "pairs_stats.json")  # last: its presence means the folder is complete
    return stats
