"""Live view of training jobs, shared by the Home, Train and Ano-Unet pages."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from cachetools import LRUCache

from core.config import DETECTOR_MODELS, FEATURE_MODELS, TrainConfig
from core.data.images import encode_png, to_uint8_hwc
from core.services.jobs import JobSnapshot
from core.services.tasks import distributed_training_task, training_task
from core.viz import strip
from views.components import ui

KEY_SEEN_RUNNING = "train_jobs_seen_running"


KEY_SESSION_JOBS = "train_session_jobs"  # every training job this session started (Home shows them all)


def start_training(cfg: TrainConfig, title: str, nproc: int = 1) -> str:
    """Start a training job in the process-wide registry (``nproc`` > 1: data-parallel over that many local GPUs,
    holding as many job slots); remember it for this session."""
    task = distributed_training_task(cfg, nproc) if nproc > 1 else training_task(cfg)
    job = ui.job_registry().start("train", title, task, need=nproc, config=cfg.__dict__, nproc=nproc)
    st.session_state[ui.KEY_TRAIN_JOB] = job.id  # the latest: its run is selected in the sidebar when it ends
    st.session_state.setdefault(KEY_SESSION_JOBS, []).append(job.id)
    return job.id


def _fmt_seconds(s: float | None) -> str:
    if s is None or s != s:
        return "…"
    s = int(round(s))
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def loss_figure(history: list[dict]) -> go.Figure:
    """Train and validation loss per epoch."""
    epochs = [h["epoch"] for h in history]
    fig = go.Figure()
    fig.add_scatter(x=epochs, y=[h["train_loss"] for h in history], name="train", mode="lines+markers")
    fig.add_scatter(x=epochs, y=[h["val_loss"] for h in history], name="validation", mode="lines+markers")
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="epoch", yaxis_title="loss",
                      yaxis_type="log", legend=dict(orientation="h", y=1.15), title=None)
    if len(epochs) <= 12:
        fig.update_xaxes(dtick=1)
    return fig


def preview_strip(preview: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Inputs on the top row, their reconstructions below."""
    top = strip([to_uint8_hwc(a) for a, _ in preview])
    bottom = strip([to_uint8_hwc(b) for _, b in preview])
    return np.concatenate([top, np.full((2, top.shape[1], 3), 255, np.uint8), bottom], axis=0)


def draw_job(snap: JobSnapshot, *, show_stop: bool = True) -> None:
    """One job: status, progress with ETA, loss curves, sample reconstructions, stop button."""
    s = snap.state
    feature = s.get("config", {}).get("model") in FEATURE_MODELS  # fitted in one pass: no epochs, no losses
    epoch, epochs = int(s.get("epoch", 0) or 0), int(s.get("epochs", 0) or 0)
    with st.container(border=True):
        head, action = st.columns([5, 1])
        head.markdown(f"**{snap.title}** · `{snap.id}`")
        if snap.queued:
            ui.draw_queued(snap, "train")
        elif snap.running:
            if show_stop and action.button("Stop", key=f"stop-{snap.id}", icon=":material/stop_circle:",
                                           disabled=snap.stop_requested,
                                           help="Stop after the current batch; the best checkpoint so far is kept."):
                job = ui.job_registry().get(snap.id)
                if job:
                    job.request_stop()
                    st.toast(f"Stop requested for {snap.title}: it stops after the current batch and keeps its best "
                             "checkpoint.", icon=":material/stop_circle:")
            batches = int(s.get("batches", 0) or 0)
            frac_epoch = (int(s.get("batch", 0) or 0) / batches) if batches and s.get("epoch_running", 0) > epoch else 0.0
            frac = min(1.0, (epoch + frac_epoch) / epochs) if epochs else 0.0
            phase = "stopping (after the current batch)" if snap.stop_requested else s.get("phase", "starting")
            if feature:
                frac = int(s.get("batch", 0) or 0) / batches if batches else 0.0
                text = f"{phase} · batch {s.get('batch', 0)}/{batches or '?'} · elapsed {_fmt_seconds(snap.seconds)}"
            elif epochs:
                budget = float(s.get("config", {}).get("max_minutes") or 0.0)
                text = (f"{phase} · epoch {epoch}/{epochs} · elapsed {_fmt_seconds(snap.seconds)} · ETA "
                        f"{_fmt_seconds(s.get('eta_seconds'))}" + (f" (time budget {budget:g} min)" if budget else ""))
            else:
                text = f"{phase}… · elapsed {_fmt_seconds(snap.seconds)}"
            st.progress(frac, text=text)
        elif snap.status == "failed":
            st.error(f"Training failed: {snap.error}")
        elif s.get("cancelled_in_queue"):
            st.info("Cancelled while it waited in the queue: it never started.", icon=":material/cancel:")
        else:
            result = snap.result or {}
            m = result.get("metrics") or {}
            verdict = "stopped" if snap.status == "stopped" else "finished"
            done = (f"Fitting {verdict} in {_fmt_seconds(snap.seconds)}" if feature
                    else f"Training {verdict} after {epoch} epoch(s) in {_fmt_seconds(snap.seconds)}")
            st.success(f"{done} · "
                       f"image AUROC {ui.fmt_metric(m.get('image_auroc'))} · pixel AUROC {ui.fmt_metric(m.get('pixel_auroc'))}")
        history = s.get("history") or []
        if history and not feature:
            left, right = st.columns([3, 2])
            left.plotly_chart(_cached_figure(snap.id, len(history), history), key=f"loss-{snap.id}-{len(history)}-{snap.status}",
                              config={"displayModeBar": False})
            if s.get("preview"):
                right.image(_cached_preview(snap.id, len(history), s["preview"]), caption="validation images (top) and reconstructions (bottom)",
                            width="stretch", output_format="PNG")


