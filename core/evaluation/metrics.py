"""Evaluation metrics for anomaly detection.

All functions are pure NumPy (plus scikit-learn / OpenCV helpers) over arrays.

Conventions used throughout this module:

* A **higher score means more anomalous**.
* Labels are binary: ``1`` = defective (anomalous, the *positive* class),
  ``0`` = good (the *negative* class). Booleans are accepted.
* An image (or pixel) is **predicted defective iff** ``score >= threshold``.
* Every threshold returned by this module is either an actual score value or
  the "flag nothing" value returned by :func:`flag_nothing_threshold`
  (a value strictly above the maximum score), so that feeding it back into
  :func:`confusion_at` reproduces the confusion it was selected for.
* Scores / anomaly maps must be finite: NaN (or +-inf) raises ``ValueError``.
* Metrics that are undefined when only one class is present (AUROC, AP,
  pixel AUROC, AUPRO) return ``None`` instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

__all__ = [
    "Confusion",
    "average_precision",
    "aupro",
    "bootstrap_auroc_ci",
    "confusion_at",
    "f1_max",
    "flag_nothing_threshold",
    "image_auroc",
    "min_cost_threshold",
    "pixel_auroc",
    "pr_points",
    "pro_curve",
    "roc_points",
    "summarize",
    "threshold_for_fpr",
    "threshold_for_tpr",
    "youden_threshold",
]


# --------------------------------------------------------------------------- #
# Confusion matrix
# --------------------------------------------------------------------------- #
def _safe_div(num: float, den: float) -> float:
    """Return ``num / den`` with the convention ``x / 0 == 0.0``."""
    return float(num) / float(den) if den else 0.0


@dataclass(frozen=True)
class Confusion:
    """Binary confusion counts at one threshold (positive class = defective).

    All ratio properties define ``0 / 0`` as ``0.0``.

    Attributes:
        tp: Defective samples predicted defective.
        fp: Good samples predicted defective.
        tn: Good samples predicted good.
        fn: Defective samples predicted good.
    """

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        """Total number of samples."""
        return self.tp + self.fp + self.tn + self.fn

    @property
    def tpr(self) -> float:
        """True-positive rate (recall, sensitivity): ``tp / (tp + fn)``."""
        return _safe_div(self.tp, self.tp + self.fn)

    @property
    def recall(self) -> float:
        """Alias of :attr:`tpr`."""
        return self.tpr

    @property
    def fpr(self) -> float:
        """False-positive rate: ``fp / (fp + tn)``."""
        return _safe_div(self.fp, self.fp + self.tn)

    @property
    def tnr(self) -> float:
        """True-negative rate (specificity): ``tn / (tn + fp)``."""
        return _safe_div(self.tn, self.tn + self.fp)

    @property
    def precision(self) -> float:
        """Precision: ``tp / (tp + fp)``."""
        return _safe_div(self.tp, self.tp + self.fp)

    @property
    def f1(self) -> float:
        """F1 score: ``2 tp / (2 tp + fp + fn)``."""
        return _safe_div(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def accuracy(self) -> float:
        """Accuracy: ``(tp + tn) / n``."""
        return _safe_div(self.tp + self.tn, self.n)

    def as_dict(self) -> dict[str, float | int]:
        """Return counts and derived rates as a plain dict (JSON-friendly)."""
        return {
            "tp": self.tp,
            "fp": self.fp,
            "tn": self.tn,
            "fn": self.fn,
            "tpr": self.tpr,
            "fpr": self.fpr,
            "tnr": self.tnr,
            "precision": self.precision,
            "f1": self.f1,
            "accuracy": self.accuracy,
        }


# --------------------------------------------------------------------------- #
# Validation helpers
# --------------------------------------------------------------------------- #
def _finite(a: np.ndarray, dtype, name: str, what: str) -> np.ndarray:
    """``a`` as ``dtype``; ValueError when it is not numeric, or holds NaN or inf."""
    try:
        a = a.astype(dtype, copy=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from exc
    if np.isnan(a).any():
        raise ValueError(f"{what} contain NaN")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contain non-finite values (inf)")
    return a


def _validate(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert image-level scores and labels.

    Args:
        scores: 1-D array-like of anomaly scores.
        labels: 1-D array-like of labels: 0/1 (or bool), -1 for unknown.

    Returns:
        ``(scores, labels)`` as a float64 and an int64 1-D array, images with an unknown label (-1)
        removed.

    Raises:
        ValueError: On empty input, non-1-D input, length mismatch, non-finite
            scores or labels that are not 0/1.
    """
    s = np.asarray(scores)
    y = np.asarray(labels)
    # Accept column/row vectors such as (N, 1) by squeezing singleton axes.
    if s.ndim > 1:
        s = np.squeeze(s)
    if y.ndim > 1:
        y = np.squeeze(y)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(
            f"scores and labels must be 1-D, got shapes {np.shape(scores)} "
            f"and {np.shape(labels)}"
        )
    if s.shape[0] != y.shape[0]:
        raise ValueError(
            f"scores and labels have different lengths: {s.shape[0]} != {y.shape[0]}"
        )
    if s.shape[0] == 0:
        raise ValueError("scores and labels must not be empty")
    s = _finite(s, np.float64, "scores", "scores")
    try:
        yf = y.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"labels must be 0/1: {exc}") from exc
    if not np.isin(yf, (0.0, 1.0, -1.0)).all():
        raise ValueError("labels must contain only 0 (good), 1 (defective) and -1 (unknown)")
    known = yf >= 0
    if not known.all():  # unknown labels (an unlabeled folder, "unsure") are left out of every metric
        s, yf = s[known], yf[known]
        if s.shape[0] == 0:
            raise ValueError("no image has a label (all are unknown)")
    return s, yf.astype(np.int64)


