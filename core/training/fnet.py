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

Trained and stored as a run by the one training loop (``python -m core train --model fnet ...``,
:func:`core.training.loop.fit` with :class:`FNetObjective`); ``python -m core evaluate`` reports the image-level ROC of the
distance to C (detector ``fnet-distance``; pixel metrics are null: F alone does not localize)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F

from core.config import FNetConfig, TrainConfig
from core.data.index import DatasetIndex
from core.data.loading import augment_batch, load_split
from core.data.references import paste_defects, reference_sets
from core.device import autocast
from core.errors import ConfigError
from core.models.backbone import lite0_trunk, lite0_weight_file, load_lite0
from core.models.fnet import (
    FNet,
    embed_images,
    find_mobilenet_weights,
    load_backbone_weights,
)
from core.training.common import Objective, split_train_val

DOC_COMPACTNESS_WEIGHT = 0.1  # DOC paper's lambda


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


class FNetObjective(Objective):
    """F vs. the "other" images. An epoch is one pass over the normal training images; every batch is half
    normal images, a quarter synthetic pastes and a quarter reference images (the quarters go to pastes
    when there are no reference sets). Validation: held-out normal images, pastes made from them with a
    fixed seed and a fixed sample of references; ``val_auroc`` in the history is the ROC AUC of the
    distance to C (from the training normals) between the held-out normals and their pastes: how well F
    sees local defects. C is computed for the weights of every validated epoch, so the best checkpoint
    carries the C of its weights.
    """

    resumable = False

    def setup(self, cfg: TrainConfig, index: DatasetIndex, device: torch.device) -> torch.nn.Module:
        sources = [s.strip() for s in cfg.fnet_references.split(",") if s.strip()]
        self.cfg, self.device = cfg, device
        self.rng = np.random.default_rng(cfg.seed)
        load_size = int(round(cfg.size * cfg.crop_scale)) if cfg.augment else cfg.size
        train_full = load_split(index, "train", load_size, cfg.channels)
        if len(train_full) < 2:
            raise ConfigError(f"an f-Net needs at least 2 readable training images in {index.root}")
        plain = train_full if load_size == cfg.size else load_split(index, "train", cfg.size, cfg.channels)
        tr_idx, va_idx = split_train_val(len(train_full), max(cfg.val_fraction, 0.1), cfg.seed)
        self.normals_aug = train_full.images[torch.from_numpy(tr_idx)]
        self.normals = plain.images[torch.from_numpy(tr_idx)]
        self.val_normals = plain.images[torch.from_numpy(va_idx)]
        refs, notes = reference_sets(cfg.data, index.category, cfg.size, cfg.channels, sources, seed=cfg.seed,
                                     data_seed=cfg.data_seed)
        self.use_paste = "paste" in sources
        if not self.use_paste and not refs:
            raise ConfigError("an f-Net needs other images: enable 'paste' or a reference source in fnet_references")
        self.refs = refs
        self.classes = ["normal", "paste", *[name for name, _ in refs]]
        self.donors = torch.cat([self.normals, *[t[:64] for _, t in refs]])
        arch = FNetConfig(in_channels=cfg.channels, base_channels=cfg.base_channels or 16, stages=cfg.fnet_stages,
                          embed_dim=cfg.fnet_embed_dim, n_classes=len(self.classes), alpha=cfg.fnet_alpha,
                          backbone=cfg.backbone)
        model = FNet(arch)
        backbone_file = None
        if cfg.backbone == "mobilenet_v2":
            backbone_file = find_mobilenet_weights(cfg.backbone_weights)
            load_backbone_weights(model, backbone_file)
        elif cfg.backbone == "lite0":  # start from the packaged ImageNet weights; the f-Net loss fine-tunes them
            backbone_file = lite0_weight_file()
            model.features.load_state_dict(lite0_trunk(load_lite0()).state_dict())
        # Fixed validation set: held-out normals, their pastes (fixed seed), a fixed reference sample.
        vrng = np.random.default_rng(cfg.seed + 12345)
        self.val_pastes, _ = paste_defects(self.val_normals, self.donors, vrng)
        val_refs = [(name, t[torch.from_numpy(vrng.choice(len(t), min(16, len(t)), replace=False))]) for name, t in refs]
        self.val_images = torch.cat([self.val_normals, self.val_pastes, *[t for _, t in val_refs]])
        self.val_labels = torch.cat([torch.zeros(len(self.val_normals), dtype=torch.long),
                                     torch.ones(len(self.val_pastes), dtype=torch.long),
                                     *[torch.full((len(t),), 2 + k, dtype=torch.long) for k, (_, t) in enumerate(val_refs)]])
        self.half = max(1, cfg.batch_size // 2)
        n_other = max(0, cfg.batch_size - self.half)
        self.n_paste = (n_other if not refs else n_other // 2) if self.use_paste else 0
        self.n_ref = n_other - self.n_paste
        self.n_batches = max(1, -(-len(self.normals) // self.half))
        self.resolved = {
            "n_train": int(len(tr_idx)), "n_val": int(len(va_idx)), "skipped": train_full.skipped + index.skipped,
            "classes": self.classes, "references": {name: int(len(t)) for name, t in refs}, "reference_notes": notes,
            "backbone_weights": str(backbone_file) if backbone_file else None,
        }
        return model

    def batches(self, epoch: int, gen: torch.Generator):
        perm = self.rng.permutation(len(self.normals))
        for b in range(self.n_batches):
            idx = perm[b * self.half : (b + 1) * self.half]
            # Pastes go into other normal images, augmented like the normal ones (no augmentation cue).
            base = self.rng.integers(0, len(self.normals), self.n_paste)
            raw = self.normals_aug[torch.from_numpy(np.concatenate([idx, base]).astype(np.int64))]
            if self.cfg.augment:
                raw = augment_batch(raw, self.cfg.size, hflip=self.cfg.hflip, vflip=self.cfg.vflip, generator=gen)
            xb, yb = _class_batch(raw[: len(idx)], raw[len(idx) :], self.refs, self.donors, self.n_ref, self.rng)
            yield xb, yb

    def loss(self, model: torch.nn.Module, batch, precision: str) -> tuple[torch.Tensor, int]:
        xb, yb = batch
        x = xb.to(self.device).float().div_(255.0)
        with autocast(self.device, precision):
            emb = model(x)
        return _loss(model, emb.float(), yb.to(self.device), self.cfg.fnet_loss), len(x)

    def validate(self, model: torch.nn.Module, precision: str) -> tuple[float, dict[str, float]]:
        model.eval()
        with torch.no_grad():
            total = 0.0
            for i in range(0, len(self.val_images), 64):
                x = self.val_images[i : i + 64].to(self.device).float().div_(255.0)
                y = self.val_labels[i : i + 64].to(self.device)
                total += float(_loss(model, model(x), y, self.cfg.fnet_loss)) * len(x)
        center = self._set_center(model)
        d_norm = (embed_images(model, self.val_normals, self.device) - center).abs().sum(1)
        d_paste = (embed_images(model, self.val_pastes, self.device) - center).abs().sum(1)
        # Held-out normals vs. their pastes: both classes are always present (training sits below
        # evaluation, so the ROC comes from scikit-learn directly rather than core.evaluation.metrics).
        auroc = float(roc_auc_score(np.r_[np.zeros(len(d_norm)), np.ones(len(d_paste))], torch.cat([d_norm, d_paste]).numpy()))
        return total / len(self.val_images), {"val_auroc": auroc}

    def _set_center(self, model: torch.nn.Module) -> torch.Tensor:
        center = embed_images(model, self.normals, self.device).mean(0)
        model.center.copy_(center.to(self.device))
        return center

    def before_unimproved_save(self, model: torch.nn.Module) -> None:
        model.eval()
        self._set_center(model)

    def payload_extras(self) -> dict:
        return {"classes": self.classes}
