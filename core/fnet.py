"""f-Net: a frozen feature extractor F that tells normal images from everything else (Ano-Unet article).

F is a small CNN trained with metric learning to separate the normal training images from "other"
images, then frozen. The other images need no download:

* ``paste``     - synthetic defect pastes made on the fly from the normal images themselves (a patch of
                  another image, a colour blob, a scratch). They matter most: they teach F what a
                  *local* defect on an otherwise normal image looks like.
* ``synthetic`` - the built-in synthetic categories (the current one excluded), one class each.
* ``digits``    - scikit-learn's handwritten digits (skipped for ``builtin:digits``, whose anomalies
                  are exactly those digits).
* ``textures``  - scikit-image's bundled textures (brick, grass, gravel), only when scikit-image is
                  installed; silently skipped otherwise (it is not a dependency).

Losses: the article's L2-constrained softmax (``l2softmax``: embeddings L2-normalized and scaled by a
fixed ``alpha`` before a softmax classifier over normal / paste / each reference source), or DOC's
compactness + descriptiveness (``doc``: cross-entropy over the non-normal classes plus the spread of
the normal embeddings around their batch mean, weight :data:`DOC_COMPACTNESS_WEIGHT`).

C = mean embedding of the normal training images, kept as the buffer ``center`` (so it lives in the
checkpoint's state dict). The L1 distance ``sum |F(x) - C|`` is an image-level anomaly score, and the
L_C term of Ano-Unet. Optionally the backbone is torchvision's MobileNetV2 initialized from an
ImageNet weight file the user already has (never downloaded).

Trained and stored as a run: ``python -m core train --model fnet ...`` (``core.train.fit`` hands
``model="fnet"`` to :func:`fit_fnet`); ``python -m core evaluate`` reports the image-level ROC of the
distance to C (:func:`evaluate_fnet_run`; pixel metrics are null: F alone does not localize).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from core.models.contract import AnomalyOutput

if TYPE_CHECKING:
    from core.runs import LoadedRun
    from core.train import ProgressFn, TrainConfig

BACKBONES = ("small", "mobilenet_v2")
FNET_LOSSES = ("l2softmax", "doc")
REFERENCE_SOURCES = ("paste", "synthetic", "digits", "textures")
PASTE_KINDS = ("patch", "blob", "scratch")
DOC_COMPACTNESS_WEIGHT = 0.1  # DOC paper's lambda
REFERENCES_PER_SOURCE = 240  # at most this many images per reference source (memory stays small)
MOBILENET_GLOB = "mobilenet_v2-*.pth"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- #
# The network
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class FNetConfig:
    """Architecture of :class:`FNet` (stored in the checkpoint as ``arch``).

    Attributes:
        in_channels: image channels (1 or 3).
        base_channels: width of the first stage of the small backbone (doubling, capped at 256).
        stages: conv stages of the small backbone (2x2 max-pool between them).
        embed_dim: size of the L2-normalized embedding F(x).
        n_classes: classifier outputs (normal, paste, one per reference source).
        alpha: L2-constrained softmax scale (logits = W (alpha * F(x)) + b).
        backbone: ``small`` or ``mobilenet_v2``.
    """

    in_channels: int = 3
    base_channels: int = 16
    stages: int = 5
    embed_dim: int = 64
    n_classes: int = 2
    alpha: float = 16.0
    backbone: str = "small"

    def validate(self) -> None:
        """Raise ValueError on bad values."""
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        if self.in_channels not in (1, 3) or self.base_channels < 1 or self.stages < 1:
            raise ValueError("in_channels must be 1 or 3, base_channels and stages >= 1")
        if self.embed_dim < 2 or self.n_classes < 2 or self.alpha <= 0:
            raise ValueError("embed_dim must be >= 2, n_classes >= 2 and alpha > 0")


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
        if self.cfg.backbone == "mobilenet_v2" and x.shape[1] == 1:
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


class FNetDetector:
    """The common detector contract over F alone: score = distance to C.

    F does not localize, so the map is the image score broadcast over the image (constant), and there
    is no reconstruction. Use :mod:`core.anounet` for maps.
    """

    def __init__(self, model: FNet) -> None:
        self.model = model.eval()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> AnomalyOutput:
        score = self.model.distance(x.float())
        b, _, h, w = x.shape
        return AnomalyOutput(score, score.view(b, 1, 1).expand(b, h, w).contiguous(), None)


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
        raise ValueError(f"{path} is not readable as a state dict ({type(exc).__name__})") from None
    feats = {k[len("features."):]: v for k, v in state.items() if isinstance(k, str) and k.startswith("features.")}
    try:
        model.features.load_state_dict(feats, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} is not a torchvision MobileNetV2 (width 1.0) state dict: {str(exc)[:200]}") from None
    return len(feats)


# --------------------------------------------------------------------------- #
# "Other" images
# --------------------------------------------------------------------------- #
def _resize_stack(images: list[np.ndarray], size: int, channels: int) -> torch.Tensor:
    """uint8 HxW(xC) arrays -> uint8 ``[N, channels, size, size]``."""
    from core.images import resize, to_channels

    out = [to_channels(resize(to_channels(img, channels), size), channels).transpose(2, 0, 1) for img in images]
    return torch.from_numpy(np.stack(out)) if out else torch.zeros((0, channels, size, size), dtype=torch.uint8)


def _digits(size: int, channels: int, n: int) -> torch.Tensor:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    imgs = np.clip(bunch.images / 16.0 * 255.0, 0, 255).astype(np.uint8)
    pick = np.linspace(0, len(imgs) - 1, min(n, len(imgs))).astype(int)
    return _resize_stack([cv2.resize(imgs[i], (size, size), interpolation=cv2.INTER_CUBIC) for i in pick], size, channels)


def _textures(size: int, channels: int, n: int, seed: int) -> list[tuple[str, torch.Tensor]]:
    try:
        from skimage import data as skdata  # optional: not a project dependency
    except ImportError:
        return []
    rng = np.random.default_rng(seed)
    out = []
    for name in ("brick", "grass", "gravel"):
        try:
            tex = np.asarray(getattr(skdata, name)())
        except Exception:  # a missing bundled file: skip that texture
            continue
        tex = tex.astype(np.uint8)
        h, w = tex.shape[:2]
        crops = []
        for _ in range(max(1, n // 3)):
            side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crops.append(tex[y : y + side, x : x + side])
        out.append((f"textures:{name}", _resize_stack(crops, size, channels)))
    return out


def reference_sets(
    data: str, category: str, size: int, channels: int, sources: list[str], *, seed: int = 0, data_seed: int = 0,
) -> tuple[list[tuple[str, torch.Tensor]], list[str]]:
    """The "other" image sets (one class each) for F's training, without any download.

    Args:
        data: the normal data's spec (excluded from the references where it is built-in).
        category: the normal category.
        size: image side.
        channels: 1 or 3.
        sources: any of ``synthetic``, ``digits``, ``textures`` (``paste`` is made on the fly and ignored here).

    Returns:
        ``[(class name, uint8 [N, C, size, size])]`` and notes on what was skipped and why.
    """
    from core.data import synthetic
    from core.data.builtin import open_dataset
    from core.data.loading import load_split

    sets: list[tuple[str, torch.Tensor]] = []
    notes: list[str] = []
    for src in sources:
        if src == "paste":
            continue
        if src == "synthetic":
            for cat in synthetic.CATEGORIES:
                if data == "builtin:synthetic" and cat == category:
                    continue
                imgs = load_split(open_dataset("builtin:synthetic", cat, seed=data_seed), "train", size, channels).images
                sets.append((f"synthetic:{cat}", imgs[:REFERENCES_PER_SOURCE]))
        elif src == "digits":
            if data == "builtin:digits":
                notes.append("digits skipped: the normal data is builtin:digits (other digits are its test anomalies)")
                continue
            sets.append(("digits", _digits(size, channels, REFERENCES_PER_SOURCE)))
        elif src == "textures":
            tex = _textures(size, channels, REFERENCES_PER_SOURCE, seed)
            if not tex:
                notes.append("textures skipped: scikit-image is not installed")
            sets += tex
        else:
            raise ValueError(f"unknown reference source {src!r}; available: {', '.join(REFERENCE_SOURCES)}")
    return [(n, t) for n, t in sets if len(t)], notes


# --------------------------------------------------------------------------- #
# Synthetic defect pastes
# --------------------------------------------------------------------------- #
def paste_defect(img: np.ndarray, donor: np.ndarray, rng: np.random.Generator, kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Paste one synthetic defect into ``img``.

    Args:
        img: float32 ``(H, W, C)`` in [0, 1].
        donor: float32 ``(H', W', C)`` another image (the source of ``patch`` defects).
        rng: the random generator.
        kind: ``patch`` (a piece of the donor, brightness-jittered), ``blob`` (a soft colour ellipse) or
            ``scratch`` (a thin polyline); default random.

    Returns:
        The defective image (float32, same shape) and its bool mask ``(H, W)``.
    """
    h, w, c = img.shape
    side = min(h, w)
    kind = kind or str(rng.choice(PASTE_KINDS))
    alpha = np.zeros((h, w), np.float32)
    if kind == "patch":
        ph, pw = (max(2, int(side * rng.uniform(0.08, 0.3))) for _ in range(2))
        dh, dw = donor.shape[:2]
        ph, pw = min(ph, dh, h), min(pw, dw, w)
        sy, sx = int(rng.integers(0, dh - ph + 1)), int(rng.integers(0, dw - pw + 1))
        patch = donor[sy : sy + ph, sx : sx + pw] * rng.uniform(0.6, 1.4)
        if rng.random() < 0.5:
            patch = patch[::-1, ::-1]
        ty, tx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        paint = img.copy()
        paint[ty : ty + ph, tx : tx + pw] = patch
        alpha[ty : ty + ph, tx : tx + pw] = 1.0
    else:
        canvas = np.zeros((h, w), np.uint8)
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        if kind == "blob":
            axes = (max(1, int(side * rng.uniform(0.03, 0.15))), max(1, int(side * rng.uniform(0.03, 0.15))))
            cv2.ellipse(canvas, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
            canvas = cv2.GaussianBlur(canvas, (0, 0), max(0.5, side / 128))
        elif kind == "scratch":
            pts = [(cx, cy)]
            for _ in range(int(rng.integers(1, 4))):
                ang, length = rng.uniform(0, 2 * np.pi), side * rng.uniform(0.08, 0.3)
                pts.append((int(pts[-1][0] + length * np.cos(ang)), int(pts[-1][1] + length * np.sin(ang))))
            thick = max(1, int(round(side * rng.uniform(0.008, 0.03))))
            cv2.polylines(canvas, [np.array(pts, np.int32)], False, 255, thick, cv2.LINE_AA)
        else:
            raise ValueError(f"paste kind must be one of {', '.join(PASTE_KINDS)}, got {kind!r}")
        alpha = canvas.astype(np.float32) / 255.0
        tone = rng.random()
        if tone < 0.35:
            colour = rng.uniform(0.0, 0.2, c)  # dark
        elif tone < 0.7:
            colour = rng.uniform(0.8, 1.0, c)  # bright
        else:
            colour = rng.uniform(0.0, 1.0, c)  # any colour
        texture = 1.0 + 0.15 * rng.standard_normal((h, w, 1))
        paint = np.clip(colour.reshape(1, 1, c) * texture, 0, 1).astype(np.float32)
    alpha *= rng.uniform(0.6, 1.0)
    out = img * (1 - alpha[..., None]) + paint * alpha[..., None]
    return np.clip(out, 0, 1).astype(np.float32), alpha > 0.25


def paste_defects(images: torch.Tensor, donors: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`paste_defect` on every image of a uint8 batch ``[N, C, H, W]``; donors are picked from ``donors``.

    Returns:
        uint8 ``[N, C, H, W]`` defective images and bool ``[N, H, W]`` masks.
    """
    out, masks = [], []
    imgs = images.permute(0, 2, 3, 1).numpy().astype(np.float32) / 255.0
    for img in imgs:
        donor = donors[int(rng.integers(0, len(donors)))].permute(1, 2, 0).numpy().astype(np.float32) / 255.0
        d, m = paste_defect(img, donor, rng)
        out.append(np.round(d * 255.0).astype(np.uint8).transpose(2, 0, 1))
        masks.append(m)
    return torch.from_numpy(np.stack(out)), torch.from_numpy(np.stack(masks))


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #
def _loss(model: FNet, emb: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    logits = model.logits(emb)
    if kind == "l2softmax":
        return F.cross_entropy(logits, labels)
    # DOC: descriptiveness = cross-entropy over the reference (non-normal) classes; compactness = the
    # spread of the normal embeddings around the mean of the *other* normal samples of the batch.
    normal = labels == 0
    desc = F.cross_entropy(logits[~normal][:, 1:], labels[~normal] - 1) if bool((~normal).any()) else emb.sum() * 0
    z = emb[normal]
    n = z.shape[0]
    if n >= 2:
        others_mean = (z.sum(0, keepdim=True) - z) / (n - 1)
        compact = (z - others_mean).pow(2).sum(1).mean()
    else:
        compact = emb.sum() * 0
    return desc + DOC_COMPACTNESS_WEIGHT * compact


@torch.no_grad()
def embed_images(model: FNet, images: torch.Tensor, device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """F over uint8 images, in eval mode, ``[N, embed_dim]`` on the CPU."""
    model.eval()
    out = [model(images[i : i + batch_size].to(device).float().div_(255.0)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, model.cfg.embed_dim)


def _class_batch(
    normal: torch.Tensor, paste_base: torch.Tensor, refs: list[tuple[str, torch.Tensor]], donors: torch.Tensor,
    n_ref: int, rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A uint8 training batch and its labels: ``normal`` (0), pastes into ``paste_base`` (1), reference images (2+)."""
    parts, labels = [normal], [torch.zeros(len(normal), dtype=torch.long)]
    if len(paste_base):
        pasted, _ = paste_defects(paste_base, donors, rng)
        parts.append(pasted)
        labels.append(torch.ones(len(pasted), dtype=torch.long))
    if n_ref and refs:
        which = rng.integers(0, len(refs), n_ref)
        for k in range(len(refs)):
            count = int((which == k).sum())
            if count:
                imgs = refs[k][1]
                parts.append(imgs[torch.from_numpy(rng.integers(0, len(imgs), count))])
                labels.append(torch.full((count,), 2 + k, dtype=torch.long))
    return torch.cat(parts), torch.cat(labels)


def fit_fnet(
    cfg: TrainConfig,
    run_dir: Path | None = None,
    *,
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
    resume: bool = False,
) -> Path:
    """Train F on ``cfg.data`` (normal) vs. the reference sources, compute C, and store a run.

    An epoch is one pass over the normal training images; every batch is half normal images, a quarter
    synthetic pastes and a quarter reference images (the quarters go to pastes when there are no
    reference sets). Validation: held-out normal images, pastes made from them with a fixed seed and
    a fixed sample of references; ``val_auroc`` in the history is the ROC AUC of the distance to C
    (from the training normals) between the held-out normals and their pastes: how well F sees local
    defects. The best checkpoint is the lowest validation loss, with C computed for those weights.

    Args:
        cfg: the run's settings (``model="fnet"``; the ``fnet_*``/``backbone*`` fields).
        run_dir: where to write; default a new folder under ``<workspace>/runs``.
        progress: called at start, after every batch, at every epoch end (``preview`` is None) and at the end.
        stop: set it to stop after the current batch; the best checkpoint so far is kept.
        resume: not supported for f-Net runs (a few minutes of training); raises ValueError.

    Returns:
        The run folder.
    """
    from core import runs
    from core.data.builtin import open_dataset
    from core.data.loading import augment_batch, detect_channels, load_split
    from core.device import autocast, resolve_device, resolve_precision
    from core.metrics import image_auroc
    from core.train import Progress, _split_train_val, stop_reason

    cfg.validate()
    if resume:
        raise ValueError("--resume is not supported for f-Net runs; train it again (it takes minutes)")
    sources = [s.strip() for s in cfg.fnet_references.split(",") if s.strip()]
    started = time.monotonic()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    index = open_dataset(cfg.data, cfg.category, seed=cfg.data_seed)
    channels = cfg.channels or detect_channels(index)
    cfg = replace(cfg, category=index.category, channels=channels)
    load_size = int(round(cfg.size * cfg.crop_scale)) if cfg.augment else cfg.size
    train_full = load_split(index, "train", load_size, channels)
    if len(train_full) < 2:
        raise ValueError(f"an f-Net needs at least 2 readable training images in {index.root}")
    plain = train_full if load_size == cfg.size else load_split(index, "train", cfg.size, channels)
    tr_idx, va_idx = _split_train_val(len(train_full), max(cfg.val_fraction, 0.1), cfg.seed)
    normals_aug = train_full.images[torch.from_numpy(tr_idx)]
    normals = plain.images[torch.from_numpy(tr_idx)]
    val_normals = plain.images[torch.from_numpy(va_idx)]
    refs, notes = reference_sets(cfg.data, index.category, cfg.size, channels, sources, seed=cfg.seed, data_seed=cfg.data_seed)
    use_paste = "paste" in sources
    if not use_paste and not refs:
        raise ValueError("an f-Net needs other images: enable 'paste' or a reference source in fnet_references")
    classes = ["normal", "paste", *[name for name, _ in refs]]
    donors = torch.cat([normals, *[t[:64] for _, t in refs]])

    arch = FNetConfig(in_channels=channels, base_channels=cfg.base_channels or 16, stages=cfg.fnet_stages,
                      embed_dim=cfg.fnet_embed_dim, n_classes=len(classes), alpha=cfg.fnet_alpha, backbone=cfg.backbone)
    model = FNet(arch)
    backbone_file = None
    if cfg.backbone == "mobilenet_v2":
        backbone_file = find_mobilenet_weights(cfg.backbone_weights)
        load_backbone_weights(model, backbone_file)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    # Fixed validation set: held-out normals, their pastes (fixed seed), a fixed reference sample.
    vrng = np.random.default_rng(cfg.seed + 12345)
    val_pastes, _ = paste_defects(val_normals, donors, vrng)
    val_refs = [(name, t[torch.from_numpy(vrng.choice(len(t), min(16, len(t)), replace=False))]) for name, t in refs]
    val_images = torch.cat([val_normals, val_pastes, *[t for _, t in val_refs]])
    val_labels = torch.cat([torch.zeros(len(val_normals), dtype=torch.long), torch.ones(len(val_pastes), dtype=torch.long),
                            *[torch.full((len(t),), 2 + k, dtype=torch.long) for k, (_, t) in enumerate(val_refs)]])

    half = max(1, cfg.batch_size // 2)
    n_other = max(0, cfg.batch_size - half)
    n_paste = (n_other if not refs else n_other // 2) if use_paste else 0
    n_ref = n_other - n_paste
    batches = max(1, math.ceil(len(normals) / half))

    run_dir = Path(run_dir) if run_dir else runs.new_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = {
        "device": str(device), "precision": precision, "n_train": int(len(tr_idx)), "n_val": int(len(va_idx)),
        "data_root": str(index.root), "skipped": train_full.skipped + index.skipped, "classes": classes,
        "references": {name: int(len(t)) for name, t in refs}, "reference_notes": notes,
        "backbone_weights": str(backbone_file) if backbone_file else None,
    }
    runs.write_config(run_dir, cfg, resolved)

    def val_metrics() -> tuple[float, float | None]:
        model.eval()
        with torch.no_grad():
            total = 0.0
            for i in range(0, len(val_images), 64):
                x = val_images[i : i + 64].to(device).float().div_(255.0)
                y = val_labels[i : i + 64].to(device)
                total += float(_loss(model, model(x), y, cfg.fnet_loss)) * len(x)
        center = embed_images(model, normals, device).mean(0)
        d_norm = (embed_images(model, val_normals, device) - center).abs().sum(1)
        d_paste = (embed_images(model, val_pastes, device) - center).abs().sum(1)
        auroc = image_auroc(torch.cat([d_norm, d_paste]).numpy(), np.r_[np.zeros(len(d_norm)), np.ones(len(d_paste))])
        model.center.copy_(center.to(device))
        return total / len(val_images), auroc

    def payload(epoch: int, val_loss: float) -> dict[str, Any]:
        p = runs.checkpoint_payload(cfg, model, epoch=epoch, val_loss=val_loss)
        p["classes"] = classes
        return p

    history: list[dict[str, float]] = []
    best_val, best_epoch, status, epoch = math.inf, 0, "finished", 0
    runs.write_history(run_dir, "running", history, best_epoch, best_val)
    if progress:
        progress(Progress("start", 0, cfg.epochs, batches=batches, run_dir=str(run_dir)))
    try:
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.monotonic()
            model.train()
            perm = rng.permutation(len(normals))
            total, seen = 0.0, 0
            for b in range(batches):
                if stop is not None and stop.is_set():
                    status = "stopped"
                    break
                idx = perm[b * half : (b + 1) * half]
                # Pastes go into other normal images, augmented like the normal ones (no augmentation cue).
                base = rng.integers(0, len(normals), n_paste)
                raw = normals_aug[torch.from_numpy(np.concatenate([idx, base]).astype(np.int64))]
                if cfg.augment:
                    raw = augment_batch(raw, cfg.size, hflip=cfg.hflip, vflip=cfg.vflip, generator=gen)
                xb, yb = _class_batch(raw[: len(idx)], raw[len(idx) :], refs, donors, n_ref, rng)
                x = xb.to(device).float().div_(255.0)
                with autocast(device, precision):
                    emb = model(x)
                loss = _loss(model, emb.float(), yb.to(device), cfg.fnet_loss)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(x)
                seen += len(x)
                if progress:
                    progress(Progress("batch", epoch, cfg.epochs, b + 1, batches, seconds=time.monotonic() - started))
            if status == "stopped":
                epoch -= 1
                break
            train_loss = total / max(1, seen)
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"f-Net training diverged at epoch {epoch}; try a lower learning rate")
            val_loss, val_auroc = val_metrics()
            if val_loss < best_val:
                best_val, best_epoch = val_loss, epoch
                runs.save_checkpoint(run_dir / runs.BEST_CKPT, payload(epoch, val_loss))
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                            "val_auroc": val_auroc if val_auroc is not None else float("nan"),
                            "seconds": time.monotonic() - t0})
            runs.write_history(run_dir, "running", history, best_epoch, best_val)
            elapsed = time.monotonic() - started
            if progress:
                progress(Progress("epoch", epoch, cfg.epochs, batches, batches, train_loss, val_loss, best_val, elapsed,
                                  elapsed / epoch * (cfg.epochs - epoch), None, list(history)))
            ended = stop_reason(cfg, epoch, best_epoch, elapsed)
            if ended:
                status = ended
                break
    except BaseException as exc:
        runs.write_history(run_dir, "failed", history, best_epoch, best_val, error=f"{type(exc).__name__}: {exc}")
        raise
    if best_epoch == 0:  # stopped before the first epoch ended: keep the current weights, C from them
        model.eval()
        model.center.copy_(embed_images(model, normals, device).mean(0).to(device))
        best_val = float("nan")
        runs.save_checkpoint(run_dir / runs.BEST_CKPT, payload(max(epoch, 0), best_val))
    runs.save_checkpoint(run_dir / runs.LAST_CKPT, payload(max(epoch, 0), best_val))
    runs.write_history(run_dir, status, history, best_epoch, best_val)
    if progress:
        progress(Progress("done", epoch, cfg.epochs, batches, batches, best_val_loss=best_val,
                          seconds=time.monotonic() - started, history=list(history), message=status))
    return run_dir


# --------------------------------------------------------------------------- #
# Loading and evaluating a run
# --------------------------------------------------------------------------- #
def is_fnet_run(run_dir: Path | str) -> bool:
    """True when ``run_dir/config.json`` says ``model: fnet`` (False for anything unreadable)."""
    import json

    try:
        return json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))["config"]["model"] == "fnet"
    except (OSError, ValueError, KeyError, TypeError):
        return False


