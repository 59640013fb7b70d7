"""The job panel of the Projection and Ano-Unet pages: start (or follow) a request's background job,
then show it: live progress with a stop button while it runs (a fragment that refreshes itself), the
error, or the page's result view.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import streamlit as st

from core.services.image_request import ImageRequest
from core.services.jobs import JobContext, JobSnapshot
from views.components import ui

REUSED = "Same images and settings as before: showing the finished result."


@dataclass(frozen=True)
class JobPage:
    """How one page names its job and what it says around it."""

    key_job: str  # session-state key of the job the page follows
    owner: str  # the job-state key of the model the job belongs to (ImageRequest.OWNER)
    what: str  # "The projection" -> "The projection failed: …"
    again: str  # the hint when a finished result was dropped from memory
    idle: str  # before any job
    other: str  # when the followed job belongs to another model
    icon: str


def submit(page: JobPage, request: ImageRequest, fn: Callable[[JobContext], Any], *, keep_results: int | None = None,
           stored: Callable[[], Any] | None = None, **state: Any) -> bool:
    """Start the job of ``request`` unless the same one runs or has finished (in memory, or ``stored()`` finds its
    result on disk), and follow it; True when started. ``keep_results``: then drop the results of all but that many
    finished jobs of the kind (memory)."""
    registry = ui.job_registry()
    job, started = registry.start_or_get(request.job_id, fn, request.KIND, request.title, stored=stored,
                                         **request.job_state(), **state)
    st.session_state[page.key_job] = job.id
    if started and keep_results is not None:
        registry.forget_results(request.KIND, keep_results)
    if not started and not job.snapshot().running:
        st.toast(REUSED, icon=":material/cached:")
    return started


def show(page: JobPage, model_id: str, progress: Callable[[str], None], result: Callable[[JobSnapshot], None]) -> None:
    """The followed job of ``model_id``: ``progress(job id)`` while it runs, else ``result(snapshot)``."""
    job = ui.job_registry().get(st.session_state.get(page.key_job))
    if job is None:
        st.info(page.idle, icon=page.icon)
        return
    snap = job.snapshot()
    if snap.state.get(page.owner) != model_id:
        st.info(page.other, icon=page.icon)
        return
    ui.draw_job_state(snap, page.what, page.again, progress, result)


def live_progress(job_id: str, status: Callable[[JobSnapshot], tuple[float, str]], stop_help: str,
                  body: Callable[[JobSnapshot], None] | None = None) -> None:
    """A bordered box, redrawn twice a second while the job runs: ``status(snapshot)`` -> (fraction, text)
    as a progress bar, a Stop button, then ``body(snapshot)``."""

    def _live(job: Any, snap: JobSnapshot) -> None:
        fraction, text = status(snap)
        with st.container(border=True):
            head, action = st.columns([5, 1], vertical_alignment="center")
            head.progress(min(1.0, fraction), text=text)
            if action.button("Stop", key=f"stop-{job_id}", icon=":material/stop_circle:", width="stretch", help=stop_help):
                job.request_stop()
            if body is not None:
                body(snap)

    ui.live_job(job_id, _live)
