"""Figures and image strips of the Results and Dataset pages (plotly figures and numpy images; nothing is drawn here)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import plotly.graph_objects as go

from core.services.results_view import TEST_GOOD_CLASS, TRAIN_CLASS
from core.viz import heatmap, heatmap_anchored, mask_contour, strip
from views.components.display import DEFECT_COLOR, GOOD_COLOR, TRAIN_COLOR, enlarge

PALETTE = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#d62728", "#7f7f7f", "#393b79",
           "#637939", "#8c6d31"]


def image_strip(view: dict[str, Any], i: int, outline: bool) -> np.ndarray:
    """[input | reconstruction | heatmap] of test image ``i`` on the set's common colour scale."""
    inp = enlarge(view["images"][i])
    mask = view["masks"][i]
    if outline and mask.any():
        big = cv2.resize(mask.astype(np.uint8), inp.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        inp = mask_contour(inp, big, color=(0, 230, 64))
    panels = [inp]
    if view["recons"] is not None:
        panels.append(enlarge(view["recons"][i]))
    if view["maps"] is not None:
        anchor = view.get("pixel_anchor")  # colour relative to the pixel threshold (red = at or above it)
        panels.append(enlarge(heatmap_anchored(view["maps"][i], anchor) if anchor is not None
                              else heatmap(view["maps"][i], 0.0, view["vmax"])))
    return strip(panels, gap=4)


def score_histogram(scores: np.ndarray, labels: np.ndarray, threshold: float | None) -> go.Figure:
    """Overlaid histograms of the good and defective scores on common bins, with the threshold line."""
    lo, hi = float(scores.min()), float(scores.max())
    size = (hi - lo) / 30 if hi > lo else 1.0
    fig = go.Figure()
    for name, sel, color in (("good", labels == 0, GOOD_COLOR), ("defective", labels == 1, DEFECT_COLOR)):
        if sel.any():
            fig.add_trace(go.Histogram(x=scores[sel], name=f"{name} ({int(sel.sum())})", marker_color=color, opacity=0.7,
                                       xbins={"start": lo, "end": hi + size, "size": size}))
    if threshold is not None and threshold <= hi:
        fig.add_vline(x=threshold, line_dash="dash", line_color="#444", annotation_text=f"threshold {threshold:.4g}",
                      annotation_position="top right", annotation_font_size=11)
    fig.update_layout(barmode="overlay", height=360, margin={"l": 10, "r": 10, "t": 40, "b": 10}, xaxis_title="anomaly score",
                      yaxis_title="test images", legend={"orientation": "h", "yanchor": "bottom", "y": 1.06, "x": 1, "xanchor": "right"})
    return fig


def latent_scatter(lat: dict[str, Any], xlab: str, ylab: str) -> go.Figure:
    """The codes of :func:`core.services.results_view.latent_view` coloured by class, with the grid's box dotted."""
    coords, classes, names = lat["coords"], np.array(lat["classes"]), np.array(lat["names"])
    order = [TRAIN_CLASS, TEST_GOOD_CLASS, *sorted(set(classes) - {TRAIN_CLASS, TEST_GOOD_CLASS})]
    colors = {TRAIN_CLASS: TRAIN_COLOR, TEST_GOOD_CLASS: GOOD_COLOR}
    fig = go.Figure()
    for k, cls in enumerate(c for c in order if (classes == c).any()):
        sel = classes == cls
        fig.add_trace(go.Scatter(
            x=coords[sel, 0], y=coords[sel, 1], mode="markers", name=f"{cls} ({int(sel.sum())})", text=names[sel],
            marker={"size": 6, "color": colors.get(cls, PALETTE[k % len(PALETTE)]), "opacity": 0.85 if cls != TRAIN_CLASS else 0.6},
            hovertemplate="%{text}<br>" + xlab + " %{x:.2f}, " + ylab + " %{y:.2f}<extra>" + cls + "</extra>",
        ))
    x0, x1, y0, y1 = lat["extent"]
    fig.add_shape(type="rect", x0=x0, x1=x1, y0=y0, y1=y1, line={"dash": "dot", "color": "#888", "width": 1})
    fig.update_layout(height=520, margin={"l": 10, "r": 10, "t": 10, "b": 10}, xaxis_title=xlab, yaxis_title=ylab,
                      legend={"title": "class", "itemsizing": "constant"})
    return fig


def counts_figure(rows: list[dict]) -> go.Figure:
    """Grouped bars of image counts per defect type, one group colour per split (rows of ``count_rows``)."""
    fig = go.Figure()
    for split in dict.fromkeys(r["split"] for r in rows):
        part = [r for r in rows if r["split"] == split]
        fig.add_bar(name=split, x=[r["defect"] for r in part], y=[r["count"] for r in part],
                    text=[r["count"] for r in part], textposition="outside", cliponaxis=False)
    fig.update_layout(barmode="group", height=300, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0, "title_text": "Split"},
                      xaxis_title=None, yaxis_title="images")
    return fig
