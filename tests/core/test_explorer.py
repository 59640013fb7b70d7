"""ROC / threshold explorer core: rules, costs, operating points, pixel metrics, decision records, cache, CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from core.cli.main import main
from core.evaluation import metrics
from core.evaluation.curves import (
    Costs,
    Curves,
    apply_rule,
    build_curves,
    choose_threshold,
    closest_to_threshold,
    curves_for,
    false_negatives,
    false_positives,
    iso_cost_line,
    nearest_point,
    operating_point,
)
from core.evaluation.pixel import (
    binary_segmentation,
    build_pixel_curves,
    pixel_curves,
    pixel_metrics,
    segmentation_overlay,
)
from core.evaluation.record import (
    DecisionRecord,
    decision_record,
)
from core.evaluation.scored import _MEMO, ScoredSet, scored_set, scored_set_path

# Hand-made set used by several tests. Sorted by score:
#   score  1  2  3  4  5  6  7  8
#   label  0  0  1  0  0  1  1  1        Np = 4 defective, Nn = 4 good
# Candidate thresholds (descending) and counts of score >= t:
#   t:   nothing  8  7  6  5  4  3  2  1
#   TP:        0  1  2  3  3  3  4  4  4
#   FP:        0  0  0  0  1  2  2  3  4
S = np.array([1, 2, 3, 4, 5, 6, 7, 8], dtype=np.float64)
Y = np.array([0, 0, 1, 0, 0, 1, 1, 1])


@pytest.fixture(scope="module")
def hand() -> Curves:
    return build_curves(S, Y, n_boot=200)


def _set(scores, labels, **kw) -> ScoredSet:
    n = len(scores)
    return ScoredSet("run-a", "reconstruction", tuple(f"test/x/{i:03d}.png" for i in range(n)),
                        tuple("good" if y == 0 else "x" for y in labels), np.asarray(labels), np.asarray(scores), **kw)


# ------------------------------------------------------------------------------------------- rules
def test_rules_on_hand_made_scores(hand: Curves) -> None:
    # F1 = 2TP / (2TP + FP + FN): t=6 -> 6/7 (best), t=3 -> 8/10, t=5 -> 6/8.
    assert choose_threshold(hand, "f1") == 6.0
    assert hand.f1_max == pytest.approx(6 / 7) and hand.f1_threshold == 6.0
    # Youden J = TPR - FPR: t=6 -> 0.75 - 0 (best), t=3 -> 1 - 0.5.
    assert choose_threshold(hand, "youden") == 6.0
    # FPR <= 0.25 allows one good part flagged: the lowest such threshold is 5 (t=4 flags two).
    assert choose_threshold(hand, "fpr", target_fpr=0.25) == 5.0
    assert choose_threshold(hand, "fpr", target_fpr=0.0) == 6.0
    # TPR >= 1 needs all four defects: the highest such threshold is 3; TPR >= 0.5 -> 7.
    assert choose_threshold(hand, "tpr", target_tpr=1.0) == 3.0
    assert choose_threshold(hand, "tpr", target_tpr=0.5) == 7.0
    # The same answers from raw scores and from a ScoredSet.
    assert choose_threshold(S, "fpr", labels=Y, target_fpr=0.25) == 5.0
    assert choose_threshold(_set(S, Y), "f1") == 6.0


def test_cost_rule_and_cost_per_1000(hand: Curves) -> None:
    # cost_fp = cost_fn = 1: total = FP + FN; t=6 -> 0 + 1 = 1 is the minimum (t=3 -> 2).
    assert choose_threshold(hand, "cost", costs={"cost_fp": 1, "cost_fn": 1}) == 6.0
    # cost_fn = 10: t=6 -> 10, t=3 -> 2 + 0 = 2 (min), t=2 -> 3.
    assert choose_threshold(hand, "cost", costs=Costs(1, 10)) == 3.0
    assert operating_point(hand, 3.0, Costs(1, 10))["cost_per_1000"] == pytest.approx(1000 * 2 / 8)
    # With a review of 2 per flagged part: total = FP + 10 FN + 2 (TP + FP):
    #   nothing 40, t=8 32, t=7 24, t=6 16, t=5 19, t=4 22, t=3 14 (min), t=2 17, t=1 20.
    c = Costs(1, 10, 2)
    assert choose_threshold(hand, "cost", costs=c) == 3.0
    assert operating_point(hand, 3.0, c)["cost_per_1000"] == pytest.approx(14 / 8 * 1000)
    # Review 5: nothing 40, 8: 35, 7: 30, 6: 25 (min), 5: 31, 4: 37, 3: 32, 2: 38, 1: 44.
    assert choose_threshold(hand, "cost", costs=Costs(1, 10, 5)) == 6.0
    # A review that costs as much as a miss (or more): flagging nothing is cheapest.
    for review in (10, 12):
        t = choose_threshold(hand, "cost", costs=Costs(1, 10, review))
        assert t == hand.flag_nothing and operating_point(hand, t)["flagged"] == 0
    # Brute force over every candidate agrees for random costs.
    rng = np.random.default_rng(1)
    for _ in range(20):
        c = Costs(*rng.uniform(0, 5, 3))
        t = choose_threshold(hand, "cost", costs=c)
        best = min(operating_point(hand, th, c)["cost_per_1000"] for th in hand.thresholds)
        assert operating_point(hand, t, c)["cost_per_1000"] == pytest.approx(best)


def test_rule_errors(hand: Curves) -> None:
    with pytest.raises(ValueError, match="target_fpr"):
        choose_threshold(hand, "fpr")
    with pytest.raises(ValueError, match="target_tpr"):
        choose_threshold(hand, "tpr")
    with pytest.raises(ValueError, match="cost_fp"):
        choose_threshold(hand, "cost")
    with pytest.raises(ValueError, match="rule must be"):
        choose_threshold(hand, "magic")
    with pytest.raises(ValueError, match=">= 0"):
        Costs(-1, 1)


def test_presets_match_the_two_ways_of_use() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(2000) < 0.2).astype(int)
    s = rng.normal(0, 1, 2000) + 2.0 * y
    c = build_curves(s, y, n_boot=0)
    first = apply_rule(c, "f1", preset="first_screen")  # preset wins over the rule argument
    assert first["rule"] == "fpr" and first["fpr"] <= 0.01
    # the lowest threshold within the budget: one step lower breaks it
    lower = c.thresholds[np.searchsorted(-c.thresholds, -first["threshold"]) + 1]
    assert operating_point(c, lower)["fpr"] > 0.01
    unusual = apply_rule(c, "f1", preset="anything_unusual")
    assert unusual["rule"] == "tpr" and unusual["fnr"] <= 0.01 + 1e-12
    assert unusual["threshold"] < first["threshold"]


# ------------------------------------------------------------------------------- operating point
def test_operating_point_equals_confusion_at() -> None:
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(0, 1, 500), 2)  # rounding makes many ties
    y = (rng.random(500) < 0.3).astype(int)
    y_unknown = y.copy()
    y_unknown[rng.random(500) < 0.1] = -1
    for labels in (y, y_unknown):
        c = build_curves(s, labels, n_boot=0)
        known = labels >= 0
        ts = np.r_[rng.uniform(-4, 4, 300), s[:100], c.thresholds, -np.inf, np.inf]
        for t in ts:
            op = operating_point(c, t)
            ref = metrics.confusion_at(s[known], labels[known], t).as_dict()
            assert {k: op[k] for k in ref} == ref
        # the curve arrays are the operating points at their thresholds
        for i in range(0, c.thresholds.size, 7):
            op = operating_point(c, c.thresholds[i])
            assert (op["tp"], op["fp"], op["fpr"], op["tpr"]) == (c.tp[i], c.fp[i], c.fpr[i], c.tpr[i])


def test_bootstrap_interval_contains_the_point_estimate() -> None:
    rng = np.random.default_rng(5)
    y = (rng.random(200) < 0.4).astype(int)
    s = rng.normal(0, 1, 200) + 1.0 * y
    c = curves_for(_set(s, y))
    lo, hi = c.auroc_ci
    assert lo <= c.auroc <= hi and hi - lo < 0.3
    assert c.auroc == pytest.approx(metrics.image_auroc(s, y))
    assert c.average_precision == pytest.approx(metrics.average_precision(s, y))
    assert curves_for(_set(s, y)) is c  # memoized by content


def test_iso_cost_line_through_the_point_and_tangent_at_min_cost(hand: Curves) -> None:
    # cost_fp 1, cost_fn 10, free review: slope = 1 * Nn / (10 * Np) = 0.1; min cost at t=3: (F, T) = (0.5, 1).
    line = iso_cost_line(hand, Costs(1, 10), 3.0)
    assert line["slope"] == pytest.approx(0.1) and line["point"] == (0.5, 1.0)
    assert line["fpr"] == pytest.approx([0.0, 0.5]) and line["tpr"] == pytest.approx([0.95, 1.0])
    rng = np.random.default_rng(7)
    y = (rng.random(300) < 0.3).astype(int)
    s = rng.normal(0, 1, 300) + 1.5 * y
    c = build_curves(s, y, n_boot=0)
    for _ in range(15):
        costs = Costs(rng.uniform(0.1, 5), rng.uniform(1, 20), rng.uniform(0, 0.9))
        t = choose_threshold(c, "cost", costs=costs)
        line = iso_cost_line(c, costs, t)
        (x0, x1), (y0, y1) = line["fpr"], line["tpr"]
        f0, t0 = line["point"]
        m = line["slope"]
        assert m == pytest.approx((costs.cost_fp + costs.cost_review) * c.n_neg / ((costs.cost_fn - costs.cost_review) * c.n_pos))
        # the point lies on the segment
        assert x0 - 1e-12 <= f0 <= x1 + 1e-12 and t0 == pytest.approx(y0 + m * (f0 - x0))
        assert y1 == pytest.approx(y0 + m * (x1 - x0))
        # tangent: no ROC point lies above the line (none has a lower cost)
        assert np.all(c.tpr <= t0 + m * (c.fpr - f0) + 1e-9)
        cost_star = operating_point(c, t, costs)["cost_per_1000"]
        assert all(operating_point(c, th, costs)["cost_per_1000"] >= cost_star - 1e-9 for th in c.thresholds)
    # a point that is not the minimum has ROC points above its line
    line = iso_cost_line(c, Costs(1, 10), c.thresholds[3])
    f0, t0 = line["point"]
    assert np.any(c.tpr > t0 + line["slope"] * (c.fpr - f0) + 1e-9)
    # review as costly as a miss: vertical line
    assert iso_cost_line(hand, Costs(1, 2, 2), 6.0)["slope"] == math.inf


def test_nearest_point_and_lists(hand: Curves) -> None:
    p = nearest_point(hand, 0.02, 0.74)  # closest ROC point (0, 0.75): thresholds 6
    assert p["threshold"] == 6.0 and (p["fpr"], p["tpr"]) == (0.0, 0.75)
    op = operating_point(hand, p["threshold"])
    assert (op["fpr"], op["tpr"]) == (p["fpr"], p["tpr"])
    # PR click at recall 1, precision 0.65: t=3 has precision 4/6, t=2 4/7.
    assert nearest_point(hand, 1.0, 0.65, space="pr")["threshold"] == 3.0
    # At t = 4.5: flagged scores 5, 6, 7, 8 -> FP = score 5 (index 4); FN = score 3 (index 2).
    assert false_positives(hand, 4.5).tolist() == [4]
    assert false_negatives(hand, 4.5).tolist() == [2]
    assert false_positives(hand, 0.0).tolist() == [4, 3, 1, 0]  # highest score first
    assert false_negatives(hand, 100.0, limit=2).tolist() == [2, 5]  # lowest score first
    # closest to 4.5: scores 4 and 5 (0.5 away), then 3 and 6 (1.5; ties by index)
    assert closest_to_threshold(hand, 4.5, 3).tolist() == [3, 4, 2]
    assert closest_to_threshold(hand, 100.0, 2).tolist() == [7, 6]


def test_unknown_labels_left_out_but_reviewable() -> None:
    ss = _set(S, Y).with_labels({"test/x/002.png": -1, "test/x/000.png": "defective"})
    assert ss.labels.tolist() == [1, 0, -1, 0, 0, 1, 1, 1] and ss.n_unknown == 1
    assert ss.defects[0] == "defective" and ss.defects[2] == "unknown"
    c = curves_for(ss)
    assert (c.n_pos, c.n_neg, c.n_unknown) == (4, 3, 1)
    assert 2 in closest_to_threshold(c, 3.0, 1).tolist()
    assert 2 not in false_negatives(c, 100.0).tolist()
    assert ss.fingerprint_data() == _set(S, Y).fingerprint_data()
    assert ss.fingerprint_labels() != _set(S, Y).fingerprint_labels()
    with pytest.raises(ValueError, match="not an image"):
        _set(S, Y).with_labels({"nope.png": 1})
    with pytest.raises(ValueError, match="unknown label"):
        _set(S, Y).with_labels({"test/x/000.png": "maybe"})


# ----------------------------------------------------------------------------------- pixel level
def _maps(dtype, seed=0):
    rng = np.random.default_rng(seed)
    maps = np.abs(rng.normal(0, 0.1, (6, 24, 24)))
    masks = np.zeros(maps.shape, bool)
    masks[0, 3:9, 4:12] = True
    masks[2, 10:20, 10:14] = True
    maps[masks] += np.abs(rng.normal(0.3, 0.2, int(masks.sum())))
    return maps.astype(dtype), masks


def _direct(maps, masks, t):
    pred = binary_segmentation(maps, t)
    tp, fp, fn = int((pred & masks).sum()), int((pred & ~masks).sum()), int((~pred & masks).sum())
    return tp, fp, fn, 2 * tp / max(1, 2 * tp + fp + fn), tp / max(1, tp + fp + fn)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_pixel_metrics_from_histograms(dtype) -> None:
    maps, masks = _maps(dtype)
    pc = build_pixel_curves(maps, masks, bins=256)
    rng = np.random.default_rng(1)
    ts = np.r_[rng.uniform(float(maps.min()), float(maps.max()), 100), pc.grid[::5]]
    worst = 0.0
    for t in ts:
        px = pixel_metrics(pc, t)
        tp, fp, fn, f1, iou = _direct(maps, masks, px["threshold_used"])
        assert (px["tp"], px["fp"], px["fn"]) == (tp, fp, fn)  # exact at the snapped threshold
        _, _, _, f1_t, iou_t = _direct(maps, masks, t)
        worst = max(worst, abs(px["f1"] - f1_t), abs(px["iou"] - iou_t))
        if dtype == np.float16:  # distinct-value histogram: exact at any threshold
            assert px["f1"] == pytest.approx(f1_t) and px["iou"] == pytest.approx(iou_t)
    assert worst < 0.02  # within one bin for the coarse float32 grid
    assert pc.pixel_auroc == pytest.approx(metrics.pixel_auroc(maps.astype(np.float32), masks))
    fpr, pro = metrics.pro_curve(maps.astype(np.float32), masks)
    assert np.allclose(pc.pro_fpr, fpr) and np.allclose(pc.pro, pro)
    assert pc.f1_max == pytest.approx(max(pixel_metrics(pc, t)["f1"] for t in pc.grid))
    assert pixel_metrics(pc, 1e9)["tp"] == 0 and pixel_metrics(pc, -1e9)["fn"] == 0


def test_pixel_curves_of_a_set_and_overlay() -> None:
    maps, masks = _maps(np.float16)
    labels = np.array([1, 0, 1, 0, 0, 1])
    has_mask = np.array([True, True, True, True, True, False])  # the last defect has no mask
    ss = _set(maps.reshape(6, -1).max(1).astype(np.float64), labels, maps=maps, masks=masks, has_mask=has_mask)
    pc = pixel_curves(ss)
    assert pc.n_images == 5 and pc.n_pos == int(masks.sum())
    assert pixel_curves(ss) is pc
    # relabeling image 0 good empties its mask; relabeling image 1 defective drops its pixel truth
    re = ss.with_labels({"test/x/000.png": 0, "test/x/001.png": 1})
    assert not re.masks[0].any() and re.has_mask[0] and not re.has_mask[1]
    assert ss.masks[0].any()  # the original is untouched
    assert pixel_curves(re).n_images == 4
    seg = binary_segmentation(maps[0], pc.f1_threshold)
    img = segmentation_overlay(np.zeros((3, 24, 24), np.uint8), seg, masks[0])
    assert img.shape == (24, 24, 3) and img.dtype == np.uint8 and img[seg].any()
    assert pixel_curves(_set(S, Y)) is None  # no maps


# ------------------------------------------------------------------------------- decision record
def test_decision_record_round_trip_and_mismatches() -> None:
    maps, masks = _maps(np.float16)
    labels = np.array([1, 0, 1, 0, 0, 0])
    ss = _set(maps.reshape(6, -1).max(1).astype(np.float64), labels, maps=maps, masks=masks,
              has_mask=np.ones(6, bool), data="builtin:synthetic", category="bottle")
    c = curves_for(ss)
    t = choose_threshold(c, "cost", costs=Costs(1, 5, 0.5))
    rec = decision_record(ss, t, rule="cost", costs=Costs(1, 5, 0.5), pixel_threshold=0.2, note="line 3, shift A")
    assert rec.threshold == t and rec.metrics.cost_per_1000 == operating_point(c, t, Costs(1, 5, 0.5))["cost_per_1000"]
    assert rec.pixel.f1 is not None and rec.created_utc.endswith("Z")
    assert DecisionRecord.from_json(rec.to_json()) == rec
    text = rec.to_csv()
    assert len(text.strip().splitlines()) == 2 and "metrics.tp" in text.splitlines()[0]
    assert DecisionRecord.from_csv(text) == rec
    assert DecisionRecord.from_csv(text.encode("utf-8-sig")) == rec  # Excel's BOM
    assert rec.check(ss) == []
    # other labels, other images, other run/detector
    msgs = rec.check(ss.with_labels({"test/x/001.png": 1}))
    assert len(msgs) == 1 and "different labels" in msgs[0] and "2 defective, 4 good then; 3 defective, 3 good now" in msgs[0]
    other = ScoredSet("run-b", "projection", tuple(f"test/y/{i}.png" for i in range(6)), ss.defects, labels, ss.scores)
    msgs = rec.check(other)
    assert any("run run-a" in m and "run-b" in m for m in msgs)
    assert any("projection" in m for m in msgs) and any("different test images" in m for m in msgs)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": "something else"}', "not a decision record"),
        ("[1, 2]", "one JSON object"),
    ],
)
def test_malformed_json_records(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        DecisionRecord.from_json(text)


def test_malformed_records_name_the_field() -> None:
    rec = decision_record(_set(S, Y), 5.0, rule="fpr", target_fpr=0.25)
    for change, reason in [
        ({"threshold": None}, "'threshold' is missing"),
        ({"threshold": "abc"}, "'threshold' must be a number"),
        ({"threshold": float("inf")}, "finite"),
        ({"rule": "magic"}, "unknown rule"),
        ({"rule_params": {"target_fpr": None}}, "rule 'fpr' without"),
        ({"metrics": {**rec.to_dict()["metrics"], "tp": 1.5}}, "'metrics.tp' must be an integer"),
        ({"created_utc": "yesterday"}, "created_utc"),
        ({"metrics": None}, "'metrics.tp' is missing"),
        ({"costs": [1, 2]}, "'costs' must be an object"),
        ({"rule_params": {"target_fpr": 1.5}}, r"target_fpr must be in \[0, 1\]"),
        ({"metrics": {**rec.to_dict()["metrics"], "tpr": 1.2}}, r"metrics.tpr must be in \[0, 1\]"),
        ({"n_good": -1}, "n_good must be >= 0"),
        ({"costs": {"cost_fp": -2}}, "costs.cost_fp must be >= 0"),
    ]:
        with pytest.raises(ValueError, match=reason):
            DecisionRecord.from_json(json.dumps({**rec.to_dict(), **change}))  # inf is written as Infinity
    # the constructor is the one place a record is validated: keyword construction coerces and checks the same way
    fields = {**rec.to_dict(), "threshold": "5", "n_images": 6.0}
    again = DecisionRecord(**fields)
    assert again.threshold == 5.0 and isinstance(again.n_images, int) and again == DecisionRecord.from_dict(fields)
    with pytest.raises(ValueError, match="'n_good' must be an integer"):
        DecisionRecord(**{**fields, "n_good": 2.5})
    with pytest.raises(ValueError, match="not a decision record"):
        DecisionRecord(**{**fields, "format": "other/1"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.threshold = 1.0  # type: ignore[misc]
    csv_text = rec.to_csv()
    header, row = csv_text.strip().splitlines()
    with pytest.raises(ValueError, match="exactly one data row"):
        DecisionRecord.from_csv(csv_text + row + "\n")
    with pytest.raises(ValueError, match="columns"):
        DecisionRecord.from_csv(header + "\n" + row + ",extra\n")
    with pytest.raises(ValueError, match="must be a number"):
        DecisionRecord.from_csv(csv_text.replace(",5.0,fpr,", ",five,fpr,"))


# ------------------------------------------------------------------------------ cache and CLI
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from core.config import TrainConfig
    from core.training.loop import fit

    cfg = TrainConfig(data="builtin:synthetic", category="bottle", size=32, base_channels=4, depth=3, batch_size=32,
                      device="cpu", epochs=1)
    return fit(cfg, tmp_path_factory.mktemp("explorer") / "run")


def test_scored_set_is_cached_and_rescored_after_retraining(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.evaluation.scored

    calls = []
    real = core.evaluation.scored.score_split
    monkeypatch.setattr(core.evaluation.scored, "score_split", lambda *a, **k: calls.append(1) or real(*a, **k))
    _MEMO.clear()
    ss = scored_set(tiny_run)
    path = scored_set_path(tiny_run)
    assert path == tiny_run / "scored" / "reconstruction.npz" and path.is_file() and len(calls) == 1
    assert ss.maps.dtype == np.float16 and ss.maps.shape[1:] == (32, 32) and ss.masks.dtype == bool
    assert ss.run_id == tiny_run.name and ss.category == "bottle" and ss.paths[0].startswith("test/")
    assert set(ss.labels.tolist()) == {0, 1} and ss.has_mask.all()
    assert scored_set(tiny_run) is ss and len(calls) == 1  # in memory
    _MEMO.clear()
    again = scored_set(tiny_run)  # from the .npz
    assert len(calls) == 1 and np.array_equal(again.scores, ss.scores) and np.array_equal(again.maps, ss.maps)
    assert again.fingerprint_data() == ss.fingerprint_data() and again.fingerprint_labels() == ss.fingerprint_labels()
    # a retrained run (new checkpoint mtime) is rescored
    ckpt = tiny_run / "model.pt"
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    scored_set(tiny_run)
    assert len(calls) == 2
    # the scores are the run's own: same as evaluate's
    from core.evaluation.evaluate import evaluate_run

    m = evaluate_run(tiny_run, device="cpu", strips=False)
    assert curves_for(ss).auroc == pytest.approx(m["image_auroc"])


def test_projection_scored_set_keyed_by_settings(tiny_run: Path) -> None:
    from core.config import ProjectionConfig

    a = scored_set(tiny_run, "projection", projection_config={"steps": 1})
    pa = scored_set_path(tiny_run, "projection", ProjectionConfig(steps=1))
    assert pa.name.startswith("projection_") and pa.is_file() and pa != scored_set_path(tiny_run, "projection", {"steps": 2})
    assert a.detector == "projection" and a.maps is not None and a.meta["settings"]["steps"] == 1
    own = scored_set(tiny_run)
    assert a.paths == own.paths and not np.array_equal(a.scores, own.scores)
    assert scored_set(tiny_run, "projection", projection_config=ProjectionConfig(steps=1)) is a  # cached
    with pytest.raises(ValueError, match="unknown detector"):
        scored_set(tiny_run, "magic")
    with pytest.raises(ValueError, match="does not work on ae runs"):
        scored_set(tiny_run, "fnet")


def test_cli_evaluate_with_rule(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(tiny_run), "--json", "--no-strips", "--device", "cpu"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(tiny_run), "--json", "--no-strips", "--device", "cpu",
                 "--rule", "fpr", "--target-fpr", "0.1"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert set(plain) <= set(m)  # every key of evaluate stays
    assert m["rule"] == "fpr" and m["target_fpr"] == 0.1 and m["fpr"] <= 0.1 and m["detector"] == "reconstruction"
    assert m["f1_max_threshold"] == plain["threshold"]
    for key in ("threshold", "tp", "fp", "tn", "fn", "tpr", "fpr", "precision", "recall", "f1", "accuracy"):
        assert key in m, key
    ss = scored_set(tiny_run)
    assert m["threshold"] == choose_threshold(ss, "fpr", target_fpr=0.1)
    assert main(["evaluate", str(tiny_run), "--json", "--no-strips", "--device", "cpu",
                 "--rule", "cost", "--cost-fp", "1", "--cost-fn", "20", "--cost-review", "0.5"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["rule"] == "cost" and m["cost_per_1000"] is not None and m["cost_review"] == 0.5


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--rule", "fpr"], "--rule fpr needs --target-fpr"),
        (["--rule", "tpr"], "--rule tpr needs --target-tpr"),
        (["--rule", "cost", "--cost-fp", "1"], "--rule cost needs --cost-fp"),
        (["--rule", "fpr", "--target-fpr", "5"], "--target-fpr must be in [0, 1]"),
        (["--rule", "cost", "--cost-fp", "-1", "--cost-fn", "2"], "cost_fp must be finite and >= 0"),
    ],
)
def test_cli_rule_errors_exit_2(tiny_run: Path, extra: list[str], reason: str, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    import core.cli.commands

    monkeypatch.setattr(core.cli.commands, "evaluate_run", lambda *a, **k: pytest.fail("scored before checking the flags"))
    assert main(["evaluate", str(tiny_run), "--json", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and "\n" not in err and "Traceback" not in err