def load_fnet(run_dir: Path | str, device: str | torch.device = "cpu") -> LoadedRun:
    """Load an f-Net run, frozen: eval mode, no parameter requires grad.

    Raises:
        core.runs.RunError: not a run, or not an f-Net run.
    """
    from core.runs import RunError, load_run

    run = load_run(run_dir, device)
    if run.config.model != "fnet" or not isinstance(run.model, FNet):
        raise RunError(f"{Path(run_dir).name} is a {run.config.model} run, not an f-Net run (train one with --model fnet)")
    run.model.eval().requires_grad_(False)
    return run


def evaluate_fnet_run(run_dir: Path | str, *, device: str = "auto", strips: bool = True, batch_size: int = 32) -> dict[str, Any]:
    """Image-level metrics of the distance to C on the run's test split; writes ``metrics.json`` and ``scores.csv``.

    Same keys as :func:`core.evaluate.evaluate_run`; ``pixel_auroc`` and ``aupro`` are None (F does not
    localize) and no strips are written (``strips`` is accepted for the common signature).
    """
    from core import metrics
    from core.device import resolve_device
    from core.evaluate import load_test_split, score_split, scores_csv
    from core.runs import METRICS_FILE, SCORES_FILE
    from core.workspace import atomic_write_json, atomic_write_text

    dev = resolve_device(device)
    run = load_fnet(run_dir, dev)
    index, split = load_test_split(run)
    if len(split) == 0:
        raise ValueError(f"the test split of {run.config.data} has no readable image")
    scored = score_split(FNetDetector(run.model), split, batch_size=batch_size, device=dev)
    result = metrics.summarize(scored.scores, split.labels)
    result.update(
        run_id=run.id, model=run.config.model, data=run.config.data, category=run.config.category, epoch=run.epoch,
        score_mode="fnet_distance", heatmap_vmax=None, n_skipped=len(split.skipped), skipped=split.skipped,
    )
    atomic_write_json(Path(run_dir) / METRICS_FILE, result)
    atomic_write_text(Path(run_dir) / SCORES_FILE, scores_csv(scored, index.root))
    return result


def evaluate_any(run_dir: Path | str, *, device: str = "auto", strips: bool = True) -> dict[str, Any]:
    """:func:`evaluate_fnet_run` for f-Net runs, :func:`core.evaluate.evaluate_run` for the others."""
    if is_fnet_run(run_dir):
        return evaluate_fnet_run(run_dir, device=device, strips=strips)
    from core.evaluate import evaluate_run

    return evaluate_run(run_dir, device=device, strips=strips)
