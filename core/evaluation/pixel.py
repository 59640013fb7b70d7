"""Pixel-level curves of a scored set: pixel precision/recall/F1/IoU per threshold, PRO, segmentation overlays."""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from cachetools import LRUCache

from core.errors import ConfigError
from core.evaluation import metrics
from core.evaluation.scored import ScoredSet, _readonly
from core.viz import mask_contour


# =========================================================================== #
# Pixel level
# =========================================================================== #
def _check_t(threshold: float) -> float:
    t = float(threshold)
    if math.isnan(t):
        raise ConfigError("threshold must not be NaN")
    return t


@dataclass(frozen=True, eq=False)
class PixelCurves:
    """Histograms of map values of defect vs. normal pixels (images with pixel ground truth).

    ``grid`` holds the candidate pixel thresholds, ascending, followed by one value above the maximum
    (flags nothing). For float16 maps (the cached ones) it is every distinct map value, so all counts
    are exact at any threshold; for other dtypes, equal-width steps over the value range mixed with
    quantiles of the defect and of the normal pixels (about ``bins`` values), so both the value range
    and the pixel mass are resolved. ``pos_ge[j]`` / ``neg_ge[j]`` count defect / normal pixels with
    ``value >= grid[j]``, exactly. A threshold between grid values is snapped up to the next grid
    value (:func:`pixel_metrics` reports it as ``threshold_used``); with a coarse grid the counts are
    then off by at most the pixels of one bin. ``precision``/``recall``/``f1``/``iou``/``fpr`` are the
    curves over ``grid`` (up to tens of thousands of points: thin them out for plotting).
    """

    grid: np.ndarray
    pos_ge: np.ndarray
    neg_ge: np.ndarray
    n_pos: int
    n_neg: int
    n_images: int
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    iou: np.ndarray
    fpr: np.ndarray
    f1_max: float
    f1_threshold: float
    pixel_auroc: float | None
    aupro: float | None
    pro_fpr: np.ndarray | None
    pro: np.ndarray | None
    value_min: float
    value_max: float


def _pixel_rates(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int) -> dict[str, np.ndarray]:
    tp = np.asarray(tp, np.float64)
    fp = np.asarray(fp, np.float64)
    fn = n_pos - tp

    def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros(np.shape(a)), where=np.asarray(b) > 0)

    return {"precision": div(tp, tp + fp), "recall": div(tp, np.full(tp.shape, float(n_pos))),
            "f1": div(2 * tp, 2 * tp + fp + fn), "iou": div(tp, tp + fp + fn),
            "fpr": div(fp, np.full(fp.shape, float(n_neg)))}


