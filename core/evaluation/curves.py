"""Image-level curves and operating points of a scored set: ROC/PR precomputed once, O(log N) per threshold,
threshold rules, costs, presets and the one summary of metrics (``summary``)."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from cachetools import LRUCache

from core.errors import ConfigError
from core.evaluation import metrics
from core.evaluation.pixel import _check_t, pixel_curves
from core.evaluation.scored import ScoredSet, _readonly

RULES = ("f1", "youden", "fpr", "tpr", "cost")


# =========================================================================== #
# Costs
# =========================================================================== #
@dataclass(frozen=True)
class Costs:
    """What the decisions cost, per part (any currency; only ratios matter for the rule).

    Attributes:
        cost_fp: a false alarm (a good part flagged).
        cost_fn: a miss (a defective part passed).
        cost_review: a manual review of each flagged part (good or defective), default 0.
    """

    cost_fp: float
    cost_fn: float
    cost_review: float = 0.0

    def __post_init__(self) -> None:
        for name in ("cost_fp", "cost_fn", "cost_review"):
            v = getattr(self, name)
            try:
                fv = float(v)
            except (TypeError, ValueError):
                raise ConfigError(f"{name} must be a number, got {v!r}") from None
            if not math.isfinite(fv) or fv < 0:
                raise ConfigError(f"{name} must be finite and >= 0, got {v!r}")
            object.__setattr__(self, name, fv)

    @classmethod
    def coerce(cls, costs: Any) -> Costs | None:
        """None, a Costs, a mapping (``cost_fp``/``cost_fn``/``cost_review`` or ``fp``/``fn``/``review``) or a tuple."""
        if costs is None or isinstance(costs, Costs):
            return costs
        if isinstance(costs, Mapping):
            get = lambda *ks: next((costs[k] for k in ks if costs.get(k) is not None), None)  # noqa: E731
            fp, fn, rv = get("cost_fp", "fp"), get("cost_fn", "fn"), get("cost_review", "review")
            if fp is None or fn is None:
                raise ConfigError("costs need cost_fp (false alarm) and cost_fn (miss)")
            return cls(fp, fn, 0.0 if rv is None else rv)
        if isinstance(costs, (tuple, list)) and len(costs) in (2, 3):
            return cls(*costs)
        raise ConfigError(f"costs must be a mapping with cost_fp and cost_fn, got {costs!r}")


def expected_cost_per_1000(tp: int, fp: int, fn: int, n: int, costs: Costs | Mapping | None) -> float | None:
    """Expected cost per 1,000 parts at one operating point.

    ``1000 * (cost_fp * FP + cost_fn * FN + cost_review * (TP + FP)) / N``: every flagged part
    (TP + FP) is reviewed, every false alarm costs ``cost_fp`` on top, every miss costs ``cost_fn``;
    N is the number of labeled test images, so the test set's defect rate stands for the line's.
    None without costs or images.
    """
    c = Costs.coerce(costs)
    if c is None or n <= 0:
        return None
    return 1000.0 * (c.cost_fp * fp + c.cost_fn * fn + c.cost_review * (tp + fp)) / n


# =========================================================================== #
# Curves
# =========================================================================== #
@dataclass(frozen=True, eq=False)
class Curves:
    """Everything threshold-dependent, precomputed once per scored set (labels -1 left out).

    Curve arrays share one index ``i`` over the candidate thresholds, in **descending** order:
    ``thresholds[0]`` flags nothing (:func:`core.evaluation.metrics.flag_nothing_threshold`), then every unique
    score of a labeled image. ``tp[i]`` / ``fp[i]`` count the labeled images with
    ``score >= thresholds[i]``; ``fpr``/``tpr``/``precision``/``f1`` follow (0/0 = 0, so
    ``precision[0] == 0``: a PR plot may skip point 0). The same point comes back from
    :func:`operating_point` at ``thresholds[i]``.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fpr: np.ndarray
    tpr: np.ndarray
    precision: np.ndarray
    f1: np.ndarray
    n_pos: int
    n_neg: int
    n_unknown: int
    auroc: float | None
    average_precision: float | None
    auroc_ci: tuple[float, float] | None
    f1_max: float
    f1_threshold: float
    score_min: float
    score_max: float
    # sorted views for O(log N) lookups (indices refer to the ScoredSet)
    scores_known: np.ndarray  # labeled scores, in ScoredSet order
    labels_known: np.ndarray
    _s_asc: np.ndarray  # labeled scores ascending
    _cum_pos: np.ndarray  # [n+1]: positives among the k highest labeled scores
    _pos_s: np.ndarray  # defective scores ascending, and their indices
    _pos_i: np.ndarray
    _neg_s: np.ndarray  # good scores ascending, and their indices
    _neg_i: np.ndarray
    _all_s: np.ndarray  # all scores (unknown labels too) ascending, and their indices
    _all_i: np.ndarray

    @property
    def recall(self) -> np.ndarray:
        return self.tpr

    @property
    def n(self) -> int:
        """Labeled images."""
        return self.n_pos + self.n_neg

    @property
    def flag_nothing(self) -> float:
        """The threshold that flags nothing (slider maximum)."""
        return float(self.thresholds[0])


