"""Threshold: choose the operating threshold with its consequences in view.

For the sidebar run (and any runs to compare, scored on the same test set): ROC and PR curves with the
operating point, score histograms with the threshold line; the threshold set by slider, by typing, by
clicking the ROC curve, or by a rule (F1-max, Youden J, target false-alarm rate, target miss rate,
minimum expected cost, and the bottle-AE article's two ways of use); live consequences (confusion
matrix, rates, expected cost per 1,000 parts, iso-cost line, galleries of false alarms and misses,
the images closest to the threshold); the pixel-level threshold with segmentation overlays and the
PRO curve; a decision record to export and import.

Everything threshold-dependent reads curves precomputed once per scored set (``core.explorer``), so a
threshold change costs milliseconds; scoring a run is cached on disk in the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core.data.index import DatasetError
from core.evaluation.curves import (
    PRESETS,
    Costs,
    Curves,
    apply_rule,
    choose_threshold,
    closest_to_threshold,
    curves_for,
    false_negatives,
    false_positives,
    iso_cost_line,
    nearest_point,
    operating_point,
)
from core.evaluation.pixel import (
    binary_segmentation,
    pixel_curves,
    pixel_metrics,
    segmentation_overlay,
)
from core.evaluation.record import (
    check_record,
    decision_record,
    record_from_csv,
    record_from_json,
    record_to_csv,
    record_to_json,
)
from core.detectors import registry as detectors
from core.evaluation.scored import ScoredSet, scored_set, scored_set_path
from core.runs import RunError
from core.viz import heatmap, overlay
from views import ui
from views.results import DEFECT_COLOR, GOOD_COLOR, enlarge, load_test_view

# Session-state keys of this page.
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
BACKGROUND_DETECTORS = ("projection", "anounet")  # scored in a background job (seconds to minutes), then cached
SLIDER_STEPS = 1000
GALLERY_MAX = 24
GALLERY_COLS = 6
THUMB_PX = 112
COLORS = ["#4c78a8", "#f58518", "#54a24b", "#b279a2", "#9d755d", "#e45756"]


# --------------------------------------------------------------------------- scored sets
def comparable_runs(sel: ui.Selection) -> list[dict]:
    """Runs of the sidebar's data that give image scores: AE/VAE (reconstruction) and f-Net (distance to C)."""
    return [r for r in ui.run_summaries() if r["has_model"] and detectors.supported(str(r["config"].get("model")))
            and r["config"].get("model") != "unet" and ui.same_data(r["config"], sel.data, sel.category)]


def entry_options(runs: list[dict]) -> list[str]:
    """``run_id|detector`` for every run and each detector it supports."""
    return [f"{r['id']}|{spec.name}" for r in runs for spec in detectors.supported(str(r["config"].get("model")))]


def detector_title(name: str) -> str:
    try:
        return detectors.get(name).title
    except ValueError:
        return name


def entry_label(entry: str, by_id: dict[str, dict]) -> str:
    run_id, det = entry.split("|")
    model = by_id.get(run_id, {}).get("config", {}).get("model", "?").upper()
    return f"{model} · {run_id} · {detector_title(det)}"


def load_scored(run_dir: Path, detector: str) -> ScoredSet | None:
    """The cached scored set, computing reconstruction / f-Net scores here (a forward pass) and
    projection scores in a background job; None (after saying so) while that job runs or on error."""
    if detector in BACKGROUND_DETECTORS and not scored_set_path(run_dir, detector).exists():
        return _scoring_job(run_dir, detector)
    try:
        with st.spinner(f"Scoring the test images of {run_dir.name}…"):
            return scored_set(run_dir, detector)
    except (RunError, DatasetError, ValueError, OSError) as exc:
        st.error(f"{run_dir.name} cannot be scored with {detector_title(detector)}: {exc}")
        return None


