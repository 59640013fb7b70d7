"""Projection: watch the iterative energy-based projection (Dehaene et al., ICLR 2020) of a few images.

Instead of comparing an image with its blurry reconstruction, the projection moves the image itself
towards what the model finds normal, changing as few pixels as possible; what moved is the anomaly.
The page picks test images (or uploads) and the settings, runs ``core.projection.project`` as a
background job, then shows the steps as a client-side plotly animation (slider and play button, no
rerun per frame), the article's comparison rows, a step inspector and a GIF download.

The work that needs no Streamlit (request identity, the job function, frame composites) is in plain
functions so that tests can call them; drawing runs only when Streamlit executes the page.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
import torch

from core.config import MAP_MODES, ProjectionConfig
from core.data.images import to_float_chw
from core.detectors import registry as detectors
from core.detectors.maps import gaussian_blur, image_scores
from core.detectors.projection import mean_energy_curve, project, projection_map
from core.detectors.reconstruction import ReconstructionDetector
from core.runs import LoadedRun
from core.services.jobs import Job, JobContext, JobRegistry, JobSnapshot
from core.viz import annotate, gif_bytes, heatmap, mask_contour
from views import ui
from views.results import (
    GOOD,
    checkpoint_mtime,
    colorbar,
    defect_badge,
    fmt_score,
    load_test_view,
)

JOB_KIND = "projection"
KEY_SOURCE = "projection_source"
KEY_IMAGES = "projection_images"
KEY_IMAGES_RUN = "projection_images_run"  # the run the image picker was filled for
KEY_UPLOADS = "projection_uploads"
KEY_STEPS = "projection_steps"
KEY_ALPHA = "projection_alpha"
KEY_LAMBDA = "projection_lambda"
KEY_MAP_MODE = "projection_map_mode"
KEY_RUN_BUTTON = "projection_run"
KEY_JOB = "projection_job_id"
KEY_STEP = "projection_step"

SOURCE_TEST, SOURCE_UPLOAD, UPLOAD_TYPES = ui.SOURCE_TEST, ui.SOURCE_UPLOAD, ui.UPLOAD_TYPES
MAX_IMAGES = 8  # frames are kept only for the shown images: memory stays bounded
MAX_STEPS = 200
MAX_FRAMES = 51  # stored (and animated) steps: evenly spread over the run, always the first and last
KEEP_RESULTS = 6  # finished projection results kept in memory per server process
DIFF_QUANTILE = 0.995  # colour scale of |x_t - x0|: this quantile of the last step's difference
MAP_QUANTILE = 0.995  # common colour scale of the two maps of the comparison rows
PANEL_PX = 128  # largest display side of an enlarged panel (fits the comparison columns: no browser rescaling)
GIF_PX = 128  # GIF panels are enlarged up to this side (the GIF stays a few MB at most)
ANIM_IMAGE_PX = 440  # aimed width of the animated composite in the chart
MAP_MODE_LABELS = {"projection": "|x_T − x₀|", "combined": "|x_T − x₀| + |x_T − f(x_T)|"}


# --------------------------------------------------------------------------- the request and its job
@dataclass(frozen=True)
class Request:
    """What to project (which images of which run, with which settings), with a stable identity."""

    run_id: str
    mtime_ns: int
    keys: tuple[str, ...]  # identity of each image: test-set path, or content hash of an upload
    labels: tuple[str, ...]  # short display names
    defects: tuple[str | None, ...]  # ground truth for test images, None for uploads
    cfg: ProjectionConfig

    @property
    def job_id(self) -> str:
        """Same run, images and settings -> same id, so a repeated request reuses the finished job."""
        ident = repr((self.run_id, self.mtime_ns, self.keys, asdict(self.cfg)))
        return f"{JOB_KIND}-{hashlib.sha1(ident.encode()).hexdigest()[:12]}"


def stored_steps(steps: int, limit: int = MAX_FRAMES) -> list[int]:
    """The steps whose frames are kept: all of them, or ``limit`` spread evenly (first and last included)."""
    if steps + 1 <= limit:
        return list(range(steps + 1))
    return sorted({int(round(s)) for s in np.linspace(0, steps, limit)})


def _display_uint8(x: torch.Tensor) -> np.ndarray:
    """``[B, C, H, W]`` floats in [0, 1] -> ``[B, H, W, 3]`` uint8 RGB (gray repeated)."""
    img = (x.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return np.repeat(img, 3, axis=3) if img.shape[3] == 1 else np.ascontiguousarray(img)


def projection_task(
    model: torch.nn.Module, detector: ReconstructionDetector, x0: torch.Tensor, cfg: ProjectionConfig,
    labels: list[str], masks: list[np.ndarray | None],
) -> Callable[[JobContext], dict[str, Any]]:
    """A job that projects ``x0`` and keeps display frames of every stored step.

    State: ``step``, ``steps``, ``energy`` (mean per step so far). Result: uint8 frames ``x``,
    ``recon``, ``heat`` ``[F, B, H, W, 3]`` for the ``frame_steps``; ``energy`` (mean per step) and
    ``energy_per_image``; the comparison data (``x0``, ``plain_recon``, ``proj_map``, ``recon_map``,
    their scores and common ``maps_vmax``); ``diverged`` ([(label, step)]); ``stopped``.
    """

    def task(ctx: JobContext) -> dict[str, Any]:
        started = time.perf_counter()
        keep = set(stored_steps(cfg.steps))
        xs, recons, diffs, frame_steps, energies = [], [], [], [], []
        last = None
        stopped = False
        ctx.update(step=0, steps=cfg.steps, energy=[])
        for frame in project(model, x0, cfg):
            energies.append(frame.energy.detach().float().cpu())
            if frame.step in keep:
                xs.append(_display_uint8(frame.x))
                recons.append(_display_uint8(frame.recon))
                diffs.append(frame.diff.float().cpu().numpy().astype(np.float16))
                frame_steps.append(frame.step)
            last = frame
            ctx.update(step=frame.step, energy=mean_energy_curve(energies))
            if ctx.stop.is_set():
                stopped = frame.step < cfg.steps
                break
        assert last is not None
        if frame_steps[-1] != last.step:  # stopped (or every image diverged) between two stored steps
            xs.append(_display_uint8(last.x))
            recons.append(_display_uint8(last.recon))
            diffs.append(last.diff.float().cpu().numpy().astype(np.float16))
            frame_steps.append(last.step)
        vmax = max(float(np.quantile(diffs[-1].astype(np.float32), DIFF_QUANTILE)), 1e-6)
        heat = np.stack([np.stack([heatmap(d.astype(np.float32), 0.0, vmax) for d in step]) for step in diffs])
        # The article's comparison: the plain reconstruction error against the projection map, scored alike.
        score_cfg = detector.score
        plain = detector.predict(x0)
        pmap = gaussian_blur(projection_map(last, x0, cfg.map_mode), score_cfg.smooth_sigma)
        raw = (last.x - x0.float()).abs().flatten(1).sum(1) * 255.0
        proj_scores = image_scores(pmap, score_cfg, raw)
        recon_map, proj_map_np = plain.anomaly_map.float().cpu().numpy(), pmap.float().cpu().numpy()
        both = np.concatenate([recon_map.ravel(), proj_map_np.ravel()])
        per_image = torch.stack(energies).numpy()  # [steps + 1, B]
        ctx.update(step=last.step)
        return {
            "labels": list(labels),
            "steps": cfg.steps,
            "steps_done": last.step,
            "frame_steps": frame_steps,
            "x": np.stack(xs),
            "recon": np.stack(recons),
            "heat": heat,
            "diff_vmax": vmax,
            "energy": mean_energy_curve(energies),
            "energy_per_image": per_image,
            "x0": _display_uint8(x0),
            "plain_recon": _display_uint8(plain.reconstruction) if plain.reconstruction is not None else None,
            "x_final": _display_uint8(last.x),
            "recon_map": recon_map,
            "proj_map": proj_map_np,
            "recon_scores": plain.score.float().cpu().numpy(),
            "proj_scores": proj_scores.float().cpu().numpy(),
            "maps_vmax": max(float(np.quantile(both, MAP_QUANTILE)), 1e-6),
            "masks": masks,
            "diverged": [(labels[i], s) for i, s in enumerate(last.diverged_step) if s is not None],
            "stopped": stopped,
            "seconds": time.perf_counter() - started,
        }

    return task


def find_result(registry: JobRegistry, job_id: str) -> JobSnapshot | None:
    """A running job or a finished one that still holds its frames (a cache hit), else None."""
    job = registry.get(job_id)
    if job is None:
        return None
    snap = job.snapshot()
    if snap.running or (snap.status == "finished" and snap.result is not None):
        return snap
    return None


def _forget_old_results(registry: JobRegistry, keep: int = KEEP_RESULTS) -> None:
    """Drop the frames of all but the newest ``keep`` finished projections (the registry keeps 50 jobs)."""
    done = [s for s in registry.snapshots(JOB_KIND) if not s.running and s.result is not None]
    for snap in done[keep:]:
        job = registry.get(snap.id)
        if job is not None:
            with job.lock:
                job.result = None


def start_or_reuse(registry: JobRegistry, request: Request, run: LoadedRun, x0: torch.Tensor,
                   masks: list[np.ndarray | None]) -> tuple[str, bool]:
    """Start the projection job of ``request`` unless the same one runs or has finished; (job id, reused)."""
    job_id = request.job_id
    if find_result(registry, job_id) is not None:
        return job_id, True
    task = projection_task(run.model, detectors.build(run), x0, request.cfg, list(request.labels), masks)
    title = f"Projection · {len(request.keys)} image(s) · {request.cfg.steps} steps · run {request.run_id}"
    try:
        registry.start(JOB_KIND, title, task, job_id=job_id, run_id=request.run_id, labels=list(request.labels),
                       defects=list(request.defects), config=asdict(request.cfg))
    except ValueError:  # started by another session a moment ago: follow that one
        return job_id, True
    _forget_old_results(registry)
    return job_id, False


# --------------------------------------------------------------------------- images
def display_scale(side: int, px: int = PANEL_PX) -> int:
    """Integer enlargement up to ``px`` for small images (32 px digits -> 5x, 64 px -> 2x), 1 for large ones."""
    return max(1, px // side)


def enlarge_nn(img: np.ndarray, factor: int) -> np.ndarray:
    """Enlarge by an integer factor without smoothing (pixels stay honest)."""
    if factor == 1:
        return img
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)


def composite(frames: list[np.ndarray], gap: int) -> np.ndarray:
    """One image per step: rows of [x_t | f(x_t) | heatmap] per image, white gaps. ``frames`` are [F, B, H, W, 3]."""
    f, b, h, w, _ = frames[0].shape
    k = len(frames)
    out = np.full((f, b * h + (b - 1) * gap, k * w + (k - 1) * gap, 3), 255, np.uint8)
    for i in range(b):
        for j, arr in enumerate(frames):
            out[:, i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = arr[:, i]
    return out


def animation_frames(result: dict[str, Any]) -> np.ndarray:
    """The composites of all stored steps at native resolution (plotly enlarges them, pixelated)."""
    h = result["x"].shape[2]
    return composite([result["x"], result["recon"], result["heat"]], gap=max(1, h // 32))


def gif_frames(result: dict[str, Any]) -> list[np.ndarray]:
    """Enlarged, captioned composites for the GIF: "step t/T  E=..."."""
    factor = display_scale(result["x"].shape[2], GIF_PX)
    frames = animation_frames(result)
    energy = result["energy"]
    out = []
    for k, step in enumerate(result["frame_steps"]):
        img = enlarge_nn(frames[k], factor)
        out.append(annotate(img, f"step {step}/{result['steps']}  E={energy[step]:.1f}"))
    return out


def decode_upload(run: LoadedRun, name: str, data: bytes) -> tuple[np.ndarray | None, str | None]:
    """Decode an upload and convert it to the run's channels and size: (uint8 HWC image, None) or (None, error)."""
    return ui.decode_upload(run.config.size, run.config.channels, name, data)


