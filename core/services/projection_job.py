"""The Projection page's work without Streamlit: the request, the job that projects a few images and
keeps display frames of the stored steps, and the frame composites of the animation and the GIF."""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from core.config import ProjectionConfig
from core.detectors import registry as detectors
from core.detectors.projection import ProjectionDetector, mean_energy_curve, project
from core.detectors.reconstruction import ReconstructionDetector
from core.device import module_device, resolve_device
from core.errors import ConfigError
from core.runs import load_run
from core.services.image_request import ImageRequest
from core.services.jobs import JobContext, WorkerTask
from core.services.panels import display_rgb, display_scale, enlarge_nn
from core.viz import annotate, column_headers, heatmap
from core.workspace import atomic_write_bytes

JOB_KIND = "projection"
MAX_FRAMES = 51  # stored (and animated) steps: evenly spread over the run, always the first and last
KEEP_RESULTS = 6  # finished projection results kept in memory per server process
DIFF_QUANTILE = 0.995  # colour scale of |x_t - x0|: this quantile of the last step's difference
MAP_QUANTILE = 0.995  # common colour scale of the two maps of the comparison rows
GIF_PX = 128  # GIF panels are enlarged up to this side (the GIF stays a few MB at most)
RESULTS_DIR = "projections"  # finished results in the run folder: RUN/projections/<job id>.npz (every process sees them)
KEEP_STORED = 8  # finished results kept per run (the oldest go first)
STORE_FORMAT = "anomalylab-projection/1"


@dataclass(frozen=True)
class ProjectionRequest(ImageRequest):
    """What to project: which images of which run (``model_id``), with which settings."""

    KIND: ClassVar[str] = JOB_KIND
    OWNER: ClassVar[str] = "run_id"

    cfg: ProjectionConfig

    def settings(self) -> dict[str, Any]:
        return asdict(self.cfg)

    @property
    def title(self) -> str:
        return f"Projection · {len(self.keys)} image(s) · {self.cfg.steps} steps · run {self.model_id}"

    def job_state(self) -> dict[str, Any]:
        return {**super().job_state(), "config": asdict(self.cfg)}


def stored_steps(steps: int, limit: int = MAX_FRAMES) -> list[int]:
    """The steps whose frames are kept: all of them, or ``limit`` spread evenly (first and last included)."""
    if steps + 1 <= limit:
        return list(range(steps + 1))
    return sorted({int(round(s)) for s in np.linspace(0, steps, limit)})


def _quantile_vmax(values: np.ndarray, q: float) -> float:
    return max(float(np.quantile(values, q)), 1e-6)


def projection_task(
    run_dir: Path | str, x0: np.ndarray | torch.Tensor, cfg: ProjectionConfig, labels: list[str],
    masks: list[np.ndarray | None], device: str = "auto", job_id: str | None = None,
) -> WorkerTask:
    """A job that projects ``x0`` (float ``[B, C, H, W]`` in [0, 1]) with the run's model and keeps display frames
    of every stored step; the model is loaded where the job runs (a worker process), on ``device``. With ``job_id``
    the finished result is also stored in the run folder (:func:`load_result` finds it, in any process).

    State: ``step``, ``steps``, ``energy`` (mean per step so far). Result: uint8 frames ``x``,
    ``recon``, ``heat`` ``[F, B, H, W, 3]`` for the ``frame_steps``; ``energy`` (mean per step) and
    ``energy_per_image``; the comparison data (``x0``, ``plain_recon``, ``proj_map``, ``recon_map``,
    their scores and colour scales ``proj_vmax`` and ``recon_vmax``); ``diverged`` ([(label, step)]); ``guarded`` ([(label, halvings, alpha,
    stalled)]) and ``energy_rises`` (step-to-step rises of any image's energy); ``stopped``.
    """
    x0 = x0.numpy() if isinstance(x0, torch.Tensor) else np.asarray(x0)
    return WorkerTask(_project, {"run_dir": str(run_dir), "x0": x0, "cfg": cfg, "labels": list(labels),
                                 "masks": list(masks), "device": device, "job_id": job_id})


