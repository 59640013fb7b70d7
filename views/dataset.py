"""Dataset: counts per split and defect type, a filtered thumbnail grid, a full-size view with the
ground-truth mask, and the files that were skipped or cannot be decoded.

Work happens in ``core`` (index, thumbnails, decoding, overlays, ``core.services.dataset_browse``); this
page only draws, with the full view in ``views.components.dataset_viewer`` and the file check in
``views.components.dataset_check``. Thumbnails come from ``core.services.thumbnails`` (decoded once,
cached on disk) and a page of them is additionally kept in ``st.cache_data``, so a 300-image page renders
in well under a second once the cache is warm. "Check all files" decodes every image in a background job
(a cold check of a few thousand files takes seconds), shared by all sessions through the process-wide
job registry.
"""

from __future__ import annotations

import hashlib

import numpy as np
import streamlit as st

from core.data.index import DatasetIndex, Sample
from core.services.dataset_browse import (
    Filters,
    count_rows,
    count_totals,
    defect_order,
    filter_samples,
    mtimes,
    page_count,
    split_order,
)
from core.services.thumbnails import thumbnails
from views.components import ui
from views.components.charts import counts_figure
from views.components.dataset_check import draw_problems
from views.components.dataset_viewer import KEY_VIEW, draw_full_view, reset_view
from views.components.display import plural

# Session-state keys of this page (widget keys; nothing durable lives here).
KEY_SPLITS = "dataset_splits"
KEY_DEFECTS = "dataset_defects"
KEY_ONLY_MASK = "dataset_only_mask"
KEY_PAGE_SIZE = "dataset_page_size"
KEY_PAGE = "dataset_page"  # prefix: the pager's key also encodes the filters (see pager())

PAGE_SIZES = (24, 48, 96, 300)
THUMB_SIZE = 112


@st.cache_data(ttl=600, max_entries=16, show_spinner="Making thumbnails…")
def page_thumbnails(paths: tuple[str, ...], stamps: tuple[int, ...], size: int) -> list[tuple[np.ndarray, str | None]]:
    """Thumbnails (and decode errors) of one grid page; misses are decoded once into the disk cache.

    ``stamps`` (the files' mtimes) only key the cache: an edited file on the page gets a new thumbnail.
    """
    return thumbnails(list(paths), size)


def _keep_valid(key: str, options: list[str]) -> None:
    """Drop remembered multiselect values that the current dataset does not have."""
    if key in st.session_state:
        st.session_state[key] = [v for v in st.session_state[key] if v in options]


def filters_ui(index: DatasetIndex) -> tuple[Filters, list[Sample]]:
    """Filter and page-size widgets; return the choices and the filtered samples."""
    split_options = split_order(index.counts())
    defect_options = defect_order(s.defect for s in index.samples)
    _keep_valid(KEY_SPLITS, split_options)
    _keep_valid(KEY_DEFECTS, defect_options)
    if st.session_state.get(KEY_PAGE_SIZE) not in PAGE_SIZES:
        st.session_state[KEY_PAGE_SIZE] = PAGE_SIZES[1]
    c_split, c_defect, c_mask, c_size = st.columns([2, 3, 1.3, 1], vertical_alignment="bottom")
    splits = c_split.multiselect("Split", split_options, key=KEY_SPLITS, placeholder="All splits", on_change=reset_view)
    defects = c_defect.multiselect("Defect type", defect_options, key=KEY_DEFECTS, placeholder="All defect types",
                                   on_change=reset_view)
    only_mask = c_mask.checkbox("Only with mask", key=KEY_ONLY_MASK, on_change=reset_view,
                                help="Only images that have a pixel ground-truth mask.")
    page_size = c_size.selectbox("Per page", PAGE_SIZES, key=KEY_PAGE_SIZE, on_change=reset_view)
    f = Filters(tuple(splits), tuple(defects), bool(only_mask), int(page_size))
    return f, filter_samples(index.samples, f)


def pager(f: Filters, n_samples: int, scope: str) -> int:
    """The page picker. Its key includes the filters, so new filters start on page 1 without writing
    widget state (st.pagination always has a default, and state writes would fight it)."""
    pages = page_count(n_samples, f.page_size)
    if pages == 1:
        return 1
    token = hashlib.sha1(repr((scope, f, n_samples)).encode()).hexdigest()[:12]
    return int(st.pagination(pages, key=f"{KEY_PAGE}_{token}", on_change=reset_view, max_visible_pages=7))


