"""The reconstruction detector: anomaly map = |input - reconstruction| of an AE or VAE, smoothed; image score from the map."""

from __future__ import annotations

import numpy as np
import torch

from core.config import ScoreConfig
from core.data.images import to_uint8_hwc
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
