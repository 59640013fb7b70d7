"""Uncertainty of the metrics a review quotes: stratified bootstrap intervals over the test images, and a paired
test of two AUROCs on the same images (DeLong et al. 1988, the fast algorithm of Sun & Xu 2014).

Every interval resamples *images* (defective and good ones within their own class, so each resample has
both), because the images are what was sampled; pixels of one image are not independent. The pixel metrics
are decomposed per image once (histograms of each image's map values; per-region overlaps at the PRO curve's
thresholds), so a resample is a weighted sum instead of a new pass over every pixel. With all weights 1 the
decomposition gives the full-set pixel AUROC exactly and the AUPRO on the same 200 thresholds as
:func:`core.evaluation.metrics.aupro`.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from core.evaluation import metrics
from core.evaluation.scored import ScoredSet

FPR_LIMIT = 0.3
PRO_THRESHOLDS = 200
_MAX_CELLS = 40_000_000  # images x histogram bins held at once for the pixel AUROC


def _weights(labels: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, N]`` multiplicities of a stratified resample (each class drawn from itself)."""
    rng = np.random.default_rng(seed)
    w = np.zeros((n_boot, len(labels)), dtype=np.float64)
    for cls in (0, 1):
        idx = np.flatnonzero(labels == cls)
        if not len(idx):
            continue
        draws = rng.integers(0, len(idx), (n_boot, len(idx)))
        for b in range(n_boot):
            np.add.at(w[b], idx[draws[b]], 1.0)
    return w


def _interval(values: np.ndarray, alpha: float = 0.05) -> list[float] | None:
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    return [float(np.quantile(values, alpha / 2)), float(np.quantile(values, 1 - alpha / 2))]