def build_pixel_curves(maps: np.ndarray, masks: np.ndarray, *, bins: int = 4096, pro: bool = True,
                       pro_thresholds: int = 200) -> PixelCurves | None:
    """Pixel histograms (and the PRO curve) of maps ``[N, H, W]`` vs. masks; None without defect pixels.

    float16 maps (as :func:`scored_set` caches them) are histogrammed over their distinct values, so
    every pixel metric is exact; other dtypes over a grid of about ``bins`` values.
    """
    maps = np.asarray(maps)
    masks = np.asarray(masks).astype(bool, copy=False)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise ConfigError(f"maps and masks must be [N, H, W] of one shape, got {maps.shape} and {masks.shape}")
    if maps.size == 0 or not masks.any():
        return None
    g = masks.reshape(-1)
    if maps.dtype == np.float16:
        codes = maps.reshape(-1).view(np.uint16)
        pos_c = np.bincount(codes[g], minlength=65536)
        neg_c = np.bincount(codes[~g], minlength=65536)
        present = np.flatnonzero(pos_c + neg_c)
        vals = np.arange(65536, dtype=np.uint16)[present].view(np.float16).astype(np.float64)
        if not np.isfinite(vals).all():
            raise ConfigError("anomaly maps contain NaN or inf")
        order = np.argsort(vals, kind="stable")
        vals, pos_c, neg_c = vals[order], pos_c[present][order], neg_c[present][order]
        grid, starts = np.unique(vals, return_index=True)  # merges -0.0 and +0.0
        pos_h, neg_h = np.add.reduceat(pos_c, starts), np.add.reduceat(neg_c, starts)
        lo, hi = float(grid[0]), float(grid[-1])
        top = metrics.flag_nothing_threshold(np.array([lo, hi]))
    else:
        v = maps.reshape(-1).astype(np.float32, copy=False)
        if not np.isfinite(v).all():
            raise ConfigError("anomaly maps contain NaN or inf")
        lo, hi = float(v.min()), float(v.max())
        q = np.linspace(0.0, 1.0, max(2, bins // 4))
        parts = [np.linspace(lo, hi, max(2, bins // 2)), np.quantile(v[g], q, method="lower")]
        if not g.all():
            parts.append(np.quantile(v[~g], q, method="lower"))
        grid = np.unique(np.concatenate(parts).astype(np.float32)).astype(np.float64)
        grid = grid[(grid >= lo) & (grid <= hi)]
        if grid.size == 0 or grid[0] > lo:
            grid = np.r_[lo, grid]
        top = metrics.flag_nothing_threshold(np.array([lo, hi]))
        b = np.searchsorted(grid, v, side="right") - 1  # grid[b] <= v < grid[b+1]; b >= 0 since grid[0] == min
        pos_h = np.bincount(b[g], minlength=grid.size)
        neg_h = np.bincount(b[~g], minlength=grid.size)
    pos_ge = np.r_[np.cumsum(pos_h[::-1])[::-1], 0].astype(np.int64)
    neg_ge = np.r_[np.cumsum(neg_h[::-1])[::-1], 0].astype(np.int64)
    grid = np.r_[grid, top]
    n_pos, n_neg = int(g.sum()), int(g.size - g.sum())
    r = _pixel_rates(pos_ge, neg_ge, n_pos, n_neg)
    j = int(np.argmax(r["f1"][::-1]))  # ties: the highest threshold
    j = grid.size - 1 - j
    pro_fpr = pro_y = None
    aupro = pix_auroc = None
    if pro:
        m32 = maps.astype(np.float32, copy=False)
        if n_neg:
            pix_auroc = metrics.pixel_auroc(m32, masks)
            pro_fpr, pro_y = metrics.pro_curve(m32, masks, num_thresholds=pro_thresholds)
            aupro = metrics.aupro(m32, masks, num_thresholds=pro_thresholds)
    return PixelCurves(grid=_readonly(grid), pos_ge=_readonly(pos_ge), neg_ge=_readonly(neg_ge), n_pos=n_pos, n_neg=n_neg,
                       n_images=int(maps.shape[0]), precision=r["precision"], recall=r["recall"], f1=r["f1"], iou=r["iou"],
                       fpr=r["fpr"], f1_max=float(r["f1"][j]), f1_threshold=float(grid[j]), pixel_auroc=pix_auroc,
                       aupro=aupro, pro_fpr=pro_fpr, pro=pro_y, value_min=lo, value_max=hi)


_PIXEL_MEMO: LRUCache[tuple, tuple[Any, PixelCurves | None]] = LRUCache(16)


_PIXEL_LOCK = threading.Lock()


def pixel_curves(ss: ScoredSet, *, bins: int = 4096, pro: bool = True) -> PixelCurves | None:
    """:class:`PixelCurves` over the images with pixel ground truth and a known label; None when there is none.

    Memoized per (maps, masks, selected images), so relabeling a copy of a set reuses the work when
    the pixel ground truth did not change.
    """
    sel = ss.pixel_known
    if ss.maps is None or ss.masks is None or not sel.any():
        return None
    key = (id(ss.maps), id(ss.masks), hashlib.sha1(sel.tobytes()).hexdigest(), bins, pro)
    with _PIXEL_LOCK:
        hit = _PIXEL_MEMO.get(key)
        if hit is not None:
            return hit[1]
    pc = build_pixel_curves(ss.maps[sel], ss.masks[sel], bins=bins, pro=pro)
    with _PIXEL_LOCK:
        _PIXEL_MEMO[key] = ((ss.maps, ss.masks), pc)  # holding the arrays keeps their ids unique
    return pc


def pixel_metrics(pc: PixelCurves, threshold: float) -> dict[str, Any]:
    """Pixel counts and precision / recall / F1 / IoU / FPR at a pixel threshold, O(log bins).

    A pixel is flagged iff ``value >= threshold_used`` (the smallest grid value >= ``threshold``).
    IoU and F1 are over all pixels of all images with ground truth (not a per-image mean).
    """
    t = _check_t(threshold)
    j = min(int(np.searchsorted(pc.grid, t, side="left")), pc.grid.size - 1)
    tp, fp = int(pc.pos_ge[j]), int(pc.neg_ge[j])
    r = _pixel_rates(np.array([tp]), np.array([fp]), pc.n_pos, pc.n_neg)
    return {"threshold": t, "threshold_used": float(pc.grid[j]), "tp": tp, "fp": fp, "fn": pc.n_pos - tp,
            "tn": pc.n_neg - fp, **{k: float(v[0]) for k, v in r.items()}}


def binary_segmentation(amap: np.ndarray, threshold: float) -> np.ndarray:
    """bool map: ``amap >= threshold`` (any shape), compared exactly (in float64) as :func:`pixel_metrics` counts."""
    return np.asarray(amap).astype(np.float64, copy=False) >= _check_t(threshold)


def segmentation_overlay(image: np.ndarray, seg: np.ndarray, mask: np.ndarray | None = None,
                         alpha: float = 0.45, color: tuple[int, int, int] = (255, 40, 40)) -> np.ndarray:
    """RGB uint8: ``image`` with the predicted pixels tinted and the ground-truth outline in green.

    Args:
        image: ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]`` uint8 (or float in [0, 1]).
        seg: bool ``[H, W]`` (:func:`binary_segmentation`).
        mask: optional bool ``[H, W]`` ground truth.
    """

    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    seg = np.asarray(seg, bool)
    if seg.shape != img.shape[:2]:
        raise ConfigError(f"segmentation {seg.shape} does not match the image {img.shape[:2]}")
    out = img.astype(np.float32)
    out[seg] = (1 - alpha) * out[seg] + alpha * np.asarray(color, np.float32)
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if mask is not None and np.asarray(mask).any():
        out = mask_contour(out, np.asarray(mask, bool))
    return out