def _has_both_classes(labels: np.ndarray) -> bool:
    """Return True if ``labels`` contains at least one 0 and one 1."""
    n_pos = int(labels.sum())
    return 0 < n_pos < labels.shape[0]


def _check_threshold(threshold: float) -> float:
    """Validate a scalar threshold (must not be NaN)."""
    try:
        t = float(threshold)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"threshold must be a number, got {threshold!r}") from exc
    if np.isnan(t):
        raise ValueError("threshold must not be NaN")
    return t


def _check_rate(value: float, name: str) -> float:
    """Validate a rate in ``[0, 1]``."""
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


def flag_nothing_threshold(scores: ArrayLike) -> float:
    """Return a threshold strictly above every score ("flag nothing").

    The value is ``max(scores) + gap`` with
    ``gap = 1e-6 * max(1, |max|, max - min)``, i.e. visibly (but only just)
    above the maximum, so ``confusion_at(scores, labels, t)`` flags no sample.

    Args:
        scores: Array-like of finite scores (any shape, non-empty).

    Returns:
        A finite float strictly greater than ``max(scores)``.

    Raises:
        ValueError: If ``scores`` is empty or contains non-finite values.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        raise ValueError("scores must not be empty")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    hi = float(s.max())
    lo = float(s.min())
    gap = 1e-6 * max(1.0, abs(hi), hi - lo)
    out = hi + gap
    if not out > hi:  # pragma: no cover - only for absurd magnitudes
        out = float(np.nextafter(hi, np.inf))
    return out


def _sweep(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confusion counts at every candidate threshold.

    Candidates are the "flag nothing" threshold followed by every unique score,
    in **descending** order.

    Args:
        s: Validated float scores.
        y: Validated 0/1 labels.

    Returns:
        ``(thresholds, tp, fp)``, each of length ``n_unique + 1``; ``tp[i]`` /
        ``fp[i]`` are the counts with ``score >= thresholds[i]``.
    """
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    ends = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.shape[0] - 1]
    tp = np.cumsum(y_sorted)[ends]
    fp = (ends + 1) - tp
    thresholds = np.r_[flag_nothing_threshold(s), s_sorted[ends]]
    return (
        thresholds,
        np.r_[0, tp].astype(np.int64),
        np.r_[0, fp].astype(np.int64),
    )


