"""Background jobs: progress snapshots, cooperative stop, failures reported, training task."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core.config import TrainConfig
from core.errors import ConfigError
from core.services.jobs import (
    ENV_JOB_WORKERS,
    FAILED,
    FINISHED,
    STOPPED,
    Job,
    JobContext,
    JobRegistry,
    JobSnapshot,
    WorkerTask,
    job_workers,
)
from core.services.tasks import training_task


def _wait_for(job: Job, condition: Callable[[JobSnapshot], bool], timeout: float = 10.0) -> JobSnapshot:
    """The first snapshot that meets ``condition``, polled until a deadline (no fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        snap = job.snapshot()
        if condition(snap):
            return snap
        assert time.monotonic() < deadline, f"condition not met within {timeout} s: {snap.state}"
        job.join(0.005)


def test_job_publishes_state_and_result() -> None:
    reg = JobRegistry()
    gate = threading.Event()

    def fn(ctx: JobContext) -> int:
        ctx.update(step=1, items=[1, 2])
        gate.wait(5)
        ctx.update(step=2)
        return 42

    job = reg.start("demo", "Demo", fn, job_id="j1")
    snap = _wait_for(job, lambda s: s.state.get("step") == 1)
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
        ctx.stop.wait(5)
        return "stopped cleanly"

    job = reg.start("demo", "Loop", loop)
    job.request_stop()
    assert job.join(5) and job.snapshot().status == STOPPED

    bad = reg.start("demo", "Bad", lambda ctx: 1 / 0)
    assert bad.join(5)
    snap = bad.snapshot()
    assert snap.status == FAILED and "ZeroDivisionError" in snap.error and "traceback" in snap.state


def test_start_or_get_follows_a_running_or_finished_job_and_restarts_otherwise() -> None:
    reg = JobRegistry()
    gate = threading.Event()
    calls: list[int] = []

    def fn(ctx: JobContext) -> int:
        calls.append(1)
        gate.wait(5)
        return len(calls)

    job, started = reg.start_or_get("same", fn, "demo", "Demo", owner="a")
    assert started and job.snapshot().state == {"owner": "a"}
    again, started_again = reg.start_or_get("same", fn, "demo", "Demo", owner="b")
    assert again is job and not started_again, "a running job is followed"
    gate.set()
    assert job.join(5) and job.snapshot().result == 1
    assert reg.start_or_get("same", fn, "demo", "Demo") == (job, False), "a finished job with its result is reused"
    with job.lock:
        job.result = None  # dropped from memory: computed again
    fresh, started = reg.start_or_get("same", fn, "demo", "Demo")
    assert started and fresh is not job and fresh.join(5) and fresh.snapshot().result == 2
    failing, _ = reg.start_or_get("bad", lambda ctx: 1 / 0, "demo", "Bad")
    assert failing.join(5)
    retried, started = reg.start_or_get("bad", fn, "demo", "Bad")
    assert started and retried.join(5), "a failed job is started again"


def test_start_or_get_is_one_job_under_concurrent_requests() -> None:
    reg = JobRegistry()
    gate = threading.Event()
    runs: list[int] = []

    def fn(ctx: JobContext) -> None:
        runs.append(1)
        gate.wait(5)

    barrier = threading.Barrier(8)
    got: list[tuple[Job, bool]] = []

    def ask() -> None:
        barrier.wait(5)
        got.append(reg.start_or_get("shared", fn, "demo", "Shared"))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    gate.set()
    assert len(got) == 8 and len({id(job) for job, _ in got}) == 1
    assert sum(started for _, started in got) == 1
    assert got[0][0].join(5) and runs == [1]


def test_forget_results_keeps_the_newest() -> None:
    reg = JobRegistry()
    jobs = []
    for i in range(4):
        job, _ = reg.start_or_get(f"r{i}", lambda ctx, i=i: i, "demo", "R")
        assert job.join(5)
        jobs.append(job)
        with job.lock:
            job.started = float(i)  # a strict order of start times
    other, _ = reg.start_or_get("x", lambda ctx: "other kind", "else", "X")
    assert other.join(5)
    reg.forget_results("demo", keep=2)
    assert [j.snapshot().result for j in jobs] == [None, None, 2, 3]
    assert other.snapshot().result == "other kind"


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


# ------------------------------------------------------------------------------- the queue of heavy jobs (#16)
def _blocking(release: threading.Event, ran: list[str], name: str, eta: float | None = None):
    def fn(ctx):
        ran.append(name)
        if eta is not None:
            ctx.update(eta_seconds=eta)
        release.wait(30)
        return name

    return fn


def test_heavy_jobs_wait_in_a_first_come_queue_and_can_be_cancelled_there() -> None:
    reg = JobRegistry(heavy=1)
    go_a, go_b, go_c = threading.Event(), threading.Event(), threading.Event()
    ran: list[str] = []
    a = reg.start("train", "A", _blocking(go_a, ran, "A", eta=42.0))
    deadline = time.monotonic() + 10
    while a.snapshot().queued and time.monotonic() < deadline:
        time.sleep(0.01)
    b = reg.start("projection", "B", _blocking(go_b, ran, "B"))
    c = reg.start("report", "C", _blocking(go_c, ran, "C"))
    light = reg.start("dataset-check", "light", lambda ctx: "done")  # not heavy: never queued
    assert light.join(10) and light.snapshot().status == "finished"
    time.sleep(0.3)
    sa, sb, sc = a.snapshot(), b.snapshot(), c.snapshot()
    assert sa.status == "running" and sb.queued and sc.queued and sb.running  # queued jobs count as in progress
    assert (sb.queue_position, sc.queue_position) == (1, 2) and sb.queue_ahead_running == 1
    info = reg.queue_info(b.id)
    assert info == {"position": 1, "running": 1, "slots": 1, "expected_start_s": 42.0}
    assert reg.queue_info(c.id)["expected_start_s"] is None  # more places ahead than running jobs with an ETA
    c.request_stop()  # cancelled while it waits: it never starts
    assert c.join(5) and c.snapshot().status == "stopped" and "C" not in ran
    assert c.snapshot().state["cancelled_in_queue"] and c.snapshot().queue_position is None
    assert b.snapshot().queue_position == 1
    go_a.set()
    assert a.join(5)
    deadline = time.monotonic() + 5
    while b.snapshot().queued and time.monotonic() < deadline:
        time.sleep(0.01)
    assert b.snapshot().status == "running" and ran == ["A", "B"]
    go_b.set()
    assert b.join(5) and b.snapshot().result == "B"


def test_heavy_slots_follow_the_environment(monkeypatch) -> None:
    from core.services.jobs import heavy_slots

    monkeypatch.setenv("ANOMALYLAB_HEAVY_JOBS", "3")
    assert heavy_slots() == 3 and JobRegistry().slots.n == 3
    monkeypatch.setenv("ANOMALYLAB_HEAVY_JOBS", "")
    assert heavy_slots() >= 1


# ------------------------------------------------------------------- heavy jobs in worker processes (#16)
# Module-level functions: a spawned worker imports them by name.
def _counting(ctx, n: int, gate_s: float) -> dict:
    for i in range(n):
        ctx.update(done=i + 1, total=n)
        time.sleep(gate_s)
    return {"pid": os.getpid(), "n": n, "nice": os.nice(0)}


def _until_stopped(ctx) -> str:
    ctx.update(phase="waiting")
    while not ctx.stop.wait(0.05):
        pass
    return "stopped cleanly"


def _failing(ctx) -> None:
    ctx.update(phase="about to fail")
    raise ConfigError("no such dataset")


def _roots(ctx) -> list | None:
    from core.workspace import read_roots

    return read_roots()


def _dying(ctx) -> None:
    os._exit(3)  # the worker process dies (as when the kernel kills it for memory)


@pytest.fixture(scope="module")
def process_registry():
    reg = JobRegistry(heavy=1, workers="process")
    yield reg
    reg.close()


def test_a_heavy_worker_task_runs_in_another_process_and_relays_its_progress(process_registry) -> None:
    job = process_registry.start("scoring", "count", WorkerTask(_counting, {"n": 6, "gate_s": 0.15}))
    seen = _wait_for(job, lambda s: 0 < s.state.get("done", 0) < 6, timeout=120)  # spawning takes seconds
    assert seen.running and seen.state["total"] == 6
    assert job.join(60)
    snap = job.snapshot()
    assert snap.status == FINISHED, snap.error
    assert snap.result["pid"] != os.getpid() and snap.result["n"] == 6
    assert snap.result["nice"] >= min(19, os.nice(0) + 10)  # page scripts first, the jobs take the rest
    assert snap.state["done"] == 6  # the last update arrives before the job counts as finished


def test_a_worker_job_reads_only_below_the_servers_roots(process_registry, tmp_path: Path, monkeypatch) -> None:
    from core import workspace

    monkeypatch.delenv(workspace.ENV_ALLOWED_ROOTS, raising=False)
    monkeypatch.setattr(workspace, "_READ_ROOTS", None)
    workspace.set_read_roots([tmp_path])  # what the app server does; spawn does not copy it
    job = process_registry.start("scoring", "roots", WorkerTask(_roots))
    assert job.join(120) and job.snapshot().status == FINISHED, job.snapshot().error
    assert job.snapshot().result == [tmp_path.resolve()]


def test_a_worker_job_stops_on_request_fails_with_its_message_and_survives_a_dead_worker(process_registry) -> None:
    job = process_registry.start("projection", "wait", WorkerTask(_until_stopped))
    _wait_for(job, lambda s: s.state.get("phase") == "waiting", timeout=120)
    job.request_stop()
    assert job.join(20)
    assert job.snapshot().status == STOPPED and job.snapshot().result == "stopped cleanly"

    bad = process_registry.start("report", "fail", WorkerTask(_failing))
    assert bad.join(60)
    snap = bad.snapshot()
    assert snap.status == FAILED and snap.error == "ConfigError: no such dataset"
    assert "_failing" in snap.state["traceback"] and snap.state["phase"] == "about to fail"  # the worker's frames

    dead = process_registry.start("train", "die", WorkerTask(_dying))
    assert dead.join(60)
    assert dead.snapshot().status == FAILED and "worker process ended" in dead.snapshot().error
    again = process_registry.start("train", "after", WorkerTask(_counting, {"n": 1, "gate_s": 0.0}))
    assert again.join(120) and again.snapshot().status == FINISHED, again.snapshot().error  # fresh workers


def test_a_training_job_in_a_worker_process_writes_the_run_folder(process_registry, tmp_path: Path) -> None:
    cfg = TrainConfig(data="builtin:synthetic", category="bottle", size=32, base_channels=4, depth=3, epochs=2, device="cpu")
    job = process_registry.start("train", "tiny", training_task(cfg, tmp_path / "run", evaluate=False))
    assert job.join(300)
    snap = job.snapshot()
    assert snap.status == FINISHED, snap.error
    assert snap.state["epoch"] == 2 and len(snap.state["history"]) == 2 and snap.state["preview"]
    assert snap.result["run_dir"] == str(tmp_path / "run") and (tmp_path / "run" / "model.pt").is_file()
    assert snap.state["phase"] == "done"


def test_job_workers_follow_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(ENV_JOB_WORKERS, "thread")
    assert job_workers() == "thread" and JobRegistry().workers is None
    monkeypatch.delenv(ENV_JOB_WORKERS)
    assert job_workers() == "process" and JobRegistry(heavy=2).workers.n == 2  # one worker per heavy slot
    with pytest.raises(ConfigError):
        JobRegistry(workers="fork")


def test_a_distributed_training_job_follows_its_ranks_and_stops_them_together(tmp_path: Path) -> None:
    """The Train page's job over several GPUs, here 2 gloo processes on CPU: it publishes the epochs rank 0 writes;
    Stop reaches both ranks through torchrun (SIGINT), they leave at the same batch and the run says stopped."""
    import json

    from core.services.tasks import distributed_training_task

    reg = JobRegistry(heavy=2, workers="thread")
    cfg = TrainConfig(data="builtin:synthetic", category="bottle", size=32, base_channels=4, depth=3, epochs=500,
                      batch_size=32, device="cpu")
    job = reg.start("train", "ddp", distributed_training_task(cfg, 2, tmp_path / "run", evaluate=False), need=2)
    snap = _wait_for(job, lambda s: s.state.get("epoch", 0) >= 1 or not s.running, timeout=240)
    assert snap.running, snap.error
    assert snap.state["nproc"] == 2 and snap.state["epochs"] == 500 and snap.state["history"][0]["epoch"] == 1
    assert reg.slots.active == 2  # it holds both slots
    job.request_stop()
    assert job.join(150)
    snap = job.snapshot()
    assert snap.status == STOPPED, snap.error
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert hist["status"] == "stopped" and 1 <= len(hist["epochs"]) < 500
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "last.pt").is_file()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]["world_size"] == 2
    assert reg.slots.active == 0


def test_a_distributed_training_needs_two_processes() -> None:
    from core.services.tasks import distributed_training_task

    with pytest.raises(ConfigError):
        distributed_training_task(TrainConfig(), 1)
