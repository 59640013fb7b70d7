"""Data-parallel training and sharded scoring with torch.distributed (issue 16): 2 gloo processes on CPU give the
checkpoint of one process with the same global batch and seed, and sharded evaluation gives the same scores."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--data", "builtin:synthetic", "--category", "bottle", "--size", "32", "--batch-size", "32", "--device", "cpu",
        "--no-eval", "--quiet"]


def _run(args: list[str], workspace: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANOMALYLAB_HOME": str(workspace), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", map_location="cpu", weights_only=True)["state_dict"]


def _losses(run: Path) -> list[float]:
    return [e["train_loss"] for e in json.loads((run / "history.json").read_text())["epochs"]]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ddp_ws")


def test_two_gloo_processes_train_the_checkpoint_of_one(workspace: Path, tmp_path: Path) -> None:
    # the U-Net has no BatchNorm: the averaged gradient is the global batch's, so the weights agree to float error
    one, two = tmp_path / "one", tmp_path / "two"
    _run(["train", "--model", "unet", "--epochs", "2", "--out", str(one), *TINY], workspace)
    _run(["train", "--model", "unet", "--epochs", "2", "--out", str(two), "--nproc", "2", *TINY], workspace)
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
    assert _losses(one) == pytest.approx(_losses(two), rel=1e-5)
    cfg = json.loads((two / "config.json").read_text())
    assert cfg["resolved"]["world_size"] == 2 and cfg["resolved"]["n_train"] == 128
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())  # the same run folder
    assert json.loads((two / "history.json").read_text())["status"] == "finished"


def test_two_processes_train_an_ae_with_batchnorm_close_to_one(workspace: Path, tmp_path: Path) -> None:
    # BatchNorm normalizes each rank's half batch with its own statistics: close, not identical
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["train", "--model", "ae", "--base-channels", "4", "--depth", "3", "--epochs", "1", *TINY]
    _run([*common, "--out", str(one)], workspace)
    _run([*common, "--out", str(two), "--nproc", "2"], workspace)
    assert _losses(one) == pytest.approx(_losses(two), rel=2e-3)


@pytest.fixture(scope="module")
def ae_run(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ddp_ae") / "run"
    _run(["train", "--model", "ae", "--base-channels", "4", "--depth", "3", "--epochs", "1", "--out", str(run), *TINY],
         workspace)
    return run


def test_sharded_evaluation_gives_the_scores_of_one_process(workspace: Path, ae_run: Path) -> None:
    run = ae_run
    _run(["evaluate", str(run), "--json", "--no-strips"], workspace)
    single = list(csv.reader((run / "scores.csv").open(newline="")))
    metrics = json.loads((run / "metrics.json").read_text())
    shutil.rmtree(run / "scored")
    (run / "scores.csv").unlink()
    env = {**os.environ, "ANOMALYLAB_HOME": str(workspace), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                           "core", "evaluate", str(run), "--json", "--no-strips"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1  # rank 0 reports
    sharded = list(csv.reader((run / "scores.csv").open(newline="")))
    assert sharded == single
    assert printed[0]["image_auroc"] == metrics["image_auroc"] and printed[0]["pixel_auroc"] == metrics["pixel_auroc"]


def test_sharded_projection_gives_the_energies_and_metrics_of_one_process(workspace: Path, ae_run: Path) -> None:
    args = ["project", str(ae_run), "--steps", "4", "--limit", "10", "--device", "cpu", "--json"]
    shutil.rmtree(ae_run / "scored", ignore_errors=True)
    one = json.loads(_run(args, workspace).stdout)
    shutil.rmtree(ae_run / "scored")  # else the second run reads the first one's cached scores
    printed = [json.loads(line) for line in _run([*args, "--nproc", "2"], workspace).stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1  # rank 0 reports
    two = printed[0]
    assert two["n_images"] == one["n_images"] == 10
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_auroc_reconstruction", "n_guarded", "energy_rises"):
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-9), key
    assert two["energy"] == pytest.approx(one["energy"], rel=1e-5)


def test_sharded_anounet_gives_the_maps_of_one_process(workspace: Path, tmp_path: Path) -> None:
    fnet = tmp_path / "fnet"
    _run(["train", "--model", "fnet", "--base-channels", "4", "--fnet-stages", "3", "--references", "paste", "--epochs", "1",
          "--out", str(fnet), *TINY], workspace)
    args = ["anounet", str(fnet), "--limit", "5", "--epochs", "3", "--base-channels", "4", "--levels", "2", "--no-cache",
            "--device", "cpu", "--json", "--quiet"]
    one = json.loads(_run([*args, "--out", str(tmp_path / "one")], workspace).stdout)
    printed = [json.loads(line) for line in _run([*args, "--out", str(tmp_path / "two"), "--nproc", "2"], workspace)
               .stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1
    two = printed[0]
    assert [r["name"] for r in two["images"]] == [r["name"] for r in one["images"]] and two["n_done"] == 5
    # each image's G is seeded by its content: the shares give one process's scores (F batched differently: float error)
    assert [r["score"] for r in two["images"]] == pytest.approx([r["score"] for r in one["images"]], rel=1e-5)
    assert [r["epochs"] for r in two["images"]] == [r["epochs"] for r in one["images"]]
    for row in one["images"]:
        a = np.load(tmp_path / "one" / f"{row['name']}_map.npy")
        b = np.load(tmp_path / "two" / f"{row['name']}_map.npy")
        assert np.allclose(a, b, rtol=1e-4, atol=1e-7)
