"""Data integrity (issue 14, items 6 and 7): colour channels are decided from every training image, mixed
datasets and non-binary masks are reported (data report, train, evaluate)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.cli.main import main
from core.config import TrainConfig
from core.data.images import read_mask
from core.data.index import index_path
from core.data.loading import clear_cache, detect_channels
from core.data.report import data_report, mask_census
from core.training.loop import fit


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _rgb(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _gray(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    clear_cache()


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """An MVTec category whose 16 training images are 12 RGB and 4 gray, plus a 1x1 black 000.png first."""
    cat = tmp_path / "mixed" / "part"
    _save(cat / "train" / "good" / "000.png", np.zeros((1, 1), np.uint8))
    for i in range(12):
        _save(cat / "train" / "good" / f"c{i:02d}.png", _rgb(i))
    for i in range(4):
        _save(cat / "train" / "good" / f"a{i:02d}.png", _gray(100 + i))  # sorted before the colour ones
    for i in range(3):
        _save(cat / "test" / "good" / f"{i:03d}.png", _rgb(200 + i))
    _save(cat / "test" / "crack" / "000.png", _rgb(300))
    _save(cat / "test" / "crack" / "001.png", _gray(301))
    grad = np.tile(np.linspace(0, 255, 16).astype(np.uint8), (16, 1))  # a 0-255 gradient "mask"
    _save(cat / "ground_truth" / "crack" / "000_mask.png", grad)
    binary = np.zeros((16, 16), np.uint8)
    binary[:, :8] = 255
    _save(cat / "ground_truth" / "crack" / "001_mask.png", binary)
    return cat


def test_channels_are_decided_from_every_training_image(mixed: Path) -> None:
    index = index_path(mixed)
    assert detect_channels(index) == 3  # the first images (000.png 1x1 black, a00..a03 gray) are gray
    rep = data_report(index)
    ch = rep["channels"]
    assert (ch["train_color"], ch["train_gray"], ch["test_color"], ch["test_gray"]) == (12, 5, 4, 1)
    assert ch["mixed"] and ch["run_channels"] == 3 and "train/good/a00.png" in ch["gray_files"]
    assert any("mix colour (12) and gray (5," in w for w in rep["warnings"])


def test_training_a_mixed_dataset_uses_rgb_and_says_so(mixed: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = fit(TrainConfig(data=str(mixed), size=16, depth=2, base_channels=4, epochs=1, batch_size=8, device="cpu"),
                  tmp_path / "run")
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["config"]["channels"] == 3 and "mix colour" in cfg["resolved"]["channels_note"]
    code = main(["train", "--data", str(mixed), "--size", "16", "--depth", "2", "--epochs", "1", "--batch-size", "8",
                 "--out", str(tmp_path / "cli"), "--device", "cpu", "--no-eval", "--quiet"])
    assert code == 0 and "training in RGB" in capsys.readouterr().err


def test_a_gray_dataset_stays_gray(tmp_path: Path) -> None:
    cat = tmp_path / "g" / "part"
    for i in range(4):
        _save(cat / "train" / "good" / f"{i}.png", _gray(i))
        _save(cat / "test" / "good" / f"{i}.png", np.stack([_gray(10 + i)] * 3, axis=2))  # gray saved as RGB
    index = index_path(cat)
    assert detect_channels(index) == 1 and data_report(index)["warnings"] == []


def test_non_binary_masks_are_counted_and_warned(mixed: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    index = index_path(mixed)
    census = mask_census(index.samples, mixed)
    assert (census.binary, census.non_binary) == (1, 1)
    assert census.non_binary_files[0][0] == "ground_truth/crack/000_mask.png"
    assert 0.8 < census.non_binary_files[0][1] < 1.0
    rep = data_report(index)
    assert rep["masks"]["non_binary"] == 1 and any("not binary" in w for w in rep["warnings"])
    assert main(["data-report", "--data", str(mixed)]) == 0
    out = capsys.readouterr()
    assert "1 non-binary" in out.out and "not binary" in out.err
    run_dir = fit(TrainConfig(data=str(mixed), size=16, depth=2, base_channels=4, epochs=1, batch_size=8, device="cpu"),
                  tmp_path / "run")
    assert main(["evaluate", str(run_dir), "--device", "cpu", "--no-strips"]) == 0
    assert "masks are not binary" in capsys.readouterr().err


def test_a_0_1_mask_is_read_as_a_mask(tmp_path: Path) -> None:
    m = np.zeros((8, 8), np.uint8)
    m[2:4, 2:4] = 1
    _save(tmp_path / "m.png", m)
    assert read_mask(tmp_path / "m.png").sum() == 4  # thresholded at 127 it was empty
