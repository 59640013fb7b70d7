"""The Threshold page's session state: its widget keys, the rule labels and the one source of truth for
the image threshold (``ui.KEY_THRESHOLD``) with the callbacks that move it."""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.evaluation.curves import PRESETS, Costs, Curves, nearest_point
from core.evaluation.record import DecisionRecord
from core.evaluation.scored import ScoredSet
from core.services.threshold import rule_threshold
from views.components import ui

KEY_COMPARE = "thr_compare"
KEY_DETECTOR = "thr_detector"
KEY_RULE = "thr_rule"
KEY_T = ui.KEY_THRESHOLD  # the current image threshold (source of truth; other pages read it)
KEY_T_FOR = ui.KEY_THRESHOLD_FOR  # the scored set the threshold belongs to
KEY_SLIDER = "thr_slider"
KEY_TYPED = "thr_typed"
KEY_FPR = "thr_target_fpr"
KEY_MISS = "thr_target_miss"
KEY_COST_FP = "thr_cost_fp"
KEY_COST_FN = "thr_cost_fn"
KEY_COST_REVIEW = "thr_cost_review"
KEY_ROC = "thr_roc"
KEY_PIXEL_T = "thr_pixel_threshold"
KEY_SEG_IMAGES = "thr_seg_images"
KEY_NOTE = "thr_note"
KEY_RECORD = "thr_record_upload"
KEY_RECORD_MSG = "thr_record_message"

RULE_LABELS = {
    "manual": "Manual (slider, typed, or a click on the ROC curve)",
    "f1": "F1-max",
    "youden": "Youden J (max TPR − FPR)",
    "fpr": "Target false-alarm rate",
    "tpr": "Target miss rate",
    "cost": "Minimum expected cost",
    "preset:first_screen": f"Preset: {PRESETS['first_screen'].title}",
    "preset:anything_unusual": f"Preset: {PRESETS['anything_unusual'].title}",
}
SLIDER_STEPS = 1000


def rule_params() -> dict[str, Any]:
    """The rule parameters and costs as currently set in the widgets (defaults before first draw)."""
    return {
        "target_fpr": float(st.session_state.get(KEY_FPR, 5.0)) / 100.0,
        "target_tpr": 1.0 - float(st.session_state.get(KEY_MISS, 5.0)) / 100.0,
        "costs": Costs(float(st.session_state.get(KEY_COST_FP, 1.0)), float(st.session_state.get(KEY_COST_FN, 10.0)),
                       float(st.session_state.get(KEY_COST_REVIEW, 0.0))),
    }


def set_manual(t: float) -> None:
    st.session_state[KEY_T] = float(t)
    st.session_state[KEY_RULE] = "manual"


def on_slider() -> None:
    # The browser snaps the slider to its step grid and may report that as a change: only a move of
    # more than half a step away from the current threshold is the user's.
    value, step = float(st.session_state[KEY_SLIDER]), float(st.session_state.get(KEY_SLIDER + "_step", 0.0))
    if abs(value - float(st.session_state.get(KEY_T, value + 1.0))) > step / 2:
        set_manual(value)


def on_typed() -> None:
    set_manual(st.session_state[KEY_TYPED])


def on_roc_click(curves: Curves) -> None:
    event = st.session_state.get(KEY_ROC) or {}
    points = (event.get("selection") or {}).get("points") or []
    pts = [p for p in points if p.get("curve_number", 0) == 0] or points
    if pts:
        p = pts[0]
        set_manual(nearest_point(curves, float(p["x"]), float(p["y"]))["threshold"])


def current_threshold(ss: ScoredSet, curves: Curves) -> float:
    """Resolve the threshold for this run: the rule's, the kept manual value, or F1-max for a new set."""
    ident = f"{ss.run_id}|{ss.detector}|{ss.fingerprint_labels()}"
    if st.session_state.get(KEY_RULE) not in RULE_LABELS:
        st.session_state[KEY_RULE] = "f1"
    rule = st.session_state[KEY_RULE]
    if rule != "manual":
        try:
            t = rule_threshold(curves, rule, rule_params())
        except ValueError as exc:
            st.warning(f"{RULE_LABELS[rule]} cannot be applied here: {exc}. Using F1-max.")
            t = curves.f1_threshold
        st.session_state[KEY_T] = t
    elif st.session_state.get(KEY_T_FOR) != ident or KEY_T not in st.session_state:
        st.session_state[KEY_T] = curves.f1_threshold
    st.session_state[KEY_T_FOR] = ident
    return float(st.session_state[KEY_T])


def slider_range(curves: Curves) -> tuple[float, float, float]:
    lo, hi = float(curves.score_min), float(curves.flag_nothing)
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi, (hi - lo) / SLIDER_STEPS


def apply_record() -> None:
    """on_change of the record upload: restore threshold, rule and costs (before the widgets are drawn)."""
    f = st.session_state.get(KEY_RECORD)
    if f is None:
        return
    data = f.getvalue()
    try:
        rec = DecisionRecord.from_csv(data) if f.name.lower().endswith(".csv") else DecisionRecord.from_json(data)
    except ValueError as exc:
        st.session_state[KEY_RECORD_MSG] = ("error", f"{f.name} is not a decision record: {exc}")
        return
    st.session_state[KEY_RULE] = (f"preset:{rec.preset}" if rec.preset in PRESETS
                                  else rec.rule if rec.rule in RULE_LABELS else "manual")
    if st.session_state[KEY_RULE] == "manual":
        st.session_state[KEY_T] = rec.threshold
    if rec.rule_params.target_fpr is not None:
        st.session_state[KEY_FPR] = 100.0 * rec.rule_params.target_fpr
    if rec.rule_params.target_tpr is not None:
        st.session_state[KEY_MISS] = 100.0 * (1.0 - rec.rule_params.target_tpr)
    for key, name in ((KEY_COST_FP, "cost_fp"), (KEY_COST_FN, "cost_fn"), (KEY_COST_REVIEW, "cost_review")):
        if getattr(rec.costs, name) is not None:
            st.session_state[key] = getattr(rec.costs, name)
    if rec.pixel.threshold is not None:
        st.session_state[KEY_PIXEL_T] = rec.pixel.threshold
    st.session_state[KEY_NOTE] = rec.note or ""
    st.session_state[KEY_RECORD_MSG] = ("record", rec.to_json())
