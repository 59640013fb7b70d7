"""Try your image: score uploaded images (or a test image) with the selected run.

The page logic that needs no Streamlit (decode, convert, predict, compare with the test set) is in
plain functions (:func:`analyze_upload`, :func:`analyze_image`, :func:`position`) so tests call them
directly; the drawing code runs only when Streamlit executes the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from core.images import IMAGE_SUFFIXES, ImageError, read_image, resize, to_channels, to_float_chw, to_uint8_hwc
from core.runs import LoadedRun
from core.viz import heatmap, overlay, strip
from views import ui
from views.results import DEFECT_COLOR, GOOD_COLOR, checkpoint_mtime, defect_badge, enlarge, fmt_score, load_test_view

KEY_UPLOADS = "try_uploads"
KEY_EXAMPLE = "try_example"
UPLOAD_TYPES = [suffix.lstrip(".") for suffix in IMAGE_SUFFIXES]


@dataclass
class Analysis:
    """What the run says about one image, or why the image could not be used (``error``)."""

    name: str
    error: str | None = None
    source_shape: tuple[int, ...] | None = None  # decoded image before conversion, (H, W) or (H, W, C)
    image: np.ndarray | None = None  # uint8 (H, W, C) at the run's size and channels
    score: float | None = None
    amap: np.ndarray | None = None  # float32 (H, W)
    recon: np.ndarray | None = None  # float32 (C, H, W) in [0, 1], None for non-reconstructing detectors


@dataclass(frozen=True)
class Position:
    """Where a score falls among the test set's scores."""

    good_percentile: float | None  # % of good test images scoring lower (ties count half)
    defect_percentile: float | None  # % of defective test images scoring lower
    threshold: float | None  # the run's F1-max threshold on the test set
    flagged: bool | None  # score >= threshold


def analyze_image(run: LoadedRun, name: str, img: np.ndarray) -> Analysis:
    """Convert a decoded uint8 image to the run's channels and size, and score it."""
    cfg = run.config
    try:
        x = to_channels(resize(to_channels(img, cfg.channels), cfg.size), cfg.channels)
        out = run.detector().predict(torch.from_numpy(to_float_chw(x))[None])
    except Exception as exc:  # an odd image must never crash the page: say what happened instead
        return Analysis(name, error=f"{name}: could not be analysed ({type(exc).__name__}: {str(exc)[:200]})")
    recon = out.reconstruction
    return Analysis(
        name,
        source_shape=tuple(img.shape),
        image=x,
        score=float(out.score[0]),
        amap=out.anomaly_map[0].float().numpy(),
        recon=None if recon is None else recon[0].float().clamp(0, 1).numpy(),
    )


def analyze_upload(run: LoadedRun, name: str, data: bytes) -> Analysis:
    """Decode uploaded bytes and score them; a bad file gives an Analysis with ``error`` set."""
    try:
        img = read_image(data, name=name)
    except ImageError as exc:
        return Analysis(name, error=str(exc))
    except Exception as exc:  # decoders raise more than ImageError for hostile input (e.g. MemoryError)
        return Analysis(name, error=f"{name}: not a usable image ({type(exc).__name__})")
    return analyze_image(run, name, img)


