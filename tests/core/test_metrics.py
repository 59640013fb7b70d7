"""Tests for core.evaluation.metrics with hand-computed expected values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from core.evaluation import metrics as M
from core.evaluation.metrics import (
    Confusion,
    aupro,
    average_precision,
    bootstrap_auroc_ci,
    confusion_at,
    f1_max,
    flag_nothing_threshold,
    image_auroc,
    min_cost_threshold,
    pixel_auroc,
    pr_points,
    pro_curve,
    roc_points,
    summarize,
    threshold_for_fpr,
    threshold_for_tpr,
    youden_threshold,
)

# Classic example: pos 0.35 beats neg 0.1 only, pos 0.8 beats both -> 3/4.
S4 = np.array([0.1, 0.4, 0.35, 0.8])
Y4 = np.array([0, 0, 1, 1])

# Threshold-rule example (sorted desc):
#   0.9(1) 0.7(1) 0.6(1) 0.5(0) 0.4(1) 0.3(0) 0.2(0) 0.1(0)
# thr:  nothing 0.9 0.7 0.6 0.5 0.4 0.3 0.2 0.1
# tp:   0       1   2   3   3   4   4   4   4
# fp:   0       0   0   0   1   1   2   3   4
S8 = np.array([0.1, 0.2, 0.3, 0.5, 0.4, 0.6, 0.7, 0.9])
Y8 = np.array([0, 0, 0, 0, 1, 1, 1, 1])


# --------------------------------------------------------------------------- #
# Confusion
# --------------------------------------------------------------------------- #
def test_confusion_hand_counted():
    c = confusion_at(S4, Y4, 0.35)  # flags 0.4 (good), 0.35, 0.8 (defective)
    assert c == Confusion(tp=2, fp=1, tn=1, fn=0)
    assert c.tpr == 1.0
    assert c.recall == 1.0
    assert c.fpr == 0.5
    assert c.tnr == 0.5
    assert c.precision == pytest.approx(2 / 3)
    assert c.f1 == pytest.approx(0.8)
    assert c.accuracy == 0.75


def test_confusion_threshold_is_inclusive_and_extremes():
    assert confusion_at(S4, Y4, 0.8) == Confusion(tp=1, fp=0, tn=2, fn=1)
    assert confusion_at(S4, Y4, 0.81) == Confusion(tp=0, fp=0, tn=2, fn=2)
    assert confusion_at(S4, Y4, np.inf) == Confusion(tp=0, fp=0, tn=2, fn=2)
    assert confusion_at(S4, Y4, -np.inf) == Confusion(tp=2, fp=2, tn=0, fn=0)


def test_confusion_zero_division_is_zero():
    c = Confusion(tp=0, fp=0, tn=0, fn=0)
    assert (c.tpr, c.fpr, c.precision, c.f1, c.accuracy, c.tnr) == (0.0,) * 6
    d = c.as_dict()
    assert d["tp"] == 0 and d["f1"] == 0.0


def test_confusion_is_frozen():
    c = Confusion(1, 2, 3, 4)
    with pytest.raises(Exception):
        c.tp = 5  # type: ignore[misc]


def test_bool_labels_and_column_vectors_accepted():
    c = confusion_at(S4.reshape(-1, 1), Y4.astype(bool), 0.35)
    assert c == Confusion(tp=2, fp=1, tn=1, fn=0)


# --------------------------------------------------------------------------- #
# AUROC / AP / curves
# --------------------------------------------------------------------------- #
def test_image_auroc_perfect_reversed_mixed():
    assert image_auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert image_auroc([0.8, 0.9, 0.1, 0.2], [0, 0, 1, 1]) == 0.0
    assert image_auroc(S4, Y4) == pytest.approx(0.75)
    # Tie counts 1/2: pos 0.5 vs neg 0.5 (1/2) and vs neg 0.1 (1) -> 1.5/2.
    assert image_auroc([0.1, 0.5, 0.5], [0, 0, 1]) == pytest.approx(0.75)


def test_one_class_returns_none():
    assert image_auroc([0.1, 0.2], [0, 0]) is None
    assert image_auroc([0.1, 0.2], [1, 1]) is None
    assert average_precision([0.1, 0.2], [0, 0]) is None
    assert average_precision([0.1, 0.2], [1, 1]) is None
    assert bootstrap_auroc_ci([0.1, 0.2], [1, 1]) is None


def test_average_precision_hand_computed():
    # Ranked: 0.8(+) P=1 R=.5 ; 0.4(-) ; 0.35(+) P=2/3 R=1 -> AP = .5*1 + .5*2/3
    assert average_precision(S4, Y4) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == pytest.approx(1.0)


def test_roc_points_finite_and_reproducible():
    fpr, tpr, thr = roc_points(S4, Y4)
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 0.5, 0.5, 1.0, 1.0])
    assert np.isfinite(thr).all()
    assert thr[0] > 0.8
    np.testing.assert_allclose(thr[1:], [0.8, 0.4, 0.35, 0.1])
    for f, t, th in zip(fpr, tpr, thr):
        c = confusion_at(S4, Y4, th)
        assert (c.fpr, c.tpr) == (f, t)


def test_pr_points_same_length():
    p, r, t = pr_points(S4, Y4)
    assert p.shape == r.shape == t.shape
    np.testing.assert_allclose(p, [0.5, 2 / 3, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(r, [1.0, 1.0, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(t[:-1], [0.1, 0.35, 0.4, 0.8])
    assert t[-1] > 0.8
    for pi, ri, ti in zip(p[:-1], r[:-1], t[:-1]):
        c = confusion_at(S4, Y4, ti)
        assert c.precision == pytest.approx(pi)
        assert c.recall == pytest.approx(ri)


def test_curves_need_both_classes():
    with pytest.raises(ValueError):
        roc_points([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError):
        pr_points([0.1, 0.2], [0, 0])


# --------------------------------------------------------------------------- #
# F1 max
# --------------------------------------------------------------------------- #
def test_f1_max_hand_computed():
    # thr .8: 2/3 ; .4: 1/2 ; .35: 4/5 ; .1: 2/3  -> best 0.8 at 0.35
    best, thr = f1_max(S4, Y4)
    assert best == pytest.approx(0.8)
    assert thr == 0.35
    assert confusion_at(S4, Y4, thr).f1 == best


def test_f1_max_threshold_reproduces_value_random():
    rng = np.random.default_rng(3)
    s = np.round(rng.random(200), 2)  # many ties
    y = (rng.random(200) < 0.3).astype(int)
    best, thr = f1_max(s, y)
    assert confusion_at(s, y, thr).f1 == best
    brute = max(confusion_at(s, y, t).f1 for t in np.unique(s))
    assert best == pytest.approx(brute)
    assert thr in set(s.tolist())


def test_f1_max_no_defects_flags_nothing():
    best, thr = f1_max([0.1, 0.2], [0, 0])
    assert best == 0.0
    assert thr > 0.2
    assert confusion_at([0.1, 0.2], [0, 0], thr).fp == 0


# --------------------------------------------------------------------------- #
# Threshold rules
# --------------------------------------------------------------------------- #
def test_flag_nothing_threshold():
    t = flag_nothing_threshold(S8)
    assert 0.9 < t < 0.9 + 1e-3
    assert confusion_at(S8, Y8, t) == Confusion(tp=0, fp=0, tn=4, fn=4)


@pytest.mark.parametrize(
    ("target", "expected"),
    [(0.0, 0.6), (0.25, 0.4), (0.3, 0.4), (0.5, 0.3), (0.75, 0.2), (1.0, 0.1)],
)
def test_threshold_for_fpr(target, expected):
    thr = threshold_for_fpr(S8, Y8, target)
    assert thr == expected
    assert confusion_at(S8, Y8, thr).fpr <= target


@pytest.mark.parametrize(
    ("target", "expected"),
    [(1.0, 0.4), (0.75, 0.6), (0.6, 0.6), (0.5, 0.7), (0.25, 0.9)],
)
def test_threshold_for_tpr(target, expected):
    thr = threshold_for_tpr(S8, Y8, target)
    assert thr == expected
    assert confusion_at(S8, Y8, thr).tpr >= target


def test_threshold_for_tpr_zero_flags_nothing():
    thr = threshold_for_tpr(S8, Y8, 0.0)
    assert thr > 0.9
    assert confusion_at(S8, Y8, thr).tp == 0


def test_threshold_rules_need_relevant_class_and_valid_target():
    with pytest.raises(ValueError):
        threshold_for_fpr([0.1, 0.2], [1, 1], 0.1)
    with pytest.raises(ValueError):
        threshold_for_tpr([0.1, 0.2], [0, 0], 0.9)
    with pytest.raises(ValueError):
        threshold_for_fpr(S8, Y8, 1.5)
    with pytest.raises(ValueError):
        threshold_for_tpr(S8, Y8, -0.1)
    with pytest.raises(ValueError):
        youden_threshold([0.1, 0.2], [0, 0])


def test_youden_threshold():
    # J*4 = tp - fp: nothing 0, .9 1, .7 2, .6 3, .5 2, .4 3, .3 2 ...
    # tie between 0.6 and 0.4 -> highest threshold wins.
    assert youden_threshold(S8, Y8) == 0.6
    # Untied example: pos {0.5, 0.6, 0.9}, neg {0.1, 0.55}.
    # thr .9: 1/3-0 ; .6: 2/3-0 ; .55: 2/3-1/2 ; .5: 1-1/2 ; .1: 0 -> 0.6
    assert youden_threshold([0.1, 0.55, 0.5, 0.6, 0.9], [0, 0, 1, 1, 1]) == 0.6
    assert youden_threshold(S4, Y4) == 0.8  # J: .8 -> .5, .35 -> .5 (tie), .4 -> 0


def test_min_cost_threshold():
    # cost = fp*cfp + fn*cfn
    # (1,1): nothing 4, .9 3, .7 2, .6 1, .5 2, .4 1, .3 2 -> tie .6/.4 -> .6
    assert min_cost_threshold(S8, Y8, 1.0, 1.0) == 0.6
    # (1,2): nothing 8, .9 6, .7 4, .6 2, .5 3, .4 1, .3 2 -> .4
    assert min_cost_threshold(S8, Y8, 1.0, 2.0) == 0.4
    # (3,1): .6 -> 1, .4 -> 3 -> .6
    assert min_cost_threshold(S8, Y8, 3.0, 1.0) == 0.6


def test_min_cost_extreme_costs():
    # Missing a defect is catastrophic -> lowest defective score.
    thr = min_cost_threshold(S8, Y8, cost_fp=1.0, cost_fn=1e9)
    assert thr == 0.4
    assert confusion_at(S8, Y8, thr).fn == 0
    # False alarms are catastrophic -> only the certain ones (above all goods).
    thr = min_cost_threshold(S8, Y8, cost_fp=1e9, cost_fn=1.0)
    assert thr == 0.6
    assert confusion_at(S8, Y8, thr) == Confusion(tp=3, fp=0, tn=4, fn=1)
    # If the top score is good, a huge cost_fp flags nothing at all.
    s, y = [0.9, 0.5, 0.3], [0, 1, 0]
    thr = min_cost_threshold(s, y, cost_fp=1e9, cost_fn=1.0)
    assert thr > 0.9
    assert confusion_at(s, y, thr) == Confusion(tp=0, fp=0, tn=2, fn=1)
    # Zero costs: everything ties -> highest threshold (flag nothing).
    assert min_cost_threshold(s, y, 0.0, 0.0) > 0.9


def test_min_cost_invalid_costs():
    with pytest.raises(ValueError):
        min_cost_threshold(S8, Y8, -1.0, 1.0)
    with pytest.raises(ValueError):
        min_cost_threshold(S8, Y8, 1.0, np.nan)


# --------------------------------------------------------------------------- #
# Bootstrap
# --------------------------------------------------------------------------- #
def test_bootstrap_ci_contains_point_estimate():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(60, int), np.ones(40, int)]
    s = rng.normal(size=100) + 1.0 * y
    auc = image_auroc(s, y)
    ci = bootstrap_auroc_ci(s, y, n_boot=500, seed=1)
    assert ci is not None
    lo, hi = ci
    assert 0.0 <= lo <= auc <= hi <= 1.0
    assert lo < hi
    # deterministic for a seed
    assert bootstrap_auroc_ci(s, y, n_boot=500, seed=1) == ci
    # wider interval for smaller alpha
    lo2, hi2 = bootstrap_auroc_ci(s, y, n_boot=500, alpha=0.01, seed=1)
    assert lo2 <= lo and hi2 >= hi


def test_bootstrap_ci_perfect_separation_is_degenerate():
    assert bootstrap_auroc_ci([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], n_boot=200) == (1.0, 1.0)


def test_bootstrap_vectorized_auc_matches_sklearn_mean():
    # With ties: the bootstrap mean should be close to the point estimate.
    rng = np.random.default_rng(5)
    s = np.round(rng.random(300), 1)
    y = (rng.random(300) < 0.4).astype(int)
    lo, hi = bootstrap_auroc_ci(s, y, n_boot=2000, alpha=0.5)
    assert lo <= roc_auc_score(y, s) <= hi


def test_bootstrap_invalid_args():
    with pytest.raises(ValueError):
        bootstrap_auroc_ci(S4, Y4, n_boot=0)
    with pytest.raises(ValueError):
        bootstrap_auroc_ci(S4, Y4, alpha=1.0)


# --------------------------------------------------------------------------- #
# Input validation
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "fn",
    [
        lambda s, y: confusion_at(s, y, 0.5),
        image_auroc,
        average_precision,
        roc_points,
        pr_points,
        f1_max,
        lambda s, y: threshold_for_fpr(s, y, 0.1),
        lambda s, y: threshold_for_tpr(s, y, 0.9),
        youden_threshold,
        lambda s, y: min_cost_threshold(s, y, 1.0, 1.0),
        bootstrap_auroc_ci,
        summarize,
    ],
)
def test_nan_and_length_mismatch_raise(fn):
    with pytest.raises(ValueError, match="NaN"):
        fn([0.1, np.nan, 0.3, 0.4], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="length"):
        fn([0.1, 0.2, 0.3], [0, 0, 1, 1])
    with pytest.raises(ValueError):
        fn([0.1, 0.2, 0.3, 0.4], [0, 2, 1, 1])  # non-binary label
    with pytest.raises(ValueError):
        fn([], [])


def test_nan_threshold_raises():
    with pytest.raises(ValueError):
        confusion_at(S4, Y4, float("nan"))


# --------------------------------------------------------------------------- #
# Pixel AUROC
# --------------------------------------------------------------------------- #
def _square_masks() -> np.ndarray:
    masks = np.zeros((3, 16, 16), dtype=bool)
    masks[0, 2:6, 2:6] = True
    masks[1, 8:12, 4:10] = True
    return masks  # image 2 is defect-free


def test_pixel_auroc_perfect_reversed_random():
    masks = _square_masks()
    assert pixel_auroc(masks.astype(np.float32), masks) == 1.0
    assert pixel_auroc(1.0 - masks.astype(np.float32), masks) == 0.0
    rng = np.random.default_rng(0)
    maps = rng.random((20, 64, 64)).astype(np.float32)
    rmasks = rng.random((20, 64, 64)) < 0.1
    assert pixel_auroc(maps, rmasks) == pytest.approx(0.5, abs=0.01)


def test_pixel_auroc_matches_sklearn_with_ties_and_uint8_masks():
    rng = np.random.default_rng(1)
    maps = np.round(rng.random((4, 16, 16)), 1)
    masks = (rng.random((4, 16, 16)) < 0.3).astype(np.uint8) * 255  # 0/255 masks
    expected = roc_auc_score((masks > 0).ravel(), maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_none_and_errors():
    maps = np.zeros((2, 4, 4))
    assert pixel_auroc(maps, np.zeros((2, 4, 4), bool)) is None
    assert pixel_auroc(maps, np.ones((2, 4, 4), bool)) is None
    with pytest.raises(ValueError):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    bad = np.zeros((2, 4, 4))
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pixel_auroc(bad, _square_masks()[:2, :4, :4])


# --------------------------------------------------------------------------- #
# PRO / AUPRO
# --------------------------------------------------------------------------- #
def test_aupro_perfect_map_is_one():
    masks = _square_masks()
    assert aupro(masks.astype(np.float32), masks) == 1.0
    # Perfect separation plus noise below the defect level.
    rng = np.random.default_rng(0)
    maps = masks * 1.0 + 0.5 * rng.random(masks.shape)
    maps[masks] = 1.0 + 0.5 * rng.random(int(masks.sum()))
    assert aupro(maps, masks) == pytest.approx(1.0, abs=1e-9)


def test_aupro_half_of_each_region():
    # Map = 1 on the left half of each region, 0 elsewhere.
    masks = _square_masks()
    maps = np.zeros(masks.shape)
    maps[0, 2:6, 2:4] = 1.0  # half of the 4x4 region
    maps[1, 8:12, 4:7] = 1.0  # half of the 4x6 region
    # Curve: (0,0) -> (0,0.5) [any t>0] -> (1,1) [t=0].
    # PRO(0.3) = 0.5 + 0.5*0.3 = 0.65; area = 0.3*(0.5+0.65)/2 = 0.1725
    # normalized: 0.1725/0.3 = 0.575
    assert aupro(maps, masks) == pytest.approx(0.575, abs=1e-12)
    fpr, pro = pro_curve(maps, masks)
    assert pro[fpr == 0.0].max() == pytest.approx(0.5)


def test_aupro_with_false_positives_hand_computed():
    # 10x10 image, region of 4 px, 96 negatives, 24 of them flagged as hot.
    masks = np.zeros((1, 10, 10), dtype=bool)
    masks[0, 0:2, 0:2] = True
    maps = masks.astype(float)
    maps[0, 4:10, 6:10] = 1.0  # 24 false-positive pixels
    # Curve: (0,0) -> (0.25,1) -> (1,1). area to 0.3 = 0.125 + 0.05 = 0.175
    assert aupro(maps, masks) == pytest.approx(0.175 / 0.3, abs=1e-12)
    # Integrating to 1.0: 0.125 + 0.75 = 0.875
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.875, abs=1e-12)


def test_aupro_anomaly_only_outside_defects_is_zero():
    masks = _square_masks()
    assert aupro(1.0 - masks.astype(float), masks) == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(2)
    maps = 0.5 + 0.5 * rng.random(masks.shape)
    maps[masks] = 0.0
    assert aupro(maps, masks) == pytest.approx(0.0, abs=1e-12)


def test_aupro_no_defects_is_none():
    masks = np.zeros((2, 8, 8), dtype=bool)
    assert aupro(np.random.default_rng(0).random((2, 8, 8)), masks) is None
    with pytest.raises(ValueError):
        pro_curve(np.zeros((2, 8, 8)), masks)


def test_two_regions_in_one_mask_counted_separately():
    # Unequal regions so region-mean differs from pixel fraction:
    # A = 2x2 (4 px), B = 4x4 (16 px); the map finds only A.
    masks = np.zeros((1, 16, 16), dtype=bool)
    masks[0, 1:3, 1:3] = True
    masks[0, 8:12, 8:12] = True
    maps = np.zeros(masks.shape)
    maps[0, 1:3, 1:3] = 1.0
    fpr, pro = pro_curve(maps, masks)
    # PRO at FPR 0 = mean(1, 0) = 0.5 (not 4/20 = 0.2 as pixel recall would give)
    assert pro[fpr == 0.0].max() == pytest.approx(0.5)
    assert aupro(maps, masks) == pytest.approx(0.575, abs=1e-12)


def test_regions_use_8_connectivity():
    # A (2x2) and B (4x4) touch diagonally -> one 20-pixel region under
    # 8-connectivity; finding A covers 4/20 = 0.2 of it.
    masks = np.zeros((1, 16, 16), dtype=bool)
    masks[0, 1:3, 1:3] = True
    masks[0, 3:7, 3:7] = True
    maps = np.zeros(masks.shape)
    maps[0, 1:3, 1:3] = 1.0
    fpr, pro = pro_curve(maps, masks)
    assert pro[fpr == 0.0].max() == pytest.approx(0.2)


def test_regions_in_different_images_counted_separately():
    masks = _square_masks()
    maps = np.zeros(masks.shape)
    maps[0][masks[0]] = 1.0  # image 0 region found, image 1 region missed
    fpr, pro = pro_curve(maps, masks)
    assert pro[fpr == 0.0].max() == pytest.approx(0.5)


def test_pro_curve_shape_and_monotonic():
    rng = np.random.default_rng(4)
    masks = _square_masks()
    maps = rng.random(masks.shape) + masks
    fpr, pro = pro_curve(maps, masks, num_thresholds=50)
    assert fpr.shape == pro.shape == (51,)
    assert (fpr[0], pro[0]) == (0.0, 0.0)
    assert fpr[-1] == 1.0 and pro[-1] == pytest.approx(1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)


def test_pro_curve_matches_bruteforce():
    rng = np.random.default_rng(7)
    masks = np.zeros((3, 20, 20), dtype=bool)
    masks[0, 2:7, 3:9] = True
    masks[0, 12:15, 12:18] = True
    masks[1, 5:15, 5:8] = True
    maps = rng.random(masks.shape) + 0.7 * masks
    fpr, pro = pro_curve(maps, masks, num_thresholds=30)
    regions = [
        (0, np.s_[2:7, 3:9]),
        (0, np.s_[12:15, 12:18]),
        (1, np.s_[5:15, 5:8]),
    ]
    thr = np.linspace(maps.min(), maps.max(), 30)[::-1]
    for k, t in enumerate(thr, start=1):
        pred = maps >= t
        exp_fpr = (pred & ~masks).sum() / (~masks).sum()
        exp_pro = np.mean([pred[i][sl].mean() for i, sl in regions])
        assert fpr[k] == pytest.approx(exp_fpr)
        assert pro[k] == pytest.approx(exp_pro)


def test_aupro_invalid_args():
    masks = _square_masks()
    with pytest.raises(ValueError):
        aupro(masks.astype(float), masks, fpr_limit=0.0)
    with pytest.raises(ValueError):
        aupro(masks.astype(float), masks, num_thresholds=1)
    with pytest.raises(ValueError):
        aupro(masks.astype(float)[:2], masks)
    bad = masks.astype(float)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        aupro(bad, masks)


def test_aupro_on_random_maps_80x128x128():
    """A full-size set (speed is measured in benchmarks as ratios, never timed in a unit test)."""
    rng = np.random.default_rng(0)
    maps = rng.random((80, 128, 128)).astype(np.float32)
    masks = np.zeros((80, 128, 128), dtype=bool)
    for i in range(0, 80, 2):
        masks[i, 10:40, 20:50] = True
        masks[i, 70:90, 70:120] = True
    val = aupro(maps, masks)
    # Random maps: PRO ~= FPR, so normalized area over [0, 0.3] ~= 0.15.
    assert val == pytest.approx(0.15, abs=0.02)


# --------------------------------------------------------------------------- #
# Summary
# --------------------------------------------------------------------------- #
def test_summarize_image_only():
    out = summarize(S4, Y4)
    assert set(out) == {
        "image_auroc",
        "average_precision",
        "f1_max",
        "threshold",
        "pixel_auroc",
        "aupro",
        "n_images",
        "n_defective",
        "n_unknown",
    }
    assert out["n_unknown"] == 0
    assert out["image_auroc"] == pytest.approx(0.75)
    assert out["average_precision"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert out["f1_max"] == pytest.approx(0.8)
    assert out["threshold"] == 0.35
    assert out["pixel_auroc"] is None and out["aupro"] is None
    assert out["n_images"] == 4 and out["n_defective"] == 2
    assert isinstance(out["n_images"], int)


def test_summarize_with_pixels():
    masks = _square_masks()
    out = summarize([0.9, 0.8, 0.1], [1, 1, 0], masks.astype(float), masks)
    assert out["image_auroc"] == 1.0
    assert out["pixel_auroc"] == 1.0
    assert out["aupro"] == 1.0
    # masks without positive pixels -> pixel metrics None
    empty = np.zeros_like(masks)
    out = summarize([0.9, 0.8, 0.1], [1, 1, 0], masks.astype(float), empty)
    assert out["pixel_auroc"] is None and out["aupro"] is None
    # only maps given -> None
    out = summarize([0.9, 0.8, 0.1], [1, 1, 0], maps=masks.astype(float))
    assert out["pixel_auroc"] is None and out["aupro"] is None


def test_module_does_not_import_streamlit_or_torch():
    import sys

    src = open(M.__file__, encoding="utf-8").read()
    assert "import streamlit" not in src and "import torch" not in src
    assert "cv2" in sys.modules


def test_pro_curve_many_regions_fallback_matches_exact(monkeypatch):
    rng = np.random.default_rng(8)
    masks = np.zeros((6, 32, 32), dtype=bool)
    masks[:, 3:10, 3:12] = True
    masks[::2, 20:25, 15:30] = True
    maps = rng.random(masks.shape) + 0.4 * masks
    fpr_a, pro_a = pro_curve(maps, masks)
    monkeypatch.setattr(M, "_MAX_JOINT_HIST", 0)  # force the weighted path
    fpr_b, pro_b = pro_curve(maps, masks)
    np.testing.assert_array_equal(fpr_a, fpr_b)
    np.testing.assert_allclose(pro_a, pro_b, atol=1e-12)
    monkeypatch.setattr(M, "_MAX_JOINT_HIST", 4_000_000)
    exact = aupro(maps, masks)
    monkeypatch.setattr(M, "_MAX_JOINT_HIST", 0)
    assert aupro(maps, masks) == pytest.approx(exact, abs=1e-12)


def test_unknown_labels_are_left_out_of_every_metric():
    scores = np.array([0.9, 0.8, 0.1, 0.5, 0.2])
    labels = np.array([1, 1, 0, -1, 0])
    known = labels >= 0
    assert image_auroc(scores, labels) == image_auroc(scores[known], labels[known])
    out = summarize(scores, labels)
    assert out["n_images"] == 4 and out["n_defective"] == 2 and out["n_unknown"] == 1
    with pytest.raises(ValueError, match="no image has a label"):
        summarize([0.1, 0.2], [-1, -1])
    with pytest.raises(ValueError, match="only 0"):
        summarize([0.1, 0.2], [2, 0])
