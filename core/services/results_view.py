"""What the Results page shows, computed without Streamlit: the per-type table of flagged shares, the
filtered and sorted order of the test images, and the latent views of a small-image VAE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from core.data.loading import load_split
from core.evaluation.scored import load_test_split
from core.runs import LoadedRun
from core.services.dataset_browse import defect_order
from core.services.latent import decoded_grid, latent_codes, project_2d

GOOD = "good"
TRAIN_CLASS = "good (train)"
TEST_GOOD_CLASS = f"{GOOD} (test)"


def type_rows(scores: np.ndarray, defects: Sequence[str], threshold: float | None) -> list[dict[str, Any]]:
    """One row per defect type: image count, median score and the share flagged (score >= threshold), in %.

    ``flagged %`` is NaN without a threshold.
    """
    defects_arr = np.asarray(defects)
    rows = []
    for defect in defect_order(defects):
        s = scores[defects_arr == defect]
        flagged = float(np.mean(s >= threshold)) * 100 if threshold is not None else float("nan")
        rows.append({"type": defect, "images": int(s.size), "median score": float(np.median(s)), "flagged %": flagged})
    return rows


def ranked(scores: np.ndarray, defects: Sequence[str], chosen: Sequence[str], descending: bool = True) -> np.ndarray:
    """Indices of the images whose type is in ``chosen``, by score (stable; highest first when ``descending``)."""
    keep = np.flatnonzero(np.isin(np.asarray(defects), list(chosen)))
    order = keep[np.argsort(scores[keep], kind="stable")]
    return order[::-1] if descending else order


def latent_view(run: LoadedRun, grid_n: int = 12) -> dict[str, Any]:
    """Latent means of the run's train and test images, their 2-D projection and the decoded grid.

    Returns ``coords`` ``[N, 2]``, ``classes`` (``good (train)``, ``good (test)`` or the defect type),
    ``names``, ``grid`` (the decoded ``grid_n`` x ``grid_n`` image), ``extent``, ``explained``,
    ``identity`` and ``z_dim``.
    """
    cfg = run.config
    index, test = load_test_split(run)
    train = load_split(index, "train", cfg.size, cfg.channels)
    images = np.concatenate([train.images.numpy(), test.images.numpy()]).astype(np.float32) / 255.0
    coords, basis = project_2d(latent_codes(run.model, images))
    classes = [TRAIN_CLASS] * len(train) + [TEST_GOOD_CLASS if s.defect == GOOD else s.defect for s in test.samples]
    return {
        "coords": coords,
        "classes": classes,
        "names": [s.relpath(index.root) for s in [*train.samples, *test.samples]],
        "grid": decoded_grid(run.model, basis, n=grid_n),
        "extent": basis.extent,
        "explained": basis.explained,
        "identity": basis.identity,
        "z_dim": basis.z_dim,
    }
