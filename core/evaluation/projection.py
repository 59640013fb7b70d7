"""``python -m core project``: the iterative projection over test images, its energy per step, metrics and GIF."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from core.config import ProjectionConfig
from core.data.loading import LoadedSplit
from core.detectors import registry as detectors
from core.detectors.maps import gaussian_blur, image_scores
from core.detectors.projection import (
    ProjectionFrame,
    project,
    projection_map,
    projection_panel,
)
from core.device import resolve_device
from core.errors import ConfigError
from core.evaluation import metrics
from core.evaluation.scored import load_test_split, score_split
from core.runs import load_run
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
    dev = resolve_device(device)
    run = load_run(run_dir, dev)
    index, split = load_test_split(run)
    keep = select_images(index.root, split, images)[:limit]
    if not keep:
        raise ConfigError("no test image matches --images")
    sel = LoadedSplit(split.images[keep], [split.samples[i] for i in keep], split.masks[keep], split.has_mask[keep])
    started = time.perf_counter()
    energy_sum = torch.zeros(cfg.steps + 1, dtype=torch.float64)
    energy_n = torch.zeros(cfg.steps + 1, dtype=torch.float64)
    maps, scores, diverged, gif_frames = [], [], 0, []
    score_cfg = run.config.score_config()
    gif_x0 = sel.images[:gif_images].float().div(255.0)
    for i in range(0, len(sel), batch_size):
        x0 = sel.images[i : i + batch_size].float().div(255.0).to(dev)
        last = None
        for frame in project(run.model, x0, cfg):
            finite = torch.isfinite(frame.energy)
            energy_sum[frame.step] += frame.energy[finite].double().sum().cpu()
            energy_n[frame.step] += int(finite.sum())
            if gif is not None and i == 0:  # keep only what the GIF shows: memory stays O(batch)
                k = gif_images
                gif_frames.append(ProjectionFrame(frame.step, frame.x[:k].cpu(), frame.recon[:k].cpu(), frame.diff[:k].cpu(),
                                                  frame.energy[:k].cpu(), frame.rec_energy[:k].cpu(), frame.diverged[:k].cpu(),
                                                  frame.diverged_step[:k]))
            last = frame
        assert last is not None
        diverged += int(last.diverged.sum())
        m = gaussian_blur(projection_map(last, x0, cfg.map_mode), score_cfg.smooth_sigma)
        maps.append(m.cpu().numpy())
        raw = (last.x - x0).abs().flatten(1).sum(1) * 255.0
        scores.append(image_scores(m, score_cfg, raw).cpu().numpy())
    seconds = time.perf_counter() - started
    maps_np, scores_np = np.concatenate(maps), np.concatenate(scores)
    recon = score_split(detectors.build(run), sel, batch_size=batch_size, device=dev)
    known = sel.has_mask
    masks = sel.masks.numpy()
    has_px = bool(np.any(masks[known]))
    result = {
        "run_id": run.id, "model": run.config.model, "data": run.config.data, "category": run.config.category,
        "steps": cfg.steps, "alpha": cfg.alpha, "lambda": cfg.lam, "map_mode": cfg.map_mode,
        "n_images": len(sel), "n_diverged": diverged, "seconds": seconds, "seconds_per_image": seconds / len(sel),
        "energy": [float(s / n) if n else None for s, n in zip(energy_sum, energy_n)],
        "image_auroc": metrics.image_auroc(scores_np, sel.labels),
        "image_auroc_reconstruction": metrics.image_auroc(recon.scores, sel.labels),
        "pixel_auroc": metrics.pixel_auroc(maps_np[known], masks[known]) if has_px else None,
        "pixel_auroc_reconstruction": metrics.pixel_auroc(recon.maps[known], masks[known]) if has_px else None,
        "aupro": metrics.aupro(maps_np[known], masks[known]) if has_px else None,
        "aupro_reconstruction": metrics.aupro(recon.maps[known], masks[known]) if has_px else None,
    }
    if gif is not None and gif_frames:
        vmax = max(float(torch.quantile(gif_frames[-1].diff.flatten(), 0.995)), 1e-6)
        rendered = [annotate(projection_panel(gif_x0, f, vmax, gif_images),
                             f"step {f.step}/{cfg.steps}  E={float(f.energy[:gif_images].mean()):.1f}") for f in gif_frames]
        atomic_write_bytes(Path(gif), gif_bytes(rendered))
        result["gif"] = str(gif)
        result["gif_frames"] = len(rendered)
    return result


def select_images(root, split, wanted: list[str] | None) -> list[int]:
    """Indices of ``split`` matching ``wanted`` (paths absolute or relative to ``root``, or defect types)."""
    from pathlib import Path

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