RECENT_SECONDS = 3600  # ended jobs (of any session) stay listed this long
RECENT_MAX = 5


# The live view redraws every REFRESH_S seconds while a job runs. Each redraw costs the server CPU and the GIL,
# which the training thread needs: measured with the Train page open, a 32 px AE epoch took 49 s at a 0.5 s
# refresh that re-encoded the preview and rebuilt the loss figure each time, against 1.8 s with no page open.
# So the refresh is slower and the figure and preview PNG are made once per epoch.
REFRESH_S = 2.0
_PER_EPOCH: LRUCache = LRUCache(maxsize=16)


def _cached_figure(job_id: str, n: int, history: list[dict]) -> go.Figure:
    key = ("figure", job_id, n)
    if key not in _PER_EPOCH:
        _PER_EPOCH[key] = loss_figure(history)
    return _PER_EPOCH[key]


def _cached_preview(job_id: str, n: int, preview: list) -> bytes:
    key = ("preview", job_id, n)
    if key not in _PER_EPOCH:
        _PER_EPOCH[key] = encode_png(preview_strip(preview))
    return _PER_EPOCH[key]


def live_jobs(*, only_session: bool = False) -> None:
    """Show running jobs, this session's, and the recently ended ones of every session (finished, stopped or
    failed, with their outcome); refresh every REFRESH_S seconds while any runs, and the whole page once when one ends
    (so the Runs table shows its final status and metrics)."""
    registry = ui.job_registry()
    any_running = bool(registry.running("train"))

    @st.fragment(run_every=REFRESH_S if any_running else None)
    def _view() -> None:
        mine = st.session_state.get(ui.KEY_TRAIN_JOB)
        ours = set(st.session_state.get(KEY_SESSION_JOBS, [])) | {mine}
        every = registry.snapshots("train")
        now = time.time()
        recent = [s for s in every if not s.running and s.ended and now - s.ended < RECENT_SECONDS][:RECENT_MAX]
        recent_ids = {s.id for s in recent}
        snaps = [s for s in every if s.running or s.id == mine or s.id in recent_ids]
        if only_session:
            snaps = [s for s in every if s.id in ours]
        seen = st.session_state.setdefault(KEY_SEEN_RUNNING, set())
        running = {s.id for s in every if s.running}
        ended = [i for i in seen if i not in running]
        for snap in snaps:
            draw_job(snap)
            if snap.running:
                seen.add(snap.id)
        if ended:  # a job finished: select its run in the sidebar and refresh the whole page once
            seen.difference_update(ended)
            own = next((s for s in every if s.id == mine and s.id in ended and s.state.get("run_dir")), None)
            if own is not None and own.state.get("config", {}).get("model") in DETECTOR_MODELS:
                st.session_state[ui.PERSIST_PREFIX + ui.KEY_RUN] = Path(own.state["run_dir"]).name
            st.rerun(scope="app")

    _view()
