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