def draw_counts(index: DatasetIndex, rows: list[dict]) -> None:
    totals = count_totals(rows)
    cols = st.columns(5)
    cols[0].metric("Images", f"{len(index.samples):,}")
    cols[1].metric("Train (good)", f"{totals['train']:,}")
    cols[2].metric("Test good", f"{totals['test_good']:,}")
    cols[3].metric("Test defective", f"{totals['test_defective']:,}", help=f"{len(index.defect_types)} defect types")
    cols[4].metric("Pixel masks", f"{totals['masks']:,}")
    left, right = st.columns([2, 3], gap="large")
    with left:
        st.markdown("**Images per split and defect type**")
        st.dataframe(rows, hide_index=True, width="stretch", column_config={
            "split": st.column_config.TextColumn("Split"),
            "defect": st.column_config.TextColumn("Defect type"),
            "count": st.column_config.NumberColumn("Images", format="%d"),
            "masks": st.column_config.NumberColumn("Masks", format="%d", help="Images with a pixel ground-truth mask"),
        })
    with right:
        st.plotly_chart(counts_figure(rows), key="dataset_counts_chart", config={"displayModeBar": False})


def draw_grid(page: list[Sample], thumbs: list[tuple[np.ndarray, str | None]]) -> None:
    """Thumbnails of fixed width in a wrapping row: as many per line as the window fits.

    A horizontal flex container instead of ``st.columns`` rows: fixed-width thumbnails in fixed column
    counts overflow narrow windows and leave gaps on wide ones, and one container is fewer elements
    to send than a block per row.
    """
    with st.container(horizontal=True, wrap=True, gap="small", key="dataset_grid"):
        for k, (sample, (thumb, err)) in enumerate(zip(page, thumbs)):
            with st.container(width=THUMB_SIZE, gap=None):
                st.image(thumb, width=THUMB_SIZE)
                st.button(f"{sample.defect} · {sample.path.name}" + (" (unreadable)" if err else ""), key=f"dataset_open_{k}",
                          on_click=_open_view, args=(str(sample.path),), type="tertiary", width="stretch",
                          help="Open in the full-size view")


def _open_view(path: str) -> None:
    st.session_state[KEY_VIEW] = path


def draw_browser(index: DatasetIndex) -> list[tuple[str, str]]:
    """Filters, pagination, the thumbnail grid and the full view; return decode errors of this page."""
    st.subheader("Browse")
    f, samples = filters_ui(index)
    pages = page_count(len(samples), f.page_size)
    grid_col, view_col = st.columns([3, 2], gap="large")
    errors: list[tuple[str, str]] = []
    page: list[Sample] = []
    with grid_col:
        if not samples:
            st.info("No image matches these filters.", icon=":material/filter_alt_off:")
        else:
            c_info, c_pager = st.columns([2, 3], vertical_alignment="center")
            with c_pager:
                number = pager(f, len(samples), f"{index.root}|{index.category}")
            start = (number - 1) * f.page_size
            page = samples[start : start + f.page_size]
            c_info.caption(f"Images {start + 1:,}–{start + len(page):,} of {len(samples):,}")
            thumbs = page_thumbnails(tuple(str(s.path) for s in page), mtimes(page), THUMB_SIZE)
            errors = [(str(s.path), err) for s, (_, err) in zip(page, thumbs) if err]
            if errors:
                st.warning(f"{plural(len(errors), 'image')} on this page cannot be decoded and "
                           f"{'show' if len(errors) > 1 else 'shows'} as a red ✕: see **Skipped and unreadable files** above.",
                           icon=":material/broken_image:")
            draw_grid(page, thumbs)
            if pages > 1 and len(page) > 24:
                st.caption(f"Page {number} of {pages} · change pages above the grid.")
    with view_col:
        draw_full_view(index, samples, page)
    return errors


def main() -> None:
    sel = ui.selection()
    index = ui.require_dataset(sel)
    st.title("Dataset")
    if index is None:
        return
    layout = "MVTec AD layout" if index.layout == "mvtec" else "folder layout (good/ + one folder per defect)"
    st.caption(f"**{sel.data}** · category **{index.category}** · {layout} · root `{index.root}`")
    draw_counts(index, count_rows(index))
    problems_slot = st.container()
    page_errors = draw_browser(index)
    with problems_slot:
        draw_problems(index, page_errors, THUMB_SIZE)


main()
