"""Convolutional autoencoder of the bottle AE article, with width and depth as parameters.

Encoder: ``depth`` blocks of (3x3 conv, BatchNorm, ReLU) x 2 with channels ``base * 2**i`` and a 2x2
max-pool between blocks (article: base 16, depth 6, 16 -> 512 channels, 128 px -> 4 px).
Decoder: ``depth - 1`` stages of (2x2 stride-2 transposed conv, BatchNorm, ReLU) + a two-conv block,
then a 1x1 conv to the image channels. No output activation, as in the article; the training loss is
MSE on [0, 1] images (``loss="ssim"``: 1 - SSIM, Bergmann et al. 2019; ``"ssim_l1"``: 0.84 (1 - SSIM) +
0.16 L1, Zhao et al. 2017) and the reconstruction is clamped to [0, 1] for display and scoring.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from core.config import (
    AEConfig,
)
from core.models.ssim import ssim_map

SSIM_L1_WEIGHT = 0.84  # Zhao et al. 2017: the SSIM share of the mixed loss


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ConvAutoencoder(nn.Module):
    """The article's AE. ``forward`` returns the raw (unclamped) reconstruction."""

    def __init__(self, cfg: AEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = [cfg.base_channels * 2**i for i in range(cfg.depth)]
        self.encoder = nn.ModuleList()
        cin = cfg.in_channels
        for w in widths:
            self.encoder.append(_block(cin, w))
            cin = w
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(
                nn.Sequential(nn.ConvTranspose2d(cin, w, 2, stride=2, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
            )
            self.decoder.append(_block(w, w))
            cin = w
        self.head = nn.Conv2d(cin, cfg.in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.encoder):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
        for up, block in zip(self.up, self.decoder):
            x = block(up(x))
        return self.head(x)

    @property
    def residual(self) -> str:
        """The anomaly map that matches the training loss: ``l1`` (|x - f(x)|) or ``ssim`` (1 - SSIM)."""
        return "l1" if self.cfg.loss == "mse" else "ssim"

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loss (mean over pixels and batch; see the module) and the raw reconstruction."""
        recon = self(x)
        r, t = recon.float(), x.float()
        if self.cfg.loss == "mse":
            return F.mse_loss(r, t), recon
        dissim = 1.0 - ssim_map(r, t).mean()
        if self.cfg.loss == "ssim":
            return dissim, recon
        return SSIM_L1_WEIGHT * dissim + (1.0 - SSIM_L1_WEIGHT) * F.l1_loss(r, t), recon

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable reconstruction f(x) in [0, 1]."""
        return self(x).clamp(0.0, 1.0)

    def recon_energy(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Per-image reconstruction loss consistent with training (summed squared error), ``[B]``."""
        return (recon.float() - x.float()).pow(2).flatten(1).sum(1)