def _scoring_job(run_dir: Path, detector: str) -> None:
    registry = ui.job_registry()
    job_id = f"scoring-{run_dir.name}-{detector}"
    what = detector_title(detector)
    job = registry.get(job_id)
    if job is None or (not job.snapshot().running and job.snapshot().status != "finished"):

        def task(ctx: Any) -> dict:
            scored_set(run_dir, detector, progress=lambda i, n: ctx.update(done=i, total=n))
            return {}

        try:
            registry.start("scoring", f"{what} scores · {run_dir.name}", task, job_id=job_id, done=0, total=0)
        except ValueError:
            pass

    def draw(job: Any, snap: Any) -> None:
        done, total = int(snap.state.get("done", 0)), int(snap.state.get("total", 0) or 1)
        st.progress(min(1.0, done / total), text=f"Scoring the test set of {run_dir.name} ({what}): "
                                                  f"{done}/{snap.state.get('total') or '…'} images · {snap.seconds:.0f} s "
                                                  "(once; then cached in the run folder)")

    snap = registry.get(job_id).snapshot()
    if snap.status == "failed":
        st.error(f"Scoring {run_dir.name} ({what}) failed: {snap.error}")
    elif snap.running:
        ui.live_job(job_id, draw)
    return None


# --------------------------------------------------------------------------- threshold state
def rule_params() -> dict[str, Any]:
    """The rule parameters and costs as currently set in the widgets (defaults before first draw)."""
    return {
        "target_fpr": float(st.session_state.get(KEY_FPR, 5.0)) / 100.0,
        "target_tpr": 1.0 - float(st.session_state.get(KEY_MISS, 5.0)) / 100.0,
        "costs": Costs(float(st.session_state.get(KEY_COST_FP, 1.0)), float(st.session_state.get(KEY_COST_FN, 10.0)),
                          float(st.session_state.get(KEY_COST_REVIEW, 0.0))),
    }


def rule_threshold(curves: Curves, rule: str, params: dict[str, Any]) -> float:
    """The threshold ``rule`` (a key of RULE_LABELS other than manual) picks on ``curves``."""
    if rule.startswith("preset:"):
        return float(apply_rule(curves, "f1", preset=rule.split(":", 1)[1])["threshold"])
    return choose_threshold(curves, rule, target_fpr=params["target_fpr"], target_tpr=params["target_tpr"],
                               costs=params["costs"])


def _set_manual(t: float) -> None:
    st.session_state[KEY_T] = float(t)
    st.session_state[KEY_RULE] = "manual"


def _on_slider() -> None:
    # The browser snaps the slider to its step grid and may report that as a change: only a move of
    # more than half a step away from the current threshold is the user's.
    value, step = float(st.session_state[KEY_SLIDER]), float(st.session_state.get(KEY_SLIDER + "_step", 0.0))
    if abs(value - float(st.session_state.get(KEY_T, value + 1.0))) > step / 2:
        _set_manual(value)


def _on_typed() -> None:
    _set_manual(st.session_state[KEY_TYPED])


def _on_roc_click(curves: Curves) -> None:
    event = st.session_state.get(KEY_ROC) or {}
    points = (event.get("selection") or {}).get("points") or []
    pts = [p for p in points if p.get("curve_number", 0) == 0] or points
    if pts:
        p = pts[0]
        _set_manual(nearest_point(curves, float(p["x"]), float(p["y"]))["threshold"])


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


