"""Training: loss goes down, checkpoints load with weights_only=True, stop, resume, early stop."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from core import runs
from core.config import TrainConfig
from core.evaluation.evaluate import evaluate_run
from core.training.common import Progress
from core.training.loop import fit

TINY = dict(data="builtin:synthetic", category="bottle", size=32, base_channels=4, depth=3, batch_size=32, device="cpu")


def test_fit_lowers_loss_and_writes_a_loadable_run(tmp_path: Path) -> None:
    events: list[Progress] = []
    run_dir = fit(TrainConfig(**TINY, epochs=4, lr=3e-3), tmp_path / "run", progress=events.append)
    hist = json.loads((run_dir / "history.json").read_text())
    losses = [e["train_loss"] for e in hist["epochs"]]
    assert hist["status"] == "finished" and len(losses) == 4
    assert losses[-1] < losses[0]
    payload = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    assert payload["config"]["category"] == "bottle" and payload["config"]["channels"] == 3
    run = runs.load_run(run_dir)
    assert run.epoch == hist["best_epoch"]
    phases = [e.phase for e in events]
    assert phases[0] == "start" and phases[-1] == "done" and phases.count("epoch") == 4
    epoch_events = [e for e in events if e.phase == "epoch"]
    assert epoch_events[-1].preview and epoch_events[-1].preview[0][0].shape == (3, 32, 32)
    assert epoch_events[0].eta_seconds is not None
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["resolved"]["n_train"] == 128 and cfg["resolved"]["n_val"] == 32


def test_same_seed_same_weights(tmp_path: Path) -> None:
    cfg = TrainConfig(**TINY, epochs=1, precision="fp32")
    a = runs.load_run(fit(cfg, tmp_path / "a")).model.state_dict()
    b = runs.load_run(fit(cfg, tmp_path / "b")).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_vae_trains_on_digits(tmp_path: Path) -> None:
    run_dir = fit(TrainConfig(data="builtin:digits", model="vae", size=32, z_dim=2, epochs=2, device="cpu"), tmp_path / "v")
    run = runs.load_run(run_dir)
    assert run.config.channels == 1 and run.config.category == "7"
    m = evaluate_run(run_dir, device="cpu", strips=False)
    assert m["pixel_auroc"] is None and m["aupro"] is None  # digits have no masks
    assert 0.0 <= m["image_auroc"] <= 1.0 and m["n_images"] == 36 + 9 * 20


def test_stop_keeps_a_usable_checkpoint(tmp_path: Path) -> None:
    stop = threading.Event()

    def on_progress(p: Progress) -> None:
        if p.phase == "epoch" and p.epoch == 2:
            stop.set()

    run_dir = fit(TrainConfig(**TINY, epochs=50), tmp_path / "s", progress=on_progress, stop=stop)
    hist = runs.read_history(run_dir)
    assert hist["status"] == "stopped" and len(hist["epochs"]) == 2
    runs.load_run(run_dir)


def test_resume_continues_from_last_epoch(tmp_path: Path) -> None:
    stop = threading.Event()
    fit(TrainConfig(**TINY, epochs=4), tmp_path / "r",
        progress=lambda p: stop.set() if p.phase == "epoch" and p.epoch == 2 else None, stop=stop)
    events: list[Progress] = []
    fit(TrainConfig(**TINY, epochs=4), tmp_path / "r", resume=True, progress=events.append)
    hist = runs.read_history(tmp_path / "r")
    assert [e["epoch"] for e in hist["epochs"]] == [1, 2, 3, 4]
    assert [e.epoch for e in events if e.phase == "epoch"] == [3, 4]


def test_early_stopping(tmp_path: Path) -> None:
    # with a vanishing lr only BatchNorm statistics move: validation stalls soon, training stops
    # exactly `patience` epochs after the best one
    run_dir = fit(TrainConfig(**{**TINY, "epochs": 40, "patience": 2, "lr": 1e-12}), tmp_path / "e")
    hist = runs.read_history(run_dir)
    assert hist["status"] == "early_stopped" and len(hist["epochs"]) < 40
    assert hist["epochs"][-1]["epoch"] - hist["best_epoch"] == 2


def test_bad_settings_and_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model must be"):
        TrainConfig(model="gan").validate()
    with pytest.raises(ValueError, match="divisible"):
        fit(TrainConfig(**{**TINY, "size": 42}), tmp_path / "bad")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(runs.RunError, match="not readable"):
        runs.load_run(tmp_path / "junk")
    torch.save({"format": "other"}, tmp_path / "junk" / "model.pt")
    with pytest.raises(runs.RunError, match="not an AnomalyLab checkpoint"):
        runs.load_run(tmp_path / "junk")
    with pytest.raises(runs.RunError, match="not a run folder"):
        runs.load_run(tmp_path / "missing")


def test_evaluate_writes_metrics_scores_and_strips(tmp_path: Path) -> None:
    run_dir = fit(TrainConfig(**TINY, epochs=2), tmp_path / "ev")
    m = evaluate_run(run_dir, device="cpu")
    for key in ("image_auroc", "f1_max", "threshold", "pixel_auroc", "aupro"):
        assert isinstance(m[key], float), key
    lines = (run_dir / "scores.csv").read_text().splitlines()
    assert lines[0] == "path,defect,label,score,has_mask" and len(lines) == 1 + m["n_images"]
    assert lines[1].startswith("test/")
    strips = sorted((run_dir / "strips").rglob("*.png"))
    assert len(strips) == m["n_images"]
    from PIL import Image

    assert Image.open(strips[0]).size == (32 * 3 + 4, 32)
