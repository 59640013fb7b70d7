"""A run's scored test set ready for display: the one evaluation path's scores, maps and metrics, with the
images and reconstructions the pages show beside them.

The numbers come from :func:`core.evaluation.scored.scored_set` and :func:`core.evaluation.curves.summary`
only, the same as ``python -m core evaluate`` and the Threshold page: a number on one page is the number
on every other. The images and reconstructions are display material, never scored again here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from core.data.images import to_uint8_hwc
from core.evaluation.curves import summary
from core.evaluation.scored import ScoredSet, load_test_split, scored_set
from core.runs import LoadedRun

HEATMAP_QUANTILE = 0.999  # the common colour scale of a set's heatmaps tops out at this quantile


@torch.no_grad()
def reconstructions(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 32) -> np.ndarray | None:
    """uint8 HWC reconstructions of uint8 ``[N, C, H, W]`` images, or None for a model that does not reconstruct."""
    if not hasattr(model, "reconstruct"):
        return None
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device).float().div_(255.0)
        out += [to_uint8_hwc(r) for r in model.reconstruct(x).float().clamp(0, 1).cpu().numpy()]
    return np.stack(out) if out else None


def heatmap_vmax(maps: np.ndarray | None) -> float:
    """The top of a set's common heatmap colour scale."""
    if maps is None or not maps.size:
        return 1.0
    return float(np.quantile(maps.astype(np.float32), HEATMAP_QUANTILE))


def scored_view(run: LoadedRun, detector: str = "auto", settings: Mapping[str, Any] | None = None,
              device: str = "cpu", scored: ScoredSet | None = None) -> dict[str, Any]:
    """The scored test set of ``run`` with its images.

    Returns:
        ``names`` (paths relative to the data root), ``defects``, ``labels`` (1 / 0 / -1 unknown),
        ``scores``, ``maps`` (float32 ``[N, H, W]`` or None), ``images`` (uint8 HWC), ``recons`` (uint8
        HWC or None), ``masks``, ``has_mask``, ``metrics`` (:func:`core.evaluation.curves.summary`),
        ``vmax``, ``skipped``, ``scored`` (the :class:`ScoredSet`) and ``detector``.

    Raises:
        core.errors.AnomalyLabError: an unusable run, detector or data.
    """
    ss = scored if scored is not None else scored_set(run.path, detector, settings=settings, device=device)
    index, split = load_test_split(run)
    names = [s.relpath(index.root) for s in split.samples]
    if tuple(names) != ss.paths:  # the cache is keyed by the test files: this means they changed meanwhile
        ss = scored_set(run.path, detector, settings=settings, device=device, refresh=True)
    maps = ss.maps.astype(np.float32) if ss.maps is not None else None
    return {
        "names": list(ss.paths),
        "defects": list(ss.defects),
        "labels": ss.labels,
        "scores": ss.scores,
        "maps": maps,
        "images": np.stack([to_uint8_hwc(x) for x in split.images.numpy() / 255.0]) if len(split) else np.zeros((0, 1, 1, 3), np.uint8),
        "recons": reconstructions(run.model, split.images) if ss.detector == "reconstruction" else None,
        "masks": split.masks.numpy(),
        "has_mask": split.has_mask,
        "metrics": summary(ss),
        "vmax": heatmap_vmax(maps),
        "skipped": list(split.skipped),
        "scored": ss,
        "detector": ss.detector,
    }
