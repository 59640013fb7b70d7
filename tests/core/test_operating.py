"""The operating point as data, decision warnings, interrupted runs, time estimates, the SSIM AE and the
threshold-anchored heatmap."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.config import AEConfig, ProjectionConfig, TrainConfig
from core.data.images import has_transparency
from core.errors import ConfigError
from core.evaluation.curves import build_curves, choose_threshold, operating_point
from core.evaluation.operating import (
    DEFAULT_RULE,
    OP_FILE,
    OperatingPoint,
    clear_point,
    decision_warnings,
    describe,
    load_point,
    operating_threshold,
    point_or_default,
    resolve_threshold,
    save_point,
)
from core.evaluation.record import DecisionRecord, decision_record
from core.evaluation.scored import ScoredSet
from core.models.autoencoder import ConvAutoencoder
from core.models.ssim import ssim_map, ssim_residual
from core.runs import INTERRUPTED, read_history, write_history
from core.services import estimate
from core.viz import ANCHORED_LUT, heatmap_anchored


def _curves(n_good: int = 20, n_bad: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(0, 1, n_good), rng.normal(1.5, 1, n_bad)])
    labels = np.concatenate([np.zeros(n_good, int), np.ones(n_bad, int)])
    return build_curves(scores, labels, n_boot=50)


# ---------------------------------------------------------------------- the point itself
def test_default_point_is_youden_and_validation_names_the_field() -> None:
    p = OperatingPoint()
    assert p.rule == DEFAULT_RULE == "youden" and p.pixel_threshold is None and p.updated_utc == ""
    with pytest.raises(ConfigError, match="rule"):
        OperatingPoint(rule="magic")
    with pytest.raises(ConfigError, match="manual rule needs a threshold"):
        OperatingPoint(rule="manual")
    with pytest.raises(ConfigError, match="target_fpr"):
        OperatingPoint(target_fpr=1.5)
    with pytest.raises(ConfigError, match="cost_fn"):
        OperatingPoint(cost_fn=-1)
    with pytest.raises(ConfigError, match="threshold must be finite"):
        OperatingPoint(rule="manual", threshold=float("nan"))
    with pytest.raises(ConfigError, match="label_source"):
        OperatingPoint(label_source="theirs")
    assert OperatingPoint.from_dict({"rule": "f1", "unknown_key": 1}).rule == "f1"  # newer files load


def test_points_are_saved_per_run_and_detector_and_survive_damage(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert load_point(run, "reconstruction") is None and point_or_default(run, "reconstruction") == OperatingPoint()
    a = save_point(run, "reconstruction", OperatingPoint(rule="manual", threshold=0.25, cost_fp=2.0, pixel_threshold=0.1))
    b = save_point(run, "projection", OperatingPoint(rule="fpr", target_fpr=0.02))
    assert a.updated_utc.endswith("Z")
    assert load_point(run, "reconstruction") == a and load_point(run, "projection") == b
    stored = json.loads((run / OP_FILE).read_text())
    assert stored["format"] == "anomalylab-operating-points/1" and set(stored["points"]) == {"reconstruction", "projection"}
    assert not list(run.glob(f".{OP_FILE}.*"))  # written atomically: no temp file left
    clear_point(run, "projection")
    assert load_point(run, "projection") is None and load_point(run, "reconstruction") == a
    (run / OP_FILE).write_text("{not json")
    assert load_point(run, "reconstruction") is None  # a damaged file reads as none; the next save rewrites it
    save_point(run, "reconstruction", a)
    assert load_point(run, "reconstruction").threshold == 0.25


def test_decision_ignores_the_time_stamp_and_the_label_source() -> None:
    a = OperatingPoint(rule="manual", threshold=0.3, label_source="dataset")
    b = OperatingPoint(rule="manual", threshold=0.3, label_source="mine", updated_utc="2026-01-01T00:00:00Z")
    assert a.decision() == b.decision()
    assert a.decision() != OperatingPoint(rule="manual", threshold=0.3, cost_fp=2.0).decision()


def test_resolve_uses_the_rule_on_the_curves_and_falls_back_with_a_reason() -> None:
    curves = _curves()
    t, why = resolve_threshold(OperatingPoint(), curves)
    assert why is None and t == pytest.approx(choose_threshold(curves, "youden"))
    t, why = resolve_threshold(OperatingPoint(rule="manual", threshold=0.7), curves)
    assert (t, why) == (0.7, None)
    one_class = build_curves(np.array([0.1, 0.2, 0.3]), np.array([1, 1, 1]), n_boot=10)
    t, why = resolve_threshold(OperatingPoint(rule="youden"), one_class)
    assert why is not None and "using F1-max" in why and t == pytest.approx(one_class.f1_threshold)


def test_operating_threshold_names_the_point(tmp_path: Path) -> None:
    curves = _curves()
    t, _, text = operating_threshold(tmp_path, "reconstruction", curves)
    assert text == "the Youden J threshold of the default operating point"
    save_point(tmp_path, "reconstruction", OperatingPoint(rule="fpr", target_fpr=0.05))
    t, point, text = operating_threshold(tmp_path, "reconstruction", curves)
    assert t == pytest.approx(choose_threshold(curves, "fpr", target_fpr=0.05))
    assert text.startswith("the target false-alarm rate (5.0%) threshold of the operating point saved ")
    assert describe(point) == text


# ---------------------------------------------------------------------- warnings
def test_warnings_for_degenerate_decisions_and_in_the_record() -> None:
    curves = _curves()
    everything = operating_point(curves, float(curves.score_min))
    nothing = operating_point(curves, float(curves.flag_nothing))
    middle = operating_point(curves, choose_threshold(curves, "youden"))
    assert any("flags 40 of 40" in w for w in decision_warnings(everything))
    assert any("nearly nothing" in w for w in decision_warnings(nothing))
    assert decision_warnings(middle) == []
    assert any("precision is 0.008" in w for w in decision_warnings({}, {"precision": 0.0077, "recall": 1.0}))
    assert any("recall is 0.010" in w for w in decision_warnings({}, {"precision": 0.9, "recall": 0.01}))
    assert decision_warnings({}, {"precision": 0.5, "recall": 0.6}) == []

    scores = np.concatenate([np.linspace(0, 1, 10), np.linspace(0.5, 1.5, 10)])
    ss = ScoredSet(run_id="r", detector="reconstruction", data="d", category="c", paths=tuple(f"test/x/{i}.png" for i in range(20)),
                   defects=tuple(["good"] * 10 + ["bad"] * 10), labels=np.array([0] * 10 + [1] * 10), scores=scores,
                   maps=None, masks=None, has_mask=np.zeros(20, bool), meta={})
    rec = decision_record(ss, float(scores.min()), rule="manual")
    assert rec.warnings and "flags 20 of 20" in rec.warnings
    assert DecisionRecord.from_json(rec.to_json()).warnings == rec.warnings
    assert DecisionRecord.from_csv(rec.to_csv()).warnings == rec.warnings
    assert decision_record(ss, 0.75, rule="manual").warnings is None


# ---------------------------------------------------------------------- interrupted runs
def test_a_running_run_whose_process_died_reads_as_interrupted(tmp_path: Path) -> None:
    write_history(tmp_path, "running", [], 0, float("nan"))
    assert read_history(tmp_path)["status"] == "running"  # this process is alive
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[2]); from core.runs import write_history; "
            "write_history(Path(sys.argv[1]), 'running', [], 0, float('nan'))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path), str(Path(__file__).resolve().parents[2])], check=True)
    hist = read_history(tmp_path)
    assert hist["status"] == INTERRUPTED and "ended without finishing" in hist["interrupted"]
    # written elsewhere: judged by its last news
    raw = json.loads((tmp_path / "history.json").read_text())
    raw.update(host="another-machine", updated=time.time())
    (tmp_path / "history.json").write_text(json.dumps(raw))
    assert read_history(tmp_path)["status"] == "running"
    raw["updated"] = time.time() - 3 * 3600
    (tmp_path / "history.json").write_text(json.dumps(raw))
    assert read_history(tmp_path)["status"] == INTERRUPTED
    write_history(tmp_path, "finished", [], 0, float("nan"))
    assert read_history(tmp_path)["status"] == "finished"


# ---------------------------------------------------------------------- estimates
def test_estimates_measure_once_and_keep_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMALYLAB_HOME", str(tmp_path))
    cfg = TrainConfig(model="ae", size=32, base_channels=4, depth=3, epochs=10, patience=10, batch_size=8, device="cpu")
    assert estimate.train_estimate(cfg, 40, 3, calibrate_missing=False) is None  # nothing measured yet
    calls = []
    real = estimate.calibrate
    monkeypatch.setattr(estimate, "calibrate", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    first = estimate.train_estimate(cfg, 40, 3)
    second = estimate.train_estimate(cfg, 40, 3)
    assert len(calls) == 1 and first == second  # measured once, then read back
    stored = json.loads((tmp_path / estimate.CALIBRATION_FILE).read_text())
    (entry,) = stored.values()
    per_batch = entry["seconds"]
    # 32 training images in 4 batches + 8 validation images in 1 batch (at VAL_COST), 10 epochs
    assert first.seconds == pytest.approx(per_batch * (4 + estimate.VAL_COST * 1) * 10)
    assert "measured on this machine" in first.text() and not first.upper_bound
    capped = estimate.train_estimate(TrainConfig(**{**cfg.__dict__, "epochs": 10**6, "max_minutes": 1.0}), 40, 3)
    assert capped.seconds == 60.0 and capped.capped_by_budget and "time budget" in capped.text()


def test_projection_estimate_scales_with_steps_and_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMALYLAB_HOME", str(tmp_path))
    model = ConvAutoencoder(AEConfig(3, 4, 3)).eval()
    a = estimate.projection_estimate(model, ProjectionConfig(steps=10), 4, 32, 3, batch=4, model_id="m")
    b = estimate.projection_estimate(model, ProjectionConfig(steps=20), 8, 32, 3, batch=4, model_id="m")
    assert b.seconds == pytest.approx(4 * a.seconds)  # twice the steps, twice the batches; one measurement


# ---------------------------------------------------------------------- SSIM
def test_ssim_map_and_residual() -> None:
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(ssim_map(x, x), torch.ones(2, 32, 32), atol=1e-4)
    r = ssim_residual(x, torch.rand(2, 3, 32, 32))
    assert r.shape == (2, 32, 32) and float(r.min()) >= 0 and float(r.max()) <= 1 and float(r.mean()) > 0.2
    assert ssim_map(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)).shape == (1, 8, 8)  # a window that fits


@pytest.mark.parametrize("loss", ["ssim", "ssim_l1"])
def test_ssim_ae_trains_and_scores_with_its_residual(loss: str) -> None:
    from core.detectors.reconstruction import ReconstructionDetector

    model = ConvAutoencoder(AEConfig(3, 4, 3, loss=loss))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(4, 3, 32, 32)
    first = None
    for _ in range(5):
        opt.zero_grad()
        value, _ = model.loss(x)
        value.backward()
        opt.step()
        first = float(value.detach()) if first is None else first
    assert float(value.detach()) < first
    assert model.residual == "ssim"
    det = ReconstructionDetector(model.eval())
    assert det.residual == "ssim" and ReconstructionDetector(model, residual="l1").residual == "l1"
    out = det.predict(x)
    assert out.anomaly_map.shape == (4, 32, 32) and torch.isfinite(out.score).all()
    with pytest.raises(ConfigError, match="AE loss"):
        AEConfig(loss="huber").validate(32)


def test_old_checkpoints_are_mse() -> None:
    assert ConvAutoencoder(AEConfig(**{"in_channels": 3, "base_channels": 4, "depth": 3})).residual == "l1"
    assert TrainConfig(model="ae").arch(3)["loss"] == "ssim"  # the default now
    assert TrainConfig.from_dict({"model": "ae"}).ae_loss == "mse"  # a config from before the setting: MSE
    with pytest.raises(ConfigError, match="ae_loss"):
        TrainConfig(model="ae", ae_loss="l2").validate()


# ---------------------------------------------------------------------- display helpers
def test_anchored_heatmap_turns_red_at_the_threshold() -> None:
    amap = np.array([[0.0, 0.49, 0.999, 1.0, 3.0, 1e6]], np.float32)
    rgb = heatmap_anchored(amap, 1.0)
    below, above = rgb[0, :3], rgb[0, 3:]
    assert (below[:, 2] > below[:, 0]).all()  # blue-dominated under the threshold
    assert (above[:, 0] > above[:, 2]).all()  # red/yellow at or above it
    assert (rgb[0, 3] == ANCHORED_LUT[128]).all()


def test_transparency_is_detected() -> None:
    def png(mode: str) -> bytes:
        buf = io.BytesIO()
        Image.new(mode, (4, 4)).save(buf, format="PNG")
        return buf.getvalue()

    assert has_transparency(png("RGBA")) and has_transparency(png("LA"))
    assert not has_transparency(png("RGB")) and not has_transparency(b"not an image")



def test_evaluate_rule_saved_gives_the_pages_threshold(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from core.cli.main import main
    from core.evaluation.curves import curves_for
    from core.evaluation.scored import scored_set
    from core.training.loop import fit

    run = fit(TrainConfig(data="builtin:synthetic", category="bottle", model="ae", size=32, base_channels=4, depth=3,
                          epochs=1, device="cpu"), tmp_path / "run")
    capsys.readouterr()
    ss = scored_set(run)
    mid = float(np.sort(ss.scores)[len(ss.scores) // 2])
    save_point(run, "reconstruction", OperatingPoint(rule="manual", threshold=mid, cost_fp=2.0))
    assert main(["evaluate", str(run), "--rule", "saved", "--json", "--no-strips"]) == 0
    out = json.loads(capsys.readouterr().out)
    t, _, _ = operating_threshold(run, "reconstruction", curves_for(ss))
    assert out["threshold"] == t == mid and out["rule"] == "manual" and out["operating_point"]["cost_fp"] == 2.0
    assert out["fp"] == operating_point(curves_for(ss), mid)["fp"]
    assert main(["evaluate", str(run), "--rule", "saved", "--cost-fp", "1", "--cost-fn", "3"]) == 2  # its own costs
