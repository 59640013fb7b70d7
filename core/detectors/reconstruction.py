"""The reconstruction detector: anomaly map = |input - reconstruction| of an AE or VAE, smoothed; image score from the map."""

from __future__ import annotations

import torch

from core.config import ScoreConfig
from core.detectors.maps import gaussian_blur, image_scores
from core.models.contract import AnomalyOutput


class ReconstructionDetector:
    """Wraps any model with ``reconstruct(x)`` into a detector returning :class:`AnomalyOutput`."""

    def __init__(self, model: torch.nn.Module, score: ScoreConfig | None = None) -> None:
        self.model = model.eval()
        self.score = score or ScoreConfig()
        self.score.validate()

    @torch.no_grad()
    def predict(self, x: torch.Tensor):

        recon = self.model.reconstruct(x).float()
        diff = (x.float() - recon).abs()
        maps = gaussian_blur(diff.mean(1), self.score.smooth_sigma)
        raw_sum = diff.flatten(1).sum(1) * 255.0
        return AnomalyOutput(image_scores(maps, self.score, raw_sum), maps, recon)
