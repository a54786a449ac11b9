import json

import pytest

from prefselect.comparison import compare_runs, comparison_markdown


def write_run(path, rates):
    selectors = {name: {"kept_fraction": 0.5, "win_rate": rate} for name, rate in rates.items()}
    path.write_text(json.dumps({"selectors": selectors}))
    return str(path)


def test_paired_differences_over_runs(tmp_path):
    runs = [
        write_run(tmp_path / "a.json", {"full": 0.60, "random": 0.58, "lossdiff_irm": 0.64}),
        write_run(tmp_path / "b.json", {"full": 0.70, "random": 0.66, "lossdiff_irm": 0.72}),
    ]
    table = compare_runs(runs, ["full", "random"])["selectors"]
    assert table["lossdiff_irm"]["win_rate"]["mean"] == pytest.approx(0.68)
    assert table["lossdiff_irm"]["vs_full"]["mean"] == pytest.approx(0.03)  # (0.04 + 0.02) / 2
    assert table["lossdiff_irm"]["vs_full"]["std"] == pytest.approx(0.0141421, abs=1e-6)
    assert "vs_full" not in table["full"]
    assert "| lossdiff_irm | 0.50 | 0.680 ± 0.057 | +0.030 ± 0.014 | +0.060 ± 0.000 |" in comparison_markdown(
        compare_runs(runs, ["full", "random"])
    )


def test_runs_must_have_the_same_selectors(tmp_path):
    runs = [write_run(tmp_path / "a.json", {"full": 0.6}), write_run(tmp_path / "b.json", {"random": 0.6})]
    with pytest.raises(ValueError, match="same selectors"):
        compare_runs(runs, ["full"])


def test_tournaments_beside_the_results_are_summarised(tmp_path):
    runs = []
    for name, chosen, regret, rho, made in (("a", "x", 0.0, 0.8, "x"), ("b", "y", 0.04, 0.4, "full")):
        (tmp_path / name).mkdir()
        runs.append(write_run(tmp_path / name / "results.json", {"full": 0.6, "x": 0.6, "y": 0.6}))
        (tmp_path / name / "tournament.json").write_text(
            json.dumps(
                {  # b: the gate kept the fallback
                    "criterion": "dev_margin",
                    "chosen": made,
                    "regret": 0.0,
                    "best_in_hindsight": "x",
                    "by_criterion": {
                        "dev_margin": {"chosen": chosen, "regret": regret, "spearman": rho},
                        "dev_loss": {"chosen": "full", "regret": 0.1, "spearman": None},
                    },
                }
            )
        )
    comparison = compare_runs(runs, ["full"])
    summary = comparison["tournament"]["by_criterion"]
    assert summary["dev_margin"]["chosen"] == ["x", "y"]
    assert summary["dev_margin"]["regret"]["mean"] == pytest.approx(0.02)
    assert summary["dev_margin"]["spearman"]["mean"] == pytest.approx(0.6)
    assert summary["dev_loss"]["spearman"] is None
    table = comparison_markdown(comparison)
    assert "| dev_margin (configured) | x, y | 0.020 ± 0.028 | 0.60 ± 0.28 |" in table
    assert "| dev_loss | full, full | 0.100 ± 0.000 | – |" in table
    assert "| the choice made, after the fallback's gate | x, full | 0.000 ± 0.000 | – |" in table
    for name, auc in (("a", 0.6), ("b", 0.7)):
        (tmp_path / name / "deciles.json").write_text(json.dumps({"irm": {"auc_flipped_low": auc, "deciles": []}}))
    with_aucs = compare_runs(runs, ["full"])
    assert with_aucs["deciles"]["irm"]["mean"] == pytest.approx(0.65)
    assert "| irm | 0.650 ± 0.071 |" in comparison_markdown(with_aucs)
    (tmp_path / "b" / "tournament.json").unlink()  # only where every run has one
    assert "tournament" not in compare_runs(runs, ["full"])