def _project(ctx: JobContext, run_dir: str, x0: np.ndarray, cfg: ProjectionConfig, labels: list[str],
             masks: list[np.ndarray | None], device: str, job_id: str | None) -> dict[str, Any]:
    run = load_run(run_dir, resolve_device(device))
    result = run_projection(ctx, run.model, detectors.build(run), torch.from_numpy(x0).to(module_device(run.model)),
                            cfg, labels, masks)
    if job_id and not result["stopped"]:  # a stopped projection is not the request's result
        try:
            save_result(run_dir, job_id, result)
        except OSError:  # a read-only run folder: the result still reaches this server's sessions
            pass
    return result


def stored_result_path(run_dir: Path | str, job_id: str) -> Path:
    """Where the finished result of the projection job ``job_id`` on the run is stored."""
    if not job_id.replace("-", "").isalnum():
        raise ConfigError(f"not a projection job id: {job_id!r}")
    return Path(run_dir) / RESULTS_DIR / f"{job_id}.npz"


def save_result(run_dir: Path | str, job_id: str, result: dict[str, Any]) -> Path:
    """Store a finished result (its arrays, and the rest as JSON inside the same file), atomically; keeps the newest
    :data:`KEEP_STORED` of the run."""
    arrays = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
    masks = result.get("masks") or []
    arrays.update({f"mask_{i}": m for i, m in enumerate(masks) if m is not None})
    rest = {k: v for k, v in result.items() if k not in arrays and k != "masks"}
    meta = {"format": STORE_FORMAT, "arrays": sorted(k for k in arrays if not k.startswith("mask_")),
            "masks": [m is not None for m in masks], "fields": rest}
    buf = io.BytesIO()
    text = json.dumps(meta, default=lambda v: v.item() if isinstance(v, np.generic) else str(v))
    np.savez(buf, __meta__=np.frombuffer(text.encode(), np.uint8), **arrays)
    path = stored_result_path(run_dir, job_id)
    atomic_write_bytes(path, buf.getvalue())
    for old in sorted(path.parent.glob("*.npz"), key=lambda p: (p.stat().st_mtime_ns, p.name))[:-KEEP_STORED]:
        old.unlink(missing_ok=True)
    return path


def load_result(run_dir: Path | str, job_id: str) -> dict[str, Any] | None:
    """The stored result of ``job_id`` (as :func:`run_projection` returned it), or None when there is none or it
    cannot be read (then it is computed again)."""
    try:
        path = stored_result_path(run_dir, job_id)
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["__meta__"]).decode())
            if meta.get("format") != STORE_FORMAT:
                return None
            out: dict[str, Any] = dict(meta["fields"])
            out.update({k: data[k] for k in meta["arrays"]})
            out["masks"] = [data[f"mask_{i}"] if present else None for i, present in enumerate(meta["masks"])]
    except (OSError, ValueError, KeyError, ConfigError):
        return None
    for key in ("diverged", "guarded"):  # JSON has no tuples
        out[key] = [tuple(item) for item in out.get(key, [])]
    return out


