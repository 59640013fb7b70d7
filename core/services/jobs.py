"""Background jobs: long work (training, scoring, projection, Ano-Unet, reports) outside any UI.

A :class:`JobRegistry` owns the jobs of a process, keyed by id. A job runs a plain function that takes
a :class:`JobContext` (to report progress and to see the stop request). Readers only ever get
:meth:`Job.snapshot` copies, so a UI thread never sees a half-updated state. Nothing here knows
about streamlit: the app keeps one registry per server process (``st.cache_resource``).

Heavy jobs (:data:`HEAVY_KINDS`) share a bounded number of slots (:func:`heavy_slots`: one per two CPU cores,
one per GPU, or ``$ANOMALYLAB_HEAVY_JOBS``); the others wait in a first-come queue with status ``queued``
(their snapshot says the position) and can be cancelled there (``request_stop``: they never start).

A heavy job given as a :class:`WorkerTask` (a module-level function and picklable arguments) runs in a worker
process of a ``concurrent.futures.ProcessPoolExecutor`` ("spawn" context, one worker per slot, each with its
share of the CPU threads), so it neither holds the server's GIL nor competes with page scripts for it. Its
progress comes back through a ``multiprocessing`` manager queue (merged, at most every :data:`FLUSH_S`), the
stop request goes out through a manager event, and its files go to the run folder, where every session and
process sees them. ``$ANOMALYLAB_JOB_WORKERS=thread`` runs them in threads of this process instead (the test
harness does, to monkeypatch job functions).
"""

from __future__ import annotations

import atexit
import copy
import multiprocessing
import os
import queue
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.errors import ConfigError
from core.workspace import read_roots, set_read_roots

RUNNING, FINISHED, STOPPED, FAILED, QUEUED = "running", "finished", "stopped", "failed", "queued"
HEAVY_KINDS = frozenset({"train", "projection", "anounet", "scoring", "report"})  # they use every core they get
ENV_HEAVY_JOBS = "ANOMALYLAB_HEAVY_JOBS"
ENV_JOB_WORKERS = "ANOMALYLAB_JOB_WORKERS"  # "process" (default) or "thread"
ENV_JOB_NICE = "ANOMALYLAB_JOB_NICE"  # 0-19: the job workers' lower CPU priority (default 10)
FLUSH_S = 0.2  # a worker sends its merged progress at most this often


def heavy_slots() -> int:
    """How many heavy jobs run at once: ``$ANOMALYLAB_HEAVY_JOBS``, else one per GPU, else one per 2 CPU cores."""
    try:
        env = int(os.environ.get(ENV_HEAVY_JOBS, "0"))
    except ValueError:
        env = 0
    if env > 0:
        return env
    if torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    return max(1, (os.cpu_count() or 2) // 2)


def job_nice() -> int:
    """How much lower the job workers' CPU priority is than the server's: ``$ANOMALYLAB_JOB_NICE``, default 10."""
    try:
        return max(0, min(19, int(os.environ.get(ENV_JOB_NICE, "10"))))
    except ValueError:
        return 10


def job_workers() -> str:
    """Where heavy :class:`WorkerTask` jobs run: ``process`` (default) or ``thread`` (``$ANOMALYLAB_JOB_WORKERS``)."""
    return "thread" if os.environ.get(ENV_JOB_WORKERS, "").strip().lower() == "thread" else "process"


@dataclass(frozen=True)
class WorkerTask:
    """A job that can run in another process: ``fn(ctx, **kwargs)`` with a module-level ``fn`` and picklable
    arguments (arrays as numpy, models by their run folder). Called directly, it runs in the calling thread."""

    fn: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, ctx: Any) -> Any:
        return self.fn(ctx, **self.kwargs)


