"""The real DAG with influence enabled: IF shards, a TIF selector, the agreement report and the group study."""

import json
from pathlib import Path

import pandas as pd
import pytest
from test_workflow import snakemake

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("e2e_influence")
    snakemake(workdir, config="config_influence.yaml")
    return workdir / "results"


def test_influence_covers_every_training_pair_and_feeds_the_tif_selector(out):
    train = pd.read_parquet(out / "data/train.parquet")
    table = pd.read_parquet(out / "influence/influence.parquet")
    assert list(table.columns) == ["id", "influence"] and sorted(table["id"]) == sorted(train["id"])
    assert table["influence"].notna().all() and table["influence"].std() > 0
    assert 0.75 <= pd.read_parquet(out / "selection/tif.parquet")["selected"].mean() <= 0.85
    results = json.loads((out / "eval/results.json").read_text())["selectors"]
    assert set(results) == {"tif"}


def test_agreement_report_has_overlaps_correlations_and_stage_times(out):
    report = json.loads((out / "eval/agreement.json").read_text())
    assert report["pairs"] == len(pd.read_parquet(out / "data/train.parquet"))
    assert report["tif_band"] == [10, 90] and 0.75 <= report["kept_fraction"] <= 0.85
    for proxy in report["proxies"].values():
        assert 0 <= proxy["overlap_with_tif"] <= 1 and proxy["kept_fraction"] >= report["kept_fraction"]
    for score in ("lossdiff", "irm", "aux_irm"):
        assert all(-1 <= r <= 1 for r in report["correlation_with_influence"][score].values())
    seconds = report["seconds"]
    assert set(seconds["stages"]) == {"aux", "score", "val_grad", "influence"}
    assert all(seconds[total][kind] > 0 for total in ("proxies", "influence") for kind in ("wall", "cpu"))
    assert "overlap with TIF" in (out / "eval/agreement.md").read_text()
    assert (out / "eval/agreement.png").stat().st_size > 0


def test_group_study_reports_terciles_with_ground_truth_and_validation_curves(out):
    groups = json.loads((out / "eval/groups.json").read_text())
    assert list(groups) == ["small", "medium", "large"]
    assert sum(g["pairs"] for g in groups.values()) == len(pd.read_parquet(out / "data/train.parquet"))
    assert groups["small"]["influence_range"][1] <= groups["large"]["influence_range"][0]
    for g in groups.values():
        assert 0 <= g["flipped_share"] <= 1 and isinstance(g["oracle_margin_mean"], float)
        curve = g["validation_curve"]
        assert curve[0]["step"] == 0 and len(curve) >= 3 and all(p["eval_loss"] > 0 for p in curve)
    assert (out / "eval/groups.png").stat().st_size > 0