def image_intervals(scores: np.ndarray, labels: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """95 % intervals of the image AUROC and average precision (labels 0/1 only)."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, np.int64)
    if not (y == 1).any() or not (y == 0).any():
        return {"image_auroc": None, "average_precision": None}
    auroc = metrics.bootstrap_auroc_ci(s, y, n_boot=n_boot, seed=seed)
    rng = np.random.default_rng(seed + 1)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    aps = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        aps[b] = metrics.average_precision(s[idx], y[idx])
    return {"image_auroc": list(auroc) if auroc else None, "average_precision": _interval(aps)}


def _auroc_from_hist(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC per row of value histograms ``[B, G]`` (ascending values; ties count 1/2)."""
    below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(1) / (n_pos * n_neg)


class PixelDecomposition:
    """Per-image pieces of the pixel AUROC and the PRO curve of maps ``[N, H, W]`` vs masks."""

    def __init__(self, maps: np.ndarray, masks: np.ndarray) -> None:
        m = np.asarray(maps, dtype=np.float32)
        g = np.asarray(masks, dtype=bool)
        n = m.shape[0]
        flat = m.reshape(n, -1)
        values = np.unique(flat)
        if n * len(values) > _MAX_CELLS:  # too many distinct values: quantile bins (the interval only)
            values = np.unique(np.quantile(flat, np.linspace(0, 1, max(2, _MAX_CELLS // n))))
        self.values = values
        codes = np.clip(np.searchsorted(values, flat, side="right") - 1, 0, len(values) - 1)
        gm = g.reshape(n, -1)
        self.pos_hist = np.stack([np.bincount(codes[i][gm[i]], minlength=len(values)) for i in range(n)]).astype(np.float64)
        self.neg_hist = np.stack([np.bincount(codes[i][~gm[i]], minlength=len(values)) for i in range(n)]).astype(np.float64)
        # PRO: the thresholds of metrics.pro_curve (evenly spaced between the global min and max)
        lo, hi = float(m.min()), float(m.max())
        thr = np.linspace(lo, hi, PRO_THRESHOLDS) if hi > lo else np.array([lo])
        bins = np.searchsorted(thr, flat, side="right") - 1
        k = len(thr)
        self.neg_ge = np.zeros((n, k))
        self.overlap_sum = np.zeros((n, k))  # sum over the image's regions of |flagged ∩ region| / |region|
        self.n_regions = np.zeros(n)
        self.n_neg = (~gm).sum(1).astype(np.float64)
        for i in range(n):
            self.neg_ge[i] = np.cumsum(np.bincount(bins[i][~gm[i]], minlength=k)[::-1])
            if not gm[i].any():
                continue
            count, lab = cv2.connectedComponents(np.ascontiguousarray(g[i], dtype=np.uint8), connectivity=8)
            lab = lab.reshape(-1)
            for r in range(1, count):
                sel = lab == r
                hist = np.bincount(bins[i][sel], minlength=k)[::-1]
                self.overlap_sum[i] += np.cumsum(hist) / sel.sum()
            self.n_regions[i] = count - 1

    def pixel_auroc(self, w: np.ndarray) -> np.ndarray:
        return _auroc_from_hist(w @ self.pos_hist, w @ self.neg_hist)

    def aupro(self, w: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            fpr = (w @ self.neg_ge) / (w @ self.n_neg)[:, None]
            pro = (w @ self.overlap_sum) / (w @ self.n_regions)[:, None]
        out = np.empty(len(w))
        for b in range(len(w)):
            x, y = np.r_[0.0, fpr[b]], np.clip(np.r_[0.0, pro[b]], 0, 1)
            out[b] = min(1.0, max(0.0, metrics._trapezoid_to(x, y, FPR_LIMIT) / FPR_LIMIT)) if np.isfinite(x).all() else np.nan
        return out


def pixel_intervals(ss: ScoredSet, n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
    """95 % intervals of the pixel AUROC and the AUPRO over the images with pixel ground truth."""
    sel = ss.pixel_known
    if ss.maps is None or ss.masks is None or not sel.any() or not ss.masks[sel].any():
        return {"pixel_auroc": None, "aupro": None}
    dec = PixelDecomposition(ss.maps[sel], ss.masks[sel])
    w = _weights(ss.labels[sel], n_boot, seed)
    return {"pixel_auroc": _interval(dec.pixel_auroc(w)), "aupro": _interval(dec.aupro(w))}


def metric_intervals(ss: ScoredSet, n_boot: int = 1000, n_boot_pixel: int = 200, seed: int = 0) -> dict[str, Any]:
    """Stratified bootstrap 95 % intervals of image AUROC, AP, pixel AUROC and AUPRO (keys as ``summary``),
    with ``n_boot`` and ``n_boot_pixel`` (the resamples used)."""
    known = ss.known
    out = image_intervals(ss.scores[known], ss.labels[known], n_boot, seed)
    out.update(pixel_intervals(ss, n_boot_pixel, seed))
    out.update(n_boot=n_boot, n_boot_pixel=n_boot_pixel)
    return out


def _midrank(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    return ranks


def delong_paired(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray) -> dict[str, float] | None:
    """DeLong's test that two detectors' AUROCs on the same images are equal: both AUROCs, their difference,
    its standard error, z and the two-sided p-value. None without both classes."""
    y = np.asarray(labels, np.int64)
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m < 2 or n < 2:
        return None
    aucs, v10, v01 = [], [], []
    for s in (np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)):
        x, z = s[pos], s[neg]
        tx, tz, t = _midrank(x), _midrank(z), _midrank(np.r_[x, z])
        aucs.append((t[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((t[:m] - tx) / n)  # structural components of the positives
        v01.append(1.0 - (t[m:] - tz) / m)  # and of the negatives
    s10, s01 = np.cov(np.array(v10)), np.cov(np.array(v01))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    diff = aucs[0] - aucs[1]
    if var <= 0:
        p = 1.0 if diff == 0 else 0.0
        return {"auroc_a": aucs[0], "auroc_b": aucs[1], "difference": diff, "se": 0.0, "z": math.inf if diff else 0.0,
                "p_value": p}
    zval = diff / math.sqrt(var)
    return {"auroc_a": float(aucs[0]), "auroc_b": float(aucs[1]), "difference": float(diff), "se": float(math.sqrt(var)),
            "z": float(zval), "p_value": float(math.erfc(abs(zval) / math.sqrt(2)))}
