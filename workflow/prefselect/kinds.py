"""Selector kinds, the auto selector's candidates and the plan of a run's selectors: what planning a run needs,
without numpy or pandas (the Snakefile and `config` import this module, on a cluster's login node too)."""

from __future__ import annotations

from dataclasses import dataclass

# Kinds that keep the top of an external score (scores/external/{name}.parquet), and the column each ranks by.
EXTERNAL_SCORE = {"external": "external", "alignment_potential": "ap"}
KINDS = ("bands", "full", "random", "oracle", *EXTERNAL_SCORE)
# The band each shape starts from; the kept fraction then scales its cuts (selection.fit_bands).
SHAPES = {"top": [50, 100], "bottom": [0, 50], "middle": [10, 90]}


def grid_selectors(grid: dict) -> dict[str, dict]:
    """The band selectors of a grid {shapes, columns, fractions}, named `{columns}_{shape}{percent}`."""
    selectors = {}
    for columns in grid["columns"]:
        for shape in grid["shapes"]:
            for fraction in grid["fractions"]:
                name = f"{columns.replace('+', '_')}_{shape}{round(100 * fraction)}"
                bands = {column: list(SHAPES[shape]) for column in columns.split("+")}
                selectors[name] = {"kind": "bands", "bands": bands, "fraction": fraction}
    return selectors


def candidate_names(spec: dict) -> list[str]:
    """The candidates of an `auto` selector: those it lists, then its grid's, then its fallback, without repeats."""
    grid = list(grid_selectors(spec["grid"])) if spec.get("grid") else []
    fallback = [spec["fallback"]] if spec.get("fallback") else []
    return list(dict.fromkeys([*spec.get("candidates", []), *grid, *fallback]))


@dataclass(frozen=True)
class Plan:
    """The selectors of a run and the jobs they make, as the rules ask for them (lists in the config's order)."""

    selectors: list[str]
    # The `auto` selector, if there is one, and its tournament: its candidates train their own final models; with
    # screen_epochs their final runs stop early as `screen-` runs, after which the winner trains in full as
    # final-{auto}; with finalists too, the best screen runs continue to their final runs and the best of those wins.
    auto: str | None
    candidates: list[str]
    screen_epochs: float | None
    finalists: int | None
    tournament_stage: str  # the runs the tournament judges: `screen`, or `final`
    grid_only: frozenset[str]  # candidates of the auto selector's grid that it does not list itself
    matched: list[str]  # selectors that keep as many pairs as another selector keeps (`like`)
    finals: list[str]  # selectors with a final model of their own, judged (screened grid candidates have none)
    trained: list[str]  # selectors whose final model a DPO run trains: auto adopts its winner's, unless it screens only
    stages: list[str]  # every DPO run whose training log the report plots


def plan(config: dict) -> Plan:
    """The plan of a validated config (`config.validate`, which adds the grid's selectors to `selectors`)."""
    selectors = config["selectors"]
    auto = next((name for name, spec in selectors.items() if spec["kind"] == "auto"), None)
    spec = selectors[auto] if auto else {}
    screen_epochs, finalists = spec.get("screen_epochs"), spec.get("finalists")
    stage = "screen" if screen_epochs and not finalists else "final"
    grid_only = (
        frozenset(grid_selectors(spec["grid"])) - set(spec.get("candidates", [])) if spec.get("grid") else frozenset()
    )
    finals = [name for name in selectors if not (screen_epochs and name in grid_only)]
    return Plan(
        selectors=list(selectors),
        auto=auto,
        candidates=candidate_names(spec) if auto else [],
        screen_epochs=screen_epochs,
        finalists=finalists,
        tournament_stage=stage,
        grid_only=grid_only,
        matched=[name for name, s in selectors.items() if "like" in s],
        finals=finals,
        trained=[name for name in finals if name != auto or stage == "screen"],
        stages=["warmup", "aux", *(f"final-{name}" for name in finals)],
    )