def default_picks(view: dict[str, Any], n: int = 4) -> list[str]:
    """The highest-scoring image of each of the top ``n - 1`` defect types, plus a typical good image."""
    names, defects, scores = view["names"], view["defects"], view["scores"]
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    best: dict[str, int] = {}
    for i in order:
        if defects[i] != GOOD and defects[i] not in best:
            best[defects[i]] = i
    picks = list(best.values())[: n - 1]  # dict order = by score, highest first
    goods = [i for i in order if defects[i] == GOOD]
    if goods:
        picks.append(goods[len(goods) // 2])  # the median-scored good image
    for i in order:  # small test sets: fill up with the next highest scores
        if len(picks) >= n:
            break
        if i not in picks:
            picks.append(i)
    return [names[i] for i in picks[:n]]


def short_label(name: str) -> str:
    """``test/broken/003.png`` -> ``broken/003``."""
    p = Path(name)
    return f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem


# --------------------------------------------------------------------------- cached renderings
@st.cache_data(max_entries=4, show_spinner=False)
def animation_figure(job_id: str, started: float, _result: dict[str, Any]) -> go.Figure:
    """Client-side animation: the composites with a slider and a play button, and the energy curve
    with a marker that follows the step. Keyed by job id and start time (the result is not hashed):
    a stopped job restarted under the same id gets a new figure."""
    r = _result
    frames = animation_frames(r)
    steps, energy = r["frame_steps"], r["energy"]
    n_img, h, w = r["x"].shape[1], r["x"].shape[2], r["x"].shape[3]
    gap = max(1, h // 32)
    fig = px.imshow(frames, animation_frame=0, binary_string=True, labels={"animation_frame": "step"})
    hc, wc = frames.shape[1:3]
    plot_h = int(np.clip(ANIM_IMAGE_PX * hc / wc, 280, 1100))
    height = plot_h + 50 + 110
    # Panel titles above the columns, image names on the left (data coordinates of the composite).
    for j, title in enumerate(("x_t (projected image)", "f(x_t) (reconstruction)", "|x_t − x₀| (change)")):
        fig.add_annotation(x=j * (w + gap) + w / 2 - 0.5, y=-0.5, xref="x", yref="y", yanchor="bottom", text=f"<b>{title}</b>",
                           showarrow=False, font={"size": 12})
    fig.update_yaxes(tickvals=[i * (h + gap) + h / 2 - 0.5 for i in range(n_img)], ticktext=r["labels"], showticklabels=True,
                     ticks="", title=None)
    fig.update_xaxes(showticklabels=False, ticks="", title=None)
    fig.update_yaxes(constrain="domain", constraintoward="top", selector={"anchor": "x"})
    fig.update_traces(hoverinfo="skip", hovertemplate=None)
    # The energy curve on the right: all steps, a marker on the shown one.
    done = np.arange(len(energy))
    fig.add_trace(go.Scatter(x=done, y=energy, mode="lines", line={"color": "#4c78a8", "width": 2}, xaxis="x2", yaxis="y2",
                             name="mean energy", hovertemplate="step %{x}<br>E = %{y:.4g}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[steps[0]], y=[energy[steps[0]]], mode="markers", xaxis="x2", yaxis="y2", name="shown step",
                             marker={"size": 11, "color": "#e4572e", "line": {"color": "white", "width": 1.5}}, hoverinfo="skip"))
    for frame, step in zip(fig.frames, steps):
        frame.data = (frame.data[0].update(hoverinfo="skip", hovertemplate=None),
                      go.Scatter(x=[step], y=[energy[step]], mode="markers", xaxis="x2", yaxis="y2"))
        frame.traces = (0, 2)
    energy_frac = min(1.0, 300 / plot_h)
    fig.update_layout(
        height=height, margin={"l": 10, "r": 20, "t": 50, "b": 110}, showlegend=False, plot_bgcolor="white",
        xaxis={"domain": [0.0, 0.56]},
        xaxis2={"domain": [0.68, 1.0], "anchor": "y2", "title": "step", "gridcolor": "#eee", "zeroline": False,
                "range": [-0.5, max(1, r["steps_done"]) + 0.5]},
        yaxis2={"domain": [1.0 - energy_frac, 1.0], "anchor": "x2", "title": "mean energy E(x_t)", "gridcolor": "#eee"},
    )
    fig.add_annotation(x=0.84, y=1.0, xref="paper", yref="paper", yanchor="bottom", showarrow=False,
                       text="<b>Energy E = L_rec(x_t) + λ·‖x_t − x₀‖₁</b>", font={"size": 12})
    # Player: faster frames, step numbers as slider labels.
    menu = fig.layout.updatemenus[0]
    play = menu.buttons[0]
    play.args[1]["frame"]["duration"] = 180
    play.args[1]["transition"]["duration"] = 0
    play.label = "▶ Play"
    menu.buttons[1].label = "❚❚ Pause"
    menu.update(direction="left", x=0.0, xanchor="left", y=-0.02, yanchor="top", pad={"t": 40, "r": 10}, showactive=False)
    slider = fig.layout.sliders[0]
    for s, step in zip(slider.steps, steps):
        s.label = str(step)
    slider.update(currentvalue={"prefix": "step ", "font": {"size": 13}}, x=0.2, len=0.8, y=-0.02, pad={"t": 40, "b": 10})
    return fig


def energy_progress_figure(energy: list[float], steps: int) -> go.Figure:
    """The mean energy so far, for the live progress view."""
    fig = go.Figure(go.Scatter(x=list(range(len(energy))), y=energy, mode="lines+markers", line={"color": "#4c78a8"},
                               marker={"size": 4}))
    fig.update_layout(height=200, margin={"l": 10, "r": 10, "t": 10, "b": 10}, yaxis={"title": "mean energy"},
                      xaxis={"title": "step", "range": [-0.5, steps + 0.5]})
    return fig


@st.cache_data(max_entries=4, show_spinner=False)
def gif_for(job_id: str, started: float, _result: dict[str, Any]) -> bytes:
    """The animated GIF of a result (one frame per stored step)."""
    return gif_bytes(gif_frames(_result), duration_ms=180, last_hold_ms=1500)


# --------------------------------------------------------------------------- controls
def _reset_images_for(run_id: str, view: dict[str, Any]) -> None:
    if st.session_state.get(KEY_IMAGES_RUN) != run_id or not isinstance(st.session_state.get(KEY_IMAGES), list):
        st.session_state[KEY_IMAGES_RUN] = run_id
        st.session_state[KEY_IMAGES] = default_picks(view)
    else:  # keep only names that still exist (the test set can change)
        names = set(view["names"])
        st.session_state[KEY_IMAGES] = [n for n in st.session_state[KEY_IMAGES] if n in names]


def draw_controls(run: LoadedRun, view: dict[str, Any]) -> tuple[Request, torch.Tensor, list[np.ndarray | None]] | None:
    """Image picker and settings in one form; returns the request, its input batch and masks on submit."""
    defaults = ProjectionConfig()
    source = st.segmented_control("Images", [SOURCE_TEST, SOURCE_UPLOAD], key=KEY_SOURCE, default=SOURCE_TEST,
                                  help="Project images of the run's test set, or your own "
                                       "(converted to the run's size and channels).")
    source = source or SOURCE_TEST
    names, defects, scores = view["names"], view["defects"], view["scores"]
    by_name = {n: i for i, n in enumerate(names)}
    _reset_images_for(run.id, view)
    with st.form("projection_form", border=True):
        if source == SOURCE_TEST:
            picked = st.multiselect(
                f"Test images (up to {MAX_IMAGES})", names, key=KEY_IMAGES, max_selections=MAX_IMAGES,
                format_func=lambda n: f"{short_label(n)} · score {fmt_score(scores[by_name[n]])}",
                help="Default: the highest-scoring image of the top defect types and one typical good image.",
                placeholder="Pick test images",
            )
            files = []
        else:
            files = st.file_uploader(f"Upload images (up to {MAX_IMAGES})", type=UPLOAD_TYPES, accept_multiple_files=True,
                                     key=KEY_UPLOADS, help="PNG, JPEG, BMP, TIFF or WebP; converted to the run's size and channels.")
            picked = []
        c1, c2, c3, c4, c5 = st.columns([1, 1, 1, 1.6, 1.3], vertical_alignment="bottom")
        steps = c1.number_input("Steps", 1, MAX_STEPS, defaults.steps, step=5, key=KEY_STEPS,
                                help="Number of updates x_t → x_{t+1}. The article uses 15, other settings 25–100.")
        alpha = c2.number_input("Step size α", 1e-4, 10.0, defaults.alpha, step=0.05, format="%.4g", key=KEY_ALPHA,
                                help="α in x_{t+1} = x_t − α·(∇E(x_t) ⊙ (x_t − f(x_t))²). Too large can diverge.")
        lam = c3.number_input("λ (stay close to x₀)", 0.0, 10.0, defaults.lam, step=0.05, format="%.4g", key=KEY_LAMBDA,
                              help="Weight of ‖x − x₀‖₁ in the energy: larger keeps more of the input, "
                                   "smaller lets more pixels move.")
        map_mode = c4.selectbox("Anomaly map", list(MAP_MODES), index=list(MAP_MODES).index(defaults.map_mode), key=KEY_MAP_MODE,
                                format_func=lambda m: f"{m}: {MAP_MODE_LABELS[m]}",
                                help="The projection map of the comparison rows: what moved, optionally plus what the "
                                     "model still cannot explain at x_T.")
        submitted = c5.form_submit_button("Run projection", type="primary", icon=":material/play_arrow:", key=KEY_RUN_BUTTON,
                                          width="stretch")
    if not submitted:
        return None
    cfg = ProjectionConfig(steps=int(steps), alpha=float(alpha), lam=float(lam), map_mode=map_mode)
    try:
        cfg.validate()
    except ValueError as exc:
        st.error(f"These settings cannot be used: {exc}")
        return None
    images: list[np.ndarray] = []
    keys, labels, truth, masks = [], [], [], []
    if source == SOURCE_TEST:
        if not picked:
            st.warning("Pick at least one test image.")
            return None
        for n in picked[:MAX_IMAGES]:
            i = by_name[n]
            img = view["images"][i]  # stored as RGB for display; gray runs get their one channel back
            images.append(img[..., :1] if run.config.channels == 1 else img)
            keys.append(n)
            labels.append(short_label(n))
            truth.append(defects[i])
            masks.append(view["masks"][i] if view["masks"][i].any() else None)
    else:
        if not files:
            st.warning("Upload at least one image.")
            return None
        for up in ui.decode_uploads(files, run.config.size, run.config.channels, MAX_IMAGES):
            images.append(up.image)
            keys.append(up.key)
            labels.append(up.label)
            truth.append(None)
            masks.append(None)
        if not images:
            return None
    x0 = torch.from_numpy(np.stack([to_float_chw(im) for im in images]))
    request = Request(run.id, checkpoint_mtime(run.path), tuple(keys), tuple(labels), tuple(truth), cfg)
    return request, x0, masks


# --------------------------------------------------------------------------- drawing
def draw_progress(job_id: str) -> None:
    """Live progress of a running job (refreshes itself); one full rerun when it ends."""

    def _live(job: Job, snap: JobSnapshot) -> None:
        s = snap.state
        step, steps = int(s.get("step", 0) or 0), int(s.get("steps", 0) or 1)
        with st.container(border=True):
            head, action = st.columns([5, 1], vertical_alignment="center")
            with head:
                st.progress(min(1.0, step / steps), text=f"Projecting {len(s.get('labels', []))} image(s) · step {step}/{steps} · "
                                                          f"{snap.seconds:.0f} s")
            if action.button("Stop", key=f"stop-{job_id}", icon=":material/stop_circle:", width="stretch",
                             help="Stop after the current step; the steps done so far are shown."):
                job.request_stop()
            if len(s.get("energy") or []) > 1:
                st.plotly_chart(energy_progress_figure(s["energy"], steps), key=f"projection-live-{job_id}",
                                config={"displayModeBar": False})

    ui.live_job(job_id, _live)


def draw_summary(snap: JobSnapshot, run: LoadedRun) -> None:
    r, cfg = snap.result, snap.state.get("config", {})
    st.caption(
        f"Run `{run.id}` ({run.config.model.upper()}, {run.config.data} / {run.config.category}, {run.config.size} px) · "
        f"{len(r['labels'])} image(s) · {r['steps_done']} of {r['steps']} steps · α = {cfg.get('alpha'):.4g}, "
        f"λ = {cfg.get('lam'):.4g}, map: {cfg.get('map_mode')} · computed in {r['seconds']:.1f} s"
    )
    if r["stopped"]:
        st.info(f"Stopped at step {r['steps_done']} of {r['steps']}: showing the steps done so far.", icon=":material/stop_circle:")
    if r["diverged"]:
        which = ", ".join(f"**{label}** at step {step}" for label, step in r["diverged"])
        st.warning(f"The projection diverged for {which}; those images keep their last finite iterate. "
                   "Try a smaller step size α.", icon=":material/warning:")


def draw_animation(snap: JobSnapshot) -> None:
    r = snap.result
    st.subheader("Projection, step by step")
    st.plotly_chart(animation_figure(snap.id, snap.started, r), key=f"projection-animation-{snap.id}",
                    config={"displayModeBar": False, "scrollZoom": False})
    bar, text = st.columns([1, 5], vertical_alignment="center")
    bar.image(colorbar(), width=200, output_format="PNG")
    text.caption(f"Play, or drag the slider: the animation runs in your browser. The change |x_t − x₀| uses one colour scale "
                 f"for all steps, 0 (blue) to {r['diff_vmax']:.3g} (red) = the {DIFF_QUANTILE:.1%} quantile of the last step. "
                 f"The energy curve is the mean over the shown images; the dot follows the step.")


def _panel(img: np.ndarray, factor: int) -> np.ndarray:
    return enlarge_nn(img, factor) if factor > 1 else img


def draw_comparison(snap: JobSnapshot) -> None:
    """The article's rows: test image, plain reconstruction, projection result, and the two maps on one scale."""
    r = snap.result
    defects = snap.state.get("defects") or [None] * len(r["labels"])
    map_mode = snap.state.get("config", {}).get("map_mode", "projection")
    st.subheader("Plain reconstruction vs. projection")
    factor = display_scale(r["x0"].shape[1])
    vmax = r["maps_vmax"]
    heads = ["Test image", "Plain reconstruction f(x₀)", "Projection result x_T", f"Projection map {MAP_MODE_LABELS[map_mode]}",
             "Reconstruction error |x₀ − f(x₀)|"]
    if r["plain_recon"] is None:
        heads.remove("Plain reconstruction f(x₀)")
    widths = [1.2] + [1] * len(heads)
    with st.container(border=True):
        for col, head in zip(st.columns(widths), ["", *heads]):
            col.markdown(f"**{head}**" if head else "")
        for i, label in enumerate(r["labels"]):
            cols = st.columns(widths, vertical_alignment="center")
            x0 = _panel(r["x0"][i], factor)
            mask = r["masks"][i]
            if mask is not None:
                x0 = mask_contour(x0, enlarge_nn(mask.astype(np.uint8), factor), color=(0, 230, 64))
            panels = [x0]
            if r["plain_recon"] is not None:
                panels.append(_panel(r["plain_recon"][i], factor))
            panels += [_panel(r["x_final"][i], factor), _panel(heatmap(r["proj_map"][i], 0.0, vmax), factor),
                       _panel(heatmap(r["recon_map"][i], 0.0, vmax), factor)]
            truth = defect_badge(defects[i]) if defects[i] else ":gray-badge[upload]"
            cols[0].markdown(f"**{label}**  \n{truth}")
            captions = [None] * (len(panels) - 2) + [f"score {fmt_score(float(r['proj_scores'][i]))}",
                                                     f"score {fmt_score(float(r['recon_scores'][i]))}"]
            for col, img, cap in zip(cols[1:], panels, captions):
                col.image(img, caption=cap, output_format="PNG")
    bar, text = st.columns([1, 5], vertical_alignment="center")
    bar.image(colorbar(), width=200, output_format="PNG")
    outline = " Green outline: the ground-truth defect mask." if any(m is not None for m in r["masks"]) else ""
    text.caption(f"Both maps on one colour scale, 0 (blue) to {vmax:.3g} (red) = the {MAP_QUANTILE:.1%} quantile of the two; "
                 f"smoothed and scored like the run's test scores.{outline} A plain reconstruction removes the defect but blurs "
                 "the whole image; the projection should keep the image sharp and move only the defect.")


def draw_inspector(snap: JobSnapshot) -> None:
    """A crisp server-side view of one step (a fragment: moving the slider redraws only this part)."""
    r = snap.result
    steps = r["frame_steps"]

    @st.fragment
    def _inspect() -> None:
        if st.session_state.get(KEY_STEP) not in steps:
            st.session_state[KEY_STEP] = steps[-1]
        step = st.select_slider("Step", steps, key=KEY_STEP, help="Server-side view of one step at full resolution.")
        k = steps.index(step)
        factor = display_scale(r["x"].shape[2])
        per_image = r["energy_per_image"][step]
        heads = ["x_t", "f(x_t)", "|x_t − x₀|"]
        cols = st.columns([1.3, 1, 1, 1])
        cols[0].markdown("**Image · energy**")
        for col, head in zip(cols[1:], heads):
            col.markdown(f"**{head}**")
        for i, label in enumerate(r["labels"]):
            cols = st.columns([1.3, 1, 1, 1], vertical_alignment="center")
            cols[0].markdown(f"**{label}**  \nE = {float(per_image[i]):.5g}")
            for col, arr in zip(cols[1:], (r["x"], r["recon"], r["heat"])):
                col.image(enlarge_nn(arr[k, i], factor), output_format="PNG")
        st.caption(f"Step {step} of {r['steps_done']}: mean energy {r['energy'][step]:.5g} (step 0: {r['energy'][0]:.5g}). "
                   f"Panels enlarged {factor}× without smoothing." if factor > 1 else
                   f"Step {step} of {r['steps_done']}: mean energy {r['energy'][step]:.5g} (step 0: {r['energy'][0]:.5g}).")

    _inspect()


def draw_gif(snap: JobSnapshot) -> None:
    data = gif_for(snap.id, snap.started, snap.result)
    left, right = st.columns([2, 3], vertical_alignment="top")
    with left:
        st.download_button("Download GIF", data, file_name=f"{snap.id}.gif", mime="image/gif", icon=":material/download:",
                           key=f"gif-{snap.id}", type="primary")
        st.caption(f"{len(snap.result['frame_steps'])} frames, {len(data) / 1024:.0f} KB; each frame is captioned "
                   "with its step and mean energy, the last one is held longer.")
    with right:
        st.image(data, width="content")


def draw_result(snap: JobSnapshot, run: LoadedRun) -> None:
    draw_summary(snap, run)
    draw_animation(snap)
    draw_comparison(snap)
    inspect_tab, gif_tab = st.tabs(["Inspect a step", "GIF"])
    with inspect_tab:
        draw_inspector(snap)
    with gif_tab:
        draw_gif(snap)


def main() -> None:
    st.title("Projection")
    run = ui.require_run(ui.selection())
    if run is None:
        return
    st.caption("Iterative energy-based projection (Dehaene et al., ICLR 2020): instead of comparing an image with its blurry "
               "reconstruction, move the image towards what the model finds normal while changing as few pixels as possible. "
               "Only the defect fades, so what moved marks it sharply.")
    view = load_test_view(run)
    if view is None:
        return
    registry = ui.job_registry()
    submitted = draw_controls(run, view)
    if submitted is not None:
        request, x0, masks = submitted
        job_id, reused = start_or_reuse(registry, request, run, x0, masks)
        st.session_state[KEY_JOB] = job_id
        hit = find_result(registry, job_id) if reused else None
        if hit is not None and not hit.running:
            st.toast("Same images and settings as before: showing the finished result.", icon=":material/cached:")
    job = registry.get(st.session_state.get(KEY_JOB))
    if job is None:
        st.info("Pick images and settings, then **Run projection**. The projection runs in the background; "
                "a repeated request with the same settings reuses the finished result.", icon=":material/animation:")
        return
    snap = job.snapshot()
    if snap.state.get("run_id") != run.id:
        st.info("The last projection belongs to another run: **Run projection** for this one.", icon=":material/animation:")
        return
    ui.draw_job_state(snap, "The projection", "**Run projection** again.", draw_progress, lambda sn: draw_result(sn, run))


if __name__ == "__main__":
    # Streamlit runs a page as "__main__"; drawing through the importable module keeps one set of cache entries.
    from views import projection as _page

    _page.main()
