"""Image panels for display, without Streamlit: RGB conversion, honest (pixelated) enlarging, short names
and the default images of a picker. Shared by the Projection and Ano-Unet pages and their job functions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

GOOD = "good"
PANEL_PX = 128  # largest display side of an enlarged panel


def display_scale(side: int, px: int = PANEL_PX) -> int:
    """Integer enlargement up to ``px`` for small images (32 px digits -> 4x, 64 px -> 2x), 1 for large ones."""
    return max(1, px // side)


def enlarge_nn(img: np.ndarray, factor: int) -> np.ndarray:
    """Enlarge by an integer factor without smoothing (pixels stay honest)."""
    if factor == 1:
        return img
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)


def display_rgb(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[..., C, H, W]`` floats in [0, 1] (or uint8) -> ``[..., H, W, 3]`` uint8 RGB (gray repeated)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    arr = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32, copy=False)
    out = np.moveaxis((np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), -3, -1)
    return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else np.ascontiguousarray(out)


def short_label(name: str) -> str:
    """``test/broken/003.png`` -> ``broken/003``."""
    p = Path(name)
    return f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem


def default_picks(names: Sequence[str], defects: Sequence[str], scores: np.ndarray | None = None, n: int = 4) -> list[str]:
    """The first image of each of the top ``n - 1`` defect types, plus a typical (median) good image,
    filled up to ``n`` for small test sets. With ``scores``, "first" means highest-scoring; without,
    the test set's order."""
    order = list(range(len(names))) if scores is None else [int(i) for i in np.argsort(-np.asarray(scores), kind="stable")]
    best: dict[str, int] = {}
    for i in order:
        if defects[i] != GOOD and defects[i] not in best:
            best[defects[i]] = i
    picks = list(best.values())[: n - 1]  # dict order = by score (or position), first ones first
    goods = [i for i in order if defects[i] == GOOD]
    if goods:
        picks.append(goods[len(goods) // 2])
    for i in order:  # small test sets: fill up with the next ones
        if len(picks) >= n:
            break
        if i not in picks:
            picks.append(i)
    return [names[i] for i in picks[:n]]
