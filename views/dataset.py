"""Dataset: counts per split and defect type, a filtered thumbnail grid, a full-size view with the
ground-truth mask, and the files that were skipped or cannot be decoded.

Work happens in ``core`` (index, thumbnails, decoding, overlays); this page only draws. Thumbnails
come from ``core.services.thumbnails`` (decoded once, cached on disk) and a page of them is additionally kept
in ``st.cache_data``, so a 300-image page renders in well under a second once the cache is warm.
"Check all files" decodes every image in a background job (a cold check of a few thousand files
takes seconds), shared by all sessions through the process-wide job registry.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core.data.images import ImageError, read_image, read_mask, resize, to_channels
from core.data.index import DatasetIndex, Sample
from core.services.jobs import FAILED, FINISHED, JobContext
from core.services.thumbnails import check_images, thumbnails
from core.viz import mask_contour, overlay
from views import ui

# Session-state keys of this page (widget keys; nothing durable lives here).
KEY_SPLITS = "dataset_splits"
KEY_DEFECTS = "dataset_defects"
KEY_ONLY_MASK = "dataset_only_mask"
KEY_PAGE_SIZE = "dataset_page_size"
KEY_PAGE = "dataset_page"  # prefix: the pager's key also encodes the filters (see pager())
KEY_VIEW = "dataset_view"  # path (str) of the image in the full-size view
KEY_OVERLAY = "dataset_overlay"
KEY_OVERLAY_STYLE = "dataset_overlay_style"

PAGE_SIZES = (24, 48, 96, 300)
THUMB_SIZE = 112
SPLIT_ORDER = ("train", "test")
OVERLAY_STYLES = ("Outline", "Fill")
DISPLAY_MAX = 1024  # long side of the full-size view, in pixels
MASK_COLOR = (40, 255, 80)  # green: defects themselves are often red/brown/dark
CHECK_CHUNK = 64  # files per step of the background check (progress and stop granularity)


@dataclass(frozen=True)
class Filters:
    """What the user chose to browse. Empty ``splits``/``defects`` mean all of them."""

    splits: tuple[str, ...]
    defects: tuple[str, ...]
    only_mask: bool
    page_size: int


# --------------------------------------------------------------------------------------------------
# cached work (keys are strings and ints)


@st.cache_data(ttl=600, max_entries=16, show_spinner="Making thumbnails…")
def page_thumbnails(paths: tuple[str, ...], stamps: tuple[int, ...], size: int) -> list[tuple[np.ndarray, str | None]]:
    """Thumbnails (and decode errors) of one grid page; misses are decoded once into the disk cache.

    ``stamps`` (the files' mtimes) only key the cache: an edited file on the page gets a new thumbnail.
    """
    return thumbnails(list(paths), size)


def mtimes(samples: list[Sample]) -> tuple[int, ...]:
    """``st_mtime_ns`` per file (-1 when it cannot be stat'ed): a few microseconds per file."""
    out = []
    for s in samples:
        try:
            out.append(os.stat(s.path).st_mtime_ns)
        except OSError:
            out.append(-1)
    return tuple(out)


@st.cache_data(ttl=600, max_entries=8, show_spinner=False)
def full_image(path: str, mtime_ns: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The decoded image for the full view and its original ``(H, W)`` (``mtime_ns`` keys out edits).

    The long side is capped at ``DISPLAY_MAX``: the page column is narrower than that anyway, and
    a 6000 px photo would otherwise be pickled in and out of the cache on every rerun.
    """
    img = read_image(Path(path))
    h, w = img.shape[:2]
    scale = DISPLAY_MAX / max(h, w)
    if scale < 1:
        img = resize(img, (max(1, round(h * scale)), max(1, round(w * scale))))
    return img, (h, w)


@st.cache_data(ttl=600, max_entries=8, show_spinner=False)
def full_mask(path: str, mtime_ns: int, height: int, width: int) -> np.ndarray:
    """The ground-truth mask as bool ``(height, width)``."""
    return read_mask(Path(path), (height, width))


def files_signature(samples: list[Sample]) -> str:
    """A short hash of the file list (the check's cache key together with the root)."""
    digest = hashlib.sha1()
    for s in samples:
        digest.update(str(s.path).encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# pure helpers


def rel(path: Path | str, root: Path) -> str:
    """``path`` relative to the dataset root when it lies below it."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def defect_order(defects: set[str] | list[str]) -> list[str]:
    """``good`` first, then the defect types alphabetically."""
    return sorted(defects, key=lambda d: (d != "good", d))


def count_rows(index: DatasetIndex) -> list[dict]:
    """One row per (split, defect): image count and how many carry a pixel mask."""
    masks: dict[tuple[str, str], int] = {}
    for s in index.samples:
        if s.mask_path is not None:
            masks[(s.split, s.defect)] = masks.get((s.split, s.defect), 0) + 1
    counts = index.counts()
    splits = [sp for sp in SPLIT_ORDER if sp in counts] + sorted(set(counts) - set(SPLIT_ORDER))
    return [
        {"split": sp, "defect": d, "count": counts[sp][d], "masks": masks.get((sp, d), 0)}
        for sp in splits
        for d in defect_order(counts[sp])
    ]


def filter_samples(samples: list[Sample], f: Filters) -> list[Sample]:
    """Samples matching the split/defect/mask filters, in index order."""
    return [
        s for s in samples
        if (not f.splits or s.split in f.splits)
        and (not f.defects or s.defect in f.defects)
        and (not f.only_mask or s.mask_path is not None)
    ]


def page_count(n: int, page_size: int) -> int:
    return max(1, math.ceil(n / page_size))


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def fmt_bytes(n: int) -> str:
    return f"{n / 1024:.1f} KB" if n < 1024**2 else f"{n / 1024**2:.1f} MB"


# --------------------------------------------------------------------------------------------------
# widgets


def _reset_view() -> None:
    st.session_state.pop(KEY_VIEW, None)


def _keep_valid(key: str, options: list[str]) -> None:
    """Drop remembered multiselect values that the current dataset does not have."""
    if key in st.session_state:
        st.session_state[key] = [v for v in st.session_state[key] if v in options]


def filters_ui(index: DatasetIndex) -> tuple[Filters, list[Sample]]:
    """Filter and page-size widgets; return the choices and the filtered samples."""
    counts = index.counts()
    split_options = [sp for sp in SPLIT_ORDER if sp in counts] + sorted(set(counts) - set(SPLIT_ORDER))
    defect_options = defect_order({s.defect for s in index.samples})
    _keep_valid(KEY_SPLITS, split_options)
    _keep_valid(KEY_DEFECTS, defect_options)
    if st.session_state.get(KEY_PAGE_SIZE) not in PAGE_SIZES:
        st.session_state[KEY_PAGE_SIZE] = PAGE_SIZES[1]
    c_split, c_defect, c_mask, c_size = st.columns([2, 3, 1.3, 1], vertical_alignment="bottom")
    splits = c_split.multiselect("Split", split_options, key=KEY_SPLITS, placeholder="All splits", on_change=_reset_view)
    defects = c_defect.multiselect("Defect type", defect_options, key=KEY_DEFECTS, placeholder="All defect types",
                                   on_change=_reset_view)
    only_mask = c_mask.checkbox("Only with mask", key=KEY_ONLY_MASK, on_change=_reset_view,
                                help="Only images that have a pixel ground-truth mask.")
    page_size = c_size.selectbox("Per page", PAGE_SIZES, key=KEY_PAGE_SIZE, on_change=_reset_view)
    f = Filters(tuple(splits), tuple(defects), bool(only_mask), int(page_size))
    return f, filter_samples(index.samples, f)


def pager(f: Filters, n_samples: int, scope: str) -> int:
    """The page picker. Its key includes the filters, so new filters start on page 1 without writing
    widget state (st.pagination always has a default, and state writes would fight it)."""
    pages = page_count(n_samples, f.page_size)
    if pages == 1:
        return 1
    token = hashlib.sha1(repr((scope, f, n_samples)).encode()).hexdigest()[:12]
    return int(st.pagination(pages, key=f"{KEY_PAGE}_{token}", on_change=_reset_view, max_visible_pages=7))


# --------------------------------------------------------------------------------------------------
# drawing


def draw_header(sel: ui.Selection, index: DatasetIndex) -> None:
    st.title("Dataset")
    layout = "MVTec AD layout" if index.layout == "mvtec" else "folder layout (good/ + one folder per defect)"
    st.caption(f"**{sel.data}** · category **{index.category}** · {layout} · root `{index.root}`")


def draw_counts(index: DatasetIndex, rows: list[dict]) -> None:
    train = sum(r["count"] for r in rows if r["split"] == "train")
    test_good = sum(r["count"] for r in rows if r["split"] == "test" and r["defect"] == "good")
    test_bad = sum(r["count"] for r in rows if r["split"] == "test" and r["defect"] != "good")
    masks = sum(r["masks"] for r in rows)
    cols = st.columns(5)
    cols[0].metric("Images", f"{len(index.samples):,}")
    cols[1].metric("Train (good)", f"{train:,}")
    cols[2].metric("Test good", f"{test_good:,}")
    cols[3].metric("Test defective", f"{test_bad:,}", help=f"{len(index.defect_types)} defect types")
    cols[4].metric("Pixel masks", f"{masks:,}")

    left, right = st.columns([2, 3], gap="large")
    with left:
        st.markdown("**Images per split and defect type**")
        st.dataframe(
            rows, hide_index=True, width="stretch",
            column_config={
                "split": st.column_config.TextColumn("Split"),
                "defect": st.column_config.TextColumn("Defect type"),
                "count": st.column_config.NumberColumn("Images", format="%d"),
                "masks": st.column_config.NumberColumn("Masks", format="%d", help="Images with a pixel ground-truth mask"),
            },
        )
    with right:
        fig = go.Figure()
        for split in dict.fromkeys(r["split"] for r in rows):
            part = [r for r in rows if r["split"] == split]
            fig.add_bar(name=split, x=[r["defect"] for r in part], y=[r["count"] for r in part],
                        text=[r["count"] for r in part], textposition="outside", cliponaxis=False)
        fig.update_layout(barmode="group", height=300, margin=dict(l=10, r=10, t=30, b=10),
                          legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0, title_text="Split"),
                          xaxis_title=None, yaxis_title="images")
        st.plotly_chart(fig, key="dataset_counts_chart", config={"displayModeBar": False})


def draw_grid(page: list[Sample], thumbs: list[tuple[np.ndarray, str | None]]) -> None:
    """Thumbnails of fixed width in a wrapping row: as many per line as the window fits.

    A horizontal flex container instead of ``st.columns`` rows: fixed-width thumbnails in fixed column
    counts overflow narrow windows and leave gaps on wide ones, and one container is fewer elements
    to send than a block per row.
    """
    with st.container(horizontal=True, wrap=True, gap="small", key="dataset_grid"):
        for sample, (thumb, err) in zip(page, thumbs):
            caption = f"{sample.defect} · {sample.path.name}" + (" (unreadable)" if err else "")
            st.image(thumb, caption=caption, width=THUMB_SIZE)


def _step_view(options: list[str], delta: int) -> None:
    current = st.session_state.get(KEY_VIEW)
    i = options.index(current) if current in options else 0
    st.session_state[KEY_VIEW] = options[(i + delta) % len(options)]


def draw_full_view(index: DatasetIndex, samples: list[Sample], page: list[Sample]) -> None:
    """Pick an image of the filtered list; show it large with its ground-truth mask."""
    st.subheader("Full-size view")
    if not samples:
        st.caption("No image matches the filters.")
        return
    by_path = {str(s.path): s for s in samples}
    options = list(by_path)
    if st.session_state.get(KEY_VIEW) not in by_path:
        st.session_state[KEY_VIEW] = str(page[0].path) if page else options[0]
    c_pick, c_prev, c_next = st.columns([8, 1, 1], vertical_alignment="bottom", gap="small")
    chosen = c_pick.selectbox(
        "Image", options, key=KEY_VIEW,
        format_func=lambda p: f"{by_path[p].defect} · {by_path[p].path.name} · {by_path[p].split}",
        help="Any image of the filtered list (type to search). Starts at the first image of the grid page.",
    )
    c_prev.button("", icon=":material/chevron_left:", on_click=_step_view, args=(options, -1), width="stretch",
                  key="dataset_prev", help="Previous image")
    c_next.button("", icon=":material/chevron_right:", on_click=_step_view, args=(options, 1), width="stretch",
                  key="dataset_next", help="Next image")
    c_toggle, c_style = st.columns([1, 1], vertical_alignment="center")
    show_mask = c_toggle.toggle("Ground-truth mask", value=True, key=KEY_OVERLAY)
    style = c_style.segmented_control("Mask style", OVERLAY_STYLES, default=OVERLAY_STYLES[0], key=KEY_OVERLAY_STYLE,
                                      label_visibility="collapsed", disabled=not show_mask) or OVERLAY_STYLES[0]
    sample = by_path[chosen]
    try:
        stat = os.stat(sample.path)
        image, original_hw = full_image(str(sample.path), stat.st_mtime_ns)
    except (ImageError, OSError) as exc:
        st.warning(f"This image cannot be shown: {exc}")
        _draw_details(index, sample, None, None, None, None)
        return
    h, w = image.shape[:2]
    mask = None
    mask_error = None
    if sample.mask_path is not None:
        try:
            mask = full_mask(str(sample.mask_path), os.stat(sample.mask_path).st_mtime_ns, h, w)
        except (ImageError, OSError) as exc:
            mask_error = str(exc)
    shown = to_channels(image, 3)
    if mask is not None and show_mask:
        if style == "Fill":
            layer = shown.copy()
            layer[mask] = MASK_COLOR
            shown = overlay(shown, layer, 0.45)
        else:
            shown = mask_contour(shown, mask, MASK_COLOR)
    st.image(shown, width="stretch", output_format="PNG",
             caption=f"{sample.defect} · {sample.path.name}" + (" · ground truth in green" if mask is not None and show_mask else ""))
    if mask_error:
        st.warning(f"The mask cannot be read: {mask_error}")
    elif sample.label == 1 and sample.mask_path is None:
        st.info("No pixel ground truth for this image (defect type known, no mask file).", icon=":material/info:")
    _draw_details(index, sample, image, original_hw, mask, stat.st_size)


def _draw_details(index: DatasetIndex, sample: Sample, image: np.ndarray | None, original_hw: tuple[int, int] | None,
                  mask: np.ndarray | None, file_bytes: int | None) -> None:
    facts = [f"**Split** {sample.split}", f"**Defect type** {sample.defect}"]
    if image is not None and original_hw is not None:
        h, w = original_hw
        kind = "RGB" if image.ndim == 3 and image.shape[2] == 3 else "gray"
        shown = f" (shown at {image.shape[1]} × {image.shape[0]})" if image.shape[:2] != (h, w) else ""
        facts.append(f"**Size** {w} × {h} px, {kind}{shown}")
    if file_bytes is not None:
        facts.append(f"**File** {fmt_bytes(file_bytes)}")
    if sample.mask_path is not None:
        area = f" · defect area {mask.mean() * 100:.2f} % of the pixels" if mask is not None else ""
        mask_line = f"**Mask** `{rel(sample.mask_path, index.root)}`{area}"
    else:
        mask_line = "**Mask** none (good image)" if sample.label == 0 else "**Mask** none: no pixel ground truth"
    st.markdown(" · ".join(facts) + "  \n" + mask_line + f"  \n**Path** `{rel(sample.path, index.root)}`")
    st.caption(f"Full path: `{sample.path}`")


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


def check_job_id(index: DatasetIndex) -> str:
    """One check job per dataset root and file list: every session sees the same (cached) result."""
    key = f"{index.root}|{index.category}|{files_signature(index.samples)}"
    return "dataset-check-" + hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def _check_files_job(paths: list[str]):
    """The background check: decode in chunks, publish progress, honour the stop request."""

    def run(ctx: JobContext) -> list[tuple[str, str]]:
        failures: list[tuple[str, str]] = []
        ctx.update(done=0, total=len(paths))
        for start in range(0, len(paths), CHECK_CHUNK):
            if ctx.stop.is_set():
                break
            failures += check_images(paths[start : start + CHECK_CHUNK], THUMB_SIZE)
            ctx.update(done=min(len(paths), start + CHECK_CHUNK), failures=list(failures))
        return failures

    return run


def _start_check(job_id: str, paths: list[str]) -> None:
    try:
        ui.job_registry().start("dataset-check", f"Check {len(paths)} files", _check_files_job(paths), job_id=job_id)
    except ValueError:
        pass  # the same check is already running (another session or a double click)


def _stop_check(job_id: str) -> None:
    job = ui.job_registry().get(job_id)
    if job is not None:
        job.request_stop()


def _failure_table(rows: list[tuple[str, str]], root: Path) -> None:
    st.dataframe([{"file": rel(p, root), "reason": r} for p, r in rows], hide_index=True, width="stretch",
                 column_config={"file": st.column_config.TextColumn("File", width="medium"),
                                "reason": st.column_config.TextColumn("Reason", width="large")})


def draw_check(index: DatasetIndex, job_id: str) -> None:
    """The state of the full check, polled while it runs (fragment); one full rerun when it ends."""
    job = ui.job_registry().get(job_id)
    snap = job.snapshot() if job is not None else None
    paths = [str(s.path) for s in index.samples]
    if snap is None:
        st.button(f"Check all files ({len(paths):,})", icon=":material/fact_check:", key="dataset_check_all",
                  on_click=_start_check, args=(job_id, paths),
                  help="Decode every image once in the background (this also makes every thumbnail). "
                       "Unchanged files are only decoded once, so checking again is quick.")
        return

    @st.fragment(run_every=0.5 if snap.running else None)
    def progress() -> None:
        now = ui.job_registry().get(job_id)
        s = now.snapshot() if now is not None else snap
        if s.running:
            done, total = s.state.get("done", 0), s.state.get("total", len(paths)) or 1
            c_bar, c_stop = st.columns([5, 1], vertical_alignment="center")
            c_bar.progress(done / total, text=f"Checking files… {done:,} / {total:,}")
            c_stop.button("Stop", icon=":material/stop:", key="dataset_check_stop", on_click=_stop_check,
                          args=(job_id,), width="stretch")
        elif snap.running:  # it ended since the page was drawn: redraw everything once
            st.rerun()

    if snap.running:
        progress()
        return
    again = dict(on_click=_start_check, args=(job_id, paths), key="dataset_check_again", icon=":material/refresh:")
    if snap.status == FAILED:
        st.warning(f"The check could not finish: {snap.error}")
        st.button("Check again", **again)
        return
    failures = snap.result if snap.status == FINISHED else snap.state.get("failures", [])
    done = len(paths) if snap.status == FINISHED else snap.state.get("done", 0)
    if snap.status != FINISHED:
        st.info(f"Check stopped after {done:,} of {len(paths):,} files.", icon=":material/pause_circle:")
    if failures:
        st.markdown(f"**Do not decode** — {len(failures)} of {plural(done, 'checked file')}")
        _failure_table(failures, index.root)
    elif snap.status == FINISHED:
        st.success(f"All {len(paths):,} images decode.", icon=":material/check_circle:")
    st.button("Check again", **again)


def draw_problems(index: DatasetIndex, page_errors: list[tuple[str, str]]) -> None:
    """Files the index skipped, files of this page that do not decode, and the on-demand full check.

    Drawn after the grid (it needs the page's decode errors) into a slot placed above it.
    """
    job_id = check_job_id(index)
    job = ui.job_registry().get(job_id)
    snap = job.snapshot() if job is not None else None
    checked = snap is not None and snap.status == FINISHED
    unreadable = snap.result if checked else page_errors
    parts = [plural(len(index.skipped), "skipped file") if index.skipped else "no skipped file"]
    if checked:
        parts.append(f"{len(unreadable):,} unreadable")
    elif page_errors:
        parts.append(f"{len(page_errors):,} unreadable on this page")
    label = "Skipped and unreadable files: " + ", ".join(parts)
    with st.expander(label, icon=":material/report:", expanded=bool(unreadable) or snap is not None):
        if index.skipped:
            st.markdown(f"**Skipped by the index** — {plural(len(index.skipped), 'file')}")
            _failure_table(index.skipped, index.root)
        else:
            st.caption("The index skipped no file.")
        if page_errors and not checked:
            st.markdown(f"**Unreadable on this page** — {plural(len(page_errors), 'file')}")
            _failure_table(page_errors, index.root)
        draw_check(index, job_id)


def main() -> None:
    sel = ui.selection()
    index = ui.require_dataset(sel)
    if index is None:
        st.title("Dataset")
        return
    draw_header(sel, index)
    draw_counts(index, count_rows(index))
    problems_slot = st.container()
    page_errors = draw_browser(index)
    with problems_slot:
        draw_problems(index, page_errors)


main()
