"""Models: the output contract and one module per model."""

from __future__ import annotations

from torch import nn

from core.config import TRAINABLE_MODELS, AEConfig, FNetConfig, UNetConfig, VAEConfig
from core.errors import ConfigError
from core.models.autoencoder import ConvAutoencoder
from core.models.contract import AnomalyOutput, Detector
from core.models.feature_models import FeatureConfig, PaDiMModel, PatchCoreModel
from core.models.fnet import FNet
from core.models.unet import UNet
from core.models.vae import ConvVAE

__all__ = ["AEConfig", "AnomalyOutput", "ConvAutoencoder", "ConvVAE", "Detector", "UNet", "UNetConfig", "VAEConfig",
           "build_model"]


def build_model(name: str, arch: dict) -> nn.Module:
    """Build a model from its name and architecture dict (as stored in a checkpoint).

    Raises:
        ValueError: for an unknown model name or bad architecture values.
    """
    if name == "ae":
        return ConvAutoencoder(AEConfig(**arch))
    if name == "vae":
        return ConvVAE(VAEConfig(**arch))
    if name == "unet":
        return UNet(UNetConfig(**arch))
    if name == "fnet":
        return FNet(FNetConfig(**arch))
    if name == "patchcore":
        return PatchCoreModel(FeatureConfig(**arch))
    if name == "padim":
        return PaDiMModel(FeatureConfig(**arch))
    raise ConfigError(f"unknown model {name!r}; available: {', '.join(TRAINABLE_MODELS)}")