def run_projection(ctx: JobContext, model: torch.nn.Module, detector: ReconstructionDetector, x0: torch.Tensor,
                   cfg: ProjectionConfig, labels: list[str], masks: list[np.ndarray | None]) -> dict[str, Any]:
    """The work of :func:`projection_task` with a model in hand (its result, published state and stop request)."""
    started = time.perf_counter()
    keep = set(stored_steps(cfg.steps))
    xs, recons, diffs, frame_steps, energies = [], [], [], [], []
    last = None
    stopped = False

    def store(frame: Any) -> None:
        xs.append(display_rgb(frame.x))
        recons.append(display_rgb(frame.recon))
        diffs.append(frame.diff.float().cpu().numpy().astype(np.float16))
        frame_steps.append(frame.step)

    ctx.update(step=0, steps=cfg.steps, energy=[])
    for frame in project(model, x0, cfg):
        energies.append(frame.energy.detach().float().cpu())
        if frame.step in keep:
            store(frame)
        last = frame
        ctx.update(step=frame.step, energy=mean_energy_curve(energies))
        if ctx.stop.is_set():
            stopped = frame.step < cfg.steps
            break
    assert last is not None
    if frame_steps[-1] != last.step:  # stopped (or every image diverged) between two stored steps
        store(last)
    vmax = _quantile_vmax(diffs[-1].astype(np.float32), DIFF_QUANTILE)
    heat = np.stack([np.stack([heatmap(d.astype(np.float32), 0.0, vmax) for d in step]) for step in diffs])
    # The article's comparison: the plain reconstruction error against the projection map, scored alike.
    plain = detector.predict(x0)
    proj = ProjectionDetector(model, cfg, detector.score).output(last, x0)  # the registry detector's map and score
    recon_map, proj_map_np = plain.anomaly_map.float().cpu().numpy(), proj.anomaly_map.float().cpu().numpy()
    proj_scores = proj.score
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
        "energy_per_image": torch.stack(energies).numpy(),  # [steps + 1, B]
        "x0": display_rgb(x0),
        "plain_recon": display_rgb(plain.reconstruction) if plain.reconstruction is not None else None,
        "x_final": display_rgb(last.x),
        "recon_map": recon_map,
        "proj_map": proj_map_np,
        "recon_scores": plain.score.float().cpu().numpy(),
        "proj_scores": proj_scores.float().cpu().numpy(),
        # each map on its own colour scale: the projection map is much smaller than the reconstruction error
        # (on one scale it was nearly uniform dark blue); each scale is stated under the rows
        "recon_vmax": _quantile_vmax(recon_map, MAP_QUANTILE),
        "proj_vmax": _quantile_vmax(proj_map_np, MAP_QUANTILE),
        "masks": masks,
        "diverged": [(labels[i], s) for i, s in enumerate(last.diverged_step) if s is not None],
        "monotone": cfg.monotone,
        # the guard: (label, halvings of alpha, the alpha it ends with, stalled) of every image it acted on
        "guarded": [(labels[i], int(h), float(a), bool(st)) for i, (h, a, st)
                    in enumerate(zip(last.halvings.tolist(), last.alpha.tolist(), last.stalled.tolist())) if h],
        "energy_rises": int(np.count_nonzero(np.diff(torch.stack(energies).numpy().astype(np.float64), axis=0) > 0)),
        "stopped": stopped,
        "seconds": time.perf_counter() - started,
    }


def composite(frames: list[np.ndarray], gap: int) -> np.ndarray:
    """One image per step: rows of [x_t | f(x_t) | heatmap] per image, white gaps. ``frames`` are [F, B, H, W, 3]."""
    f, b, h, w, _ = frames[0].shape
    k = len(frames)
    out = np.full((f, b * h + (b - 1) * gap, k * w + (k - 1) * gap, 3), 255, np.uint8)
    for i in range(b):
        for j, arr in enumerate(frames):
            out[:, i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = arr[:, i]
    return out


def frame_gap(result: dict[str, Any]) -> int:
    """The white gap between the panels of a composite: 1 px per 32 px of image side."""
    return max(1, result["x"].shape[2] // 32)


def animation_frames(result: dict[str, Any]) -> np.ndarray:
    """The composites of all stored steps at native resolution (plotly enlarges them, pixelated)."""
    return composite([result["x"], result["recon"], result["heat"]], gap=frame_gap(result))


GIF_COLUMNS = ["x_t", "f(x_t)", "|x_t - x0|"]  # the composite's columns (OpenCV's font has no subscripts)


def gif_frames(result: dict[str, Any]) -> list[np.ndarray]:
    """Enlarged composites for the GIF with their column names and a caption "step t/T  E=..."."""
    factor = display_scale(result["x"].shape[2], GIF_PX)
    frames = animation_frames(result)
    energy = result["energy"]
    col, gap = result["x"].shape[3] * factor, frame_gap(result) * factor
    return [annotate(column_headers(enlarge_nn(frames[k], factor), GIF_COLUMNS, col, gap),
                     f"step {step}/{result['steps']}  E={energy[step]:.1f}")
            for k, step in enumerate(result["frame_steps"])]
