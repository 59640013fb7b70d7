"""Background jobs: long work (training, projection, Ano-Unet) in threads, outside any UI.

A :class:`JobRegistry` owns the jobs of a process, keyed by id. A job runs a plain function that takes
a :class:`JobContext` (to report progress and to see the stop request). Readers only ever get
:meth:`Job.snapshot` copies, so a UI thread never sees a half-updated state. Nothing here knows
about streamlit: the app keeps one registry per server process (``st.cache_resource``).
"""

from __future__ import annotations

import copy
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigError

RUNNING, FINISHED, STOPPED, FAILED = "running", "finished", "stopped", "failed"


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

    @property
    def running(self) -> bool:
        """True while the worker has not returned."""
        return self.status == RUNNING

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

    def _run(self) -> None:
        try:
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

    def snapshot(self) -> JobSnapshot:
        """A deep copy of the job's state, safe to read while the job runs."""
        with self.lock:
            return JobSnapshot(self.id, self.kind, self.title, self.status, self.started, self.ended,
                               copy.deepcopy(self.state), self.result, self.error, self.stop_event.is_set())

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
        return job.status == RUNNING or (job.status == FINISHED and job.result is not None)


class JobRegistry:
    """Thread-safe map of job id -> :class:`Job` for one process."""

    def __init__(self, max_finished: int = 50) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._max_finished = max_finished

    def start(self, kind: str, title: str, fn: Callable[[JobContext], Any], job_id: str | None = None, **state: Any) -> Job:
        """Start ``fn`` in a daemon thread and register it.

        Raises:
            ValueError: when a running job already has ``job_id``.
        """
        job_id = job_id or f"{kind}-{uuid.uuid4().hex[:8]}"
        with self._lock:
            old = self._jobs.get(job_id)
            if old is not None and old.status == RUNNING:
                raise ConfigError(f"job {job_id} is already running")
            job = Job(job_id, kind, title, fn, state=dict(state))
            self._jobs[job_id] = job
            self._prune()
        job.thread = threading.Thread(target=job._run, name=f"job-{job_id}", daemon=True)
        job.thread.start()
        return job

    def start_or_get(self, job_id: str, fn: Callable[[JobContext], Any], kind: str, title: str,
                     **state: Any) -> tuple[Job, bool]:
        """The job ``job_id`` when it runs or has finished with its result still in memory, else ``fn``
        started under that id; ``(job, started)``. Check and start are one step under the registry's lock,
        so two sessions asking for the same id at once get the same job."""
        with self._lock:
            old = self._jobs.get(job_id)
            if old is not None and _reusable(old):
                return old, False
            job = Job(job_id, kind, title, fn, state=dict(state))
            self._jobs[job_id] = job
            self._prune()
            job.thread = threading.Thread(target=job._run, name=f"job-{job_id}", daemon=True)
            job.thread.start()
        return job, True

    def forget_results(self, kind: str, keep: int) -> None:
        """Drop the results of all but the newest ``keep`` finished jobs of ``kind`` (their state stays)."""
        with self._lock:
            jobs = sorted((j for j in self._jobs.values() if j.kind == kind), key=lambda j: j.started, reverse=True)
        done = 0
        for job in jobs:
            with job.lock:
                if job.status == RUNNING or job.result is None:
                    continue
                done += 1
                if done > keep:
                    job.result = None

    def _prune(self) -> None:
        done = sorted((j for j in self._jobs.values() if j.status != RUNNING), key=lambda j: j.started)
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
