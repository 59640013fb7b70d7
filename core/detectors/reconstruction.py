"""The reconstruction detector: anomaly map = |input - reconstruction| of an AE or VAE (or 1 - SSIM for an AE
trained with an SSIM loss), smoothed; image score from the map."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
from cachetools import LRUCache

from core.config import ScoreConfig
from core.data.builtin import open_dataset
from core.data.images import to_uint8_hwc
from core.data.loading import load_split, split_train_val
from core.detectors.maps import gaussian_blur, image_scores
from core.device import module_device
from core.models.contract import AnomalyOutput
from core.models.ssim import ssim_residual
from core.runs import BEST_CKPT, LoadedRun

RESIDUALS = ("auto", "l1", "ssim")  # auto: what the model was trained with (its ``residual``; else l1)
STD_FLOOR = 0.1  # the per-pixel std is floored at this share of its mean: few normal images give noisy stds


@dataclass(frozen=True)
class NormalError:
    """Per-pixel mean and std ``[H, W]`` of the smoothed error map over held-out normal images."""

    mean: torch.Tensor
    std: torch.Tensor
    n_images: int

    def standardize(self, maps: torch.Tensor) -> torch.Tensor:
        """``(map - mean) / std`` per pixel, negatives (better than usual) set to 0."""
        std = torch.maximum(self.std, STD_FLOOR * self.std.mean()).clamp_min(1e-8)
        return ((maps - self.mean.to(maps.device)) / std.to(maps.device)).clamp_min_(0.0)


class ReconstructionDetector:
    """Wraps any model with ``reconstruct(x)`` into a detector returning :class:`AnomalyOutput`.

    Args:
        normal: the error statistics of held-out normal images; when given the map is standardized per pixel,
            so regions that reconstruct poorly on every normal image (edges, texture) no longer dominate the score.
        residual: the per-pixel error: ``l1`` = |x - f(x)| (channel mean), ``ssim`` = (1 - SSIM(x, f(x))) / 2,
            ``auto`` = the one the model was trained for.
    """

    def __init__(self, model: torch.nn.Module, score: ScoreConfig | None = None, normal: NormalError | None = None,
                 residual: str = "auto") -> None:
        self.model = model.eval()
        self.score = score or ScoreConfig()
        self.score.validate()
        self.normal = normal
        self.residual = resolve_residual(model, residual)

    @torch.no_grad()
    def error_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The smoothed error map ``[B, H, W]``, the reconstruction and ``|x - recon|``."""
        recon = self.model.reconstruct(x).float()
        diff = (x.float() - recon).abs()
        err = ssim_residual(x, recon) if self.residual == "ssim" else diff.mean(1)
        return gaussian_blur(err, self.score.smooth_sigma), recon, diff

    @torch.no_grad()
    def predict(self, x: torch.Tensor):
        maps, recon, diff = self.error_maps(x)
        if self.normal is not None:
            maps = self.normal.standardize(maps)
        raw_sum = diff.flatten(1).sum(1) * 255.0
        return AnomalyOutput(image_scores(maps, self.score, raw_sum), maps, recon)


def resolve_residual(model: torch.nn.Module, residual: str = "auto") -> str:
    """``l1`` or ``ssim``: ``residual`` itself, or for ``auto`` the model's own (an SSIM-trained AE: ssim)."""
    if residual not in RESIDUALS:
        raise ValueError(f"residual must be one of {', '.join(RESIDUALS)}, got {residual!r}")
    return getattr(model, "residual", "l1") if residual == "auto" else residual


@torch.no_grad()
def normal_error(model: torch.nn.Module, images: torch.Tensor, score: ScoreConfig, batch_size: int = 32,
                 residual: str = "auto") -> NormalError:
    """:class:`NormalError` of uint8 normal images ``[N, C, H, W]`` (N >= 2)."""
    if len(images) < 2:
        raise ValueError("the normal error model needs at least 2 held-out normal images")
    det = ReconstructionDetector(model, score, residual=residual)
    device = module_device(model)
    maps = torch.cat([det.error_maps(images[i : i + batch_size].to(device).float().div_(255.0))[0].cpu()
                      for i in range(0, len(images), batch_size)]).double()
    return NormalError(maps.mean(0).float(), maps.std(0).float(), len(images))


@torch.no_grad()
def reconstructions(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 32) -> np.ndarray | None:
    """uint8 HWC reconstructions of uint8 ``[N, C, H, W]`` images, or None for a model that does not reconstruct."""
    if not hasattr(model, "reconstruct"):
        return None
    device = module_device(model)
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device).float().div_(255.0)
        out += [to_uint8_hwc(r) for r in model.reconstruct(x).float().clamp(0, 1).cpu().numpy()]
    return np.stack(out) if out else None


_NORMAL_CACHE: LRUCache[tuple, NormalError] = LRUCache(maxsize=8)
_NORMAL_LOCK = threading.Lock()


def run_normal_error(run: LoadedRun, score: ScoreConfig, residual: str = "auto") -> NormalError:
    """:class:`NormalError` of a run over its own held-out normal images (the training split's seeded
    validation share, never seen by training); all training images when the run held none out. Cached per
    run, checkpoint and score settings."""
    cfg = run.config
    ckpt = run.path / BEST_CKPT
    residual = resolve_residual(run.model, residual)
    key = (str(run.path.resolve()), ckpt.stat().st_mtime_ns if ckpt.exists() else 0, score, residual)
    with _NORMAL_LOCK:
        hit = _NORMAL_CACHE.get(key)
    if hit is not None:
        return hit
    train = load_split(open_dataset(cfg.data, cfg.category, seed=cfg.data_seed), "train", cfg.size, cfg.channels)
    _, val = split_train_val(len(train), cfg.val_fraction, cfg.seed)
    images = train.images[torch.from_numpy(val)] if len(val) >= 2 else train.images
    out = normal_error(run.model, images, score, residual=residual)
    with _NORMAL_LOCK:
        _NORMAL_CACHE[key] = out
    return out
