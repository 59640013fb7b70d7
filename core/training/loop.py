"""Training: one plain function with a progress callback and a cooperative stop event.

``fit()`` never prints. The CLI wraps it with tqdm; the app runs it in a background job.
A run folder holds ``config.json``, ``model.pt`` (best validation checkpoint), ``last.pt`` (for
resume), ``history.json`` (status and per-epoch losses); evaluation adds ``metrics.json``,
``scores.csv`` and ``strips/``."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import runs
from core.config import TrainConfig
from core.data.builtin import open_dataset
from core.data.loading import augment_batch, detect_channels, load_split
from core.device import autocast, resolve_device, resolve_precision
from core.errors import ConfigError
from core.models import build_model
from core.training.common import Progress, ProgressFn, split_train_val, stop_reason
from core.training.fnet import fit_fnet


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
        raise ConfigError(f"no readable training image in {index.root} ({len(train_full.skipped)} skipped)")
    val_src = train_full if load_size == cfg.size else load_split(index, "train", cfg.size, channels)
    tr_idx, va_idx = split_train_val(len(train_full), cfg.val_fraction, cfg.seed)
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