# --------------------------------------------------------------------------- figures
def roc_figure(entries: list[tuple[str, Curves]], op: dict[str, Any], iso: dict[str, Any] | None) -> go.Figure:
    """ROC curves (the first is the primary, clickable), the operating point and the iso-cost line."""
    fig = go.Figure()
    for k, (name, c) in enumerate(entries):
        ci = f" [{c.auroc_ci[0]:.3f}, {c.auroc_ci[1]:.3f}]" if c.auroc_ci else ""
        auc = f"{c.auroc:.3f}" if c.auroc is not None else "n/a"
        fig.add_scatter(x=c.fpr, y=c.tpr, mode="lines+markers" if k == 0 else "lines", name=f"{name} · AUROC {auc}{ci}",
                        line={"color": COLORS[k % len(COLORS)], "width": 2.5 if k == 0 else 1.8, "shape": "hv"},
                        marker={"size": 5}, customdata=c.thresholds,
                        hovertemplate="FPR %{x:.3f}<br>TPR %{y:.3f}<br>threshold %{customdata:.4g}<extra></extra>")
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line={"color": "#bbb", "dash": "dot", "width": 1}, showlegend=False,
                    hoverinfo="skip")
    if iso is not None and iso.get("slope") is not None:
        fig.add_scatter(x=iso["fpr"], y=iso["tpr"], mode="lines", name="equal expected cost", hoverinfo="skip",
                        line={"color": "#888", "dash": "dash", "width": 1.5})
    fig.add_scatter(x=[op["fpr"]], y=[op["tpr"]], mode="markers", name="operating point", hoverinfo="skip",
                    marker={"size": 14, "color": "#e4572e", "symbol": "circle", "line": {"color": "white", "width": 2}})
    fig.update_layout(height=420, margin={"l": 10, "r": 10, "t": 30, "b": 10}, plot_bgcolor="white",
                      xaxis={"title": "false-alarm rate (FPR)", "range": [-0.02, 1.02], "gridcolor": "#eee", "constrain": "domain"},
                      yaxis={"title": "defects caught (TPR)", "range": [-0.02, 1.02], "gridcolor": "#eee",
                             "scaleanchor": "x", "scaleratio": 1},
                      legend={"orientation": "h", "y": -0.18, "font": {"size": 11}}, clickmode="event+select")
    return fig


def pr_figure(entries: list[tuple[str, Curves]], op: dict[str, Any]) -> go.Figure:
    fig = go.Figure()
    for k, (name, c) in enumerate(entries):
        ap = f"{c.average_precision:.3f}" if c.average_precision is not None else "n/a"
        fig.add_scatter(x=c.tpr[1:], y=c.precision[1:], mode="lines", name=f"{name} · AP {ap}",
                        line={"color": COLORS[k % len(COLORS)], "width": 2.5 if k == 0 else 1.8, "shape": "hv"})
    fig.add_scatter(x=[op["recall"]], y=[op["precision"]], mode="markers", name="operating point", hoverinfo="skip",
                    marker={"size": 14, "color": "#e4572e", "line": {"color": "white", "width": 2}})
    fig.update_layout(height=420, margin={"l": 10, "r": 10, "t": 30, "b": 10}, plot_bgcolor="white",
                      xaxis={"title": "recall (defects caught)", "range": [-0.02, 1.02], "gridcolor": "#eee"},
                      yaxis={"title": "precision (flagged that are defective)", "range": [-0.02, 1.02], "gridcolor": "#eee"},
                      legend={"orientation": "h", "y": -0.18, "font": {"size": 11}})
    return fig


def histogram_figure(ss: ScoredSet, t: float) -> go.Figure:
    fig = go.Figure()
    lab = ss.labels
    lo, hi = float(ss.scores.min()), float(ss.scores.max())
    size = (hi - lo) / 40 if hi > lo else 1.0
    bins = {"start": lo, "end": hi + size, "size": size}  # one set of bins for every class: comparable bars
    for value, name, color in ((0, "good", GOOD_COLOR), (1, "defective", DEFECT_COLOR), (-1, "unknown", "#999")):
        s = ss.scores[lab == value]
        if s.size:
            fig.add_histogram(x=s, name=f"{name} ({s.size})", marker_color=color, opacity=0.65, xbins=bins)
    fig.add_vline(x=t, line={"color": "#e4572e", "width": 2.5}, annotation_text=f"threshold {t:.4g}",
                  annotation_position="top right")
    fig.update_layout(barmode="overlay", height=260, margin={"l": 10, "r": 10, "t": 30, "b": 10}, plot_bgcolor="white",
                      xaxis_title="image score", yaxis_title="images", legend={"orientation": "h", "y": 1.2})
    return fig


