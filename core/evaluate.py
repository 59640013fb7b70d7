"""Score a run's test split, measure it, and write metrics, per-image scores and figure strips."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import metrics
from core.data.builtin import open_dataset
from core.data.index import DatasetIndex
from core.data.loading import LoadedSplit, load_split
from core.device import resolve_device
from core.images import save_png
from core.models.contract import Detector
from core.runs import METRICS_FILE, SCORES_FILE, LoadedRun, load_run
from core.viz import result_strip
from core.workspace import atomic_write_json, atomic_write_text


@dataclass
class Scored:
    """Detector output over a whole split, as numpy arrays in the split's order."""

    split: LoadedSplit
    scores: np.ndarray  # [N]
    maps: np.ndarray  # [N, H, W] float32
    reconstructions: np.ndarray | None  # [N, C, H, W] float32

    def summary(self) -> dict[str, Any]:
        """Image and pixel metrics; pixel metrics use only images with known pixel ground truth."""
        known = self.split.has_mask
        masks = self.split.masks.numpy()
        has_defect_mask = bool(np.any(masks[known]))
        return metrics.summarize(
            self.scores,
            self.split.labels,
            self.maps[known] if has_defect_mask else None,
            masks[known] if has_defect_mask else None,
        )


@torch.no_grad()
def score_split(
    detector: Detector, split: LoadedSplit, *, batch_size: int = 32, device: torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Scored:
    """Run ``detector`` over every image of ``split`` in batches."""
    device = device or torch.device("cpu")
    scores, maps, recons = [], [], []
    n = len(split)
    for i in range(0, n, batch_size):
        x = split.images[i : i + batch_size].to(device).float().div_(255.0)
        out = detector.predict(x)
        scores.append(out.score.float().cpu().numpy())
        maps.append(out.anomaly_map.float().cpu().numpy())
        if out.reconstruction is not None:
            recons.append(out.reconstruction.float().cpu().numpy())
        if progress:
            progress(min(n, i + batch_size), n)
    c, h, w = split.images.shape[1:]
    return Scored(
        split,
        np.concatenate(scores) if scores else np.zeros(0, np.float32),
        np.concatenate(maps) if maps else np.zeros((0, h, w), np.float32),
        np.concatenate(recons) if recons else None,
    )


def load_test_split(run: LoadedRun) -> tuple[DatasetIndex, LoadedSplit]:
    """The dataset index of a run and its test split, at the run's size and channels."""
    cfg = run.config
    index = open_dataset(cfg.data, cfg.category, seed=cfg.data_seed)
    return index, load_split(index, "test", cfg.size, cfg.channels)


def scores_csv(scored: Scored, root: Path | None = None) -> str:
    """Per-image scores as CSV text: path, defect, label, score, has_mask."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "defect", "label", "score", "has_mask"])
    for s, score, known in zip(scored.split.samples, scored.scores, scored.split.has_mask):
        writer.writerow([s.relpath(root) if root else str(s.path), s.defect, s.label, f"{float(score):.6g}", int(known)])
    return buf.getvalue()


def evaluate_run(run_dir: Path | str, *, device: str = "auto", strips: bool = True, batch_size: int = 32) -> dict[str, Any]:
    """Score the test split of a run and write ``metrics.json``, ``scores.csv`` and ``strips/``.

    Returns:
        The metrics dict (also written to ``metrics.json``).

    Raises:
        core.runs.RunError: for an unusable run; ValueError for data problems.
    """
    dev = resolve_device(device)
    run = load_run(run_dir, dev)
    index, split = load_test_split(run)
    if len(split) == 0:
        raise ValueError(f"the test split of {run.config.data} has no readable image")
    scored = score_split(run.detector(), split, batch_size=batch_size, device=dev)
    result = scored.summary()
    vmax = float(np.quantile(scored.maps, 0.999)) if scored.maps.size else 1.0
    result.update(
        run_id=run.id,
        model=run.config.model,
        data=run.config.data,
        category=run.config.category,
        epoch=run.epoch,
        score_mode=run.config.score_mode,
        heatmap_vmax=vmax,
        n_skipped=len(split.skipped),
        skipped=split.skipped,
    )
    run_dir = Path(run_dir)
    atomic_write_json(run_dir / METRICS_FILE, result)
    atomic_write_text(run_dir / SCORES_FILE, scores_csv(scored, index.root))
    if strips and scored.reconstructions is not None:
        for k, s in enumerate(split.samples):
            img = result_strip(scored.split.images[k].numpy() / 255.0, scored.reconstructions[k], scored.maps[k], vmax)
            save_png(run_dir / "strips" / s.defect / f"{s.path.stem}.png", img)
    return result
