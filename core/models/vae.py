"""Convolutional variational autoencoder (VAE anomaly-removal and projection articles).

Encoder: stride-2 4x4 convs with BatchNorm + LeakyReLU(0.2) (32, 64, 128, ... channels) until the map
is ``bottleneck`` px, then linear layers to the latent mean and log-variance. Decoder mirrors it with
transposed convs and a sigmoid output. Training uses the reparameterized sample; evaluation the mean.
Loss: per-image summed BCE (or MSE) + ``kl_weight`` * KL, averaged over the batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from core.config import (
    VAEConfig,
)


class ConvVAE(nn.Module):
    """A conv VAE whose decoder outputs logits; :meth:`reconstruct` applies the sigmoid."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        widths = [min(cfg.base_channels * 2**i, 512) for i in range(cfg.n_down)]
        layers: list[nn.Module] = []
        cin = cfg.in_channels
        for w in widths:
            layers += [nn.Conv2d(cin, w, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.LeakyReLU(0.2, inplace=True)]
            cin = w
        self.encoder = nn.Sequential(*layers)
        self.flat = cin * cfg.bottleneck**2
        self.to_mu = nn.Linear(self.flat, cfg.z_dim)
        self.to_logvar = nn.Linear(self.flat, cfg.z_dim)
        self.from_z = nn.Linear(cfg.z_dim, self.flat)
        self.top_channels = cin
        dec: list[nn.Module] = []
        targets = [*reversed(widths[:-1]), cfg.in_channels]
        for i, w in enumerate(targets):
            last = i == len(targets) - 1
            dec.append(nn.ConvTranspose2d(cin, w, 4, stride=2, padding=1, bias=last))
            if not last:
                dec += [nn.BatchNorm2d(w), nn.LeakyReLU(0.2, inplace=True)]
            cin = w
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent mean and log-variance, each ``[B, z_dim]``."""
        h = self.encoder(x).flatten(1).float()
        return self.to_mu(h), self.to_logvar(h).clamp(-30.0, 20.0)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder logits ``[B, C, H, W]``."""
        h = F.leaky_relu(self.from_z(z), 0.2).view(-1, self.top_channels, self.cfg.bottleneck, self.cfg.bottleneck)
        return self.decoder(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoded images in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction logits from the latent mean (deterministic)."""
        mu, _ = self.encode(x)
        return self.decode_logits(mu)

    def _recon_term(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.cfg.recon_loss == "bce":
            per_pixel = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none")
        else:
            per_pixel = (torch.sigmoid(logits.float()) - x.float()).pow(2)
        return per_pixel.flatten(1).sum(1)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loss (summed recon + KL per image, batch mean) and the reconstruction logits."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        logits = self.decode_logits(z)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
        return (self._recon_term(x, logits) + self.cfg.kl_weight * kl).mean(), logits

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable reconstruction f(x) in [0, 1] from the latent mean."""
        return torch.sigmoid(self(x).float())

    def recon_energy(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Per-image reconstruction loss consistent with training (BCE or squared error, summed), ``[B]``."""
        x = x.float()
        recon = recon.float().clamp(1e-6, 1 - 1e-6)
        if self.cfg.recon_loss == "bce":
            per_pixel = -(x * torch.log(recon) + (1 - x) * torch.log1p(-recon))
        else:
            per_pixel = (recon - x).pow(2)
        return per_pixel.flatten(1).sum(1)