# --------------------------------------------------------------------------- sections
def draw_controls(curves: Curves) -> None:
    """Rule, its parameters, costs, slider and typed threshold (one source of truth: KEY_T)."""
    lo, hi, step = slider_range(curves)
    t = float(np.clip(st.session_state[KEY_T], lo, hi))
    st.session_state[KEY_SLIDER] = float(min(hi, lo + round((t - lo) / step) * step))  # on the slider's grid
    st.session_state[KEY_SLIDER + "_step"] = step
    st.session_state[KEY_TYPED] = t
    rule = st.selectbox("Set the threshold by", list(RULE_LABELS), key=KEY_RULE, format_func=RULE_LABELS.get,
                        help="A rule recomputes the threshold whenever the data or its parameters change; moving the slider, "
                             "typing a value or clicking the ROC curve switches to Manual.")
    if rule.startswith("preset:"):
        st.caption(PRESETS[rule.split(":", 1)[1]].description)
    c1, c2 = st.columns(2)
    c1.number_input("False alarms at most (% of good parts)", 0.0, 100.0, 5.0, step=0.5, key=KEY_FPR,
                    disabled=rule != "fpr", help="Target false-alarm rate: the lowest threshold that flags at most this share "
                                                  "of good parts (catches the most defects within that budget).")
    c2.number_input("Misses at most (% of defects)", 0.0, 100.0, 5.0, step=0.5, key=KEY_MISS, disabled=rule != "tpr",
                    help="Target miss rate: the highest threshold that still catches all but this share of defects.")
    st.markdown("**Costs per part** (any currency; used for the expected cost and the minimum-cost rule)")
    c1, c2, c3 = st.columns(3)
    c1.number_input("False alarm", 0.0, 1e9, 1.0, key=KEY_COST_FP, help="A good part flagged (wasted, or re-inspected).")
    c2.number_input("Miss", 0.0, 1e9, 10.0, key=KEY_COST_FN, help="A defective part passed (returns, complaints, recalls).")
    c3.number_input("Manual review", 0.0, 1e9, 0.0, key=KEY_COST_REVIEW, help="Reviewing each flagged part by a person.")
    st.slider("Threshold", lo, hi, step=step, key=KEY_SLIDER, on_change=_on_slider, format="%.3g",
              help="Images scoring at or above the threshold are flagged as defective.")
    st.number_input("Type a threshold", lo, hi, step=step, key=KEY_TYPED, on_change=_on_typed, format="%.6g")


def draw_consequences(op: dict[str, Any], curves: Curves) -> None:
    c1, c2, c3 = st.columns(3)
    c1.metric("Defects caught (TPR)", f"{op['tpr']:.1%}", help=f"{op['tp']} of {op['n_pos']} defective images flagged.")
    c2.metric("False alarms (FPR)", f"{op['fpr']:.1%}", help=f"{op['fp']} of {op['n_neg']} good images flagged.")
    c3.metric("Precision", f"{op['precision']:.1%}", help="Of the flagged images, the share that is defective.")
    c1, c2, c3 = st.columns(3)
    c1.metric("F1", f"{op['f1']:.3f}", help=f"F1-max on this set: {curves.f1_max:.3f}.")
    c2.metric("Flagged", f"{op['flagged']} of {op['n']}", help="Images at or above the threshold (labeled images).")
    cost = op.get("cost_per_1000")
    c3.metric("Cost per 1,000 parts", f"{cost:,.0f}" if cost is not None else "—",
              help="Per 1,000 parts with this test set's mix: false alarms × their cost + misses × their cost + "
                   "flagged parts × the review cost.")
    st.table({"": ["defective", "good"],
              "flagged (score ≥ threshold)": [f"{op['tp']} true detections", f"{op['fp']} false alarms"],
              "passed": [f"{op['fn']} misses", f"{op['tn']} correct passes"]})


