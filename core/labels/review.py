"""The Label page's review queues: unlabeled first, disagreeing with the model, closest to the threshold, random."""

from __future__ import annotations

from typing import Any

import numpy as np


# ------------------------------------------------------------------------------------------ review
def review_order(kind: str, labels_mine: list[Any], dataset_labels: np.ndarray, scores: np.ndarray | None,
                 threshold: float | None, seed: int = 0) -> list[int]:
    """Sample indices in review order for queue ``kind``.

    * ``unlabeled``: images without a label of mine first (highest model score first when scored), then
      the labeled ones;
    * ``disagree``: images whose label (mine, else the dataset's) disagrees with the model's verdict at
      ``threshold``, farthest from the threshold first, then the rest;
    * ``closest``: nearest to ``threshold`` first;
    * ``random``: a fixed shuffle (``seed``).
    """
    n = len(labels_mine)
    idx = np.arange(n)
    if kind == "random":
        return [int(i) for i in np.random.default_rng(seed).permutation(n)]
    if scores is None or threshold is None:
        if kind == "unlabeled":
            return [int(i) for i in sorted(idx, key=lambda i: labels_mine[i] is not None)]
        return [int(i) for i in idx]
    if kind == "unlabeled":
        return [int(i) for i in sorted(idx, key=lambda i: (labels_mine[i] is not None, -scores[i]))]
    if kind == "closest":
        return [int(i) for i in np.argsort(np.abs(scores - threshold), kind="stable")]
    verdict = scores >= threshold
    truth = np.array([(r.label == "defective") if r is not None and r.label != "unsure" else (d == 1 if d >= 0 else None)
                      for r, d in zip(labels_mine, dataset_labels)], dtype=object)
    wrong = np.array([t is not None and bool(t) != bool(v) for t, v in zip(truth, verdict)])
    dist = np.abs(scores - threshold)
    return [int(i) for i in sorted(idx, key=lambda i: (not wrong[i], -dist[i] if wrong[i] else dist[i]))]
