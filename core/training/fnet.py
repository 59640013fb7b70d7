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
distance to C (detector ``fnet-distance``; pixel metrics are null: F alone does not localize)."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F

from core.errors import ConfigError

if TYPE_CHECKING:
    from core.config import TrainConfig
    from core.training.common import ProgressFn
from core import runs
from core.config import FNetConfig
from core.data.builtin import open_dataset
from core.data.loading import augment_batch, detect_channels, load_split
from core.data.references import paste_defects, reference_sets
from core.device import autocast, resolve_device, resolve_precision
from core.models.fnet import (
    FNet,
    embed_images,
    find_mobilenet_weights,
    load_backbone_weights,
)
from core.training.common import Progress, split_train_val, stop_reason

DOC_COMPACTNESS_WEIGHT = 0.1  # DOC paper's lambda


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

    cfg.validate()
    if resume:
        raise ConfigError("--resume is not supported for f-Net runs; train it again (it takes minutes)")
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
        raise ConfigError(f"an f-Net needs at least 2 readable training images in {index.root}")
    plain = train_full if load_size == cfg.size else load_split(index, "train", cfg.size, channels)
    tr_idx, va_idx = split_train_val(len(train_full), max(cfg.val_fraction, 0.1), cfg.seed)
    normals_aug = train_full.images[torch.from_numpy(tr_idx)]
    normals = plain.images[torch.from_numpy(tr_idx)]
    val_normals = plain.images[torch.from_numpy(va_idx)]
    refs, notes = reference_sets(cfg.data, index.category, cfg.size, channels, sources, seed=cfg.seed, data_seed=cfg.data_seed)
    use_paste = "paste" in sources
    if not use_paste and not refs:
        raise ConfigError("an f-Net needs other images: enable 'paste' or a reference source in fnet_references")
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
        # Held-out normals vs. their pastes: both classes are always present (training sits below evaluation,
        # so the ROC comes from scikit-learn directly rather than core.evaluation.metrics).
        auroc = float(roc_auc_score(np.r_[np.zeros(len(d_norm)), np.ones(len(d_paste))], torch.cat([d_norm, d_paste]).numpy()))
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
