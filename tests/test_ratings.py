"""The human-label case: rated texts read as given, pairs labelled by single ratings, gold test pairs by means."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from prefselect import ratings

# Texts whose raters agree (every rating the same) and texts whose raters split (a single draw can go either way).
AGREED = {f"a{i}": [float(i % 9 - 4)] * 3 for i in range(36)}
SPLIT = {f"s{i}": [4.0, -4.0, -4.0] if i % 2 else [-4.0, 4.0, 4.0] for i in range(24)}
RATED = {**AGREED, **SPLIT}


def write_corpus(folder, rated=RATED, long_text: str | None = None):
    """Texts and ratings files in the corpus's own format: CRLF lines, a BOM on the ratings file."""
    texts = {key: f"text {key} is short" for key in rated}
    if long_text:
        texts["a0"] = long_text
    (folder / "texts.txt").write_bytes("".join(f"{k}\t{np.mean(r)}\t{texts[k]}\r\n" for k, r in rated.items()).encode())
    lines = "".join(
        f"{k}\t{np.mean(r)}\t{np.std(r)}\t[{', '.join(str(int(x)) for x in r)}]\r\n" for k, r in rated.items()
    )
    (folder / "ratings.txt").write_bytes(b"\xef\xbb\xbf" + lines.encode())
    return str(folder / "texts.txt"), str(folder / "ratings.txt")


def build(tmp_path, tiny_lm, seed=0, **sizes):
    texts, rating_file = write_corpus(tmp_path, **sizes.pop("corpus", {}))
    ratings.fetch_rated_texts(str(tmp_path / "rated.parquet"), texts, rating_file)
    args = dict(prompt="A review:", n_train=30, n_val=10, n_dev=10, n_test=12, test_min_gap=2.0, max_length=64)
    stats = ratings.make_rated_pairs(
        tiny_lm, str(tmp_path / "rated.parquet"), str(tmp_path / "pairs"), **{**args, **sizes}, seed=seed
    )
    return stats, {
        name: pd.read_json(
            tmp_path / "pairs" / f"{name}.jsonl", lines=True, dtype={"chosen_text_id": str, "rejected_text_id": str}
        )
        for name in ratings.SPLITS
    }


def test_ratings_are_read_as_written(tmp_path):
    _, rating_file = write_corpus(tmp_path)
    df = ratings.parse_ratings(open(rating_file, "rb").read())
    assert df.id.tolist() == list(RATED) and df.ratings.tolist() == list(RATED.values())
    with pytest.raises(ValueError, match="ratings line 2"):
        ratings.parse_ratings(b"x\t1\t0\t[1, 2]\r\ny\t1\t0\tnot a list\r\n")
    texts = b"x\t1\tsome text\r\n"
    with pytest.raises(ValueError, match=r"1 ids are in only one of the texts and ratings files, e.g. \['y'\]"):
        ratings.rated_texts(texts, b"x\t1\t0\t[1, 1]\r\ny\t2\t0\t[2, 2]\r\n")


def test_pairs_are_labelled_as_stated(tmp_path, tiny_lm):
    stats, splits = build(tmp_path, tiny_lm)
    means = {k: float(np.mean(r)) for k, r in RATED.items()}
    for name, pairs in splits.items():
        assert len(pairs) == stats[name]["pairs"] == {"train": 30, "val": 10, "dev": 10, "test": 12}[name]
        assert (pairs.prompt == "A review:").all()
        assert (pairs.chosen == " text " + pairs.chosen_text_id + " is short").all()
        gold = pairs.chosen_text_id.map(means) - pairs.rejected_text_id.map(means)
        np.testing.assert_allclose(pairs.oracle_margin, gold)
        assert (pairs.flipped == (gold < 0)).all()
        for chosen, rejected in zip(pairs.chosen_text_id, pairs.rejected_text_id):  # some draw of one rating each
            assert max(RATED[chosen]) > min(RATED[rejected])  # gives the label
        pair_keys = {frozenset(p) for p in zip(pairs.chosen_text_id, pairs.rejected_text_id)}
        assert len(pair_keys) == len(pairs)  # no pair twice
    assert (splits["test"].oracle_margin >= 2.0).all() and not splits["test"].flipped.any()  # gold, clear gaps
    # single raters disagree with the mean on split texts, never on agreed ones
    train = splits["train"]
    agreed = train.chosen_text_id.str.startswith("a") & train.rejected_text_id.str.startswith("a")
    assert not train.flipped[agreed].any()
    labelled = pd.concat([splits[name] for name in ("train", "val", "dev")])
    assert labelled.flipped.any()
    assert stats["train"]["ties_dropped"] > 0  # equal agreed ratings tie


def test_noise_stats_count_where_the_flips_sit():
    pairs = pd.DataFrame(
        {
            "oracle_margin": [0.2, -0.3, 0.4, -1.5, 2.0, 1.2, 0.7, -0.1],
            "flipped": [False, True, False, True, False, False, False, True],
        }
    )
    assert ratings.noise_stats(pairs) == pytest.approx(
        {
            "flipped": 3 / 8,
            "close_pairs": 4 / 8,
            "flipped_where_means_differ_below_0.5": 2 / 4,
            "flipped_where_means_differ_1_or_more": 1 / 3,
            "flipped_on_close_pairs": 2 / 3,
        }
    )


def test_splits_share_no_text_and_reruns_give_the_same_pairs(tmp_path, tiny_lm):
    (tmp_path / "a").mkdir()
    _, splits = build(tmp_path / "a", tiny_lm)
    texts = {name: set(p.chosen_text_id) | set(p.rejected_text_id) for name, p in splits.items()}
    names = list(texts)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not texts[first] & texts[second], (first, second)
    (tmp_path / "b").mkdir()
    _, again = build(tmp_path / "b", tiny_lm)
    for name in splits:
        pd.testing.assert_frame_equal(splits[name], again[name])
    (tmp_path / "c").mkdir()
    _, other = build(tmp_path / "c", tiny_lm, seed=1)
    assert not other["train"].equals(splits["train"])


def test_texts_too_long_for_max_length_are_left_out(tmp_path, tiny_lm):
    stats, splits = build(tmp_path, tiny_lm, corpus={"long_text": "word " * 80})
    assert stats["texts_too_long"] == 1 and stats["texts"] == len(RATED)
    used = set().union(*(set(p.chosen_text_id) | set(p.rejected_text_id) for p in splits.values()))
    assert "a0" not in used


def test_the_movie_corpus_from_the_sdist(tmp_path):
    """The default files of the archive: every snippet with its ~18 ratings, whose mean is the file's mean."""
    from prefselect import demo

    sdist = demo.download_sdist(str(tmp_path / "sdist"))
    out = tmp_path / "rated.parquet"
    assert (
        ratings.fetch_rated_texts(
            str(out), "movieReviewSnippets_GroundTruth.txt", "movieReviewSnippets_anonDataRatings.txt", str(sdist)
        )
        == 10_605
    )
    df = pd.read_parquet(out)
    counts = df.ratings.map(len)
    assert counts.min() >= 10 and 17 <= counts.median() <= 20
    np.testing.assert_allclose(df.ratings.map(np.mean), df.rating, atol=1e-6)
    assert all(-4 <= min(r) and max(r) <= 4 for r in df.ratings)