class _WorkerContext:
    """A job's :class:`JobContext` inside a worker process: ``update`` merges progress and sends it at most every
    :data:`FLUSH_S`; ``stop`` is a local event that a watcher thread sets when the server asks."""

    def __init__(self, updates: Any, remote_stop: Any) -> None:
        self._updates, self._pending, self._sent = updates, {}, 0.0
        self.stop, self._closed = threading.Event(), threading.Event()
        threading.Thread(target=self._watch, args=(remote_stop,), daemon=True).start()

    def _watch(self, remote_stop: Any) -> None:
        while not self._closed.is_set():
            try:
                if remote_stop.wait(0.25) or os.getppid() != _PARENT[0]:  # asked, or the server died (orphaned)
                    self.stop.set()
                    return
            except (OSError, EOFError, BrokenPipeError):  # the server's manager went away: stop the work
                self.stop.set()
                return

    def update(self, **state: Any) -> None:
        self._pending.update(state)
        if time.monotonic() - self._sent >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._updates.put(self._pending)
            self._pending, self._sent = {}, time.monotonic()

    def close(self) -> None:
        self.flush()
        self._closed.set()


_PARENT = [0]  # in a worker: the server's pid


def _worker_init(threads: int, nice: int) -> None:
    """A worker's share of the CPU cores (the heavy slots split them), threads for anything it starts itself, and a
    lower CPU priority: the server's page scripts come first, the jobs take the rest (their results do not depend
    on it: fixed work, not time, decides what a model is)."""
    _PARENT[0] = os.getppid()
    os.environ[ENV_JOB_WORKERS] = "thread"
    torch.set_num_threads(max(1, threads))
    if nice > 0 and hasattr(os, "nice"):
        try:
            os.nice(nice)
        except OSError:
            pass


def _worker_main(fn: Callable[..., Any], kwargs: dict[str, Any], updates: Any, remote_stop: Any,
                 roots: list[Path] | None = None) -> Any:
    """A job in a worker: confined to the server's read roots (process state that spawn does not copy)."""
    set_read_roots(roots)
    ctx = _WorkerContext(updates, remote_stop)
    try:
        return fn(ctx, **kwargs)
    finally:
        ctx.close()
        set_read_roots(None)


