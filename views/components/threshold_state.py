"""The Threshold page's session state: its widget keys, the rule labels, the image threshold
(``ui.KEY_THRESHOLD``) with the callbacks that move it, and the link to the run's stored operating point.

The operating point on disk (:mod:`core.evaluation.operating`) is the source of truth: the widgets are
seeded from it when the page shows a run and detector (and again after Streamlit dropped their values on a
visit to another page), and every change is saved back to it at the end of the page run, so other pages,
a reload and a server restart see the same decision."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import streamlit as st

from core.errors import ConfigError
from core.evaluation.curves import PRESETS, Costs, Curves, nearest_point
from core.evaluation.operating import (
    DEFAULT_RULE,
    OperatingPoint,
    load_point,
    point_or_default,
    resolve_threshold,
    save_point,
)
from core.evaluation.record import DecisionRecord
from views.components import ui

KEY_COMPARE = "thr_compare"
KEY_DETECTOR = "thr_detector"
KEY_RULE = "thr_rule"
KEY_T = ui.KEY_THRESHOLD  # the current image threshold (source of truth; other pages read it)
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
KEY_OP_FOR = "thr_point_for"  # "<run folder>|<detector>" whose stored operating point the widgets hold
KEY_PIXEL_DEFAULT = "thr_pixel_default"  # the run's own pixel default (pixel F1-max) of the shown scored set
WIDGET_KEYS = (KEY_RULE, KEY_FPR, KEY_MISS, KEY_COST_FP, KEY_COST_FN, KEY_COST_REVIEW)

RULE_LABELS = {
    "manual": "Manual (slider, typed, or a click on the ROC curve)",
    "youden": "Youden J (max TPR − FPR) · default",
    "f1": "F1-max",
    "fpr": "Target false-alarm rate",
    "tpr": "Target miss rate",
    "cost": "Minimum expected cost",
    "preset:first_screen": f"Preset: {PRESETS['first_screen'].title}",
    "preset:anything_unusual": f"Preset: {PRESETS['anything_unusual'].title}",
}
SLIDER_STEPS = 1000


_DEFAULT = OperatingPoint()


def rule_params() -> dict[str, Any]:
    """The rule parameters and costs as currently set in the widgets (the default point's before first draw)."""
    return {
        "target_fpr": float(st.session_state.get(KEY_FPR, 100.0 * _DEFAULT.target_fpr)) / 100.0,
        "target_tpr": 1.0 - float(st.session_state.get(KEY_MISS, 100.0 * (1 - _DEFAULT.target_tpr))) / 100.0,
        "costs": Costs(float(st.session_state.get(KEY_COST_FP, _DEFAULT.cost_fp)),
                       float(st.session_state.get(KEY_COST_FN, _DEFAULT.cost_fn)),
                       float(st.session_state.get(KEY_COST_REVIEW, _DEFAULT.cost_review))),
    }


def seed_point(run_dir: Path, detector: str) -> OperatingPoint:
    """Put the stored operating point of ``detector`` on the run into the widgets when the page shows this run
    and detector for the first time, or when Streamlit dropped the widget values (another page was visited)."""
    ident = f"{Path(run_dir).resolve()}|{detector}"
    point = point_or_default(run_dir, detector)
    if st.session_state.get(KEY_OP_FOR) == ident and all(k in st.session_state for k in WIDGET_KEYS):
        return point
    st.session_state[KEY_RULE] = point.rule if point.rule in RULE_LABELS else DEFAULT_RULE
    if point.rule == "manual":
        st.session_state[KEY_T] = point.threshold
    else:
        st.session_state.pop(KEY_T, None)
    st.session_state[KEY_FPR] = 100.0 * point.target_fpr
    st.session_state[KEY_MISS] = 100.0 * (1.0 - point.target_tpr)
    st.session_state[KEY_COST_FP] = point.cost_fp
    st.session_state[KEY_COST_FN] = point.cost_fn
    st.session_state[KEY_COST_REVIEW] = point.cost_review
    st.session_state[KEY_PIXEL_T] = point.pixel_threshold  # None: the run's own default, set when drawn
    st.session_state.pop(KEY_PIXEL_DEFAULT, None)
    st.session_state[KEY_NOTE] = point.note
    st.session_state[KEY_OP_FOR] = ident
    return point


def point_from_widgets(label_source: str) -> OperatingPoint:
    """The operating point the widgets show now (the pixel threshold None while it is the run's default)."""
    rule = st.session_state.get(KEY_RULE, DEFAULT_RULE)
    pixel = st.session_state.get(KEY_PIXEL_T)
    if pixel is not None and pixel == st.session_state.get(KEY_PIXEL_DEFAULT):
        pixel = None
    params = rule_params()
    costs: Costs = params["costs"]
    return OperatingPoint(rule=rule, threshold=float(st.session_state[KEY_T]) if rule == "manual" else None,
                          target_fpr=params["target_fpr"], target_tpr=params["target_tpr"], cost_fp=costs.cost_fp,
                          cost_fn=costs.cost_fn, cost_review=costs.cost_review, pixel_threshold=pixel,
                          label_source=label_source, note=str(st.session_state.get(KEY_NOTE) or ""))


def save_if_changed(run_dir: Path, detector: str, label_source: str) -> OperatingPoint | None:
    """Save the widgets' operating point for the run and detector when it differs from the stored one (the
    label source alone is not a change: it is recorded with the next real one). Returns the saved point."""
    if st.session_state.get(KEY_OP_FOR) != f"{Path(run_dir).resolve()}|{detector}":
        return None
    try:
        point = point_from_widgets(label_source)
    except (ConfigError, KeyError, TypeError, ValueError):
        return None
    stored = load_point(run_dir, detector) or OperatingPoint(label_source=label_source)
    if point.decision() == stored.decision():
        return None
    try:
        return save_point(run_dir, detector, point)
    except OSError as exc:
        st.warning(f"The operating point could not be saved in {Path(run_dir).name}: {exc}")
        return None


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


def current_threshold(curves: Curves) -> float:
    """Resolve the image threshold: the rule's on ``curves``, or the manual value (seeded from the stored point)."""
    if st.session_state.get(KEY_RULE) not in RULE_LABELS:
        st.session_state[KEY_RULE] = DEFAULT_RULE
    rule = st.session_state[KEY_RULE]
    if rule == "manual" and st.session_state.get(KEY_T) is None:
        st.session_state[KEY_T] = curves.f1_threshold
    if rule != "manual":
        t, why = resolve_threshold(point_from_widgets("dataset"), curves)
        if why:
            st.warning(why[0].upper() + why[1:] + ".")
        st.session_state[KEY_T] = t
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
        rec = DecisionRecord.from_file(f.name, data)  # CSV, JSON or a review report (HTML)
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


def detector_from_url(run_id: str, options: list[str]) -> None:
    """A link's ``detector`` selects it (``run_id|detector`` among ``options``), or says it is not offered."""
    asked = ui.url_param(ui.URL_DETECTOR)
    if asked and f"{run_id}|{asked}" in options:
        st.session_state[KEY_DETECTOR] = f"{run_id}|{asked}"
    elif asked:
        st.warning(f"The link asks for detector {asked!r}, which run {run_id} does not offer.")


def threshold_from_url(curves: Curves, t: float) -> float:
    """A link's (or an edited URL's) ``threshold`` becomes the manual operating point when it differs from ``t``
    (a reload of the page's own URL keeps the rule); the threshold in force."""
    asked = ui.url_param(ui.URL_THRESHOLD)
    if asked is None:
        return t
    try:
        value = float(asked)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        st.warning(f"The link's threshold {asked!r} is not a number: ignored.")
        return t
    if value != t:
        set_manual(value)
        t = current_threshold(curves)
    return t


def note_label_source(point: OperatingPoint, label_source: str) -> None:
    """Say when the saved point was chosen with other labels than the sidebar's."""
    if point.label_source != label_source and point.updated_utc:
        st.info(f"This operating point was saved with the labels '{ui.LABEL_SOURCE_NAMES[point.label_source]}'; the "
                f"metrics now use '{ui.LABEL_SOURCE_NAMES[label_source]}' (sidebar).", icon=":material/info:")
