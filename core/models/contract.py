"""The one output contract every detector returns.

Pages, metrics and the CLI only ever see an :class:`AnomalyOutput`, whatever model made it:
higher score = more anomalous, maps at input resolution.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Protocol

import torch


class AnomalyOutput(NamedTuple):
    """What a detector says about a batch of images.

    Attributes:
        score: ``[B]`` image anomaly scores, higher = more anomalous.
        anomaly_map: ``[B, H, W]`` per-pixel anomaly at input resolution, higher = more anomalous; None for
            image-level detectors (the f-Net distance), which do not localize: no fake maps.
        reconstruction: ``[B, C, H, W]`` the normal-looking version of the input in [0, 1], or None
            for detectors that do not reconstruct.
        extras: per-image diagnostics of the detector, each ``[B, ...]`` (e.g. the projection's energy per
            step); kept in :class:`core.evaluation.scored.ScoredSet` ``extras``. None when there are none.
    """

    score: torch.Tensor
    anomaly_map: torch.Tensor | None
    reconstruction: torch.Tensor | None
    extras: Mapping[str, torch.Tensor] | None = None


class Detector(Protocol):
    """Anything that maps a float batch ``[B, C, H, W]`` in [0, 1] to an :class:`AnomalyOutput`."""

    def predict(self, x: torch.Tensor) -> AnomalyOutput:  # pragma: no cover - protocol
        ...
