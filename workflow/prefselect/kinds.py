"""Selector kinds and the auto selector's candidates: what planning a run needs, without numpy or pandas (the
Snakefile and `config` import this module, on a cluster's login node too)."""

from __future__ import annotations

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
