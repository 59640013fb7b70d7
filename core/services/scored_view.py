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

from core.data.images import to_uint8_hwc
from core.detectors.reconstruction import reconstructions
from core.evaluation.curves import summary
from core.evaluation.scored import ScoredSet, load_test_split, scored_set
from core.runs import LoadedRun
from core.viz import heatmap_vmax


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
