"""Models: the output contract and one module per model."""

from __future__ import annotations

from torch import nn

from core.models.autoencoder import AEConfig, ConvAutoencoder
from core.models.contract import AnomalyOutput, Detector
from core.models.unet import UNet, UNetConfig
from core.models.vae import ConvVAE, VAEConfig

RECONSTRUCTION_MODELS = ("ae", "vae")
# Everything ``core.train.fit`` can train: the detectors above, the U-Net (Ano-Unet warm start, also a
# reconstruction model) and the f-Net feature extractor of Ano-Unet (core/fnet.py).
TRAINABLE_MODELS = (*RECONSTRUCTION_MODELS, "unet", "fnet")

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
        from core.fnet import FNet, FNetConfig

        return FNet(FNetConfig(**arch))
    raise ValueError(f"unknown model {name!r}; available: {', '.join(TRAINABLE_MODELS)}")
