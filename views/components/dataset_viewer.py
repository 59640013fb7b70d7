"""The Dataset page's full-size view: one image of the filtered list, large, with its ground-truth mask
(outline or fill) and its facts (split, size, file, mask area, path)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import streamlit as st

from core.data.images import ImageError, read_image, read_mask, resize, to_channels
from core.data.index import DatasetIndex, Sample
from core.services.dataset_browse import rel
from core.viz import mask_contour, overlay
from views.components.display import fmt_bytes

KEY_VIEW = "dataset_view"  # path (str) of the image in the full-size view
KEY_OVERLAY = "dataset_overlay"
KEY_OVERLAY_STYLE = "dataset_overlay_style"
OVERLAY_STYLES = ("Outline", "Fill")
DISPLAY_MAX = 1024  # long side of the full-size view, in pixels
MASK_COLOR = (40, 255, 80)  # green: defects themselves are often red/brown/dark


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


def reset_view() -> None:
    st.session_state.pop(KEY_VIEW, None)


def _step_view(options: list[str], delta: int) -> None:
    current = st.session_state.get(KEY_VIEW)
    i = options.index(current) if current in options else 0
    st.session_state[KEY_VIEW] = options[(i + delta) % len(options)]


def with_mask(image: np.ndarray, mask: np.ndarray | None, style: str) -> np.ndarray:
    """``image`` as RGB with ``mask`` filled in or outlined (unchanged without a mask)."""
    shown = to_channels(image, 3)
    if mask is None:
        return shown
    if style == "Fill":
        layer = shown.copy()
        layer[mask] = MASK_COLOR
        return overlay(shown, layer, 0.45)
    return mask_contour(shown, mask, MASK_COLOR)


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
    st.image(with_mask(image, mask if show_mask else None, style), width="stretch", output_format="PNG",
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
