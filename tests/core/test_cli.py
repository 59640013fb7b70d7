"""The CLI contract: commands, flags, JSON keys and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ}, timeout=600)


def test_datasets_lists_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "--json"]) == 0
    rows = {r["data"]: r["categories"] for r in json.loads(capsys.readouterr().out)}
    assert rows["builtin:synthetic"] == ["bottle", "mesh", "fabric"]
    assert rows["builtin:digits"][0] == "7"


def test_train_then_evaluate_json(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = _cli("train", "--data", "builtin:synthetic", "--model", "ae", "--size", "32", "--epochs", "2",
             "--base-channels", "4", "--depth", "3", "--batch-size", "32", "--device", "cpu", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "image AUROC" in r.stdout and "epoch" in r.stderr  # tqdm bar on stderr
    r = _cli("evaluate", str(out), "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    for key in ("image_auroc", "f1_max", "threshold", "pixel_auroc", "aupro"):
        assert isinstance(m[key], float), key
    assert m["category"] == "bottle"  # --category defaults to the first category


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["train", "--data", "/nonexistent/folder"], "does not exist"),
        (["train", "--data", "builtin:nope"], "unknown built-in dataset"),
        (["train", "--data", "builtin:synthetic", "--category", "teapot"], "no category 'teapot'"),
        (["train", "--size", "100", "--epochs", "1"], "divisible"),
        (["evaluate", "/nonexistent/run"], "not a run folder"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(args: list[str], reason: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and "\n" not in err and "Traceback" not in err


def test_wrong_layout_names_expected_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "stuff").mkdir()
    assert main(["train", "--data", str(tmp_path), "--epochs", "1"]) == 2
    assert "train/good" in capsys.readouterr().err


def test_train_lists_the_skipped_training_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    from PIL import Image

    cat = tmp_path / "mv" / "widget"
    rng = np.random.default_rng(0)
    for folder, n in (("train/good", 6), ("test/good", 2), ("test/scratch", 2)):
        (cat / folder).mkdir(parents=True)
        for k in range(n):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(cat / folder / f"{k:03d}.png")
    (cat / "train" / "good" / "broken.png").write_bytes(b"not a png")
    code = main(["train", "--data", str(cat), "--model", "ae", "--size", "16", "--epochs", "1", "--base-channels", "4",
                 "--depth", "3", "--device", "cpu", "--quiet", "--no-eval", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 0 and "skipped 1 unreadable training file(s)" in err and "broken.png" in err
