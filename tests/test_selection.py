"""Band rules, intersections and the other selectors on arrays whose answer is known."""

import numpy as np
import pandas as pd
import pytest

from prefselect.selection import band_mask, select, select_bands, select_random


def test_band_keeps_values_between_percentiles():
    values = np.arange(1.0, 11.0)  # percentile 10 = 1.9, percentile 90 = 9.1
    assert list(values[band_mask(values, 10, 90)]) == [2, 3, 4, 5, 6, 7, 8, 9]


def test_band_edges_are_inclusive():
    values = np.array([3.0, 1.0, 2.0])
    assert band_mask(values, 0, 100).all()
    assert list(band_mask(values, 50, 100)) == [True, False, True]


def test_tied_values_fall_on_the_same_side():
    values = np.array([0.0, 0.0, 0.0, 1.0, 2.0])
    assert list(band_mask(values, 0, 50)) == [True, True, True, False, False]
    assert list(band_mask(values, 10, 100)) == [True] * 5  # the lower bound equals the tied value


@pytest.mark.parametrize("lo, hi", [(50, 50), (60, 40), (-1, 50), (0, 101)])
def test_invalid_band(lo, hi):
    with pytest.raises(ValueError, match="0 <= lo < hi <= 100"):
        band_mask(np.arange(5.0), lo, hi)


def test_bands_intersect():
    scores = pd.DataFrame({"lossdiff": np.arange(10.0), "irm": np.arange(10.0)[::-1]})
    keep = select_bands(scores, {"lossdiff": [0, 50], "irm": [0, 70]})
    # lossdiff <= 4.5 keeps rows 0..4; irm <= 6.3 keeps rows 3..9
    assert list(np.flatnonzero(keep)) == [3, 4]


def test_empty_selection_is_an_error():
    scores = pd.DataFrame({"id": list("abcd"), "lossdiff": [1.0, 2, 3, 4], "irm": [4.0, 3, 2, 1]})
    spec = {"kind": "bands", "bands": {"lossdiff": [0, 30], "irm": [0, 30]}}
    with pytest.raises(ValueError, match="keeps no pairs"):
        select("narrow", spec, scores, scores[["id"]])


def test_unknown_column_is_named():
    scores = pd.DataFrame({"id": ["a"], "irm": [1.0]})
    with pytest.raises(ValueError, match="'influence'"):
        select_bands(scores, {"influence": [0, 50]})


def test_random_keeps_an_exact_count_reproducibly():
    first, second = select_random(100, 37, seed=3), select_random(100, 37, seed=3)
    assert first.sum() == 37 and (first == second).all()
    assert (select_random(100, 37, seed=4) != first).any()


def test_random_matches_the_kept_fraction_of_another_selection():
    scores = pd.DataFrame({"id": [f"p{i}" for i in range(50)], "irm": np.arange(50.0)})
    like = pd.DataFrame({"id": scores["id"], "selected": np.arange(50) < 20})
    chosen = select("random", {"kind": "random", "like": "x"}, scores, scores[["id"]], seed=0, like=like)
    assert chosen["selected"].sum() == 20


def test_oracle_drops_exactly_the_flipped_pairs():
    scores = pd.DataFrame({"id": ["a", "b", "c"], "irm": [0.0, 1.0, 2.0]})
    train = pd.DataFrame({"id": ["c", "a", "b"], "flipped": [True, False, True]})
    chosen = select("oracle", {"kind": "oracle"}, scores, train)
    assert list(chosen["id"]) == ["a", "b", "c"] and list(chosen["selected"]) == [True, False, False]
    with pytest.raises(ValueError, match="flipped"):
        select("oracle", {"kind": "oracle"}, scores, train.drop(columns="flipped"))