# --------------------------------------------------------------------------- #
# Image-level metrics
# --------------------------------------------------------------------------- #
def confusion_at(scores: ArrayLike, labels: ArrayLike, threshold: float) -> Confusion:
    """Confusion counts when flagging ``score >= threshold`` as defective.

    Args:
        scores: 1-D anomaly scores.
        labels: 1-D binary labels (1 = defective).
        threshold: Decision threshold (``inf`` flags nothing, ``-inf`` all).

    Returns:
        The :class:`Confusion` at ``threshold``.

    Raises:
        ValueError: On invalid inputs or a NaN threshold.
    """
    s, y = _validate(scores, labels)
    t = _check_threshold(threshold)
    pred = s >= t
    pos = y == 1
    tp = int(np.count_nonzero(pred & pos))
    fp = int(np.count_nonzero(pred & ~pos))
    fn = int(np.count_nonzero(~pred & pos))
    tn = int(np.count_nonzero(~pred & ~pos))
    return Confusion(tp=tp, fp=fp, tn=tn, fn=fn)


def image_auroc(scores: ArrayLike, labels: ArrayLike) -> float | None:
    """Area under the ROC curve of image-level scores.

    Ties count one half (Mann-Whitney convention, as in scikit-learn).

    Args:
        scores: 1-D anomaly scores.
        labels: 1-D binary labels (1 = defective).

    Returns:
        AUROC in ``[0, 1]``, or ``None`` if only one class is present.

    Raises:
        ValueError: On invalid inputs (NaN, length mismatch, non-binary labels).
    """
    s, y = _validate(scores, labels)
    if not _has_both_classes(y):
        return None
    return float(roc_auc_score(y, s))


def average_precision(scores: ArrayLike, labels: ArrayLike) -> float | None:
    """Average precision (area under the PR curve, step-wise, as scikit-learn).

    Args:
        scores: 1-D anomaly scores.
        labels: 1-D binary labels (1 = defective).

    Returns:
        AP in ``[0, 1]``, or ``None`` if only one class is present (with no
        defective samples AP is undefined; with no good samples it is
        trivially 1 and not informative, so ``None`` for consistency with
        :func:`image_auroc`).

    Raises:
        ValueError: On invalid inputs.
    """
    s, y = _validate(scores, labels)
    if not _has_both_classes(y):
        return None
    return float(average_precision_score(y, s))


def _require_both_classes(y: np.ndarray, what: str) -> None:
    if not _has_both_classes(y):
        raise ValueError(f"{what} needs both good (0) and defective (1) samples")


