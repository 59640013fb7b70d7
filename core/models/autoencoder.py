"""Convolutional autoencoder of the bottle AE article, with width and depth as parameters.

Encoder: ``depth`` blocks of (3x3 conv, BatchNorm, ReLU) x 2 with channels ``base * 2**i`` and a 2x2
max-pool between blocks (article: base 16, depth 6, 16 -> 512 channels, 128 px -> 4 px).
Decoder: ``depth - 1`` stages of (2x2 stride-2 transposed conv, BatchNorm, ReLU) + a two-conv block,
then a 1x1 conv to the image channels. No output activation, as in the article; the training loss is
MSE on [0, 1] images and the reconstruction is clamped to [0, 1] for display and scoring.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from core.config import (
    AEConfig,
)


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

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loss (MSE, mean over pixels and batch) and the raw reconstruction."""
        recon = self(x)
        return F.mse_loss(recon.float(), x.float()), recon

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable reconstruction f(x) in [0, 1]."""
        return self(x).clamp(0.0, 1.0)

    def recon_energy(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Per-image reconstruction loss consistent with training (summed squared error), ``[B]``."""
        return (recon.float() - x.float()).pow(2).flatten(1).sum(1)
