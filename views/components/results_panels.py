"""The Results page's header (run, data, status badge) and its metric tiles."""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.config import FEATURE_MODELS
from core.runs import LoadedRun, read_history
from views.components import ui
from views.components.display import fmt_score


def draw_header(run: LoadedRun, view: dict[str, Any]) -> None:
    cfg = run.config
    hist = read_history(run.path)
    status = hist.get("status")
    if status == "running":
        st.markdown(f":orange-badge[:material/hourglass_top: still training] epoch {len(hist.get('epochs') or [])} of "
                    f"{cfg.epochs}: these metrics are of the best checkpoint so far and will change.")
    elif status == "interrupted":
        st.markdown(":red-badge[:material/warning: interrupted] the training process ended before finishing; these "
                    "metrics are of the best checkpoint it saved.")
    n, n_def, n_unknown = len(view["scores"]), int((view["labels"] == 1).sum()), int((view["labels"] < 0).sum())
    st.caption(
        f"Run `{run.id}` · {cfg.model.upper()} · {cfg.data} / {cfg.category} · {cfg.size} px, "
        f"{cfg.channels} channel{'s' if cfg.channels != 1 else ''} · "
        + (f"fitted on ImageNet features ({cfg.feature_backbone}) · score: largest patch distance · "
           if cfg.model in FEATURE_MODELS else f"best epoch {run.epoch} · score: {cfg.score_mode}"
           + (" of the error standardized per pixel by held-out good images"
              if view["scored"].meta.get("settings", {}).get("normalize") else "") + " · ")
        + f"{n} test images ({n_def} defective"
        + (f", {n_unknown} without a label: left out of the metrics" if n_unknown else "") + ")"
        + (f" · labels: {ui.LABEL_SOURCE_NAMES[view['label_source']]}" if view.get("label_source") else "")
    )
    if view["skipped"]:
        with st.expander(f"{len(view['skipped'])} test file(s) could not be read and were skipped"):
            for path, reason in view["skipped"]:
                st.text(f"{path}: {reason}")


def draw_metrics(view: dict[str, Any]) -> None:
    m = view["metrics"]
    tiles = [
        ("Image AUROC", ui.fmt_metric(m.get("image_auroc")), "Area under the ROC curve of the image scores (1 = perfect ranking, 0.5 = chance)."),
        ("Avg precision", ui.fmt_metric(m.get("average_precision")), "Area under the precision-recall curve, defective = positive."),
        ("F1-max", ui.fmt_metric(m.get("f1_max")), "Best F1 over all thresholds."),
        ("F1 threshold", fmt_score(m.get("threshold")), "Image score at which F1-max is reached; images at or above it are flagged."),
        ("Pixel AUROC", ui.fmt_metric(m.get("pixel_auroc")), "ROC AUC of the anomaly maps against the ground-truth masks (— when the data has no masks)."),
        ("AUPRO", ui.fmt_metric(m.get("aupro")), "Per-region overlap integrated up to 30% pixel FPR (— when the data has no masks)."),
    ]
    for col, (label, value, help_text) in zip(st.columns(len(tiles)), tiles):
        col.metric(label, value, help=help_text, border=True)
