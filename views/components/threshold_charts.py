"""Figures of the Threshold page: ROC and PR curves with the operating point, the score histogram with
the threshold line, and the pixel-level F1 / IoU and PRO curves (plotly figures; nothing is drawn here)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from core.evaluation.curves import Curves
from core.evaluation.scored import ScoredSet
from views.components import ui
from views.components.display import DEFECT_COLOR, GOOD_COLOR

COLORS = ["#4c78a8", "#f58518", "#54a24b", "#b279a2", "#9d755d", "#e45756"]
POINT = "#e4572e"  # the operating point and the threshold lines
SMALL = {"height": 260, "margin": {"l": 10, "r": 10, "t": 30, "b": 10}, "plot_bgcolor": "white"}
LARGE = dict(SMALL, height=420)


def _below_legend(n_entries: int) -> dict[str, Any]:
    """A legend under the plot, one entry per line (long run names are never cut), and the room it needs."""
    return {"legend": {"orientation": "v", "yanchor": "top", "y": -0.16, "x": 0, "xanchor": "left", "font": {"size": 11}},
            "height": LARGE["height"] + 20 * n_entries, "margin": dict(LARGE["margin"], b=20 * n_entries + 40)}


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
                    marker={"size": 14, "color": POINT, "symbol": "circle", "line": {"color": "white", "width": 2}})
    fig.update_layout(**{**LARGE, **_below_legend(len(entries) + 1 + (iso is not None))}, clickmode="event+select",
                      xaxis={"title": "false-alarm rate (FPR)", "range": [-0.02, 1.02], "gridcolor": "#eee", "constrain": "domain"},
                      yaxis={"title": "defects caught (TPR)", "range": [-0.02, 1.02], "gridcolor": "#eee",
                             "scaleanchor": "x", "scaleratio": 1})
    return fig


def pr_figure(entries: list[tuple[str, Curves]], op: dict[str, Any]) -> go.Figure:
    fig = go.Figure()
    for k, (name, c) in enumerate(entries):
        ap = f"{c.average_precision:.3f}" if c.average_precision is not None else "n/a"
        fig.add_scatter(x=c.tpr[1:], y=c.precision[1:], mode="lines", name=f"{name} · AP {ap}",
                        line={"color": COLORS[k % len(COLORS)], "width": 2.5 if k == 0 else 1.8, "shape": "hv"})
    fig.add_scatter(x=[op["recall"]], y=[op["precision"]], mode="markers", name="operating point", hoverinfo="skip",
                    marker={"size": 14, "color": POINT, "line": {"color": "white", "width": 2}})
    fig.update_layout(**{**LARGE, **_below_legend(len(entries) + 1)},
                      xaxis={"title": "recall (defects caught)", "range": [-0.02, 1.02], "gridcolor": "#eee"},
                      yaxis={"title": "precision (flagged that are defective)", "range": [-0.02, 1.02], "gridcolor": "#eee"})
    return fig


def histogram_figure(ss: ScoredSet, t: float) -> go.Figure:
    fig = go.Figure()
    lo, hi = float(ss.scores.min()), float(ss.scores.max())
    size = (hi - lo) / 40 if hi > lo else 1.0
    bins = {"start": lo, "end": hi + size, "size": size}  # one set of bins for every class: comparable bars
    for value, name, color in ((0, "good", GOOD_COLOR), (1, "defective", DEFECT_COLOR), (-1, "unknown", "#999")):
        s = ss.scores[ss.labels == value]
        if s.size:
            fig.add_histogram(x=s, name=f"{name} ({s.size})", marker_color=color, opacity=0.65, xbins=bins)
    fig.add_vline(x=t, line={"color": POINT, "width": 2.5}, annotation_text=f"threshold {t:.4g}", annotation_position="top right")
    fig.update_layout(**SMALL, barmode="overlay", xaxis_title="image score", yaxis_title="images",
                      legend={"orientation": "h", "y": 1.2})
    return fig


def pixel_f1_figure(pc: Any, pt: float) -> go.Figure:
    """Pixel F1 and IoU over the pixel threshold (at most ~600 points), with the current one."""
    fig = go.Figure()
    k = max(1, pc.grid.size // 600)
    fig.add_scatter(x=pc.grid[:-1:k], y=pc.f1[:-1:k], name="F1", mode="lines")
    fig.add_scatter(x=pc.grid[:-1:k], y=pc.iou[:-1:k], name="IoU", mode="lines")
    fig.add_vline(x=pt, line={"color": POINT, "width": 2})
    fig.update_layout(**SMALL, xaxis_title="pixel threshold", legend={"orientation": "h", "y": 1.2})
    return fig


def pro_figure(pc: Any) -> go.Figure:
    """The PRO curve, the part beyond the AUPRO limit (pixel FPR 0.3) greyed."""
    fig = go.Figure(go.Scatter(x=pc.pro_fpr, y=pc.pro, mode="lines", name="PRO"))
    fig.add_vrect(x0=0.3, x1=1.0, fillcolor="#eee", opacity=0.5, line_width=0)
    fig.update_layout(**SMALL, xaxis={"title": "pixel false-positive rate", "range": [0, 1]},
                      yaxis={"title": "per-region overlap", "range": [0, 1.02]},
                      title={"text": f"PRO curve (AUPRO to FPR 0.3: {ui.fmt_metric(pc.aupro)})", "font": {"size": 13}})
    return fig
