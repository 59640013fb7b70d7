"""The fitted state of the feature detectors: PatchCore's memory bank and PaDiM's Gaussians.

Both sit on a frozen ImageNet backbone (:mod:`core.models.backbone`) that is *not* part of the checkpoint:
a run stores only what was fitted on its normal images (plain tensors, loadable with ``weights_only=True``)
and the backbone is rebuilt from its installed package (or weight file) when the run is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.device import module_device
from core.errors import ConfigError
from core.models.backbone import (
    FEATURE_BACKBONES,
    STAGE_STRIDES,
    FeatureBackbone,
    get_backbone,
)


@dataclass(frozen=True)
class FeatureConfig:
    """What a feature model is built on (stored as the checkpoint's ``arch``).

    Attributes:
        backbone: one of :data:`core.models.backbone.FEATURE_BACKBONES`.
        weights: its weight file ("" = the packaged EfficientNet-Lite0 weights).
        layers: backbone stages used (0..3 = stride 4, 8, 16, 32).
        input_size: side the images are resized to before the backbone.
        align_stride: stride of the feature map (its positions are the patches).
        in_channels: channels of the run's images (gray images are repeated to RGB for the backbone).
        feature_dim: channels of the fitted features (PaDiM: the random subset); set by fitting.
        bank_size: PatchCore: patches in the memory bank; set by fitting.
        precision: ``fp32`` or ``bf16`` for the backbone.
    """

    # what the backbone is and sees
    backbone: str = "lite0"
    weights: str = ""
    precision: str = "fp32"
    in_channels: int = 3
    input_size: int = 256
    # which features, at which stride
    layers: tuple[int, ...] = (1, 2)
    align_stride: int = 8
    # set by fitting
    feature_dim: int = 0
    bank_size: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))

    def validate(self) -> None:
        if self.backbone not in FEATURE_BACKBONES:
            raise ConfigError(f"backbone must be one of {', '.join(FEATURE_BACKBONES)}, got {self.backbone!r}")
        if not self.layers or any(i not in range(len(STAGE_STRIDES)) for i in self.layers):
            raise ConfigError(f"feature layers must be a non-empty subset of 0..3, got {list(self.layers)}")
        if self.align_stride not in STAGE_STRIDES or self.input_size < 32 or self.input_size % self.align_stride:
            raise ConfigError(f"input size {self.input_size} must be >= 32 and divisible by the stride {self.align_stride}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be fp32 or bf16, got {self.precision!r}")

    @property
    def grid(self) -> int:
        """Side of the feature map (patches per row)."""
        return self.input_size // self.align_stride


class FeatureModel(nn.Module):
    """Common part: the config, the shared frozen backbone and the features of a batch."""

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg

    def backbone(self) -> FeatureBackbone:
        return get_backbone(self.cfg.backbone, self.cfg.weights, module_device(self))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D, g, g]`` features of images ``[B, C, H, W]`` in [0, 1] (``g`` = :attr:`FeatureConfig.grid`)."""
        return self.backbone().features(x, self.cfg.layers, align_stride=self.cfg.align_stride,
                                        input_size=self.cfg.input_size, precision=self.cfg.precision)


class PatchCoreModel(FeatureModel):
    """PatchCore's memory bank: ``bank`` ``[M, D]`` patch features of the normal training images (a coreset)."""

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("bank", torch.zeros(cfg.bank_size, cfg.feature_dim))


class PaDiMModel(FeatureModel):
    """PaDiM's Gaussians: per patch position the ``mean`` ``[P, D]`` and ``inv_cov`` ``[P, D, D]`` of the
    features' random channel subset ``channel_idx`` ``[D]`` (P = grid * grid)."""

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__(cfg)
        p, d = cfg.grid * cfg.grid, cfg.feature_dim
        self.register_buffer("channel_idx", torch.zeros(d, dtype=torch.long))
        self.register_buffer("mean", torch.zeros(p, d))
        self.register_buffer("inv_cov", torch.zeros(p, d, d))
