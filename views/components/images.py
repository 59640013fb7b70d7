"""Drawing pieces of the image-row views (Projection, Ano-Unet): header rows, ground-truth badges,
mask outlines and the colour bar with its caption."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import streamlit as st

from core.services.panels import enlarge_nn
from core.viz import mask_contour
from views.components.display import colorbar, defect_badge

MASK_COLOR = (0, 230, 64)  # the ground-truth defect outline


def header_row(widths: Sequence[float], heads: Sequence[str]) -> None:
    """A row of bold column titles (an empty title stays empty)."""
    for col, head in zip(st.columns(list(widths)), heads):
        col.markdown(f"**{head}**" if head else "")


def truth_badge(defect: str | None) -> str:
    """The ground-truth badge of a test image, or "upload"."""
    return defect_badge(defect) if defect else ":gray-badge[upload]"


def outlined(img: np.ndarray, mask: np.ndarray | None, factor: int) -> np.ndarray:
    """``img`` enlarged by ``factor`` (pixelated), with the ground-truth mask outlined in green."""
    big = enlarge_nn(img, factor)
    if mask is None or not mask.any():
        return big
    return mask_contour(big, enlarge_nn(mask.astype(np.uint8), factor), color=MASK_COLOR)


def colorbar_caption(text: str) -> None:
    """The JET colour bar beside a caption that says what it spans."""
    bar, caption = st.columns([1, 5], vertical_alignment="center")
    bar.image(colorbar(), width=200, output_format="PNG")
    caption.caption(text)
