"""Training: one plain function with a progress callback and a cooperative stop event.

``fit()`` never prints. The CLI wraps it with tqdm; the app runs it in a background job.
A run folder holds ``config.json``, ``model.pt`` (best validation checkpoint), ``last.pt`` (for
resume), ``history.json`` (status and per-epoch losses); evaluation adds ``metrics.json``,
``scores.csv`` and ``strips/``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import runs
from core.data.builtin import open_dataset
from core.data.loading import augment_batch, detect_channels, load_split
from core.device import autocast, resolve_device, resolve_precision
from core.models import RECONSTRUCTION_MODELS, TRAINABLE_MODELS, build_model  # noqa: F401 (RECONSTRUCTION_MODELS re-exported)
from core.scoring import ScoreConfig


@dataclass(frozen=True)
class TrainConfig:
    """Everything needed to rebuild a run. Stored in ``config.json`` and inside every checkpoint."""

    data: str = "builtin:synthetic"
    category: str | None = None
    model: str = "ae"
    size: int = 128
    channels: int = 0  # 0 = detect from the data (1 for gray datasets, else 3)
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    z_dim: int = 128
    base_channels: int = 0  # 0 = model default (AE 16, VAE 32)
    depth: int = 6  # AE only
    recon_loss: str = "bce"  # VAE only
    kl_weight: float = 1.0  # VAE only
    val_fraction: float = 0.2
    patience: int = 20
    seed: int = 0
    data_seed: int = 0  # built-in synthetic generator seed
    device: str = "auto"
    precision: str = "auto"
    augment: bool = False
    crop_scale: float = 1.0  # with augment: load at size*crop_scale, random size crops
    hflip: bool = True  # with augment
    vflip: bool = False  # with augment
    max_minutes: float = 0.0  # 0 = no time budget
    score_mode: str = "topk"
    topk_percent: float = 1.0
    smooth_sigma: float = 2.0
    # f-Net (model "fnet", core/fnet.py) only
    fnet_embed_dim: int = 64
    fnet_stages: int = 5
    fnet_alpha: float = 16.0  # L2-constrained softmax scale
    fnet_loss: str = "l2softmax"  # or "doc"
    fnet_references: str = "paste,synthetic,digits,textures"  # "other" image sources
    backbone: str = "small"  # or "mobilenet_v2" (local ImageNet weights only)
    backbone_weights: str = ""  # MobileNetV2 weight file; default $TORCH_HOME/hub/checkpoints/mobilenet_v2-*.pth
    # U-Net (model "unet", the Ano-Unet warm start) only
    unet_levels: int = 3

    def validate(self) -> None:
        """Raise ValueError on a bad combination of settings."""
        if self.model not in TRAINABLE_MODELS:
            raise ValueError(f"model must be one of {', '.join(TRAINABLE_MODELS)}, got {self.model!r}")
        if self.size < 8 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("size must be >= 8, epochs and batch size >= 1, lr > 0")
        if not 0 <= self.val_fraction < 1:
            raise ValueError("val_fraction must be in [0, 1)")
        if self.channels not in (0, 1, 3):
            raise ValueError("channels must be 0 (auto), 1 or 3")
        if self.crop_scale < 1:
            raise ValueError("crop_scale must be >= 1")
        if self.model == "fnet":
            from core.fnet import BACKBONES, FNET_LOSSES, REFERENCE_SOURCES

            if self.fnet_loss not in FNET_LOSSES:
                raise ValueError(f"fnet_loss must be one of {', '.join(FNET_LOSSES)}, got {self.fnet_loss!r}")
            if self.backbone not in BACKBONES:
                raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
            bad = [s for s in self.fnet_references.split(",") if s.strip() and s.strip() not in REFERENCE_SOURCES]
            if bad or not self.fnet_references.strip():
                raise ValueError(f"fnet_references must be a comma-separated subset of {', '.join(REFERENCE_SOURCES)}")
            if self.batch_size < 2:
                raise ValueError("an f-Net batch needs at least 2 images (normal and other)")
        self.score_config().validate()

    def score_config(self) -> ScoreConfig:
        """The image-score settings of this run."""
        return ScoreConfig(self.score_mode, self.topk_percent, self.smooth_sigma)

    def arch(self, channels: int) -> dict[str, Any]:
        """Architecture dict for :func:`core.models.build_model`."""
        if self.model == "ae":
            return {"in_channels": channels, "base_channels": self.base_channels or 16, "depth": self.depth}
        if self.model == "unet":
            return {"in_channels": channels, "base_channels": self.base_channels or 8, "levels": self.unet_levels}
        if self.model == "fnet":
            raise ValueError("the f-Net architecture is built by core.fnet.fit_fnet (it depends on the reference data)")
        return {
            "in_channels": channels,
            "size": self.size,
            "z_dim": self.z_dim,
            "base_channels": self.base_channels or 32,
            "bottleneck": min(8, self.size),
            "recon_loss": self.recon_loss,
            "kl_weight": self.kl_weight,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict, ignoring unknown keys (configs written by newer versions)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Progress:
    """What the progress callback receives. ``preview`` is set at epoch ends only."""

    phase: str  # "start", "batch", "epoch", "done"
    epoch: int
    epochs: int
    batch: int = 0
    batches: int = 0
    train_loss: float | None = None
    val_loss: float | None = None
    best_val_loss: float | None = None
    seconds: float = 0.0
    eta_seconds: float | None = None
    preview: list[tuple[np.ndarray, np.ndarray]] | None = None  # (input, reconstruction) float CHW
    history: list[dict[str, float]] = field(default_factory=list)
    message: str = ""
    run_dir: str = ""


ProgressFn = Callable[[Progress], None]


def _split_train_val(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * fraction)) if n >= 2 else 0
    if fraction > 0 and n >= 2:
        n_val = max(1, min(n_val, n - 1))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _to_model_input(batch: torch.Tensor, channels_last: bool) -> torch.Tensor:
    x = batch.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def _evaluate_loss(model, images: torch.Tensor, batch_size: int, device, precision, channels_last) -> float:
    model.eval()
    total = torch.zeros((), device=device)
    for i in range(0, len(images), batch_size):
        x = _to_model_input(images[i : i + batch_size].to(device, non_blocking=True), channels_last)
        with autocast(device, precision):
            loss, _ = model.loss(x)
        total += loss.float() * len(x)
    return float(total) / max(1, len(images))


@torch.no_grad()
def _preview(model, images: torch.Tensor, device, precision, channels_last) -> list[tuple[np.ndarray, np.ndarray]]:
    model.eval()
    x = _to_model_input(images.to(device), channels_last)
    with autocast(device, precision):
        recon = model.reconstruct(x)
    return [(a.float().cpu().numpy(), b.float().clamp(0, 1).cpu().numpy()) for a, b in zip(x, recon)]


def stop_reason(cfg: TrainConfig, epoch: int, best_epoch: int, elapsed: float) -> str | None:
    """Why training ends after ``epoch``: ``early_stopped`` (no improvement for ``patience`` epochs),
    ``time_budget`` (over ``max_minutes``), or None to go on. Shared by every training loop."""
    if epoch - best_epoch >= cfg.patience:
        return "early_stopped"
    if cfg.max_minutes and elapsed > cfg.max_minutes * 60:
        return "time_budget"
    return None


def fit(
    cfg: TrainConfig,
    run_dir: Path | None = None,
    *,
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
    resume: bool = False,
) -> Path:
    """Train a reconstruction model on the normal training images of ``cfg.data``.

    Args:
        cfg: the run's settings.
        run_dir: where to write; default a new folder under ``<workspace>/runs``.
        progress: called at start, after every batch, at every epoch end and at the end.
        stop: set it to stop after the current batch; the best checkpoint so far is kept.
        resume: continue from ``run_dir/last.pt`` (same config) instead of starting over.

    Returns:
        The run folder.

    Raises:
        ValueError: bad settings or data (including :class:`core.data.index.DatasetError`).
        core.runs.RunError: an unreadable checkpoint when resuming.
    """
    cfg.validate()
    if cfg.model == "fnet":  # a classifier with its own data pipeline (normal vs. other images)
        from core.fnet import fit_fnet

        return fit_fnet(cfg, run_dir, progress=progress, stop=stop, resume=resume)
    started = time.monotonic()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    index = open_dataset(cfg.data, cfg.category, seed=cfg.data_seed)
    channels = cfg.channels or detect_channels(index)
    cfg = replace(cfg, category=index.category, channels=channels)
    load_size = int(round(cfg.size * cfg.crop_scale)) if cfg.augment else cfg.size
    train_full = load_split(index, "train", load_size, channels)
    if len(train_full) == 0:
        raise ValueError(f"no readable training image in {index.root} ({len(train_full.skipped)} skipped)")
    val_src = train_full if load_size == cfg.size else load_split(index, "train", cfg.size, channels)
    tr_idx, va_idx = _split_train_val(len(train_full), cfg.val_fraction, cfg.seed)
    train_images = train_full.images[torch.from_numpy(tr_idx)]
    val_images = val_src.images[torch.from_numpy(va_idx)] if len(va_idx) else train_images[:0]

    model = build_model(cfg.model, cfg.arch(channels))
    if cfg.model in ("ae", "unet"):
        model.cfg.validate(cfg.size)
    channels_last = device.type in ("cpu", "cuda")
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=(device.type == "cuda" and precision == "fp16"))

    if device.type == "cuda":
        train_images = train_images.pin_memory().to(device, non_blocking=True)
        val_images = val_images.pin_memory().to(device, non_blocking=True)

    run_dir = Path(run_dir) if run_dir else runs.new_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, float]] = []
    best_val, best_epoch, start_epoch = math.inf, 0, 1
    if resume and (run_dir / runs.LAST_CKPT).exists():
        state = runs.load_checkpoint(run_dir / runs.LAST_CKPT)
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        history = runs.read_history(run_dir).get("epochs", [])
        best_val = float(state.get("best_val_loss", math.inf))
        best_epoch = int(state.get("best_epoch", 0))
        start_epoch = int(state["epoch"]) + 1
        gen.manual_seed(cfg.seed + start_epoch)

    resolved = {
        "device": str(device),
        "precision": precision,
        "n_train": int(len(tr_idx)),
        "n_val": int(len(va_idx)),
        "data_root": str(index.root),
        "skipped": train_full.skipped + index.skipped,
    }
    runs.write_config(run_dir, cfg, resolved)
    preview_images = (val_images if len(val_images) else train_images)[:4].cpu()

    def checkpoint(epoch: int) -> dict[str, Any]:
        return runs.checkpoint_payload(cfg, model, epoch=epoch, val_loss=best_val)

    def save_last(epoch: int) -> None:
        payload = checkpoint(epoch)
        payload.update(optimizer=opt.state_dict(), best_val_loss=best_val, best_epoch=best_epoch)
        runs.save_checkpoint(run_dir / runs.LAST_CKPT, payload)

    n = len(train_images)
    batches = max(1, math.ceil(n / cfg.batch_size))
    status, epoch, last_saved = "finished", start_epoch - 1, time.monotonic()
    runs.write_history(run_dir, "running", history, best_epoch, best_val)
    if progress:
        progress(Progress("start", start_epoch - 1, cfg.epochs, batches=batches, history=list(history), run_dir=str(run_dir)))
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            t0 = time.monotonic()
            model.train()
            perm = torch.randperm(n, generator=gen)
            total = torch.zeros((), device=device)  # summed on device: no .item() sync per batch
            for b in range(batches):
                if stop is not None and stop.is_set():
                    status = "stopped"
                    break
                idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                raw = train_images[idx.to(train_images.device)]
                if cfg.augment:
                    raw = augment_batch(raw, cfg.size, hflip=cfg.hflip, vflip=cfg.vflip, generator=gen)
                x = _to_model_input(raw.to(device, non_blocking=True), channels_last)
                with autocast(device, precision):
                    loss, _ = model.loss(x)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                total += loss.detach().float() * len(idx)
                if progress:
                    progress(Progress("batch", epoch, cfg.epochs, b + 1, batches, seconds=time.monotonic() - started))
            if status == "stopped":
                epoch -= 1
                break
            train_loss = float(total) / n
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"training diverged at epoch {epoch} (loss {train_loss}); try a lower learning rate")
            val_loss = _evaluate_loss(model, val_images, cfg.batch_size, device, precision, channels_last) if len(val_images) else train_loss
            improved = val_loss < best_val
            if improved:
                best_val, best_epoch = val_loss, epoch
                runs.save_checkpoint(run_dir / runs.BEST_CKPT, checkpoint(epoch))
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "seconds": time.monotonic() - t0})
            runs.write_history(run_dir, "running", history, best_epoch, best_val)
            if time.monotonic() - last_saved > 60:
                save_last(epoch)
                last_saved = time.monotonic()
            elapsed = time.monotonic() - started
            per_epoch = elapsed / max(1, epoch - start_epoch + 1)
            if progress:
                progress(
                    Progress(
                        "epoch", epoch, cfg.epochs, batches, batches, train_loss, val_loss, best_val, elapsed,
                        per_epoch * (cfg.epochs - epoch),
                        _preview(model, preview_images, device, precision, channels_last), list(history),
                    )
                )
            ended = stop_reason(cfg, epoch, best_epoch, elapsed)
            if ended:
                status = ended
                break
    except BaseException as exc:
        runs.write_history(run_dir, "failed", history, best_epoch, best_val, error=f"{type(exc).__name__}: {exc}")
        raise
    if best_epoch == 0:  # stopped before the first epoch ended: keep the current weights as "best"
        best_val = float("nan")
        runs.save_checkpoint(run_dir / runs.BEST_CKPT, checkpoint(epoch))
    save_last(max(epoch, 0))
    runs.write_history(run_dir, status, history, best_epoch, best_val)
    if progress:
        progress(Progress("done", epoch, cfg.epochs, batches, batches, best_val_loss=best_val,
                          seconds=time.monotonic() - started, history=list(history), message=status))
    return run_dir


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as a plain dict (for JSON and checkpoints)."""
    return asdict(cfg)
