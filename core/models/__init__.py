"""Models: the output contract and one module per model."""

from __future__ import annotations

from torch import nn

from core.models.autoencoder import AEConfig, ConvAutoencoder
from core.models.contract import AnomalyOutput, Detector
from core.models.vae import ConvVAE, VAEConfig

RECONSTRUCTION_MODELS = ("ae", "vae")

__all__ = ["AEConfig", "AnomalyOutput", "ConvAutoencoder", "ConvVAE", "Detector", "VAEConfig", "build_model"]


def build_model(name: str, arch: dict) -> nn.Module:
    """Build a model from its name and architecture dict (as stored in a checkpoint).

    Raises:
        ValueError: for an unknown model name or bad architecture values.
    """
    if name == "ae":
        return ConvAutoencoder(AEConfig(**arch))
    if name == "vae":
        return ConvVAE(VAEConfig(**arch))
    raise ValueError(f"unknown model {name!r}; available: {', '.join(RECONSTRUCTION_MODELS)}")
