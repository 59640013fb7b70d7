"""f-Net: a frozen feature extractor F that tells normal images from everything else (Ano-Unet article)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from core.config import FNetConfig
from core.errors import ConfigError
from core.models.backbone import lite0_trunk, load_lite0

MOBILENET_GLOB = "mobilenet_v2-*.pth"


_IMAGENET_MEAN = (0.485, 0.456, 0.406)


_IMAGENET_STD = (0.229, 0.224, 0.225)


class FNet(nn.Module):
    """F: image ``[B, C, H, W]`` in [0, 1] -> L2-normalized embedding ``[B, embed_dim]``.

    Global average *and* max pooling are concatenated before the embedding layer: a small defect moves
    the max-pooled features even when it barely changes the average.
    """

    def __init__(self, cfg: FNetConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        if cfg.backbone == "small":
            layers: list[nn.Module] = []
            cin = cfg.in_channels
            for i in range(cfg.stages):
                w = min(cfg.base_channels * 2**i, 256)
                if i:
                    layers.append(nn.MaxPool2d(2))
                layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                cin = w
            self.features = nn.Sequential(*layers)
            feat = cin
            mean, std = (0.5,) * cfg.in_channels, (0.25,) * cfg.in_channels
        elif cfg.backbone == "lite0":  # the trunk's structure; training copies the packaged ImageNet weights in
            self.features = lite0_trunk(load_lite0(random_init=True))
            feat = 320
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        else:
            from torchvision.models import mobilenet_v2

            self.features = mobilenet_v2(weights=None).features
            feat = 1280
            mean, std = _IMAGENET_MEAN, _IMAGENET_STD
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.embed = nn.Linear(2 * feat, cfg.embed_dim)
        self.classifier = nn.Linear(cfg.embed_dim, cfg.n_classes)
        self.register_buffer("center", torch.zeros(cfg.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """F(x): the L2-normalized embedding, ``[B, embed_dim]``."""
        if self.cfg.backbone != "small" and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h = self.features((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))
        pooled = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
        return F.normalize(self.embed(pooled).float(), dim=1)

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        """L2-constrained softmax logits of embeddings from :meth:`forward`."""
        return self.classifier(self.cfg.alpha * emb)

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        """Image score ``sum |F(x) - C|`` (L1, as the L_C term of Ano-Unet), ``[B]``."""
        return (self(x) - self.center).abs().sum(1)


def find_mobilenet_weights(path: str = "") -> Path:
    """The local MobileNetV2 ImageNet weight file: ``path``, or ``$TORCH_HOME/hub/checkpoints/mobilenet_v2-*.pth``.

    Raises:
        FileNotFoundError: when there is none (nothing is ever downloaded).
    """
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"backbone weight file {p} does not exist")
        return p
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(folder.glob(MOBILENET_GLOB)) if folder.is_dir() else []
    if not found:
        raise FileNotFoundError(
            f"no MobileNetV2 ImageNet weights in {folder} (expected {MOBILENET_GLOB}); "
            "put torchvision's file there or pass --backbone-weights (nothing is downloaded), or use --backbone small"
        )
    return found[-1]


def load_backbone_weights(model: FNet, path: Path) -> int:
    """Copy a torchvision MobileNetV2 state dict's ``features.*`` into ``model.features``; returns tensors loaded.

    Raises:
        ValueError: when the file is not a MobileNetV2 state dict.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file means "not usable"
        raise ConfigError(f"{path} is not readable as a state dict ({type(exc).__name__})") from None
    feats = {k[len("features."):]: v for k, v in state.items() if isinstance(k, str) and k.startswith("features.")}
    try:
        model.features.load_state_dict(feats, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{path} is not a torchvision MobileNetV2 (width 1.0) state dict: {str(exc)[:200]}") from None
    return len(feats)


@torch.no_grad()
def embed_images(model: FNet, images: torch.Tensor, device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """F over uint8 images, in eval mode, ``[N, embed_dim]`` on the CPU."""
    model.eval()
    out = [model(images[i : i + batch_size].to(device).float().div_(255.0)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, model.cfg.embed_dim)