def _ascending(values: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((idx, values))
    return _readonly(values[order].copy()), _readonly(idx[order].copy())


def build_curves(scores: Any, labels: Any, *, n_boot: int = 1000, seed: int = 0) -> Curves:
    """Precompute :class:`Curves` from raw arrays (labels 1 / 0 / -1; -1 is left out)."""
    s_all = np.asarray(scores, dtype=np.float64).reshape(-1)
    y_all = np.asarray(labels).astype(np.int64).reshape(-1)
    if s_all.shape != y_all.shape:
        raise ConfigError(f"scores and labels have different lengths: {s_all.size} != {y_all.size}")
    if not np.isfinite(s_all).all():
        raise ConfigError("scores contain NaN or inf")
    if not np.isin(y_all, (-1, 0, 1)).all():
        raise ConfigError("labels must be 1, 0 or -1")
    idx_all = np.arange(s_all.size)
    known = y_all >= 0
    s, y, idx = s_all[known], y_all[known], idx_all[known]
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if s.size:
        order = np.lexsort((idx, -s))  # descending score, ties by index
        s_desc, y_desc = s[order], y[order]
        cum_pos = np.r_[0, np.cumsum(y_desc)].astype(np.int64)
        ends = np.r_[np.flatnonzero(np.diff(s_desc)), s_desc.size - 1]
        thresholds = np.r_[metrics.flag_nothing_threshold(s), s_desc[ends]]
        tp = np.r_[0, cum_pos[ends + 1]].astype(np.int64)
        fp = np.r_[0, ends + 1 - cum_pos[ends + 1]].astype(np.int64)
        s_asc = s_desc[::-1].copy()
    else:
        top = metrics.flag_nothing_threshold(s_all) if s_all.size else 0.0
        thresholds, tp, fp = np.array([top]), np.zeros(1, np.int64), np.zeros(1, np.int64)
        cum_pos, s_asc = np.zeros(1, np.int64), np.zeros(0)
    fn = n_pos - tp
    fpr = fp / float(n_neg) if n_neg else np.zeros(tp.shape)
    tpr = tp / float(n_pos) if n_pos else np.zeros(tp.shape)
    flagged = tp + fp
    precision = np.divide(tp.astype(np.float64), flagged.astype(np.float64), out=np.zeros(tp.shape), where=flagged > 0)
    den = 2 * tp + fp + fn
    f1 = np.divide(2.0 * tp, den.astype(np.float64), out=np.zeros(tp.shape), where=den > 0)
    both = n_pos > 0 and n_neg > 0
    i_f1 = int(np.argmax(f1))
    pos_s, pos_i = _ascending(s_all[y_all == 1], idx_all[y_all == 1])
    neg_s, neg_i = _ascending(s_all[y_all == 0], idx_all[y_all == 0])
    all_s, all_i = _ascending(s_all, idx_all)
    return Curves(
        thresholds=_readonly(thresholds), tp=_readonly(tp), fp=_readonly(fp), fpr=_readonly(fpr), tpr=_readonly(tpr),
        precision=_readonly(precision), f1=_readonly(f1), n_pos=n_pos, n_neg=n_neg, n_unknown=int((~known).sum()),
        auroc=metrics.image_auroc(s, y) if both else None,
        average_precision=metrics.average_precision(s, y) if both else None,
        auroc_ci=metrics.bootstrap_auroc_ci(s, y, n_boot=n_boot, seed=seed) if both and n_boot > 0 else None,
        f1_max=float(f1[i_f1]), f1_threshold=float(thresholds[i_f1]),
        score_min=float(s_all.min()) if s_all.size else 0.0, score_max=float(s_all.max()) if s_all.size else 0.0,
        scores_known=_readonly(s.copy()), labels_known=_readonly(y.copy()),
        _s_asc=_readonly(s_asc), _cum_pos=_readonly(cum_pos),
        _pos_s=pos_s, _pos_i=pos_i, _neg_s=neg_s, _neg_i=neg_i, _all_s=all_s, _all_i=all_i,
    )


_CURVES_MEMO: LRUCache[tuple, Curves] = LRUCache(32)


_CURVES_LOCK = threading.Lock()


def curves_for(ss: ScoredSet, *, n_boot: int = 1000, seed: int = 0) -> Curves:
    """The :class:`Curves` of a scored set, memoized by content (scores + labels), so a page may call it on every rerun."""
    key = (ss.content_key(), n_boot, seed)
    with _CURVES_LOCK:
        hit = _CURVES_MEMO.get(key)
        if hit is not None:
            return hit
    c = build_curves(ss.scores, ss.labels, n_boot=n_boot, seed=seed)
    with _CURVES_LOCK:
        _CURVES_MEMO[key] = c
    return c


def _as_curves(source: Any, labels: Any = None) -> Curves:
    if isinstance(source, Curves):
        return source
    if isinstance(source, ScoredSet):
        return curves_for(source)
    if labels is None:
        raise ConfigError("give Curves, a ScoredSet, or scores together with labels")
    return build_curves(source, labels, n_boot=0)


def operating_point(curves: Curves, threshold: float, costs: Costs | Mapping | None = None) -> dict[str, Any]:
    """Confusion and rates at ``threshold`` (flag iff ``score >= threshold``), in O(log N).

    Returns:
        ``threshold``, ``tp``, ``fp``, ``tn``, ``fn``, ``tpr``, ``fpr``, ``tnr``, ``precision``, ``f1``,
        ``accuracy`` (exactly as :class:`core.evaluation.metrics.Confusion`), ``recall`` (= tpr), ``fnr`` (miss
        rate), ``flagged``, ``n``, ``n_pos``, ``n_neg`` and ``cost_per_1000``
        (:func:`expected_cost_per_1000`; None without costs).
    """
    t = _check_t(threshold)
    n = curves.n
    k = n - int(np.searchsorted(curves._s_asc, t, side="left"))  # labeled images with score >= t
    tp = int(curves._cum_pos[k])
    fp = k - tp
    conf = metrics.Confusion(tp=tp, fp=fp, tn=curves.n_neg - fp, fn=curves.n_pos - tp)
    out: dict[str, Any] = {"threshold": t, **conf.as_dict()}
    out.update(recall=conf.recall, fnr=1.0 - conf.tpr if curves.n_pos else 0.0, flagged=k, n=n,
               n_pos=curves.n_pos, n_neg=curves.n_neg,
               cost_per_1000=expected_cost_per_1000(tp, fp, conf.fn, n, costs))
    return out


def false_positives(curves: Curves, threshold: float, limit: int | None = None) -> np.ndarray:
    """Indices (into the ScoredSet) of good images flagged at ``threshold``, highest score first."""
    t = _check_t(threshold)
    k = curves._neg_s.size - int(np.searchsorted(curves._neg_s, t, side="left"))
    k = k if limit is None else min(k, max(0, int(limit)))
    return curves._neg_i[curves._neg_i.size - k:][::-1].copy() if k else np.zeros(0, np.int64)


def false_negatives(curves: Curves, threshold: float, limit: int | None = None) -> np.ndarray:
    """Indices of defective images passed at ``threshold`` (missed), lowest score (best hidden) first."""
    t = _check_t(threshold)
    k = int(np.searchsorted(curves._pos_s, t, side="left"))
    k = k if limit is None else min(k, max(0, int(limit)))
    return curves._pos_i[:k].copy()


def closest_to_threshold(curves: Curves, threshold: float, k: int = 12) -> np.ndarray:
    """Indices of the ``k`` images (unknown labels included) whose score is closest to ``threshold``, closest first."""
    t = _check_t(threshold)
    n = curves._all_s.size
    k = max(0, min(int(k), n))
    if k == 0:
        return np.zeros(0, np.int64)
    p = int(np.searchsorted(curves._all_s, t, side="left"))
    lo, hi = max(0, p - k), min(n, p + k)
    window = curves._all_s[lo:hi]
    order = np.lexsort((curves._all_i[lo:hi], np.abs(window - t)))[:k]
    return curves._all_i[lo:hi][order].copy()


def nearest_point(curves: Curves, x: float, y: float, space: str = "roc") -> dict[str, Any]:
    """The curve point nearest to a click, and its threshold.

    Args:
        x, y: ``(fpr, tpr)`` for ``space="roc"``, ``(recall, precision)`` for ``space="pr"``.

    Returns:
        ``index`` (into the curve arrays), ``threshold``, ``fpr``, ``tpr``, ``precision``, ``recall``;
        ties go to the higher threshold.
    """
    if space == "roc":
        xs, ys = curves.fpr, curves.tpr
    elif space == "pr":
        xs, ys = curves.tpr, curves.precision
    else:
        raise ConfigError(f"space must be roc or pr, got {space!r}")
    d = (xs - float(x)) ** 2 + (ys - float(y)) ** 2
    i = int(np.argmin(d))
    return {"index": i, "threshold": float(curves.thresholds[i]), "fpr": float(curves.fpr[i]),
            "tpr": float(curves.tpr[i]), "recall": float(curves.tpr[i]), "precision": float(curves.precision[i])}


def iso_cost_line(curves: Curves, costs: Costs | Mapping, threshold: float) -> dict[str, Any]:
    """The line of equal expected cost through the operating point at ``threshold``, in ROC space.

    Derivation. With ``F`` = FPR, ``T`` = TPR, ``Np`` defective and ``Nn`` good labeled images
    (``N = Np + Nn``): FP = F Nn, FN = (1 - T) Np, flagged = T Np + F Nn, so the expected cost per
    1,000 parts is::

        C(F, T) = 1000 / N * [c_fp F Nn + c_fn (1 - T) Np + c_r (T Np + F Nn)]
                = 1000 / N * [(c_fp + c_r) Nn F - (c_fn - c_r) Np T + c_fn Np]

    C is constant along ``(c_fp + c_r) Nn dF = (c_fn - c_r) Np dT``, a straight line of slope::

        m = dT / dF = (c_fp + c_r) Nn / ((c_fn - c_r) Np)

    which is the classic ``c_fp Nn / (c_fn Np)`` when the review is free. For ``c_fn > c_r`` the
    slope is positive and the cost falls towards the upper left, so the minimum-cost threshold is
    where such a line touches the ROC curve with no ROC point above it. ``c_fn == c_r`` gives a
    vertical line (only F matters); ``c_fn < c_r`` a negative slope (reviewing a part costs more than
    missing it: flagging nothing is cheapest).

    Returns:
        ``fpr`` and ``tpr``: the two end points of the line clipped to the unit square; ``slope``
        (``inf`` when vertical, None when the cost does not depend on the point); ``point``
        ``(F, T)``; ``cost_per_1000`` at the point.
    """
    c = Costs.coerce(costs)
    if c is None:
        raise ConfigError("iso_cost_line needs costs")
    op = operating_point(curves, threshold, c)
    f0, t0 = float(op["fpr"]), float(op["tpr"])
    dx = (c.cost_fn - c.cost_review) * curves.n_pos  # direction vector of the line (dF, dT)
    dy = (c.cost_fp + c.cost_review) * curves.n_neg
    if dx == 0 and dy == 0:
        return {"fpr": [0.0, 1.0], "tpr": [t0, t0], "slope": None, "point": (f0, t0), "cost_per_1000": op["cost_per_1000"]}
    s_lo, s_hi = -math.inf, math.inf
    for p, d in ((f0, dx), (t0, dy)):
        if d != 0:
            a, b = (0.0 - p) / d, (1.0 - p) / d
            s_lo, s_hi = max(s_lo, min(a, b)), min(s_hi, max(a, b))
    xs = [f0 + s_lo * dx, f0 + s_hi * dx]
    ys = [t0 + s_lo * dy, t0 + s_hi * dy]
    slope = math.inf if dx == 0 else dy / dx
    return {"fpr": [min(1.0, max(0.0, v)) for v in xs], "tpr": [min(1.0, max(0.0, v)) for v in ys],
            "slope": slope, "point": (f0, t0), "cost_per_1000": op["cost_per_1000"]}


# =========================================================================== #
# Threshold rules
# =========================================================================== #
@dataclass(frozen=True)
class Preset:
    """A named way of use: a rule with its parameter."""

    name: str
    title: str
    rule: str
    target_fpr: float | None = None
    target_tpr: float | None = None
    description: str = ""


PRESETS: dict[str, Preset] = {
    "first_screen": Preset(
        "first_screen", "AI as a first screen", "fpr", target_fpr=0.01,
        description="High threshold: what the AI flags is surely bad (at most 1 % of good parts flagged); "
                    "people check the rest."),
    "anything_unusual": Preset(
        "anything_unusual", "Flag anything unusual", "tpr", target_tpr=0.99,
        description="Low threshold: anything unusual is flagged, so what passes is surely good (at most 1 % of "
                    "defects missed); people check what is flagged."),
}


def choose_threshold(
    source: Curves | ScoredSet | Any,
    rule: str,
    *,
    labels: Any = None,
    target_fpr: float | None = None,
    target_tpr: float | None = None,
    costs: Costs | Mapping | None = None,
) -> float:
    """The threshold a rule picks (flag iff ``score >= threshold``); unknown labels (-1) are ignored.

    Rules (candidates are every labeled score plus the "flag nothing" value; ties go to the highest
    threshold, i.e. the fewest flags):

    * ``f1`` - maximum F1 (:func:`core.evaluation.metrics.f1_max`);
    * ``youden`` - maximum TPR - FPR (:func:`core.evaluation.metrics.youden_threshold`; needs both classes);
    * ``fpr`` - lowest threshold with FPR <= ``target_fpr``, i.e. the most defects caught within a
      false-alarm budget ("at most x % of good parts flagged"; :func:`core.evaluation.metrics.threshold_for_fpr`);
    * ``tpr`` - highest threshold with TPR >= ``target_tpr``, i.e. the fewest false alarms that still
      catch that share of defects ("miss at most y %": ``target_tpr = 1 - y``;
      :func:`core.evaluation.metrics.threshold_for_tpr`);
    * ``cost`` - minimum expected cost (:func:`expected_cost_per_1000`). Since the review cost adds
      ``c_r (TP + FP) = c_r FP - c_r FN + c_r Np``, this is :func:`core.evaluation.metrics.min_cost_threshold`
      with ``cost_fp + cost_review`` and ``cost_fn - cost_review``; when a miss costs no more than a
      review, flagging nothing is cheapest.

    Args:
        source: :class:`Curves`, a :class:`ScoredSet`, or raw scores (then ``labels`` too).

    Raises:
        ValueError: unknown rule, missing or out-of-range target / costs, or data the rule cannot use.
    """
    c = _as_curves(source, labels)
    s, y = c.scores_known, c.labels_known
    if rule not in RULES:
        raise ConfigError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    if s.size == 0:
        raise ConfigError("no labeled image to choose a threshold on")
    if rule == "f1":
        return float(metrics.f1_max(s, y)[1])
    if rule == "youden":
        return float(metrics.youden_threshold(s, y))
    if rule == "fpr":
        if target_fpr is None:
            raise ConfigError("rule 'fpr' needs a target false-alarm rate (target_fpr, e.g. 0.01)")
        return float(metrics.threshold_for_fpr(s, y, target_fpr))
    if rule == "tpr":
        if target_tpr is None:
            raise ConfigError("rule 'tpr' needs a target detection rate (target_tpr, e.g. 0.99)")
        return float(metrics.threshold_for_tpr(s, y, target_tpr))
    cc = Costs.coerce(costs)
    if cc is None:
        raise ConfigError("rule 'cost' needs the cost of a false alarm (cost_fp) and of a miss (cost_fn)")
    if cc.cost_fn <= cc.cost_review:
        return float(c.thresholds[0])
    return float(metrics.min_cost_threshold(s, y, cc.cost_fp + cc.cost_review, cc.cost_fn - cc.cost_review))


def apply_rule(
    source: Curves | ScoredSet,
    rule: str,
    *,
    target_fpr: float | None = None,
    target_tpr: float | None = None,
    costs: Costs | Mapping | None = None,
    preset: str | None = None,
) -> dict[str, Any]:
    """:func:`choose_threshold` plus the :func:`operating_point` there, as one JSON-ready dict.

    ``preset`` (a key of :data:`PRESETS`) replaces ``rule`` and its target. Keys: ``rule``,
    ``preset``, ``target_fpr``, ``target_tpr``, ``cost_fp``, ``cost_fn``, ``cost_review`` and the
    operating-point keys (``threshold``, ``tp``, ... ``cost_per_1000``).
    """
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        p = PRESETS[preset]
        rule, target_fpr, target_tpr = p.rule, p.target_fpr, p.target_tpr
    c = _as_curves(source)
    cc = Costs.coerce(costs)
    t = choose_threshold(c, rule, target_fpr=target_fpr, target_tpr=target_tpr, costs=cc)
    out: dict[str, Any] = {"rule": rule, "preset": preset, "target_fpr": target_fpr, "target_tpr": target_tpr,
                           "cost_fp": cc.cost_fp if cc else None, "cost_fn": cc.cost_fn if cc else None,
                           "cost_review": cc.cost_review if cc else None}
    out.update(operating_point(c, t, cc))
    return out


def summary(ss: ScoredSet, curves: Curves | None = None, *, pixel: bool = True) -> dict[str, Any]:
    """The image (and pixel) metrics of a scored set, with the keys of ``evaluate --json``.

    ``image_auroc``, ``image_auroc_ci`` ([lo, hi] bootstrap 95 %), ``average_precision``, ``f1_max``,
    ``threshold`` (F1-max), ``pixel_auroc``, ``aupro`` (None without pixel ground truth),
    ``n_images``, ``n_defective``, ``n_unknown``.
    """
    c = curves or curves_for(ss)
    out: dict[str, Any] = {"image_auroc": c.auroc, "image_auroc_ci": list(c.auroc_ci) if c.auroc_ci else None,
                           "average_precision": c.average_precision, "f1_max": c.f1_max, "threshold": c.f1_threshold,
                           "pixel_auroc": None, "aupro": None, "n_images": c.n, "n_defective": c.n_pos,
                           "n_unknown": c.n_unknown}
    if pixel:
        pc = pixel_curves(ss)
        if pc is not None:
            out.update(pixel_auroc=pc.pixel_auroc, aupro=pc.aupro)
    return out


# =========================================================================== #
# Command line (python -m core evaluate RUN --rule ...)
# =========================================================================== #
def check_rule_options(rule: str | None, *, target_fpr: float | None = None, target_tpr: float | None = None,
                       cost_fp: float | None = None, cost_fn: float | None = None, cost_review: float | None = None) -> None:
    """Fail fast (ValueError, one line naming the CLI flag) on a rule without what it needs."""
    if rule is None:
        if any(v is not None for v in (target_fpr, target_tpr, cost_fp, cost_fn, cost_review)):
            raise ConfigError("--target-fpr, --target-tpr and --cost-* need --rule")
        return
    if rule == "saved":  # the run's saved operating point (core.evaluation.operating) brings its own parameters
        if any(v is not None for v in (target_fpr, target_tpr, cost_fp, cost_fn, cost_review)):
            raise ConfigError("--rule saved uses the saved point's targets and costs: leave out --target-* and --cost-*")
        return
    if rule not in RULES:
        raise ConfigError(f"--rule must be one of saved, {', '.join(RULES)}, got {rule!r}")
    if rule == "fpr" and target_fpr is None:
        raise ConfigError("--rule fpr needs --target-fpr (the largest share of good parts flagged, e.g. 0.01)")
    if rule == "tpr" and target_tpr is None:
        raise ConfigError("--rule tpr needs --target-tpr (the smallest share of defects caught, e.g. 0.99)")
    if rule == "cost" and (cost_fp is None or cost_fn is None):
        raise ConfigError("--rule cost needs --cost-fp (a false alarm) and --cost-fn (a miss)")
    for name, v in (("--target-fpr", target_fpr), ("--target-tpr", target_tpr)):
        if v is not None and not 0.0 <= v <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {v}")
    if cost_fp is not None or cost_fn is not None or cost_review is not None:
        if cost_fp is None or cost_fn is None:
            raise ConfigError("give both --cost-fp and --cost-fn")
        Costs(cost_fp, cost_fn, cost_review or 0.0)
