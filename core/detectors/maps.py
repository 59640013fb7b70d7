"""From reconstructions to anomaly maps and image scores.

Score modes:
    mean  - mean of the (smoothed) map
    max   - max of the (smoothed) map
    topk  - mean of the top ``topk_percent`` % pixels of the (smoothed) map (robust to single-pixel noise)
    sum   - the bottle AE article's score: sum of |input - reconstruction| over all pixels and channels
            of 0-255 images (never smoothed)"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from core.config import ScoreConfig
from core.errors import ConfigError


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, H, W]`` maps (reflect padding); identity for sigma <= 0."""
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, (min(maps.shape[-2:]) - 1))
    coords = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = maps.unsqueeze(1)
    x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def difference_map(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Per-pixel |x - recon| averaged over channels: ``[B, H, W]`` in [0, 1]."""
    return (x.float() - recon.float()).abs().mean(1)


def image_scores(maps: torch.Tensor, cfg: ScoreConfig, raw_diff_sum: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce ``[B, H, W]`` (already smoothed) maps to ``[B]`` scores."""
    flat = maps.flatten(1)
    if cfg.mode == "mean":
        return flat.mean(1)
    if cfg.mode == "max":
        return flat.amax(1)
    if cfg.mode == "topk":
        k = max(1, int(round(flat.shape[1] * cfg.topk_percent / 100.0)))
        return flat.topk(k, dim=1).values.mean(1)
    if raw_diff_sum is None:
        raise ConfigError("score mode 'sum' needs the raw difference sum")
    return raw_diff_sum
