"""The plan of a run's selectors (kinds.plan): which selections, tournament and DPO runs the rules ask for."""

import copy
from pathlib import Path

import pytest
import yaml

from prefselect.config import validate
from prefselect.kinds import plan

E2E = yaml.safe_load((Path(__file__).parent / "e2e" / "config.yaml").read_text())
# The e2e config's selectors, as validate orders them: its own, then the grid's (aux_irm_top50) after `auto`.
LISTED = ["lossdiff_irm", "full", "random", "oracle", "rated", "ap", "rdpo", "selective_dpo"]
GRID = "aux_irm_top50"


def planned(auto: dict | None = None, selectors: dict | None = None):
    config = copy.deepcopy(E2E)
    if selectors is not None:
        config["selectors"] = selectors
    if auto is not None:
        config["selectors"]["auto"].update(auto)
    return plan(validate(config))


def finals(*names: str) -> list[str]:
    return ["warmup", "aux", *(f"final-{name}" for name in names)]


def test_e2e_config_judges_every_candidate_on_its_final_model():
    p = planned()
    assert p.selectors == [*LISTED, "auto", GRID]
    assert p.auto == "auto"
    assert p.candidates == ["lossdiff_irm", "full", GRID]
    assert (p.screen_epochs, p.finalists, p.tournament_stage) == (None, None, "final")
    assert p.grid_only == {GRID}
    assert p.matched == ["random", "rated"]
    # Without screening the grid candidate trains its own final model; auto adopts the winner's.
    assert p.finals == [*LISTED, "auto", GRID]
    assert p.trained == [*LISTED, GRID]
    assert p.stages == finals(*LISTED, "auto", GRID)


def test_screen_epochs_judge_the_screen_runs_and_train_the_winner_as_auto():
    p = planned({"screen_epochs": 0.5})
    assert (p.screen_epochs, p.finalists, p.tournament_stage) == (0.5, None, "screen")
    assert p.candidates == ["lossdiff_irm", "full", GRID]
    # The grid candidate only screens: no final model, no row in the results.
    assert p.finals == [*LISTED, "auto"]
    assert p.trained == [*LISTED, "auto"]
    assert p.stages == finals(*LISTED, "auto")


def test_finalists_judge_final_runs_and_auto_adopts_the_winner():
    p = planned({"screen_epochs": 0.5, "finalists": 1})
    assert (p.screen_epochs, p.finalists, p.tournament_stage) == (0.5, 1, "final")
    assert p.finals == [*LISTED, "auto"]
    assert p.trained == LISTED
    assert p.stages == finals(*LISTED, "auto")


def test_without_an_auto_selector_there_is_no_tournament():
    selectors = {name: spec for name, spec in E2E["selectors"].items() if name != "auto"}
    p = planned(selectors=selectors)
    assert p.selectors == LISTED
    assert (p.auto, p.candidates, p.grid_only) == (None, [], frozenset())
    assert (p.screen_epochs, p.finalists, p.tournament_stage) == (None, None, "final")
    assert p.finals == p.trained == LISTED
    assert p.stages == finals(*LISTED)


@pytest.mark.parametrize(
    "selectors, matched",
    [
        ({"full": {"kind": "full"}, "random": {"kind": "random", "fraction": 0.5}}, []),
        (
            {
                "lossdiff": {"bands": {"lossdiff": [50, 100]}},
                "random": {"kind": "random", "like": "lossdiff"},
                "rated": {"kind": "external", "column": "oracle_margin", "like": "lossdiff"},
                "top": {"kind": "external", "column": "oracle_margin", "fraction": 0.3},
            },
            ["random", "rated"],
        ),
    ],
)
def test_like_selectors_are_matched(selectors, matched):
    p = planned(selectors=selectors)
    assert p.matched == matched
    assert p.selectors == p.finals == p.trained == list(selectors)