def _thumb(view: dict[str, Any], i_view: int, amap: np.ndarray | None, vmax: float) -> np.ndarray:
    img = view["images"][i_view]
    if amap is not None:
        img = overlay(img, heatmap(amap.astype(np.float32), 0.0, vmax))
    return enlarge(img, THUMB_PX)


def draw_gallery(ss: ScoredSet, idx: np.ndarray, view: dict[str, Any] | None, empty: str, t: float) -> None:
    if idx.size == 0:
        st.caption(empty)
        return
    names = {n: i for i, n in enumerate(view["names"])} if view is not None else {}
    vmax = float(np.quantile(ss.maps.astype(np.float32), 0.999)) if ss.maps is not None else 1.0
    shown = idx[:GALLERY_MAX]
    for row in range(0, len(shown), GALLERY_COLS):
        cols = st.columns(GALLERY_COLS)
        for col, i in zip(cols, shown[row : row + GALLERY_COLS]):
            path = ss.paths[int(i)]
            label = {1: "defective", 0: "good", -1: "unknown"}[int(ss.labels[i])]
            caption = f"{Path(path).parent.name}/{Path(path).stem} · {ss.scores[i]:.4g} ({ss.scores[i] - t:+.3g}) · {label}"
            if path in names:
                col.image(_thumb(view, names[path], ss.maps[i] if ss.maps is not None else None, vmax), caption=caption,
                          output_format="PNG")
            else:
                col.caption(caption)
    if idx.size > GALLERY_MAX:
        st.caption(f"… and {idx.size - GALLERY_MAX} more.")


def draw_galleries(ss: ScoredSet, curves: Curves, t: float, view: dict[str, Any] | None) -> None:
    fps, fns = false_positives(curves, t), false_negatives(curves, t)
    close = closest_to_threshold(curves, t, k=GALLERY_MAX)
    tab_fp, tab_fn, tab_close = st.tabs([f"False alarms ({fps.size})", f"Misses ({fns.size})", "Closest to the threshold"])
    with tab_fp:
        draw_gallery(ss, fps, view, "No false alarm at this threshold.", t)
    with tab_fn:
        draw_gallery(ss, fns, view, "No missed defect at this threshold.", t)
    with tab_close:
        st.caption("The images a person should review first: their scores are nearest the threshold (either side).")
        draw_gallery(ss, close, view, "No image.", t)
    if ss.maps is not None:
        st.caption("Thumbnails: the image with its anomaly map overlaid; caption: name · score (distance to the threshold) · label.")


