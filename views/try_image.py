"""Try your image: score uploaded images (or a test image) with the selected run.

Decoding, conversion, prediction and the comparison with the test set live in ``core.services.predict``;
this module only draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core.data.images import to_float_chw, to_uint8_hwc
from core.runs import LoadedRun
from core.services.predict import Analysis, analyze_image, analyze_upload, position
from core.viz import heatmap, overlay, strip
from views.components import ui
from views.components.display import (
    DEFECT_COLOR,
    GOOD_COLOR,
    checkpoint_mtime,
    defect_badge,
    enlarge,
    fmt_score,
    load_test_view,
)

KEY_UPLOADS = "try_uploads"
KEY_EXAMPLE = "try_example"
MAX_UPLOADS = 16  # every upload is scored on every rerun: a page, not a batch job
UPLOAD_TYPES = ui.UPLOAD_TYPES


# --------------------------------------------------------------------------- drawing
def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}%"


def draw_position_chart(score: float, view: dict[str, Any], key: str) -> None:
    scores, labels = view["scores"], view["labels"]
    thr = view["threshold"]
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
        pos = position(a.score, view["scores"], view["labels"], view["threshold"])
        left, right = st.columns([2, 3], gap="large")
        with left:
            title = f"**{a.name}**" + (f" · ground truth {defect_badge(truth)}" if truth else "")
            st.markdown(title)
            if pos.flagged is None:
                verdict = ":gray-badge[no threshold] the test set has a single class"
            elif pos.flagged:
                verdict = f":red-badge[:material/warning: Anomalous] at or above {view['threshold_name']} ({fmt_score(pos.threshold)})"
            else:
                verdict = f":green-badge[:material/check: Looks normal] below {view['threshold_name']} ({fmt_score(pos.threshold)})"
            st.metric("Anomaly score", fmt_score(a.score), help="Higher = more anomalous; same scoring as the run's test set.")
            st.markdown(verdict)
            for note in a.notes:
                st.caption(f":orange[:material/info: {a.name}: {note}.]")
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
            if a.amap is None:
                st.image(enlarge(x, 168), output_format="PNG")
                st.caption("input. This detector scores the whole image and does not localize: there is no anomaly map.")
            else:
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
    sel = ui.selection()
    run = ui.require_run(sel)
    if run is None:
        return
    view = load_test_view(run)
    if view is None:
        return
    t, name = ui.operating_threshold(run.path, ui.relabeled(view["scored"], sel))
    view = dict(view, threshold=t, threshold_name=name)
    st.caption(f"Scored by run `{run.id}` ({run.config.model.upper()}, {run.config.data} / {run.config.category}). "
               f"Images are converted to the run's channels and size; nothing is stored. Verdicts use {name}.")
    up_col, ex_col = st.columns([3, 2], vertical_alignment="top")
    with up_col:
        files = st.file_uploader("Upload images", type=UPLOAD_TYPES, accept_multiple_files=True, key=KEY_UPLOADS,
                                 help="PNG, JPEG, BMP, TIFF or WebP; any size up to the pixel limit, colour or gray.")
    with ex_col:
        example = example_choice(view)
        if files:
            st.caption("Showing the uploads; remove them to see the example.")
    if files and len(files) > MAX_UPLOADS:
        st.warning(f"{len(files)} files uploaded: showing the first {MAX_UPLOADS}. Score a whole folder with "
                   "`python -m core evaluate` or add it as a dataset.")
    if files:
        for k, f in enumerate(files[:MAX_UPLOADS]):
            draw_analysis(analyze_upload(run, f.name, f.getvalue()), run, view, key=f"upload_{k}")
    elif example is not None:
        name = view["names"][example]
        img = view["images"][example]  # stored as RGB for display; gray runs get their one channel back
        a = analyze_image(run, name, img[..., 0] if run.config.channels == 1 else img)
        draw_analysis(a, run, view, key=f"example_{checkpoint_mtime(run.path)}", truth=view["defects"][example])


if __name__ == "__main__":
    # Streamlit runs a page as "__main__"; tests import this module for the functions above.
    main()

