"""What the Label page computes without Streamlit: the image fitted for display, painted masks from the
canvas, the model's scores in the label order and how often the labels disagree with the model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from core.data.images import ImageError, read_image, to_channels
from core.evaluation.scored import ScoredSet

LABEL_NAMES = {1: "defective", 0: "good", -1: "unknown"}


def fit_within(img: np.ndarray, px: int) -> np.ndarray:
    """``img`` resized so that its long side is ``px`` (aspect kept; nearest-neighbour when enlarging)."""
    h, w = img.shape[:2]
    s = px / max(h, w)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_NEAREST
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=interp)


def display_image(path: Path | str, px: int) -> np.ndarray | str:
    """The image as RGB uint8 fitted into ``px`` (:func:`fit_within`), or the reason it cannot be read."""
    try:
        img = to_channels(read_image(Path(path)), 3)
    except (ImageError, OSError) as exc:
        return str(exc)
    return fit_within(img, px)


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A bool mask resized nearest-neighbour to ``shape`` ``(H, W)``."""
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0


def canvas_mask(rgba: np.ndarray, existing: np.ndarray | None) -> np.ndarray:
    """Painted strokes (red) added to ``existing``, erase strokes (blue) removed; same size as ``rgba``."""
    a = rgba[..., 3] > 0
    r, b = rgba[..., 0].astype(int), rgba[..., 2].astype(int)
    paint = a & (r > 150) & (b < 120)
    erase = a & (b > 150) & (r < 120)
    base = np.zeros(a.shape, bool) if existing is None else resize_mask(existing, a.shape)
    return (base | paint) & ~erase


def native_shape(path: Path | str) -> tuple[int, int] | None:
    """``(H, W)`` of an image file from its header, or None when it cannot be read."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except Exception:  # noqa: BLE001  (unreadable: the caller falls back to the display size)
        return None


def scores_in_order(ss: ScoredSet | None, relpaths: Sequence[str]) -> np.ndarray | None:
    """The scores of ``ss`` for ``relpaths`` in that order, or None when ``ss`` lacks any of them."""
    if ss is None:
        return None
    by_path = {p: k for k, p in enumerate(ss.paths)}
    if not all(p in by_path for p in relpaths):
        return None
    return np.array([ss.scores[by_path[p]] for p in relpaths])


def model_disagreements(labels: np.ndarray, scores: np.ndarray, threshold: float) -> int:
    """Images with a known label (1 / 0) whose label differs from the model's verdict ``score >= threshold``."""
    return int(((labels >= 0) & ((labels == 1) != (scores >= threshold))).sum())
