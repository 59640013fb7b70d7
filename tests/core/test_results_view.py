"""The Results page's computations (core.services.results_view): type order, per-type table, ranking."""

from __future__ import annotations

import math

import numpy as np

from core.services.results_view import defect_order, ranked, type_rows


def test_defect_order_puts_good_first_then_types_alphabetically() -> None:
    assert defect_order(["scratch", "good", "crack", "good", "scratch"]) == ["good", "crack", "scratch"]
    assert defect_order(["b", "a"]) == ["a", "b"]
    assert defect_order([]) == []


def test_type_rows_count_median_and_flagged_share() -> None:
    scores = np.array([1.0, 2.0, 3.0, 10.0, 20.0])
    defects = ["good", "good", "good", "crack", "crack"]
    rows = type_rows(scores, defects, threshold=2.5)
    assert [r["type"] for r in rows] == ["good", "crack"]
    good, crack = rows
    assert good["images"] == 3 and good["median score"] == 2.0 and math.isclose(good["flagged %"], 100 / 3)
    assert crack["images"] == 2 and crack["median score"] == 15.0 and crack["flagged %"] == 100.0
    assert all(math.isnan(r["flagged %"]) for r in type_rows(scores, defects, threshold=None))


def test_ranked_filters_by_type_and_sorts_stably() -> None:
    scores = np.array([0.5, 0.9, 0.1, 0.9, 0.3])
    defects = ["good", "crack", "good", "crack", "hole"]
    assert ranked(scores, defects, ["good", "crack"]).tolist() == [3, 1, 0, 2]
    assert ranked(scores, defects, ["good", "crack"], descending=False).tolist() == [2, 0, 1, 3]
    assert ranked(scores, defects, ["hole"]).tolist() == [4]
    assert ranked(scores, defects, []).size == 0
