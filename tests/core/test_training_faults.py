"""Training faults (issue 14, items 10 and 11): resume checkpoints, refusing a resume with nothing to resume,
no duplicate epochs after a resume, size limits, and a last batch of a single image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core import runs
from core.cli.main import main
from core.config import MAX_SIZE, TrainConfig
from core.errors import ConfigError
from core.training.loop import batch_count, fit

TINY = dict(data="builtin:synthetic", category="bottle", size=32, base_channels=4, depth=3, batch_size=32, device="cpu")


def test_the_resume_checkpoint_is_written_after_every_epoch(tmp_path: Path) -> None:
    seen: list[int] = []

    def on_progress(p) -> None:
        if p.phase == "epoch":  # called after the epoch's files are written
            seen.append(int(torch.load(tmp_path / "r" / runs.LAST_CKPT, weights_only=True)["epoch"]))

    fit(TrainConfig(**TINY, epochs=3), tmp_path / "r", progress=on_progress)
    assert seen == [1, 2, 3]


def test_resume_without_a_checkpoint_is_refused_and_keeps_the_model(tmp_path: Path) -> None:
    run_dir = fit(TrainConfig(**TINY, epochs=1), tmp_path / "r")
    (run_dir / runs.LAST_CKPT).unlink()
    before = (run_dir / runs.BEST_CKPT).read_bytes()
    with pytest.raises(ConfigError, match="nothing to resume"):
        fit(TrainConfig(**TINY, epochs=2), run_dir, resume=True)
    assert (run_dir / runs.BEST_CKPT).read_bytes() == before
    with pytest.raises(ConfigError, match="nothing to resume"):
        fit(TrainConfig(**TINY, epochs=2), tmp_path / "never-trained", resume=True)
    with pytest.raises(ConfigError, match="no run folder"):
        fit(TrainConfig(**TINY, epochs=2), None, resume=True)


def test_cli_resume_without_a_checkpoint_is_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--data", "builtin:synthetic", "--category", "bottle", "--size", "32", "--epochs", "1",
                 "--out", str(tmp_path / "empty"), "--resume", "--device", "cpu", "--no-eval", "--quiet"])
    assert code != 0 and "nothing to resume" in capsys.readouterr().err
    assert not (tmp_path / "empty" / runs.BEST_CKPT).exists()


def test_resume_after_a_kill_between_history_and_checkpoint_has_no_duplicate_epoch(tmp_path: Path) -> None:
    run_dir = fit(TrainConfig(**TINY, epochs=3), tmp_path / "r")
    # a kill after epoch 4's history line was written but before its checkpoint: history runs one epoch ahead
    state = torch.load(run_dir / runs.LAST_CKPT, weights_only=True)
    state["epoch"] = 2
    runs.save_checkpoint(run_dir / runs.LAST_CKPT, state)
    hist = runs.read_history(run_dir)
    runs.write_history(run_dir, "running", hist["epochs"], hist["best_epoch"], hist["best_val_loss"])
    fit(TrainConfig(**TINY, epochs=5), run_dir, resume=True)
    epochs = [e["epoch"] for e in runs.read_history(run_dir)["epochs"]]
    assert epochs == [1, 2, 3, 4, 5]


def test_sizes_above_the_limit_are_refused_with_the_limit(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=f"limit of {MAX_SIZE} px"):
        TrainConfig(**{**TINY, "size": 100000}).validate()
    with pytest.raises(ConfigError, match="crop_scale"):
        TrainConfig(**{**TINY, "size": MAX_SIZE, "augment": True, "crop_scale": 1.2}).validate()
    with pytest.raises(ConfigError, match="feature_size"):
        TrainConfig(**{**TINY, "model": "patchcore", "feature_size": 100000}).validate()
    code = main(["train", "--data", "builtin:synthetic", "--category", "bottle", "--size", "100000", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and str(MAX_SIZE) in err and "Traceback" not in err


def test_a_last_batch_of_one_image_is_merged_into_the_one_before() -> None:
    assert [batch_count(n, 32) for n in (1, 32, 33, 34, 64, 65)] == [1, 1, 1, 2, 2, 2]


def test_a_training_split_of_one_image_more_than_the_batches_trains(tmp_path: Path) -> None:
    # 128 training images (160 normal, 20% held out) and a batch size of 127 left one image in the last batch;
    # at this AE's 1x1 bottleneck BatchNorm refused it ("Expected more than 1 value per channel when training")
    cfg = TrainConfig(**{**TINY, "batch_size": 127, "size": 16, "depth": 5}, epochs=1)
    run_dir = fit(cfg, tmp_path / "ae")
    assert json.loads((run_dir / "config.json").read_text())["resolved"]["n_train"] % 127 == 1
    assert runs.read_history(run_dir)["status"] == "finished"
