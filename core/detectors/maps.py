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
import torch.nn.functional as F

from core.config import ScoreConfig
from core.errors import ConfigError


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``[B, H, W]`` maps (torchvision's, reflect padding, radius ceil(3 sigma) capped by the
    image side); identity for sigma <= 0."""
    if sigma <= 0:
        return maps
    radius = min(max(1, int(math.ceil(3 * sigma))), min(maps.shape[-2:]) - 1)
    if radius < 1:
        return maps
    # imported here: torchvision takes seconds to import, and most commands never blur
    from torchvision.transforms.v2 import functional as TF

    return TF.gaussian_blur(maps.unsqueeze(1), [2 * radius + 1] * 2, [sigma, sigma]).squeeze(1)


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


def patch_map(dist: torch.Tensor, size: tuple[int, int], sigma_at_224: float) -> torch.Tensor:
    """A patch-level map ``[B, h, w]`` bilinearly upsampled to ``size`` and Gaussian-smoothed, ``sigma_at_224``
    scaled with the image side (the feature detectors' maps)."""
    up = F.interpolate(dist[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return gaussian_blur(up, sigma_at_224 * size[-1] / 224.0)


def interior(maps: torch.Tensor, margin: float) -> torch.Tensor:
    """``maps`` ``[B, h, w]`` without a border of ``margin`` (a fraction of each side, rounded to whole cells).

    Feature detectors score only the interior: a CNN's border features see its zero padding, so border patches
    look rare on every image, good ones included (the papers' 256 -> 224 centre crop has the same effect: 1/16).
    """
    h, w = maps.shape[-2:]
    mh, mw = min(int(round(margin * h)), (h - 1) // 2), min(int(round(margin * w)), (w - 1) // 2)
    return maps[..., mh : h - mh, mw : w - mw]
