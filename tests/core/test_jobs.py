"""Background jobs: progress snapshots, cooperative stop, failures reported, training task."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from core.config import TrainConfig
from core.services.jobs import FAILED, FINISHED, STOPPED, JobContext, JobRegistry
from core.services.tasks import training_task


def test_job_publishes_state_and_result() -> None:
    reg = JobRegistry()
    gate = threading.Event()

    def fn(ctx: JobContext) -> int:
        ctx.update(step=1, items=[1, 2])
        gate.wait(5)
        ctx.update(step=2)
        return 42

    job = reg.start("demo", "Demo", fn, job_id="j1")
    time.sleep(0.05)
    snap = job.snapshot()
    assert snap.running and snap.state["step"] == 1
    snap.state["items"].append(3)  # a snapshot is a copy: mutating it changes nothing
    assert job.snapshot().state["items"] == [1, 2]
    with pytest.raises(ValueError, match="already running"):
        reg.start("demo", "Demo", fn, job_id="j1")
    gate.set()
    assert job.join(5)
    snap = job.snapshot()
    assert snap.status == FINISHED and snap.result == 42 and snap.state["step"] == 2 and snap.ended is not None
    assert [s.id for s in reg.snapshots("demo")] == ["j1"] and reg.running() == []


def test_stop_and_failure() -> None:
    reg = JobRegistry()

    def loop(ctx: JobContext) -> str:
        while not ctx.stop.is_set():
            time.sleep(0.01)
        return "stopped cleanly"

    job = reg.start("demo", "Loop", loop)
    job.request_stop()
    assert job.join(5) and job.snapshot().status == STOPPED

    bad = reg.start("demo", "Bad", lambda ctx: 1 / 0)
    assert bad.join(5)
    snap = bad.snapshot()
    assert snap.status == FAILED and "ZeroDivisionError" in snap.error and "traceback" in snap.state


def test_training_task_reports_progress_and_metrics(tmp_path: Path) -> None:
    reg = JobRegistry()
    cfg = TrainConfig(data="builtin:synthetic", category="mesh", size=32, base_channels=4, depth=3, epochs=2, device="cpu")
    job = reg.start("train", "tiny", training_task(cfg, tmp_path / "run"))
    assert job.join(300)
    snap = job.snapshot()
    assert snap.status == FINISHED, snap.error
    assert snap.state["epoch"] == 2 and len(snap.state["history"]) == 2 and snap.state["preview"]
    assert snap.state["run_dir"] == str(tmp_path / "run") and snap.state["phase"] == "done"
    assert isinstance(snap.result["metrics"]["image_auroc"], float)


def test_concurrent_training_jobs_do_not_clobber(tmp_path: Path) -> None:
    reg = JobRegistry()
    cfgs = [TrainConfig(data="builtin:synthetic", category=c, size=32, base_channels=4, depth=3, epochs=1, device="cpu")
            for c in ("bottle", "fabric")]
    jobs = [reg.start("train", c.category, training_task(c, tmp_path / c.category, evaluate=False)) for c in cfgs]
    assert all(j.join(300) for j in jobs)
    import json

    for c in cfgs:
        assert json.loads((tmp_path / c.category / "config.json").read_text())["config"]["category"] == c.category
