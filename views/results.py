"""Results: metric tiles, score distribution, test images as [input | reconstruction | heatmap] strips,
and for small-image VAEs the latent scatter and decoded grid of the MNIST VAE article.

The scores, maps and metrics come from the one evaluation path (``core.services.scored_view``, cached by
run folder and checkpoint time in ``views.components.display``); the page only filters, sorts and draws.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import streamlit as st

from core.data.index import DatasetError
from core.evaluation.operating import pixel_operating_threshold
from core.runs import LoadedRun
from core.services.latent import shows_latent
from core.services.results_view import defect_order, ranked, type_rows
from core.viz import HEATMAP_QUANTILE
from views.components import report_button, ui
from views.components.charts import image_strip, latent_scatter, score_histogram
from views.components.display import (
    cached_latent_view,
    checkpoint_mtime,
    defect_badge,
    fmt_score,
    load_test_view,
    with_label_source,
)
from views.components.images import colorbar_caption
from views.components.results_panels import draw_header, draw_metrics

KEY_DEFECTS = "results_defects"
KEY_SORT = "results_sort"
KEY_MASKS = "results_masks"
KEY_ANCHOR = "results_anchor"  # heatmaps coloured relative to the pixel threshold
KEY_PAGE = "results_page"  # prefix: the pager's key also names the filter it pages through
KEY_FILTER_RUN = "results_filter_run"  # the run the filter widgets were set for

PER_PAGE = 12
GRID_N = 12
SORT_DESC = "Highest score first"
SORT_ASC = "Lowest score first"


def draw_distribution(view: dict[str, Any]) -> None:
    thr = view.get("threshold", view["metrics"].get("threshold"))
    threshold_name = view.get("threshold_name", "the F1-max threshold")
    left, right = st.columns([1, 1], gap="medium")
    with left:
        st.plotly_chart(score_histogram(view["scores"], view["labels"], thr), key="results_histogram",
                        config={"displayModeBar": False})
    with right:
        st.dataframe(type_rows(view["scores"], view["defects"], thr), hide_index=True, width="stretch", column_config={
            "median score": st.column_config.NumberColumn(format="%.4g"),
            "flagged %": st.column_config.ProgressColumn("flagged", format="%.0f%%", min_value=0, max_value=100, width="medium"),
        })
        st.caption(f"Flagged = score at or above {threshold_name} ({fmt_score(thr)}). For good images this is the "
                   "false-alarm rate; for a defect type it is the share caught.")


def draw_strips(run_id: str, view: dict[str, Any]) -> None:
    defects = view["defects"]
    options = defect_order(defects)
    if st.session_state.get(KEY_FILTER_RUN) != run_id or KEY_DEFECTS not in st.session_state:
        # A newly selected run starts with every type shown, from its first page.
        st.session_state[KEY_FILTER_RUN] = run_id
        st.session_state[KEY_DEFECTS] = options
    has_masks = bool(view["masks"].any())
    c1, c2, c3, c4 = st.columns([4, 2, 1.6, 1.8], vertical_alignment="bottom")
    chosen = c1.multiselect("Show types", options, key=KEY_DEFECTS, placeholder="Pick at least one type")
    order = c2.selectbox("Sort", [SORT_DESC, SORT_ASC], key=KEY_SORT)
    outline = c3.toggle("Outline masks", value=True, key=KEY_MASKS, disabled=not has_masks,
                        help=None if has_masks else "This dataset has no defect masks.")
    pixel_t = view.get("pixel_threshold")
    anchored = c4.toggle("Threshold colours", value=False, key=KEY_ANCHOR, disabled=pixel_t is None,
                         help="Red = at or above the pixel threshold. Colour every map relative to the operating point's pixel threshold (t = v / (v + threshold)): "
                              "blue below it, yellow to red at or above it, as on the Threshold page.")
    if anchored and pixel_t is not None:
        view = dict(view, pixel_anchor=pixel_t)
    order_idx = ranked(view["scores"], defects, chosen, descending=order == SORT_DESC)
    if order_idx.size == 0:
        st.info("No test image matches the filter: pick at least one type.")
        return
    n_pages = max(1, math.ceil(order_idx.size / PER_PAGE))
    thr = view.get("threshold", view["metrics"].get("threshold"))
    head, grid = st.container(), st.container()
    with st.container(horizontal=True, horizontal_alignment="center"):
        # One pager per (run, filter, order): a changed filter starts again from page 1.
        pager_key = f"{KEY_PAGE}-{zlib.crc32(repr((run_id, chosen, order)).encode()):08x}"
        page = st.pagination(n_pages, key=pager_key) if n_pages > 1 else 1
    start = (page - 1) * PER_PAGE
    shown = order_idx[start : start + PER_PAGE]
    with head:
        panels = "input · reconstruction · anomaly map" if view["recons"] is not None else "input · anomaly map"
        if view.get("pixel_anchor") is not None:
            st.caption(f"Panels: {panels}. Heatmaps coloured relative to the pixel threshold {view['pixel_anchor']:.4g}: "
                       f"blue below it, yellow to red at or above it. Showing {start + 1}–{start + shown.size} of "
                       f"{order_idx.size}")
        else:
            colorbar_caption(
                f"Panels: {panels}. All heatmaps share one colour scale, 0 (blue) to {view['vmax']:.4g} (red) = the "
                f"{HEATMAP_QUANTILE:.1%} quantile of all test maps. Showing {start + 1}–{start + shown.size} of "
                f"{order_idx.size}")
    with grid:
        for row in range(0, shown.size, 2):
            for k, (col, i) in enumerate(zip(st.columns(2), shown[row : row + 2])):
                score = float(view["scores"][i])
                flag = " :orange-badge[:material/flag: flagged]" if thr is not None and score >= thr else ""
                with col.container(border=True):
                    st.markdown(f"**#{start + row + k + 1}** · score **{fmt_score(score)}** · {defect_badge(defects[i])}{flag}")
                    st.image(image_strip(view, int(i), outline and has_masks), output_format="PNG")
                    st.caption(view["names"][i])


def draw_latent(run: LoadedRun) -> None:
    try:
        with st.spinner("Encoding the images…"):
            lat = cached_latent_view(str(run.path), checkpoint_mtime(run.path), run, GRID_N)
    except (DatasetError, ValueError, OSError) as exc:
        st.error(f"The latent views cannot be computed: {exc}")
        return
    if lat["identity"]:
        st.caption(f"The {lat['z_dim']}-D latent means of every train and test image, as in the MNIST VAE article. "
                   "A VAE trained on normal images maps most of the plane to normal-looking shapes.")
        xlab, ylab = "z₁", "z₂"
    else:
        ev = lat["explained"] * 100
        st.caption(f"The {lat['z_dim']}-D latent means projected on their two principal directions "
                   f"(PC1 {ev[0]:.0f}%, PC2 {ev[1]:.0f}% of the variance); the grid varies the code along them around the mean.")
        xlab, ylab = "PC1", "PC2"
    x0, x1, y0, y1 = lat["extent"]
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(latent_scatter(lat, xlab, ylab), key="results_latent_scatter")
    with right:
        st.image(lat["grid"], width=460, output_format="PNG")
        st.caption(f"Decoded {GRID_N}×{GRID_N} grid over the dotted box of the scatter ({xlab} {x0:.2f} … {x1:.2f} left to right, "
                   f"{ylab} {y1:.2f} … {y0:.2f} top to bottom; the 1st–99th percentile of the codes).")


def main() -> None:
    opened = ui.open_page("Results", "run")
    if opened is None:
        return
    sel, run = opened
    view = load_test_view(run)
    if view is None:
        return
    if sel.label_source != "dataset":
        view = with_label_source(view, sel)
    t, threshold_name = ui.operating_threshold(run.path, ui.relabeled(view["scored"], sel))
    view = dict(view, threshold=t, threshold_name=threshold_name,
                pixel_threshold=pixel_operating_threshold(run.path, view["scored"]) if view["maps"] is not None else None)
    draw_header(run, view)
    draw_metrics(view)
    with st.columns([3, 1])[1]:
        report_button.draw(run.path, view["scored"].detector, sel.label_source, key="res_report")
    tab_names = ["Test images", "Score distribution"]
    latent = shows_latent(run.model, run.config.size)
    if latent:
        tab_names.append("Latent space")
    tabs = st.tabs(tab_names)
    with tabs[0]:
        draw_strips(run.id, view)
    with tabs[1]:
        draw_distribution(view)
    if latent:
        with tabs[2]:
            draw_latent(run)


if __name__ == "__main__":
    main()
