"""Threshold: choose the operating threshold with its consequences in view.

For the sidebar run (and any runs to compare, scored on the same test set): ROC and PR curves with the
operating point, score histograms with the threshold line; the threshold set by slider, by typing, by
clicking the ROC curve, or by a rule (F1-max, Youden J, target false-alarm rate, target miss rate,
minimum expected cost, and the bottle-AE article's two ways of use); live consequences (confusion
matrix, rates, expected cost per 1,000 parts, iso-cost line, galleries of false alarms and misses,
the images closest to the threshold); the pixel-level threshold with segmentation overlays and the
PRO curve; a decision record to export and import.

Everything threshold-dependent reads curves precomputed once per scored set (``core.evaluation.curves``),
so a threshold change costs milliseconds; scoring a run is cached on disk in the run folder. The state
and its callbacks live in ``views.components.threshold_state``, the sections in ``threshold_panels``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from core.data.index import DatasetError
from core.evaluation.curves import Curves, curves_for, iso_cost_line, operating_point
from core.evaluation.scored import ScoredSet, scored_set, scored_set_path
from core.runs import RunError
from core.services.threshold import (
    BACKGROUND_DETECTORS,
    detector_title,
    entry_label,
    entry_options,
    gives_image_scores,
    scoring_task,
)
from views.components import report_button, ui
from views.components.display import load_test_view
from views.components.threshold_charts import histogram_figure, pr_figure, roc_figure
from views.components.threshold_panels import (
    draw_consequences,
    draw_controls,
    draw_galleries,
    draw_pixel_level,
    draw_record,
)
from views.components.threshold_state import (  # noqa: F401  (the keys are this page's API: tests use them)
    KEY_COMPARE,
    KEY_COST_FN,
    KEY_COST_FP,
    KEY_COST_REVIEW,
    KEY_DETECTOR,
    KEY_FPR,
    KEY_MISS,
    KEY_PIXEL_T,
    KEY_RECORD,
    KEY_ROC,
    KEY_RULE,
    KEY_SLIDER,
    KEY_T,
    KEY_TYPED,
    RULE_LABELS,
    current_threshold,
    detector_from_url,
    note_label_source,
    on_roc_click,
    rule_params,
    save_if_changed,
    seed_point,
    threshold_from_url,
)


def comparable_runs(sel: ui.Selection) -> list[dict]:
    """Runs of the sidebar's data that give image scores: AE/VAE (reconstruction) and f-Net (distance to C)."""
    return [r for r in ui.run_summaries() if gives_image_scores(r) and ui.same_data(r["config"], sel.data, sel.category)]


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
    registry, job_id, what = ui.job_registry(), f"scoring-{run_dir.name}-{detector}", detector_title(detector)
    job = registry.get(job_id)
    cancelled = job is not None and job.snapshot().state.get("cancelled_in_queue")  # a rerun does not undo a cancel
    if job is None or (not job.snapshot().running and job.snapshot().status != "finished" and not cancelled) or \
            (cancelled and st.button(f"Score {run_dir.name} ({what}) after all", key=f"rescore-{job_id}")):
        try:
            registry.start("scoring", f"{what} scores · {run_dir.name}", scoring_task(run_dir, detector), job_id=job_id,
                           done=0, total=0)
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
    elif snap.state.get("cancelled_in_queue"):
        st.info(f"Scoring {run_dir.name} ({what}) was cancelled while it waited in the queue.")
    elif snap.running:
        ui.live_job(job_id, draw)


def compared_curves(ss: ScoredSet, sel: ui.Selection, compare: list[str], by_id: dict[str, dict]) -> list[tuple[str, Curves]]:
    """The curves of the runs to compare that were scored on the same test set as ``ss``."""
    entries = []
    for e in compare:
        other = load_scored(Path(by_id[e.split("|")[0]]["path"]), e.split("|")[1])
        if other is None:
            continue
        other = ui.relabeled(other, sel)
        if other.fingerprint_data() != ss.fingerprint_data():
            st.warning(f"{entry_label(e, by_id)} was scored on a different test set: left out.")
            continue
        entries.append((entry_label(e, by_id), curves_for(other)))
    return entries


def main() -> None:
    opened = ui.open_page("Threshold", "run")
    if opened is None:
        return
    sel, run = opened
    st.caption("Choose the score above which an image is flagged, and see what it means: defects caught, false alarms, "
               "cost, and which images land on the wrong side. The threshold follows a rule, or you set it.")
    runs = comparable_runs(sel)
    by_id = {r["id"]: r for r in runs}
    options = entry_options(runs)
    primary_opts = [o for o in options if o.startswith(f"{run.id}|")]
    c1, c2 = st.columns([1, 2])
    detector_from_url(run.id, primary_opts)
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
    entries = [(entry_label(primary, by_id), curves), *compared_curves(ss, sel, compare, by_id)]
    detector = primary.split("|")[1]
    point = seed_point(run.path, detector)
    t = threshold_from_url(curves, current_threshold(curves))
    note_label_source(point, sel.label_source)
    costs = rule_params()["costs"]
    op = operating_point(curves, t, costs)
    iso = iso_cost_line(curves, costs, t) if costs.cost_fn > 0 or costs.cost_fp > 0 else None
    left, right = st.columns([2, 3], gap="large")
    with left:
        st.subheader("Operating point")
        draw_controls(curves)
    with right:
        st.subheader(f"At threshold {t:.4g}")
        draw_consequences(op, curves)
    roc_col, pr_col = st.columns(2)
    with roc_col:
        st.plotly_chart(roc_figure(entries, op, iso), key=KEY_ROC, on_select=lambda: on_roc_click(curves),
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
    save_if_changed(run.path, detector, sel.label_source)
    report_button.draw(run.path, detector, sel.label_source, key="thr_report", heading="Review report")  # after the save
    ui.url_write(**{ui.URL_DETECTOR: detector, ui.URL_THRESHOLD: repr(float(t))})


if __name__ == "__main__":
    main()