class _Workers:
    """The worker processes of a registry, started on the first heavy job (spawn: no state of the server is
    copied, CUDA is safe), one per heavy slot."""

    def __init__(self, n: int) -> None:
        self.n = max(1, int(n))
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._manager: Any = None
        self._stops: dict[str, Any] = {}  # job id -> the manager event of a job in a worker

    def _ensure(self) -> tuple[ProcessPoolExecutor, Any]:
        with self._lock:
            if self._pool is None:
                mp = multiprocessing.get_context("spawn")
                if self._manager is None:
                    self._manager = mp.Manager()
                    _at_exit(self.stop_all)
                threads = max(1, (os.cpu_count() or 2) // self.n)
                self._pool = ProcessPoolExecutor(self.n, mp_context=mp, initializer=_worker_init,
                                                 initargs=(threads, job_nice()))
            return self._pool, self._manager

    def run(self, job: Job) -> Any:
        """Run ``job.fn`` (a :class:`WorkerTask`) in a worker, relaying its progress and the stop request."""
        task: WorkerTask = job.fn  # type: ignore[assignment]
        pool, manager = self._ensure()
        updates, stop = manager.Queue(), manager.Event()
        with self._lock:
            self._stops[job.id] = stop
        try:
            future = pool.submit(_worker_main, task.fn, task.kwargs, updates, stop, read_roots())
            while True:
                if job.stop_event.is_set() and not stop.is_set():
                    stop.set()
                done = future.done()  # once done, what the worker sent before it returned is all in the queue
                try:
                    state = updates.get_nowait() if done else updates.get(timeout=FLUSH_S)
                except queue.Empty:
                    if done:
                        break
                    continue
                with job.lock:
                    job.state.update(state)
            try:
                return future.result()
            except BrokenProcessPool:
                with self._lock:  # the next job gets fresh workers
                    if self._pool is pool:
                        self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
                raise RuntimeError("the worker process ended before the job finished (killed, or out of memory); "
                                   "start it again") from None
        finally:
            with self._lock:
                self._stops.pop(job.id, None)

    def stop_all(self) -> None:
        """Ask every job in a worker to stop (at exit: a running training must not hold the server open)."""
        with self._lock:
            stops = list(self._stops.values())
        for stop in stops:
            try:
                stop.set()
            except (OSError, EOFError, BrokenPipeError):
                pass

    def close(self) -> None:
        """Stop the jobs in the workers, then end the workers and the manager."""
        self.stop_all()
        with self._lock:
            pool, manager, self._pool, self._manager = self._pool, self._manager, None, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if manager is not None:
            manager.shutdown()


def _at_exit(fn: Callable[[], None]) -> None:
    """Call ``fn`` when the interpreter exits, before ``concurrent.futures`` waits for its workers' running jobs
    (threading's exit hooks run last-registered first; ``atexit``'s would run after that wait)."""
    register = getattr(threading, "_register_atexit", None) or atexit.register
    try:
        register(fn)
    except RuntimeError:  # already shutting down
        pass


@dataclass
class JobSnapshot:
    """A consistent copy of a job's state."""

    id: str
    kind: str
    title: str
    status: str
    started: float
    ended: float | None
    state: dict[str, Any]
    result: Any = None
    error: str | None = None
    stop_requested: bool = False
    queue_position: int | None = None  # 1 = next to start; None when not queued
    queue_ahead_running: int = 0  # heavy jobs running while this one waits

    @property
    def running(self) -> bool:
        """True while the worker has not returned (queued jobs included: they will run)."""
        return self.status in (RUNNING, QUEUED)

    @property
    def queued(self) -> bool:
        """True while the job waits for a free slot."""
        return self.status == QUEUED

    @property
    def seconds(self) -> float:
        """Elapsed (or total) wall time."""
        return (self.ended or time.time()) - self.started


class JobContext:
    """What a job function sees: ``update(**state)`` to publish progress, ``stop`` to check."""

    def __init__(self, job: Job) -> None:
        self._job = job

    @property
    def stop(self) -> threading.Event:
        """Set when someone asked the job to stop; the function should return soon after."""
        return self._job.stop_event

    def update(self, **state: Any) -> None:
        """Merge ``state`` into the job's published state."""
        with self._job.lock:
            self._job.state.update(state)


class _Slots:
    """A bounded number of slots for heavy jobs, given out first come, first served."""

    def __init__(self, n: int) -> None:
        self.n, self.active = max(1, int(n)), 0
        self.queue: list[str] = []
        self.cv = threading.Condition()

    def acquire(self, job: Job) -> bool:
        """Wait for a slot (False when the job was cancelled while it waited)."""
        with self.cv:
            self.queue.append(job.id)
            while True:
                if job.stop_event.is_set():
                    self.queue.remove(job.id)
                    self.cv.notify_all()
                    return False
                if self.queue[0] == job.id and self.active + job.need <= self.n:
                    self.queue.pop(0)
                    self.active += job.need
                    self.cv.notify_all()
                    return True
                self.cv.wait(0.25)

    def release(self, job: Job) -> None:
        with self.cv:
            self.active -= job.need
            self.cv.notify_all()

    def position(self, job_id: str) -> tuple[int | None, int]:
        """(1-based place in the queue or None, heavy jobs running now)."""
        with self.cv:
            return (self.queue.index(job_id) + 1 if job_id in self.queue else None), self.active


@dataclass
class Job:
    """One background job. Use :meth:`snapshot` to read it."""

    id: str
    kind: str
    title: str
    fn: Callable[[JobContext], Any]
    started: float = field(default_factory=time.time)
    ended: float | None = None
    status: str = RUNNING
    state: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    slots: _Slots | None = None  # heavy jobs wait here for their turn
    workers: _Workers | None = None  # a heavy WorkerTask runs in one of these processes
    need: int = 1  # heavy slots it holds while it runs (a job over N GPUs: N)

    def _run(self) -> None:
        holds = False
        try:
            if self.slots is not None:
                holds = self.slots.acquire(self)
                if not holds:  # cancelled in the queue: it never started
                    with self.lock:
                        self.status = STOPPED
                        self.state["cancelled_in_queue"] = True
                    return
                with self.lock:
                    self.status, self.started = RUNNING, time.time()
            if self.workers is not None and isinstance(self.fn, WorkerTask):
                result = self.workers.run(self)
            else:
                result = self.fn(JobContext(self))
            with self.lock:
                self.result = result
                self.status = STOPPED if self.stop_event.is_set() else FINISHED
        except Exception as exc:  # a job failure is shown to the user, never raised into the UI
            with self.lock:
                self.error = f"{type(exc).__name__}: {exc}"
                self.state["traceback"] = traceback.format_exc()
                self.status = FAILED
        finally:
            with self.lock:
                self.ended = time.time()
            if holds:
                self.slots.release(self)

    def snapshot(self) -> JobSnapshot:
        """A deep copy of the job's state, safe to read while the job runs."""
        where, active = self.slots.position(self.id) if self.slots is not None else (None, 0)
        with self.lock:
            return JobSnapshot(self.id, self.kind, self.title, self.status, self.started, self.ended,
                               copy.deepcopy(self.state), self.result, self.error, self.stop_event.is_set(),
                               where if self.status == QUEUED else None, active)

    def request_stop(self) -> None:
        """Ask the job to stop (cooperative)."""
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker; True when it has ended."""
        if self.thread is not None:
            self.thread.join(timeout)
        return self.ended is not None


def _reusable(job: Job) -> bool:
    """A job worth following instead of starting again: running, or finished with its result in memory."""
    with job.lock:
        return job.status in (RUNNING, QUEUED) or (job.status == FINISHED and job.result is not None)


class JobRegistry:
    """Thread-safe map of job id -> :class:`Job` for one process."""

    def __init__(self, max_finished: int = 50, heavy: int | None = None, workers: str | None = None) -> None:
        """``heavy``: slots for heavy jobs (default :func:`heavy_slots`); ``workers``: ``process`` or ``thread``
        (default :func:`job_workers`), where heavy :class:`WorkerTask` jobs run."""
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._max_finished = max_finished
        self.slots = _Slots(heavy_slots() if heavy is None else heavy)
        mode = workers or job_workers()
        if mode not in ("process", "thread"):
            raise ConfigError(f"workers must be 'process' or 'thread', got {mode!r}")
        self.workers = _Workers(self.slots.n) if mode == "process" else None

    def _new(self, job_id: str, kind: str, title: str, fn: Callable[[JobContext], Any], state: dict[str, Any],
             need: int = 1) -> Job:
        heavy = kind in HEAVY_KINDS
        return Job(job_id, kind, title, fn, state=dict(state), status=QUEUED if heavy else RUNNING,
                   slots=self.slots if heavy else None, workers=self.workers if heavy else None,
                   need=min(max(1, int(need)), self.slots.n))  # a job over all the GPUs takes every slot

    def start(self, kind: str, title: str, fn: Callable[[JobContext], Any], job_id: str | None = None, *,
              need: int = 1, **state: Any) -> Job:
        """Start ``fn`` in a daemon thread and register it; a heavy job holds ``need`` slots while it runs (at most
        all of them: a training over the N GPUs of a machine with N slots waits for all of them).

        Raises:
            ValueError: when a running job already has ``job_id``.
        """
        job_id = job_id or f"{kind}-{uuid.uuid4().hex[:8]}"
        with self._lock:
            old = self._jobs.get(job_id)
            if old is not None and old.status in (RUNNING, QUEUED):
                raise ConfigError(f"job {job_id} is already running")
            job = self._new(job_id, kind, title, fn, state, need)
            self._jobs[job_id] = job
            self._prune()
        job.thread = threading.Thread(target=job._run, name=f"job-{job_id}", daemon=True)
        job.thread.start()
        return job

    def start_or_get(self, job_id: str, fn: Callable[[JobContext], Any], kind: str, title: str,
                     stored: Callable[[], Any] | None = None, **state: Any) -> tuple[Job, bool]:
        """The job ``job_id`` when it runs or has finished with its result still in memory, else the result
        ``stored()`` finds (one that a job of any process left on disk: a finished job, nothing runs), else ``fn``
        started under that id; ``(job, started)``. Check and start are one step under the registry's lock,
        so two sessions asking for the same id at once get the same job."""
        with self._lock:
            old = self._jobs.get(job_id)
            if old is not None and _reusable(old):
                return old, False
        result = stored() if stored is not None else None  # read outside the lock: it may be tens of MB
        with self._lock:
            old = self._jobs.get(job_id)
            if old is not None and _reusable(old):  # another session got there meanwhile
                return old, False
            if result is not None:
                job = self._new(job_id, kind, title, fn, {**state, "stored": True})
                job.status, job.result, job.slots, job.ended = FINISHED, result, None, time.time()
                self._jobs[job_id] = job
                self._prune()
                return job, False
            job = self._new(job_id, kind, title, fn, state)
            self._jobs[job_id] = job
            self._prune()
            job.thread = threading.Thread(target=job._run, name=f"job-{job_id}", daemon=True)
            job.thread.start()
        return job, True

    def queue_info(self, job_id: str) -> dict[str, Any] | None:
        """Where a queued job stands: ``position`` (1 = next), ``running`` heavy jobs, ``slots``, and
        ``expected_start_s`` (seconds, from the running jobs' published ETAs; None when one is not known)."""
        job = self.get(job_id)
        if job is None or job.slots is None:
            return None
        position, running = job.slots.position(job_id)
        if position is None:
            return None
        with self._lock:
            active = [j for j in self._jobs.values() if j.slots is job.slots and j.status == RUNNING]
        etas = []
        for j in active:
            with j.lock:
                eta = j.state.get("eta_seconds")
            etas.append(float(eta) if isinstance(eta, (int, float)) else None)
        expected = None
        if etas and all(e is not None for e in etas) and position <= len(etas):
            expected = sorted(etas)[position - 1]  # the position-th running job to end frees its slot
        return {"position": position, "running": running, "slots": job.slots.n, "expected_start_s": expected}

    def forget_results(self, kind: str, keep: int) -> None:
        """Drop the results of all but the newest ``keep`` finished jobs of ``kind`` (their state stays)."""
        with self._lock:
            jobs = sorted((j for j in self._jobs.values() if j.kind == kind), key=lambda j: j.started, reverse=True)
        done = 0
        for job in jobs:
            with job.lock:
                if job.status in (RUNNING, QUEUED) or job.result is None:
                    continue
                done += 1
                if done > keep:
                    job.result = None

    def _prune(self) -> None:
        done = sorted((j for j in self._jobs.values() if j.status not in (RUNNING, QUEUED)), key=lambda j: j.started)
        for j in done[: max(0, len(done) - self._max_finished)]:
            del self._jobs[j.id]

    def get(self, job_id: str | None) -> Job | None:
        """The job with ``job_id``, or None."""
        if not job_id:
            return None
        with self._lock:
            return self._jobs.get(job_id)

    def snapshots(self, kind: str | None = None) -> list[JobSnapshot]:
        """Snapshots of all jobs (of one kind), newest first."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if kind is None or j.kind == kind]
        return sorted((j.snapshot() for j in jobs), key=lambda s: s.started, reverse=True)

    def running(self, kind: str | None = None) -> list[JobSnapshot]:
        """Snapshots of the running jobs (of one kind)."""
        return [s for s in self.snapshots(kind) if s.running]

    def stop_all(self) -> None:
        """Ask every job to stop."""
        with self._lock:
            jobs = list(self._jobs.values())
        for j in jobs:
            j.request_stop()
        if self.workers is not None:
            self.workers.stop_all()

    def close(self) -> None:
        """Stop every job and end the worker processes (a later heavy job starts new ones)."""
        self.stop_all()
        if self.workers is not None:
            self.workers.close()