def position(score: float, scores: np.ndarray, labels: np.ndarray, threshold: float | None) -> Position:
    """Percentile of ``score`` among good and among defective test scores, and the threshold verdict."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)

    def pct(values: np.ndarray) -> float | None:
        if values.size == 0:
            return None
        return float((np.sum(values < score) + 0.5 * np.sum(values == score)) / values.size * 100.0)

    flagged = None if threshold is None else bool(score >= threshold)
    return Position(pct(scores[labels == 0]), pct(scores[labels == 1]), threshold, flagged)


# --------------------------------------------------------------------------- drawing
def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}%"


def draw_position_chart(score: float, view: dict[str, Any], key: str) -> None:
    scores, labels = view["scores"], view["labels"]
    thr = view["metrics"].get("threshold")
    fig = go.Figure()
    for name, sel, color in (("good test images", labels == 0, GOOD_COLOR), ("defective test images", labels == 1, DEFECT_COLOR)):
        if sel.any():
            fig.add_trace(go.Box(x=scores[sel], name=name, marker_color=color, boxpoints="all", jitter=0.4, pointpos=0,
                                 fillcolor="rgba(0,0,0,0)", line={"width": 1}, marker={"size": 4, "opacity": 0.6},
                                 hoverinfo="x"))
    if thr is not None:
        fig.add_vline(x=thr, line_dash="dash", line_color="#666", annotation_text="threshold", annotation_position="bottom right")
    fig.add_vline(x=score, line_color="#1f2a44", line_width=3, annotation_text="this image", annotation_position="top")
    fig.update_layout(height=210, showlegend=False, margin={"l": 10, "r": 10, "t": 28, "b": 10}, xaxis_title="anomaly score")
    st.plotly_chart(fig, key=key, config={"displayModeBar": False})


def draw_analysis(a: Analysis, run: LoadedRun, view: dict[str, Any], key: str, truth: str | None = None) -> None:
    """One result card: verdict and position on the left, the figure strip on the right."""
    with st.container(border=True):
        if a.error:
            st.error(a.error, icon=":material/broken_image:")
            return
        pos = position(a.score, view["scores"], view["labels"], view["metrics"].get("threshold"))
        left, right = st.columns([2, 3], gap="large")
        with left:
            title = f"**{a.name}**" + (f" · ground truth {defect_badge(truth)}" if truth else "")
            st.markdown(title)
            if pos.flagged is None:
                verdict = ":gray-badge[no threshold] the test set has a single class"
            elif pos.flagged:
                verdict = f":red-badge[:material/warning: Anomalous] at or above the F1-max threshold ({fmt_score(pos.threshold)})"
            else:
                verdict = f":green-badge[:material/check: Looks normal] below the F1-max threshold ({fmt_score(pos.threshold)})"
            st.metric("Anomaly score", fmt_score(a.score), help="Higher = more anomalous; same scoring as the run's test set.")
            st.markdown(verdict)
            st.markdown(
                f"Scores higher than **{_percent(pos.good_percentile)}** of the good test images and "
                f"**{_percent(pos.defect_percentile)}** of the defective ones."
            )
            cfg = run.config
            shape = a.source_shape or ()
            src = f"{shape[1]}×{shape[0]} {'gray' if len(shape) == 2 else 'colour'}" if len(shape) >= 2 else "?"
            st.caption(f"Input {src} → {cfg.size}×{cfg.size} {'gray' if cfg.channels == 1 else 'RGB'} (the run's input).")
        with right:
            x = to_uint8_hwc(to_float_chw(a.image))
            heat = heatmap(a.amap, 0.0, view["vmax"])
            panels = [x] + ([to_uint8_hwc(a.recon)] if a.recon is not None else []) + [heat, overlay(x, heat)]
            st.image(strip([enlarge(p, 168) for p in panels], gap=4), output_format="PNG")
            names = "input · reconstruction · anomaly map · overlay" if a.recon is not None else "input · anomaly map · overlay"
            st.caption(f"{names}. Colour scale 0 to {view['vmax']:.4g}, the same as on the Results page.")
            draw_position_chart(a.score, view, key=f"try_position_{key}")


def example_choice(view: dict[str, Any]) -> int | None:
    """The test image picked as an example (default: the highest-scoring defective one)."""
    names = view["names"]
    order = np.argsort(-view["scores"], kind="stable")
    default = next((int(i) for i in order if view["labels"][i] == 1), int(order[0]))
    options = list(range(len(names)))
    if st.session_state.get(KEY_EXAMPLE) not in options:  # another run may have fewer test images
        st.session_state[KEY_EXAMPLE] = default
    return st.selectbox(
        "…or pick a test image", options, key=KEY_EXAMPLE,
        format_func=lambda i: f"{view['defects'][i]} · {names[i]} · score {fmt_score(view['scores'][i])}",
        help="An image of the run's own test set, scored again here; used while nothing is uploaded.",
    )


def main() -> None:
    st.title("Try your image")
    run = ui.require_run(ui.selection())
    if run is None:
        return
    view = load_test_view(run)
    if view is None:
        return
    st.caption(f"Scored by run `{run.id}` ({run.config.model.upper()}, {run.config.data} / {run.config.category}). "
               "Images are converted to the run's channels and size; nothing is stored.")
    up_col, ex_col = st.columns([3, 2], vertical_alignment="top")
    with up_col:
        files = st.file_uploader("Upload images", type=UPLOAD_TYPES, accept_multiple_files=True, key=KEY_UPLOADS,
                                 help="PNG, JPEG, BMP, TIFF or WebP; any size up to the pixel limit, colour or gray.")
    with ex_col:
        example = example_choice(view)
        if files:
            st.caption("Showing the uploads; remove them to see the example.")
    if files:
        for k, f in enumerate(files):
            draw_analysis(analyze_upload(run, f.name, f.getvalue()), run, view, key=f"upload_{k}")
    elif example is not None:
        name = view["names"][example]
        img = view["images"][example]  # stored as RGB for display; gray runs get their one channel back
        a = analyze_image(run, name, img[..., 0] if run.config.channels == 1 else img)
        draw_analysis(a, run, view, key=f"example_{checkpoint_mtime(run.path)}", truth=view["defects"][example])


if __name__ == "__main__":
    # Streamlit runs a page as "__main__"; tests import this module for the functions above.
    main()

