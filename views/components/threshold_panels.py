"""Sections of the Threshold page below the controls: the consequences at the threshold, the galleries of
who lands on the wrong side, the pixel level and the decision record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from core.evaluation.curves import (
    PRESETS,
    Curves,
    closest_to_threshold,
    false_negatives,
    false_positives,
)
from core.evaluation.operating import decision_warnings
from core.evaluation.pixel import (
    binary_segmentation,
    pixel_curves,
    pixel_metrics,
    segmentation_overlay,
)
from core.evaluation.record import DecisionRecord
from core.evaluation.scored import ScoredSet
from core.services.threshold import detector_title, record_for
from core.viz import heatmap, heatmap_anchored, heatmap_vmax, overlay
from views.components import ui
from views.components.display import enlarge, plural
from views.components.threshold_charts import pixel_f1_figure, pro_figure
from views.components.threshold_state import (
    KEY_COST_FN,
    KEY_COST_FP,
    KEY_COST_REVIEW,
    KEY_FPR,
    KEY_MISS,
    KEY_NOTE,
    KEY_PIXEL_DEFAULT,
    KEY_PIXEL_T,
    KEY_RECORD,
    KEY_RECORD_MSG,
    KEY_RULE,
    KEY_SEG_IMAGES,
    KEY_SLIDER,
    KEY_T,
    KEY_TYPED,
    RULE_LABELS,
    SLIDER_STEPS,
    apply_record,
    on_slider,
    on_typed,
    rule_params,
    slider_range,
)

GALLERY_MAX = 24
GALLERY_COLS = 6
THUMB_PX = 112
LABEL_NAMES = {1: "defective", 0: "good", -1: "unknown"}


def short_name(path: str) -> str:
    """``<defect folder>/<stem>`` of a test image path."""
    return f"{Path(path).parent.name}/{Path(path).stem}"


def draw_controls(curves: Curves) -> None:
    """Rule, its parameters, costs, slider and typed threshold (one source of truth: KEY_T)."""
    lo, hi, step = slider_range(curves)
    t = float(np.clip(st.session_state[KEY_T], lo, hi))
    st.session_state[KEY_SLIDER] = float(min(hi, lo + round((t - lo) / step) * step))  # on the slider's grid
    st.session_state[KEY_SLIDER + "_step"] = step
    st.session_state[KEY_TYPED] = t
    rule = st.selectbox("Set the threshold by", list(RULE_LABELS), key=KEY_RULE, format_func=RULE_LABELS.get,
                        help="A rule recomputes the threshold whenever the data or its parameters change; moving the slider, "
                             "typing a value or clicking the ROC curve switches to Manual. Youden J (max TPR − FPR) is the "
                             "default because it weighs misses and false alarms by their rates: unlike F1-max it does not "
                             "drift to flagging everything when the test set holds more defects than good parts (on the "
                             "shared MVTec bottle F1-max flagged 83 of 83 images). Every change is saved as this run's "
                             "operating point, which Results, Label and Try your image use.")
    if rule.startswith("preset:"):
        st.caption(PRESETS[rule.split(":", 1)[1]].description)
    c1, c2 = st.columns(2)
    c1.number_input("False alarms at most (% of good parts)", 0.0, 100.0, step=0.5, key=KEY_FPR,
                    disabled=rule != "fpr", help="Target false-alarm rate: the lowest threshold that flags at most this share "
                                                  "of good parts (catches the most defects within that budget).")
    c2.number_input("Misses at most (% of defects)", 0.0, 100.0, step=0.5, key=KEY_MISS, disabled=rule != "tpr",
                    help="Target miss rate: the highest threshold that still catches all but this share of defects.")
    st.markdown("**Costs per part** (any currency; used for the expected cost and the minimum-cost rule)")
    c1, c2, c3 = st.columns(3)
    c1.number_input("False alarm", 0.0, 1e9, key=KEY_COST_FP, help="A good part flagged (wasted, or re-inspected).")
    c2.number_input("Miss", 0.0, 1e9, key=KEY_COST_FN, help="A defective part passed (returns, complaints, recalls).")
    c3.number_input("Manual review", 0.0, 1e9, key=KEY_COST_REVIEW, help="Reviewing each flagged part by a person.")
    st.slider("Threshold", lo, hi, step=step, key=KEY_SLIDER, on_change=on_slider, format="%.3g",
              help="Images scoring at or above the threshold are flagged as defective.")
    st.number_input("Type a threshold", lo, hi, step=step, key=KEY_TYPED, on_change=on_typed, format="%.6g")


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
    for w in decision_warnings(op):
        st.warning(w[0].upper() + w[1:] + ". Check the rule or set the threshold yourself.", icon=":material/warning:")
    st.table({"": ["defective", "good"],
              "flagged (score ≥ threshold)": [plural(op["tp"], "true detection"), plural(op["fp"], "false alarm")],
              "passed": [plural(op["fn"], "miss", "misses"), plural(op["tn"], "correct pass", "correct passes")]})


def _thumb(img: np.ndarray, amap: np.ndarray | None, vmax: float, anchor: float | None = None) -> np.ndarray:
    if amap is not None:
        amap = amap.astype(np.float32)
        img = overlay(img, heatmap_anchored(amap, anchor) if anchor is not None else heatmap(amap, 0.0, vmax))
    return enlarge(img, THUMB_PX)


def draw_gallery(ss: ScoredSet, idx: np.ndarray, view: dict[str, Any] | None, empty: str, t: float) -> None:
    if idx.size == 0:
        st.caption(empty)
        return
    names = {n: i for i, n in enumerate(view["names"])} if view is not None else {}
    vmax = heatmap_vmax(ss.maps)
    anchor = st.session_state.get(KEY_PIXEL_T)  # red = at or above the pixel threshold (set once the pixel level is drawn)
    shown = idx[:GALLERY_MAX]
    for row in range(0, len(shown), GALLERY_COLS):
        for col, i in zip(st.columns(GALLERY_COLS), shown[row : row + GALLERY_COLS]):
            path = ss.paths[int(i)]
            caption = f"{short_name(path)} · {ss.scores[i]:.4g} ({ss.scores[i] - t:+.3g}) · {LABEL_NAMES[int(ss.labels[i])]}"
            if path in names:
                amap = ss.maps[i] if ss.maps is not None else None
                col.image(_thumb(view["images"][names[path]], amap, vmax, anchor), caption=caption, output_format="PNG")
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
        anchor = st.session_state.get(KEY_PIXEL_T)
        how = (f"coloured relative to the pixel threshold {anchor:.4g} (blue below, yellow to red at or above)"
               if anchor is not None else "on one colour scale")
        st.caption(f"Thumbnails: the image with its anomaly map overlaid, {how}; caption: name · score (distance to the "
                   "threshold) · label.")


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
    default = float(np.clip(pc.f1_threshold, lo, hi))  # the run's own pixel default: pixel F1-max
    st.session_state[KEY_PIXEL_DEFAULT] = default
    if st.session_state.get(KEY_PIXEL_T) is None or not lo <= st.session_state[KEY_PIXEL_T] <= hi:
        st.session_state[KEY_PIXEL_T] = default
    step = (hi - lo) / SLIDER_STEPS if hi > lo else 1.0
    pt = st.slider("Pixel threshold", lo, max(hi, lo + step), step=step, key=KEY_PIXEL_T, format="%.4g",
                   help=f"Pixels with a map value at or above it are segmented as defect. Pixel F1-max at {pc.f1_threshold:.4g}.")
    pm = pixel_metrics(pc, pt)
    for w in decision_warnings({}, pm):
        st.warning(w[0].upper() + w[1:] + ".", icon=":material/warning:")
    c = st.columns(6)
    c[0].metric("Pixel precision", f"{pm['precision']:.3f}")
    c[1].metric("Pixel recall", f"{pm['recall']:.3f}")
    c[2].metric("Pixel F1", f"{pm['f1']:.3f}", help=f"F1-max {pc.f1_max:.3f}")
    c[3].metric("IoU", f"{pm['iou']:.3f}", help="Intersection over union of all segmented vs. all defect pixels.")
    c[4].metric("Pixel AUROC", ui.fmt_metric(pc.pixel_auroc))
    c[5].metric("AUPRO", ui.fmt_metric(pc.aupro), help="Area under the PRO curve up to a pixel FPR of 0.3, normalized.")
    left, right = st.columns(2)
    left.plotly_chart(pixel_f1_figure(pc, pt), key="thr-pixel-f1", config={"displayModeBar": False})
    if pc.pro is not None:
        right.plotly_chart(pro_figure(pc), key="thr-pro", config={"displayModeBar": False})
    if view is not None:
        draw_segmentation(ss, view, pm["threshold_used"])


def draw_segmentation(ss: ScoredSet, view: dict[str, Any], threshold: float) -> None:
    """The chosen defective images with their pixels at or above ``threshold`` tinted and the truth outlined."""
    names = {n: i for i, n in enumerate(view["names"])}
    options = [ss.paths[i] for i in np.argsort(-ss.scores) if ss.labels[i] == 1 and ss.paths[i] in names]
    if not options:
        return
    if not isinstance(st.session_state.get(KEY_SEG_IMAGES), list) or not set(st.session_state[KEY_SEG_IMAGES]) <= set(options):
        st.session_state[KEY_SEG_IMAGES] = options[:4]
    chosen = st.multiselect("Segmentation on", options, key=KEY_SEG_IMAGES, max_selections=8, format_func=short_name)
    for col, path in zip(st.columns(max(1, len(chosen))), chosen):
        i = ss.index_of(path)
        seg = binary_segmentation(ss.maps[i], threshold)
        img = segmentation_overlay(view["images"][names[path]], seg, ss.masks[i] if ss.masks is not None else None)
        col.image(enlarge(img, 160), caption=short_name(path), output_format="PNG")
    st.caption("Red tint: pixels at or above the pixel threshold; green outline: the ground-truth defect.")


def draw_record(ss: ScoredSet, curves: Curves, t: float) -> None:
    st.subheader("Decision record")
    rule = st.session_state.get(KEY_RULE, "manual")
    rec = record_for(ss, t, curves, rule, rule_params(), pixel_threshold=st.session_state.get(KEY_PIXEL_T),
                     note=st.session_state.get(KEY_NOTE) or None)
    left, right = st.columns([3, 2])
    with left:
        st.text_input("Note (who decided, why)", key=KEY_NOTE)
        b1, b2 = st.columns(2)
        stem = f"decision-{ss.run_id}-{ss.detector}"
        b1.download_button("Download JSON", rec.to_json(), file_name=f"{stem}.json", mime="application/json",
                           icon=":material/download:", width="stretch")
        b2.download_button("Download CSV", rec.to_csv(), file_name=f"{stem}.csv", mime="text/csv",
                           icon=":material/download:", width="stretch")
        st.caption(f"Threshold {t:.6g} ({RULE_LABELS.get(rule, rule)}), the metrics there, the costs, run `{ss.run_id}` "
                   f"({detector_title(ss.detector)}), fingerprints of the data ({rec.data_fingerprint[:10]}…) "
                   f"and of the labels ({rec.label_fingerprint[:10]}…), and the time.")
        if rec.warnings:
            st.caption(f":orange[The record keeps the warnings: {rec.warnings}.]")
    with right:
        st.file_uploader("Import a record or a review report (restores the choice)", type=["json", "csv", "html"],
                         key=KEY_RECORD, on_change=apply_record)
        msg = st.session_state.get(KEY_RECORD_MSG)
        if msg and msg[0] == "error":
            st.error(msg[1])
        elif msg and msg[0] == "record":
            imported = DecisionRecord.from_json(msg[1])
            problems = imported.check(ss)
            if problems:
                st.warning("The imported record does not match what is shown: " + "; ".join(problems)
                           + ". Its threshold and settings were restored anyway; check before relying on them.")
            else:
                st.success(f"Record from {imported.created_utc} restored: same run, data and labels.")
