"""A small U-Net, usable as one network or as K independent networks run at once.

Ano-Unet (``core/anounet.py``) optimizes one U-Net G per test image. Running K of them one after the
other wastes the CPU on tiny kernels and per-op overhead, so the forward pass is written once as a
function of a parameter dict, :func:`unet_apply`, that works in two modes:

* ``copies=None``: ordinary network, parameters ``[...]``, input ``[B, C, H, W]`` (the module's
  ``forward``; also what ``core.train.fit`` trains for the warm start).
* ``copies=K``: K networks with their own weights, parameters stacked to ``[K, ...]``, input
  ``[K, C, H, W]`` (image k goes through network k). Every conv becomes one grouped convolution with
  ``groups=K`` and every GroupNorm one GroupNorm with ``K * groups`` groups, which is exactly K
  separate networks (no cross-talk), in one kernel call each.

No BatchNorm: its batch statistics would mix images (and running stats make no sense for a network
trained on one image). GroupNorm (or no normalization) is per image. Down-sampling is 2x2 average
pooling, up-sampling is a 3x3 conv followed by 2x nearest up-sampling (no transposed convs: no
checkerboard artefacts in the |x - G(x)| maps). The output goes through a sigmoid, so G(x) is an image
in [0, 1]; with ``residual`` G starts as the identity.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from core.config import (
    UNetConfig,
)
from core.errors import ConfigError

RESIDUAL_EPS = 1e-3  # residual G works in logit space: inputs are clamped to [eps, 1 - eps]


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class _Block(nn.Module):
    """(3x3 conv, GroupNorm, LeakyReLU) x 2; only holds the parameters (see :func:`unet_apply`)."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.conv1 = _conv(cin, cout)
        self.conv2 = _conv(cout, cout)
        if groups:
            self.norm1 = nn.GroupNorm(groups, cout)
            self.norm2 = nn.GroupNorm(groups, cout)


class UNet(nn.Module):
    """The U-Net G. ``forward`` maps ``[B, C, H, W]`` in [0, 1] to G(x) in [0, 1].

    Also a reconstruction model for :func:`core.train.fit` (``loss``, ``reconstruct``,
    ``recon_energy``): trained on normal images it is the Ano-Unet warm start.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        w = cfg.widths
        self.enc = nn.ModuleList()
        cin = cfg.in_channels
        for width in w:
            self.enc.append(_Block(cin, width, cfg.groups_for(width)))
            cin = width
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for width in reversed(w[:-1]):
            self.up.append(_conv(cin, width))
            self.dec.append(_Block(2 * width if cfg.skip == "concat" else width, width, cfg.groups_for(width)))
            cin = width
        self.head = _conv(cin, cfg.in_channels, 1)
        if cfg.residual:  # start as the identity: G(x) = x until the head learns a change
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unet_apply(self.cfg, dict(self.named_parameters()), x)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loss (MSE, mean over pixels and batch) and the reconstruction."""
        recon = self(x)
        return F.mse_loss(recon.float(), x.float()), recon

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """G(x) in [0, 1]."""
        return self(x).float()

    def recon_energy(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Per-image summed squared error, ``[B]`` (consistent with the MSE training loss)."""
        return (recon.float() - x.float()).pow(2).flatten(1).sum(1)


def unet_apply(cfg: UNetConfig, params: dict[str, torch.Tensor], x: torch.Tensor, copies: int | None = None) -> torch.Tensor:
    """The U-Net forward pass as a function of its parameters.

    Args:
        cfg: the architecture.
        params: ``UNet.named_parameters()`` values; with ``copies`` each stacked to ``[copies, ...]``.
        x: ``[B, C, H, W]`` (one network), or ``[copies, C, H, W]`` (image k through network k).
        copies: None for one network with unstacked parameters; K for K stacked networks (K may be 1:
            the same code path, so one image alone computes exactly what it computes in a batch).

    Returns:
        G(x) in [0, 1], same shape as ``x``.
    """
    stacked = copies is not None
    if stacked:
        if x.shape[0] != copies:
            raise ConfigError(f"{copies} networks need {copies} images, got {x.shape[0]}")
        n, c, h, w = x.shape
        # [K, C, H, W] -> [1, K*C, H, W]: network k sees channel group k. (reshape, not view: x may be channels_last)
        hcur = x.reshape(1, n * c, h, w)
    else:
        hcur = x

    def conv(t: torch.Tensor, name: str) -> torch.Tensor:
        weight, bias = params[name + ".weight"], params[name + ".bias"]
        if stacked:
            weight, bias = weight.flatten(0, 1), bias.flatten()
        return F.conv2d(t, weight, bias, padding=weight.shape[-1] // 2, groups=copies or 1)

    def norm(t: torch.Tensor, name: str) -> torch.Tensor:
        key = name + ".weight"
        if key not in params:
            return t
        weight, bias = params[key], params[name + ".bias"]
        width = weight.shape[-1]
        if stacked:
            weight, bias = weight.flatten(), bias.flatten()
        return F.group_norm(t, (copies or 1) * cfg.groups_for(width), weight, bias)

    def block(t: torch.Tensor, name: str) -> torch.Tensor:
        t = F.leaky_relu(norm(conv(t, f"{name}.conv1"), f"{name}.norm1"), 0.2)
        return F.leaky_relu(norm(conv(t, f"{name}.conv2"), f"{name}.norm2"), 0.2)

    skips = []
    for i in range(cfg.levels):
        if i:
            hcur = F.avg_pool2d(hcur, 2)
        hcur = block(hcur, f"enc.{i}")
        skips.append(hcur)
    for j in range(cfg.levels - 1):
        # The up-path conv runs before the 2x nearest up-sampling: 4x cheaper than after it.
        hcur = F.interpolate(conv(hcur, f"up.{j}"), scale_factor=2.0, mode="nearest")
        skip = skips[cfg.levels - 2 - j]
        if cfg.skip == "add":
            hcur = hcur + skip
        else:
            b, _, hh, ww = hcur.shape
            k = copies or 1
            # Concatenate per network: [up_k, skip_k] stays inside channel group k.
            hcur = torch.cat([hcur.reshape(b, k, -1, hh, ww), skip.reshape(b, k, -1, hh, ww)], 2).reshape(b, -1, hh, ww)
        hcur = block(hcur, f"dec.{j}")
    if cfg.residual:
        eps = RESIDUAL_EPS
        out = torch.sigmoid(torch.logit(x.float().clamp(eps, 1 - eps)).reshape(hcur.shape[0], -1, *x.shape[-2:]) + conv(hcur, "head"))
    else:
        out = torch.sigmoid(conv(hcur, "head"))
    return out.reshape(x.shape) if stacked else out


def init_params(cfg: UNetConfig, seed: int) -> dict[str, torch.Tensor]:
    """Freshly initialized parameters of one U-Net (PyTorch default init) from ``seed``.

    The global RNG is left untouched, so the weights depend on ``seed`` only.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet(cfg)
    return {k: v.detach() for k, v in model.named_parameters()}


def count_parameters(cfg: UNetConfig) -> int:
    """Number of parameters of one U-Net."""
    return sum(p.numel() for p in UNet(cfg).parameters())