def draw_pixel_level(ss: ScoredSet, view: dict[str, Any] | None) -> None:
    st.subheader("Pixel level")
    if ss.maps is None:
        st.caption("This detector gives no anomaly map (the f-Net scores whole images).")
        return
    with st.spinner("Pixel curves…"):
        pc = pixel_curves(ss)
    if pc is None:
        st.caption("No image of this test set has a defect mask: pixel metrics need masks.")
        return
    lo, hi = float(pc.value_min), float(pc.value_max)
    if st.session_state.get(KEY_PIXEL_T) is None or not lo <= st.session_state[KEY_PIXEL_T] <= hi:
        st.session_state[KEY_PIXEL_T] = float(np.clip(pc.f1_threshold, lo, hi))
    step = (hi - lo) / SLIDER_STEPS if hi > lo else 1.0
    pt = st.slider("Pixel threshold", lo, max(hi, lo + step), step=step, key=KEY_PIXEL_T, format="%.4g",
                   help=f"Pixels with a map value at or above it are segmented as defect. Pixel F1-max at {pc.f1_threshold:.4g}.")
    pm = pixel_metrics(pc, pt)
    c = st.columns(6)
    c[0].metric("Pixel precision", f"{pm['precision']:.3f}")
    c[1].metric("Pixel recall", f"{pm['recall']:.3f}")
    c[2].metric("Pixel F1", f"{pm['f1']:.3f}", help=f"F1-max {pc.f1_max:.3f}")
    c[3].metric("IoU", f"{pm['iou']:.3f}", help="Intersection over union of all segmented vs. all defect pixels.")
    c[4].metric("Pixel AUROC", ui.fmt_metric(pc.pixel_auroc))
    c[5].metric("AUPRO", ui.fmt_metric(pc.aupro), help="Area under the PRO curve up to a pixel FPR of 0.3, normalized.")
    left, right = st.columns(2)
    with left:
        fig = go.Figure()
        k = max(1, pc.grid.size // 600)
        fig.add_scatter(x=pc.grid[:-1:k], y=pc.f1[:-1:k], name="F1", mode="lines")
        fig.add_scatter(x=pc.grid[:-1:k], y=pc.iou[:-1:k], name="IoU", mode="lines")
        fig.add_vline(x=pt, line={"color": "#e4572e", "width": 2})
        fig.update_layout(height=260, margin={"l": 10, "r": 10, "t": 30, "b": 10}, xaxis_title="pixel threshold",
                          plot_bgcolor="white", legend={"orientation": "h", "y": 1.2})
        st.plotly_chart(fig, key="thr-pixel-f1", config={"displayModeBar": False})
    with right:
        if pc.pro is not None:
            fig = go.Figure(go.Scatter(x=pc.pro_fpr, y=pc.pro, mode="lines", name="PRO"))
            fig.add_vrect(x0=0.3, x1=1.0, fillcolor="#eee", opacity=0.5, line_width=0)
            fig.update_layout(height=260, margin={"l": 10, "r": 10, "t": 30, "b": 10}, plot_bgcolor="white",
                              xaxis={"title": "pixel false-positive rate", "range": [0, 1]}, yaxis={"title": "per-region overlap",
                                                                                                   "range": [0, 1.02]},
                              title={"text": f"PRO curve (AUPRO to FPR 0.3: {ui.fmt_metric(pc.aupro)})", "font": {"size": 13}})
            st.plotly_chart(fig, key="thr-pro", config={"displayModeBar": False})
    if view is None:
        return
    names = {n: i for i, n in enumerate(view["names"])}
    defective = [i for i in np.argsort(-ss.scores) if ss.labels[i] == 1 and ss.paths[i] in names]
    options = [ss.paths[i] for i in defective]
    if not options:
        return
    if not isinstance(st.session_state.get(KEY_SEG_IMAGES), list) or not set(st.session_state[KEY_SEG_IMAGES]) <= set(options):
        st.session_state[KEY_SEG_IMAGES] = options[:4]
    chosen = st.multiselect("Segmentation on", options, key=KEY_SEG_IMAGES, max_selections=8,
                            format_func=lambda p: f"{Path(p).parent.name}/{Path(p).stem}")
    cols = st.columns(max(1, len(chosen)) if chosen else 1)
    for col, path in zip(cols, chosen):
        i = ss.index_of(path)
        seg = binary_segmentation(ss.maps[i], pm["threshold_used"])
        mask = ss.masks[i] if ss.masks is not None else None
        img = segmentation_overlay(view["images"][names[path]], seg, mask)
        col.image(enlarge(img, 160), caption=f"{Path(path).parent.name}/{Path(path).stem}", output_format="PNG")
    st.caption("Red tint: pixels at or above the pixel threshold; green outline: the ground-truth defect.")


def _apply_record() -> None:
    """on_change of the record upload: restore threshold, rule and costs (before the widgets are drawn)."""
    f = st.session_state.get(KEY_RECORD)
    if f is None:
        return
    data = f.getvalue()
    try:
        rec = record_from_csv(data) if f.name.lower().endswith(".csv") else record_from_json(data)
    except ValueError as exc:
        st.session_state[KEY_RECORD_MSG] = ("error", f"{f.name} is not a decision record: {exc}")
        return
    rule = rec.get("rule") or "manual"
    preset = rec.get("preset")
    st.session_state[KEY_RULE] = f"preset:{preset}" if preset in PRESETS else (rule if rule in RULE_LABELS else "manual")
    if st.session_state[KEY_RULE] == "manual":
        st.session_state[KEY_T] = float(rec["threshold"])
    params, costs = rec.get("rule_params") or {}, rec.get("costs") or {}
    if params.get("target_fpr") is not None:
        st.session_state[KEY_FPR] = 100.0 * float(params["target_fpr"])
    if params.get("target_tpr") is not None:
        st.session_state[KEY_MISS] = 100.0 * (1.0 - float(params["target_tpr"]))
    for key, name in ((KEY_COST_FP, "cost_fp"), (KEY_COST_FN, "cost_fn"), (KEY_COST_REVIEW, "cost_review")):
        if costs.get(name) is not None:
            st.session_state[key] = float(costs[name])
    if (rec.get("pixel") or {}).get("threshold") is not None:
        st.session_state[KEY_PIXEL_T] = float(rec["pixel"]["threshold"])
    st.session_state[KEY_NOTE] = rec.get("note") or ""
    st.session_state[KEY_RECORD_MSG] = ("record", json.dumps(rec))


def draw_record(ss: ScoredSet, curves: Curves, t: float) -> None:
    st.subheader("Decision record")
    rule = st.session_state.get(KEY_RULE, "manual")
    params = rule_params()
    preset = rule.split(":", 1)[1] if rule.startswith("preset:") else None
    base_rule = PRESETS[preset].rule if preset else rule
    rec = decision_record(
        ss, t, curves=curves, rule=base_rule, preset=preset,
        target_fpr=params["target_fpr"] if base_rule == "fpr" else (PRESETS[preset].target_fpr if preset else None),
        target_tpr=params["target_tpr"] if base_rule == "tpr" else (PRESETS[preset].target_tpr if preset else None),
        costs=params["costs"], pixel_threshold=st.session_state.get(KEY_PIXEL_T) if ss.maps is not None else None,
        note=st.session_state.get(KEY_NOTE) or None)
    left, right = st.columns([3, 2])
    with left:
        st.text_input("Note (who decided, why)", key=KEY_NOTE)
        b1, b2 = st.columns(2)
        stem = f"decision-{ss.run_id}-{ss.detector}"
        b1.download_button("Download JSON", record_to_json(rec), file_name=f"{stem}.json", mime="application/json",
                           icon=":material/download:", width="stretch")
        b2.download_button("Download CSV", record_to_csv(rec), file_name=f"{stem}.csv", mime="text/csv",
                           icon=":material/download:", width="stretch")
        st.caption(f"Threshold {t:.6g} ({RULE_LABELS.get(rule, rule)}), the metrics there, the costs, run `{ss.run_id}` "
                   f"({detector_title(ss.detector)}), fingerprints of the data ({rec['data_fingerprint'][:10]}…) "
                   f"and of the labels ({rec['label_fingerprint'][:10]}…), and the time.")
    with right:
        st.file_uploader("Import a record (restores the choice)", type=["json", "csv"], key=KEY_RECORD, on_change=_apply_record)
        msg = st.session_state.get(KEY_RECORD_MSG)
        if msg and msg[0] == "error":
            st.error(msg[1])
        elif msg and msg[0] == "record":
            imported = json.loads(msg[1])
            problems = check_record(imported, ss)
            if problems:
                st.warning("The imported record does not match what is shown: " + "; ".join(problems)
                           + ". Its threshold and settings were restored anyway; check before relying on them.")
            else:
                st.success(f"Record from {imported.get('created_utc', '?')} restored: same run, data and labels.")


def main() -> None:
    st.title("Threshold")
    sel = ui.selection()
    run = ui.require_run(sel)
    if run is None:
        return
    st.caption("Choose the score above which an image is flagged, and see what it means: defects caught, false alarms, "
               "cost, and which images land on the wrong side. The threshold follows a rule, or you set it.")
    runs = comparable_runs(sel)
    by_id = {r["id"]: r for r in runs}
    options = entry_options(runs)
    primary_opts = [o for o in options if o.startswith(f"{run.id}|")]
    c1, c2 = st.columns([1, 2])
    if st.session_state.get(KEY_DETECTOR) not in primary_opts:
        st.session_state[KEY_DETECTOR] = primary_opts[0]
    primary = c1.selectbox("Detector of the sidebar run", primary_opts, key=KEY_DETECTOR,
                           format_func=lambda e: detector_title(e.split("|")[1]),
                           help="Reconstruction error or the iterative projection's map (AE/VAE runs), the distance to C "
                                "or the Ano-Unet map (f-Net runs). Projection and Ano-Unet are scored once in the background, "
                                "then cached in the run folder.")
    others = [o for o in options if o != primary]
    if not isinstance(st.session_state.get(KEY_COMPARE), list) or not set(st.session_state[KEY_COMPARE]) <= set(others):
        st.session_state[KEY_COMPARE] = [o for o in st.session_state.get(KEY_COMPARE) or [] if o in others]
    compare = c2.multiselect("Compare on the same ROC", others, key=KEY_COMPARE, format_func=lambda e: entry_label(e, by_id),
                             help="Other runs of this data (AE, VAE, f-Net) and detectors, on the same test set.")
    ss = load_scored(run.path, primary.split("|")[1])
    if ss is None:
        return
    ss = ui.relabeled(ss, sel)
    curves = curves_for(ss)
    if curves.n_pos == 0 or curves.n_neg == 0:
        st.warning("The test set needs both good and defective images with labels to choose a threshold.")
        return
    entries = [(entry_label(primary, by_id), curves)]
    for e in compare:
        other = load_scored(Path(by_id[e.split("|")[0]]["path"]), e.split("|")[1])
        if other is not None:
            other = ui.relabeled(other, sel)
            if other.fingerprint_data() != ss.fingerprint_data():
                st.warning(f"{entry_label(e, by_id)} was scored on a different test set: left out.")
                continue
            entries.append((entry_label(e, by_id), curves_for(other)))
    t = current_threshold(ss, curves)
    params = rule_params()
    op = operating_point(curves, t, params["costs"])
    iso = iso_cost_line(curves, params["costs"], t) if params["costs"].cost_fn > 0 or params["costs"].cost_fp > 0 else None

    left, right = st.columns([2, 3], gap="large")
    with left:
        st.subheader("Operating point")
        draw_controls(curves)
    with right:
        st.subheader(f"At threshold {t:.4g}")
        draw_consequences(op, curves)
    roc_col, pr_col = st.columns(2)
    with roc_col:
        st.plotly_chart(roc_figure(entries, op, iso), key=KEY_ROC, on_select=lambda: _on_roc_click(curves),
                        selection_mode="points", config={"displayModeBar": False})
        st.caption("Click a point of the first curve to move the threshold there. Dashed: points of equal expected cost "
                   "through the operating point (better is up-left). AUROC with its bootstrap 95% interval.")
    with pr_col:
        st.plotly_chart(pr_figure(entries, op), key="thr-pr", config={"displayModeBar": False})
    st.plotly_chart(histogram_figure(ss, t), key="thr-hist", config={"displayModeBar": False})
    view = load_test_view(run) if ss.run_id == run.id else None
    st.subheader("Who lands on the wrong side")
    draw_galleries(ss, curves, t, view)
    draw_pixel_level(ss, view)
    draw_record(ss, curves, t)


if __name__ == "__main__":
    from views import explorer as _page

    _page.main()