def roc_points(
    scores: ArrayLike, labels: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve points (no points dropped).

    Uses ``sklearn.metrics.roc_curve(drop_intermediate=False)``. scikit-learn's
    leading ``inf`` threshold is replaced by :func:`flag_nothing_threshold`
    (a finite value just above ``max(scores)``), so all thresholds are finite
    and ``confusion_at(scores, labels, thresholds[i])`` reproduces
    ``(fpr[i], tpr[i])``.

    Args:
        scores: 1-D anomaly scores.
        labels: 1-D binary labels (1 = defective).

    Returns:
        ``(fpr, tpr, thresholds)``; thresholds are in decreasing order and fpr /
        tpr are non-decreasing, starting at ``(0, 0)`` and ending at ``(1, 1)``.

    Raises:
        ValueError: On invalid inputs or if only one class is present.
    """
    s, y = _validate(scores, labels)
    _require_both_classes(y, "roc_points")
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    thr = np.asarray(thr, dtype=np.float64).copy()
    if thr.size and not np.isfinite(thr[0]):
        thr[0] = flag_nothing_threshold(s)
    return np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64), thr


def pr_points(
    scores: ArrayLike, labels: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve points.

    Uses ``sklearn.metrics.precision_recall_curve``. Unlike scikit-learn, the
    three returned arrays have the **same length**: the final
    ``(precision=1, recall=0)`` point, which has no threshold in scikit-learn,
    is given :func:`flag_nothing_threshold`. Note that by scikit-learn's
    convention that point has precision 1.0 whereas
    :attr:`Confusion.precision` defines ``0/0`` as 0.0.

    Args:
        scores: 1-D anomaly scores.
        labels: 1-D binary labels (1 = defective).

    Returns:
        ``(precision, recall, thresholds)`` with thresholds increasing (recall
        non-increasing).

    Raises:
        ValueError: On invalid inputs or if only one class is present.
    """
    s, y = _validate(scores, labels)
    _require_both_classes(y, "pr_points")
    precision, recall, thr = precision_recall_curve(y, s)
    thr = np.r_[np.asarray(thr, dtype=np.float64), flag_nothing_threshold(s)]
    return (
        np.asarray(precision, dtype=np.float64),
        np.asarray(recall, dtype=np.float64),
        thr,
    )


def f1_max(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """Best achievable F1 over all thresholds and the threshold achieving it.

    Candidate thresholds are every unique score plus the "flag nothing" value.
    Ties are broken in favour of the **highest** threshold (fewest flags).

    Args:
        scores: 1-D anomaly scores.
        labels: 1-D binary labels (1 = defective).

    Returns:
        ``(best_f1, threshold)`` such that
        ``confusion_at(scores, labels, threshold).f1 == best_f1``. With no
        defective samples the F1 is 0 everywhere and the "flag nothing"
        threshold is returned.

    Raises:
        ValueError: On invalid inputs.
    """
    s, y = _validate(scores, labels)
    thr, tp, fp = _sweep(s, y)
    n_pos = int(y.sum())
    fn = n_pos - tp
    den = 2 * tp + fp + fn
    f1 = np.divide(2.0 * tp, den, out=np.zeros(tp.shape, dtype=np.float64), where=den > 0)
    i = int(np.argmax(f1))
    # Recompute through Confusion so the value is bit-identical to confusion_at.
    best = Confusion(tp=int(tp[i]), fp=int(fp[i]), tn=int(len(y) - n_pos - fp[i]), fn=int(fn[i]))
    return best.f1, float(thr[i])


def _threshold_for_rate(scores: ArrayLike, labels: ArrayLike, target: float, rate: str) -> float:
    """The threshold a target rate picks (``rate`` is ``fpr`` or ``tpr``); see the two public functions.

    Candidates are the unique scores plus the "flag nothing" value (FPR = TPR = 0). Counts are compared
    as integers against ``target * n`` so that exact rates do not suffer from rounding.
    """
    s, y = _validate(scores, labels)
    target = _check_rate(target, f"target_{rate}")
    n = int((y == 0).sum()) if rate == "fpr" else int(y.sum())
    if n == 0:
        kind = "good (label 0)" if rate == "fpr" else "defective (label 1)"
        raise ValueError(f"threshold_for_{rate} needs at least one {kind} sample")
    thr, tp, fp = _sweep(s, y)  # tp and fp are non-decreasing as the threshold decreases
    if rate == "fpr":
        return float(thr[np.flatnonzero(fp <= target * n + 1e-9)[-1]])
    return float(thr[np.flatnonzero(tp >= target * n - 1e-9)[0]])


def threshold_for_fpr(scores: ArrayLike, labels: ArrayLike, target_fpr: float) -> float:
    """Lowest threshold whose false-positive rate on good images is ``<= target_fpr`` (so, among the
    thresholds within the false-alarm budget, the one that catches the most defects).

    Raises:
        ValueError: on invalid inputs, ``target_fpr`` outside ``[0, 1]`` or no good (label 0) sample.
    """
    return _threshold_for_rate(scores, labels, target_fpr, "fpr")


def threshold_for_tpr(scores: ArrayLike, labels: ArrayLike, target_tpr: float) -> float:
    """Highest threshold whose true-positive rate is ``>= target_tpr`` (``0`` gives "flag nothing").

    Raises:
        ValueError: on invalid inputs, ``target_tpr`` outside ``[0, 1]`` or no defective (label 1) sample.
    """
    return _threshold_for_rate(scores, labels, target_tpr, "tpr")


def youden_threshold(scores: ArrayLike, labels: ArrayLike) -> float:
    """Threshold maximizing Youden's J statistic ``TPR - FPR``.

    Candidates are the unique scores plus the "flag nothing" value. Ties are
    broken in favour of the **highest** threshold.

    Args:
        scores: 1-D anomaly scores.
        labels: 1-D binary labels (1 = defective).

    Returns:
        The threshold maximizing ``TPR - FPR``.

    Raises:
        ValueError: On invalid inputs or if only one class is present.
    """
    s, y = _validate(scores, labels)
    _require_both_classes(y, "youden_threshold")
    thr, tp, fp = _sweep(s, y)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    # Compare n_neg*tp - n_pos*fp (integer, proportional to J) to avoid
    # floating-point ties being broken by rounding.
    j = n_neg * tp - n_pos * fp
    return float(thr[int(np.argmax(j))])


def min_cost_threshold(
    scores: ArrayLike, labels: ArrayLike, cost_fp: float, cost_fn: float
) -> float:
    """Threshold minimizing ``fp * cost_fp + fn * cost_fn``.

    Candidates are all unique scores plus the "flag nothing" value. Ties are
    broken in favour of the **highest** threshold. Consequently a huge
    ``cost_fn`` returns the lowest defective score (if nothing good lies
    between that and the next lower score) and a huge ``cost_fp`` returns the
    lowest threshold above every good score (or "flag nothing").

    Args:
        scores: 1-D anomaly scores.
        labels: 1-D binary labels (1 = defective).
        cost_fp: Cost of one false positive (finite, ``>= 0``).
        cost_fn: Cost of one false negative (finite, ``>= 0``).

    Returns:
        The cost-minimizing threshold.

    Raises:
        ValueError: On invalid inputs or negative / non-finite costs.
    """
    s, y = _validate(scores, labels)
    for name, c in (("cost_fp", cost_fp), ("cost_fn", cost_fn)):
        if not np.isfinite(float(c)) or float(c) < 0:
            raise ValueError(f"{name} must be finite and >= 0, got {c!r}")
    thr, tp, fp = _sweep(s, y)
    fn = int(y.sum()) - tp
    cost = fp * float(cost_fp) + fn * float(cost_fn)
    best = cost.min()
    # Relative tolerance so float rounding does not break ties unpredictably.
    tol = 1e-12 * max(1.0, abs(float(best)))
    return float(thr[int(np.flatnonzero(cost <= best + tol)[0])])


def bootstrap_auroc_ci(
    scores: ArrayLike,
    labels: ArrayLike,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Stratified percentile-bootstrap confidence interval of the image AUROC.

    Each resample draws ``n_pos`` defective and ``n_neg`` good samples with
    replacement from their own class, so every resample contains both classes.
    AUROCs of all resamples are computed in a vectorized way (tie = 1/2).

    Args:
        scores: 1-D anomaly scores.
        labels: 1-D binary labels (1 = defective).
        n_boot: Number of bootstrap resamples (``>= 1``).
        alpha: Two-sided miscoverage, in ``(0, 1)``; the interval is the
            ``alpha/2`` and ``1 - alpha/2`` quantiles.
        seed: Seed for ``numpy.random.default_rng``.

    Returns:
        ``(lo, hi)`` with ``lo <= hi``, or ``None`` if only one class is present.

    Raises:
        ValueError: On invalid inputs, ``n_boot < 1`` or ``alpha`` not in ``(0, 1)``.
    """
    s, y = _validate(scores, labels)
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot!r}")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if not _has_both_classes(y):
        return None
    n_boot = int(n_boot)
    uniq, inv = np.unique(s, return_inverse=True)
    pos_idx = inv[y == 1]
    neg_idx = inv[y == 0]
    n_pos, n_neg = pos_idx.size, neg_idx.size
    n_u = uniq.size
    rng = np.random.default_rng(seed)
    # Resampling with replacement is equivalent to drawing per-sample counts
    # from a multinomial; work on the histogram over unique score values.
    p_pos = np.bincount(pos_idx, minlength=n_u) / n_pos
    p_neg = np.bincount(neg_idx, minlength=n_u) / n_neg
    aucs = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, min(n_boot, 2_000_000 // max(n_u, 1)))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        cp = rng.multinomial(n_pos, p_pos, size=b).astype(np.float64)
        cn = rng.multinomial(n_neg, p_neg, size=b).astype(np.float64)
        neg_below = np.cumsum(cn, axis=1) - cn  # negatives strictly lower
        wins = (cp * (neg_below + 0.5 * cn)).sum(axis=1)
        aucs[start : start + b] = wins / (n_pos * n_neg)
    lo, hi = np.quantile(aucs, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- #
# Pixel-level metrics
# --------------------------------------------------------------------------- #
def _validate_pixels(maps: ArrayLike, masks: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate anomaly maps and ground-truth masks.

    Args:
        maps: Float anomaly maps ``[N, H, W]`` (a single ``[H, W]`` map is
            promoted to ``[1, H, W]``).
        masks: Ground-truth masks of the same shape. Booleans are used as is;
            other dtypes are binarized with ``mask > 0.5`` (works for 0/1,
            0/255 and interpolated [0, 1] masks).

    Returns:
        ``(maps, masks)`` as a float32/float64 ``[N, H, W]`` array and a bool
        ``[N, H, W]`` array.

    Raises:
        ValueError: On shape mismatch, wrong rank, empty input or non-finite maps.
    """
    m = np.asarray(maps)
    g = np.asarray(masks)
    if m.shape != g.shape:
        raise ValueError(f"maps and masks have different shapes: {m.shape} != {g.shape}")
    if m.ndim == 2:
        m = m[None]
        g = g[None]
    if m.ndim != 3:
        raise ValueError(f"maps/masks must be [N, H, W] or [H, W], got shape {m.shape}")
    if m.size == 0:
        raise ValueError("maps and masks must not be empty")
    if m.dtype not in (np.float32, np.float64):
        m = _finite(m, np.float64 if m.dtype.itemsize >= 4 else np.float32, "maps", "anomaly maps")
    else:
        m = _finite(m, m.dtype, "maps", "anomaly maps")
    if g.dtype != np.bool_:
        try:
            g = g > 0.5
        except TypeError as exc:
            raise ValueError(f"masks must be boolean or numeric: {exc}") from exc
    return m, g


def _binary_auc(values: np.ndarray, positive: np.ndarray) -> float:
    """Exact AUROC (ties count 1/2) with little memory overhead.

    Sorts only the negative values and binary-searches the positive ones.
    """
    neg = np.sort(values[~positive])
    pos = values[positive]
    lo = np.searchsorted(neg, pos, side="left").astype(np.float64)
    hi = np.searchsorted(neg, pos, side="right").astype(np.float64)
    wins = 0.5 * (lo.sum() + hi.sum())
    return float(wins / (float(pos.size) * float(neg.size)))


def pixel_auroc(maps: ArrayLike, masks: ArrayLike) -> float | None:
    """Pixel-level AUROC over all pixels of all images.

    Memory-lean exact computation (sort of the negative pixels plus binary
    search), fine for ~100 x 256 x 256 pixels.

    Args:
        maps: Anomaly maps ``[N, H, W]`` (higher = more anomalous).
        masks: Ground-truth masks ``[N, H, W]`` (bool or 0/1).

    Returns:
        Pixel AUROC, or ``None`` if the masks have no positive or no negative
        pixel.

    Raises:
        ValueError: On shape mismatch or non-finite maps.
    """
    m, g = _validate_pixels(maps, masks)
    flat_g = g.reshape(-1)
    n_pos = int(np.count_nonzero(flat_g))
    if n_pos == 0 or n_pos == flat_g.size:
        return None
    return _binary_auc(m.reshape(-1), flat_g)


def _region_labels(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Label connected defect regions (8-connectivity) across all masks.

    Args:
        masks: Bool masks ``[N, H, W]``.

    Returns:
        ``(labels, n_regions)`` where ``labels`` is int32 ``[N, H, W]`` with 0
        for background and globally unique region ids ``1..n_regions``.
    """
    out = np.zeros(masks.shape, dtype=np.int32)
    offset = 0
    for i in range(masks.shape[0]):
        mask = masks[i]
        if not mask.any():
            continue
        n, lab = cv2.connectedComponents(
            np.ascontiguousarray(mask, dtype=np.uint8), connectivity=8
        )
        lab = lab.astype(np.int32, copy=False)
        out[i] = np.where(lab > 0, lab + offset, 0)
        offset += int(n) - 1
    return out, offset


# Above this many (threshold x region) cells, PRO uses a weighted 1-D histogram.
_MAX_JOINT_HIST = 4_000_000


def _pro_curve_impl(
    m: np.ndarray, g: np.ndarray, num_thresholds: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Compute the PRO curve; ``None`` if it is undefined.

    Returns:
        ``(fpr, pro, thresholds)`` in order of decreasing threshold (fpr and
        pro non-decreasing). The first point is the anchor ``(0, 0)`` with
        threshold ``+inf`` (nothing flagged); the last corresponds to the
        minimum of the maps (everything flagged, ``(1, 1)``).
    """
    if int(num_thresholds) < 2:
        raise ValueError(f"num_thresholds must be >= 2, got {num_thresholds!r}")
    regions, n_regions = _region_labels(g)
    if n_regions == 0:
        return None
    flat_r = regions.reshape(-1)
    neg = flat_r == 0
    n_neg = int(np.count_nonzero(neg))
    if n_neg == 0:
        return None
    flat_m = m.reshape(-1)
    lo, hi = float(flat_m.min()), float(flat_m.max())
    thr_asc = np.linspace(lo, hi, int(num_thresholds)) if hi > lo else np.array([lo])
    k = thr_asc.size
    # bin[p] = index of the highest threshold a pixel passes (v >= thr[bin]);
    # always >= 0 because thr_asc[0] == min.
    bins = np.searchsorted(thr_asc, flat_m, side="right") - 1
    neg_hist = np.bincount(bins[neg], minlength=k)
    pos = ~neg
    reg_ids = flat_r[pos] - 1
    pos_bins = bins[pos]
    sizes = np.bincount(reg_ids, minlength=n_regions).astype(np.float64)
    # A pixel is flagged at every threshold index <= its bin: reverse cumsum
    # gives counts for thresholds in decreasing order.
    fp = np.cumsum(neg_hist[::-1])
    if k * n_regions <= _MAX_JOINT_HIST:
        # Exact per-region counts (threshold x region histogram).
        joint = np.bincount(pos_bins * n_regions + reg_ids, minlength=k * n_regions)
        overlap = np.cumsum(joint.reshape(k, n_regions)[::-1], axis=0) / sizes[None, :]
        pro = overlap.mean(axis=1)
    else:
        # Many regions (e.g. noisy masks): weight each defect pixel by
        # 1 / (n_regions * |its region|) so the flagged weight equals the mean
        # region overlap; O(pixels) memory instead of O(k * n_regions).
        weights = 1.0 / (n_regions * sizes[reg_ids])
        pro = np.cumsum(np.bincount(pos_bins, weights=weights, minlength=k)[::-1])
    fpr = fp / float(n_neg)
    fpr = np.r_[0.0, fpr]
    pro = np.clip(np.r_[0.0, pro], 0.0, 1.0)
    thresholds = np.r_[np.inf, thr_asc[::-1]]
    return fpr, pro, thresholds


def pro_curve(
    maps: ArrayLike, masks: ArrayLike, num_thresholds: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    """Per-region-overlap (PRO) curve, MVTec AD convention.

    Defect regions are the connected components (8-connectivity) of each
    ground-truth mask. At a threshold ``t`` a pixel is predicted anomalous iff
    ``map >= t``; PRO is the mean over **all regions of all images** of
    ``|predicted ∩ region| / |region|`` and FPR is the fraction of all
    GT-negative pixels (over all images) predicted anomalous. Thresholds are
    ``num_thresholds`` evenly spaced values between the global min and max of
    the maps. The computation is a single histogram pass (``searchsorted`` +
    ``bincount``), not a loop over thresholds.

    Args:
        maps: Anomaly maps ``[N, H, W]`` (or a single ``[H, W]``).
        masks: Ground-truth masks of the same shape (bool or 0/1).
        num_thresholds: Number of evenly spaced thresholds (``>= 2``).

    Returns:
        ``(fpr, pro)`` sorted by fpr ascending (ties ordered by pro ascending,
        i.e. by decreasing threshold). The curve starts with the anchor
        ``(0, 0)`` (nothing flagged) and ends at ``(1, 1)`` (everything
        flagged); length ``num_thresholds + 1``.

    Raises:
        ValueError: On invalid inputs, if there are no defect regions or no
            GT-negative pixels.
    """
    m, g = _validate_pixels(maps, masks)
    res = _pro_curve_impl(m, g, num_thresholds)
    if res is None:
        raise ValueError("PRO curve needs at least one defect region and one negative pixel")
    fpr, pro, _ = res
    return fpr, pro


def _trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid integral of ``y(x)`` over ``[x[0], x_max]``.

    ``x`` must be non-decreasing (vertical segments allowed). ``y`` is linearly
    interpolated at ``x_max`` when ``x_max`` falls between two points.
    """
    i = int(np.searchsorted(x, x_max, side="right"))  # x[:i] <= x_max
    xs = x[:i]
    ys = y[:i]
    if i < x.size and (i == 0 or xs[-1] < x_max):
        x0, y0 = (x[i - 1], y[i - 1]) if i > 0 else (x[0], y[0])
        x1, y1 = x[i], y[i]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0) if x1 > x0 else y1
        xs = np.r_[xs, x_max]
        ys = np.r_[ys, y_at]
    if xs.size < 2:
        return 0.0
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) * 0.5))


def aupro(
    maps: ArrayLike,
    masks: ArrayLike,
    fpr_limit: float = 0.3,
    num_thresholds: int = 200,
) -> float | None:
    """Normalized area under the PRO curve up to ``fpr_limit`` (MVTec AD).

    Integrates PRO over FPR from 0 to ``fpr_limit`` with the trapezoid rule
    (PRO linearly interpolated at ``fpr_limit``) and divides by ``fpr_limit``
    so that a perfect detector scores 1.0. See :func:`pro_curve` for the
    definition of the curve.

    Args:
        maps: Anomaly maps ``[N, H, W]``.
        masks: Ground-truth masks ``[N, H, W]`` (bool or 0/1).
        fpr_limit: Upper FPR integration limit in ``(0, 1]``.
        num_thresholds: Number of evenly spaced thresholds (``>= 2``).

    Returns:
        AUPRO in ``[0, 1]``, or ``None`` if there are no defect regions (or no
        GT-negative pixels at all).

    Raises:
        ValueError: On invalid inputs or ``fpr_limit`` outside ``(0, 1]``.
    """
    if not 0.0 < float(fpr_limit) <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit!r}")
    m, g = _validate_pixels(maps, masks)
    res = _pro_curve_impl(m, g, num_thresholds)
    if res is None:
        return None
    fpr, pro, _ = res
    area = _trapezoid_to(fpr, pro, float(fpr_limit))
    return float(min(1.0, max(0.0, area / float(fpr_limit))))


# --------------------------------------------------------------------------- #
# Summary
# --------------------------------------------------------------------------- #
def summarize(
    scores: ArrayLike,
    labels: ArrayLike,
    maps: ArrayLike | None = None,
    masks: ArrayLike | None = None,
    *,
    fpr_limit: float = 0.3,
    num_thresholds: int = 200,
) -> dict[str, Any]:
    """Compute the standard set of metrics in one call.

    Args:
        scores: 1-D image-level anomaly scores.
        labels: 1-D binary labels (1 = defective).
        maps: Optional anomaly maps ``[N, H, W]`` for pixel metrics.
        masks: Optional ground-truth masks ``[N, H, W]`` for pixel metrics.
        fpr_limit: FPR integration limit for AUPRO.
        num_thresholds: Number of thresholds for AUPRO.

    Returns:
        Dict with plain Python values:
        ``image_auroc`` (float | None), ``average_precision`` (float | None),
        ``f1_max`` (float), ``threshold`` (float, the F1-max threshold),
        ``pixel_auroc`` (float | None), ``aupro`` (float | None; both pixel
        metrics are None when maps or masks are missing or masks have no
        positive pixel), ``n_images`` (int), ``n_defective`` (int).

    Raises:
        ValueError: On invalid inputs.
    """
    n_unknown = int(np.sum(np.asarray(labels) == -1))
    s, y = _validate(scores, labels)
    best_f1, thr = f1_max(s, y)
    out: dict[str, Any] = {
        "image_auroc": image_auroc(s, y),
        "average_precision": average_precision(s, y),
        "f1_max": float(best_f1),
        "threshold": float(thr),
        "pixel_auroc": None,
        "aupro": None,
        "n_images": int(s.shape[0]),
        "n_defective": int(y.sum()),
        "n_unknown": n_unknown,
    }
    if maps is not None and masks is not None:
        m, g = _validate_pixels(maps, masks)
        if g.any():
            out["pixel_auroc"] = pixel_auroc(m, g)
            out["aupro"] = aupro(m, g, fpr_limit=fpr_limit, num_thresholds=num_thresholds)
    return out
