"""``python -m core project``: the iterative projection over test images, its energy per step, metrics and GIF."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from core.config import ProjectionConfig
from core.data.loading import LoadedSplit
from core.detectors.projection import ProjectionFrame, project, projection_panel
from core.device import resolve_device
from core.errors import ConfigError
from core.evaluation.curves import summary
from core.evaluation.scored import load_test_split, scored_set, scored_set_path
from core.runs import load_run
from core.training import distributed
from core.viz import annotate, gif_bytes
from core.workspace import atomic_write_bytes


def evaluate_projection(
    run_dir, cfg: ProjectionConfig, *, images: list[str] | None = None, limit: int | None = None, gif=None,
    gif_images: int = 4, batch_size: int = 16, device: str = "auto",
) -> dict:
    """Project test images of a run; compare the projection map with the plain reconstruction error.

    Args:
        run_dir: a trained reconstruction run (VAE or AE).
        cfg: projection settings.
        images: test images to use, as paths (absolute or relative to the category folder) or defect
            type names; default all test images.
        limit: use at most this many of them.
        gif: write an animated GIF here (one frame per step, step 0 = the input).
        gif_images: how many images the GIF shows.

    Returns:
        A JSON-ready dict: ``energy`` (mean per step), ``pixel_auroc``, ``pixel_auroc_reconstruction``,
        ``aupro``, ``aupro_reconstruction``, ``image_auroc``, ``image_auroc_reconstruction``, counts, settings.
    """
    cfg.validate()
    ctx = distributed.setup(resolve_device(device)) if distributed.launched() else None  # torchrun: each rank its GPU
    dev = ctx.device if ctx is not None else resolve_device(device)
    run = load_run(run_dir, dev)
    index, split = load_test_split(run)
    keep = select_images(index.root, split, images)[:limit]
    if not keep:
        raise ConfigError("no test image matches --images")
    paths = [split.samples[i].relpath(Path(index.root)) for i in keep]
    # the one evaluation path: the registry's projection detector and the plain reconstruction, same images
    ss = scored_set(run_dir, "projection", settings=asdict(cfg), images=paths, device=str(dev), batch_size=batch_size)
    recon = scored_set(run_dir, "reconstruction", images=paths, device=str(dev), batch_size=batch_size)
    if not distributed.is_main():  # under torchrun this rank scored its share (scored_set gathers); rank 0 reports
        return {"rank": ctx.rank, "n_images": len(ss)}
    proj_m, recon_m = summary(ss), summary(recon)
    energy = ss.extras["energy"].astype(np.float64)
    seen = np.isfinite(energy).any(0)
    seconds = float(ss.meta.get("seconds") or 0.0)
    result = {
        "run_id": run.id, "model": run.config.model, "data": run.config.data, "category": run.config.category,
        "steps": cfg.steps, "alpha": cfg.alpha, "lambda": cfg.lam, "map_mode": cfg.map_mode,
        "n_images": len(ss), "n_diverged": int(np.count_nonzero(ss.extras["diverged_step"] >= 0)),
        "monotone": cfg.monotone, **guard_counts(ss.extras),
        "seconds": seconds, "seconds_per_image": seconds / len(ss),
        "energy": [float(np.nanmean(energy[:, k])) if seen[k] else None for k in range(energy.shape[1])],
        "image_auroc": proj_m["image_auroc"], "image_auroc_reconstruction": recon_m["image_auroc"],
        "pixel_auroc": proj_m["pixel_auroc"], "pixel_auroc_reconstruction": recon_m["pixel_auroc"],
        "aupro": proj_m["aupro"], "aupro_reconstruction": recon_m["aupro"],
        "scored": str(scored_set_path(run_dir, "projection", settings=asdict(cfg), images=paths)),
    }
    if gif is not None:
        result.update(write_gif(run.model, split.subset(keep[:gif_images]), cfg, Path(gif), dev))
    return result


def guard_counts(extras: dict) -> dict[str, int]:
    """How often the monotone guard acted: ``n_guarded`` images had alpha halved (``alpha_halvings`` times in
    all), ``n_stalled`` stopped because no step lowered their energy; ``energy_rises`` counts step-to-step rises of
    any image's energy (0 with the guard)."""
    halvings = np.asarray(extras.get("alpha_halvings", np.zeros(0)), dtype=np.int64)
    energy = np.asarray(extras.get("energy", np.zeros((0, 0))), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        rises = np.diff(energy, axis=1) > 0 if energy.size else np.zeros(0, dtype=bool)
    return {"n_guarded": int(np.count_nonzero(halvings)), "alpha_halvings": int(halvings.sum()),
            "n_stalled": int(np.count_nonzero(np.asarray(extras.get("stalled", np.zeros(0)), dtype=bool))),
            "energy_rises": int(np.count_nonzero(rises))}


def write_gif(model: torch.nn.Module, sel: LoadedSplit, cfg: ProjectionConfig, path: Path, device: torch.device) -> dict:
    """An animated GIF of the projection of ``sel`` (one frame per step, step 0 = the input): rows of
    [x0 | x_t | f(x_t) | |x_t - x0|], one colour scale (the last step's 99.5 % quantile)."""
    x0 = sel.float_images().to(device)
    frames = [ProjectionFrame(f.step, f.x.cpu(), f.recon.cpu(), f.diff.cpu(), f.energy.cpu(), f.rec_energy.cpu(),
                              f.diverged.cpu(), f.diverged_step, f.halvings, f.alpha, f.stalled)
              for f in project(model, x0, cfg)]
    vmax = max(float(torch.quantile(frames[-1].diff.flatten().float(), 0.995)), 1e-6)
    rendered = [annotate(projection_panel(x0.cpu(), f, vmax), f"step {f.step}/{cfg.steps}  E={float(f.energy.mean()):.1f}")
                for f in frames]
    atomic_write_bytes(path, gif_bytes(rendered))
    return {"gif": str(path), "gif_frames": len(rendered)}


def select_images(root, split, wanted: list[str] | None) -> list[int]:
    """Indices of ``split`` matching ``wanted`` (paths absolute or relative to ``root``, or defect types)."""
    if not wanted:
        return list(range(len(split)))
    out = []
    for item in wanted:
        p = Path(item)
        hits = [i for i, s in enumerate(split.samples)
                if s.defect == item or s.path == p.resolve() or s.relpath(Path(root)) == p.as_posix()
                or s.path.resolve() == (Path(root) / p).resolve()]
        if not hits:
            raise ConfigError(f"{item!r} is neither a test image of {root} nor a defect type")
        out += [i for i in hits if i not in out]
    return out
