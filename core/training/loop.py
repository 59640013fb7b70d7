"""The one training loop: ``fit(cfg)`` trains any model of :data:`core.config.TRAINABLE_MODELS` into a run folder.

``fit()`` never prints: it reports through a progress callback and stops on a cooperative stop event.
The CLI wraps it with tqdm; the app runs it in a background job. What differs between models is an
:class:`core.training.common.Objective`: the reconstruction objective below (AE, VAE, U-Net: the model's
own loss on normal images) or the f-Net's (:class:`core.training.fnet.FNetObjective`: normal vs. other
images). A run folder holds ``config.json``, ``model.pt`` (best validation checkpoint), ``last.pt`` (for
resume), ``history.json`` (status and per-epoch losses); evaluation adds ``metrics.json``, ``scores.csv``
and ``strips/``.
"""

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
from core.config import FEATURE_MODELS, TrainConfig
from core.data.builtin import open_dataset
from core.data.index import DatasetIndex
from core.data.loading import augment_batch, load_split
from core.data.report import training_channels
from core.device import autocast, resolve_device, resolve_precision
from core.errors import ConfigError
from core.models import build_model
from core.training import distributed
from core.training.common import (
    Objective,
    Progress,
    ProgressFn,
    split_train_val,
    stop_reason,
)
from core.training.features import fit_features
from core.training.fnet import FNetObjective


def batch_count(n: int, batch_size: int) -> int:
    """Batches per epoch over ``n`` images. A last batch of one image is merged into the one before it:
    BatchNorm cannot train on a single image (it has one value per channel at a 1x1 bottleneck) and its
    statistics would be those of one image."""
    full, rest = divmod(n, batch_size)
    return max(1, full + (rest > 1 or (rest == 1 and full == 0)))


def _to_model_input(batch: torch.Tensor, channels_last: bool) -> torch.Tensor:
    x = batch.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class ReconstructionObjective(Objective):
    """AE, VAE and U-Net: the model's own loss (``model.loss(x)``) on the normal training images; a seeded
    share of them is held out for validation. With ``augment``: random crops (images loaded at
    ``size * crop_scale``) and flips."""

    def setup(self, cfg: TrainConfig, index: DatasetIndex, device: torch.device) -> torch.nn.Module:
        self.cfg, self.device = cfg, device
        load_size = int(round(cfg.size * cfg.crop_scale)) if cfg.augment else cfg.size
        train_full = load_split(index, "train", load_size, cfg.channels)
        if len(train_full) == 0:
            raise ConfigError(f"no readable training image in {index.root} ({len(train_full.skipped)} skipped)")
        val_src = train_full if load_size == cfg.size else load_split(index, "train", cfg.size, cfg.channels)
        tr_idx, va_idx = split_train_val(len(train_full), cfg.val_fraction, cfg.seed)
        self.train_images = train_full.images[torch.from_numpy(tr_idx)]
        self.val_images = val_src.images[torch.from_numpy(va_idx)] if len(va_idx) else self.train_images[:0]
        model = build_model(cfg.model, cfg.arch(cfg.channels))
        if cfg.model in ("ae", "unet"):
            model.cfg.validate(cfg.size)
        self.channels_last = device.type in ("cpu", "cuda")
        if device.type == "cuda":  # the whole (small) training set lives on the GPU: no copy per batch
            self.train_images = self.train_images.pin_memory().to(device, non_blocking=True)
            self.val_images = self.val_images.pin_memory().to(device, non_blocking=True)
        self.preview_images = (self.val_images if len(self.val_images) else self.train_images)[:4].cpu()
        self.n_batches = batch_count(len(self.train_images), cfg.batch_size)
        self.resolved = {"n_train": int(len(tr_idx)), "n_val": int(len(va_idx)),
                         "skipped": train_full.skipped + index.skipped}
        return model.to(device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def batches(self, epoch: int, gen: torch.Generator):
        n = len(self.train_images)
        perm = torch.randperm(n, generator=gen)
        for b in range(self.n_batches):
            end = n if b == self.n_batches - 1 else (b + 1) * self.cfg.batch_size  # the last batch takes the rest
            idx = perm[b * self.cfg.batch_size : end]
            raw = self.train_images[idx.to(self.train_images.device)]
            if self.cfg.augment:
                raw = augment_batch(raw, self.cfg.size, hflip=self.cfg.hflip, vflip=self.cfg.vflip, generator=gen)
            yield raw

    def loss(self, model: torch.nn.Module, batch: torch.Tensor, precision: str) -> tuple[torch.Tensor, int]:
        x = _to_model_input(batch.to(self.device, non_blocking=True), self.channels_last)
        with autocast(self.device, precision):
            loss, _ = model.loss(x)
        return loss, len(x)

    @torch.no_grad()
    def validate(self, model: torch.nn.Module, precision: str) -> tuple[float, dict[str, float]]:
        if not len(self.val_images):
            return math.nan, {}  # the loop then uses the training loss
        model.eval()
        total = torch.zeros((), device=self.device)
        for i in range(0, len(self.val_images), self.cfg.batch_size):
            x = _to_model_input(self.val_images[i : i + self.cfg.batch_size].to(self.device, non_blocking=True),
                                self.channels_last)
            with autocast(self.device, precision):
                loss, _ = model.loss(x)
            total += loss.float() * len(x)
        return float(total) / len(self.val_images), {}

    @torch.no_grad()
    def preview(self, model: torch.nn.Module, precision: str) -> list[tuple[np.ndarray, np.ndarray]]:
        model.eval()
        x = _to_model_input(self.preview_images.to(self.device), self.channels_last)
        with autocast(self.device, precision):
            recon = model.reconstruct(x)
        return [(a.float().cpu().numpy(), b.float().clamp(0, 1).cpu().numpy()) for a, b in zip(x, recon)]


def objective_for(cfg: TrainConfig) -> Objective:
    """The objective of ``cfg.model``: the f-Net's for ``fnet``, the reconstruction one for the others."""
    return FNetObjective() if cfg.model == "fnet" else ReconstructionObjective()


def fit(
    cfg: TrainConfig,
    run_dir: Path | None = None,
    *,
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
    resume: bool = False,
) -> Path:
    """Train ``cfg.model`` on the normal training images of ``cfg.data``.

    Args:
        cfg: the run's settings.
        run_dir: where to write; default a new folder under ``<workspace>/runs``.
        progress: called at start, after every batch, at every epoch end and at the end.
        stop: set it to stop after the current batch; the best checkpoint so far is kept.
        resume: continue from ``run_dir/last.pt`` (same config) instead of starting over (not for f-Net
            runs: a few minutes of training).

    Returns:
        The run folder.

    Raises:
        core.errors.AnomalyLabError: bad settings or data (including :class:`core.data.index.DatasetError`),
            an unreadable checkpoint when resuming.
        FloatingPointError: training diverged.
    """
    cfg.validate()
    if cfg.model in FEATURE_MODELS:  # fitted in one pass over the data, no epochs: its own short procedure
        if resume:
            raise ConfigError(f"--resume is not supported for {cfg.model} runs; fit it again (one pass over the data)")
        return fit_features(cfg, run_dir, progress=progress, stop=stop)
    objective = objective_for(cfg)
    if resume and not objective.resumable:
        raise ConfigError(f"--resume is not supported for {cfg.model} runs; train it again (it takes minutes)")
    if resume and (run_dir is None or not (Path(run_dir) / runs.LAST_CKPT).is_file()):
        where = f"{run_dir}" if run_dir is not None else "no run folder was given (--out)"
        raise ConfigError(f"nothing to resume: {where} has no {runs.LAST_CKPT} (the checkpoint written after each "
                          "epoch); start a new run instead, so that its model.pt is not overwritten")
    started = time.monotonic()
    device = resolve_device(cfg.device)
    ctx = distributed.setup(device)  # under torchrun: this rank's place (and its GPU); None for one process
    if ctx is not None:
        device = ctx.device
    main = ctx is None or ctx.main  # rank 0 alone writes the run folder and reports progress
    progress = progress if main else None
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    index = open_dataset(cfg.data, cfg.category, seed=cfg.data_seed)
    channels, channels_note = (cfg.channels, None) if cfg.channels else training_channels(index)
    cfg = replace(cfg, category=index.category, channels=channels)
    model = objective.setup(cfg, index, device).to(device)
    distributed.broadcast_parameters(model, ctx)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=(device.type == "cuda" and precision == "fp16"))

    run_dir = Path(distributed.broadcast_object(str(run_dir) if run_dir else (str(runs.new_run_dir(cfg)) if main else None),
                                                ctx))
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, float]] = []
    best_val, best_epoch, start_epoch = math.inf, 0, 1
    if resume:
        state = runs.load_checkpoint(run_dir / runs.LAST_CKPT)
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"]) + 1
        # the history may run past the checkpoint (a kill between the two writes): cut it back to the checkpoint
        history = [h for h in runs.read_history(run_dir).get("epochs", []) if int(h.get("epoch", 0)) < start_epoch]
        best_val = float(state.get("best_val_loss", math.inf))
        best_epoch = int(state.get("best_epoch", 0))
        gen.manual_seed(cfg.seed + start_epoch)
    if main:
        runs.write_config(run_dir, cfg, {"device": str(device), "precision": precision, "data_root": str(index.root),
                                         "channels_note": channels_note, "world_size": ctx.world if ctx else 1,
                                         **objective.resolved})

    def checkpoint(epoch: int, val_loss: float) -> dict[str, Any]:
        return {**runs.checkpoint_payload(cfg, model, epoch=epoch, val_loss=val_loss), **objective.payload_extras()}

    def save_last(epoch: int) -> None:
        if not main:
            return
        payload = checkpoint(epoch, best_val)
        payload.update(optimizer=opt.state_dict(), best_val_loss=best_val, best_epoch=best_epoch)
        runs.save_checkpoint(run_dir / runs.LAST_CKPT, payload)

    batches = objective.n_batches
    status, epoch = "finished", start_epoch - 1

    def write_history(*args: Any, **kw: Any) -> None:
        if main:
            runs.write_history(run_dir, *args, **kw)

    def save_best(epoch: int, val_loss: float) -> None:
        if main:
            runs.save_checkpoint(run_dir / runs.BEST_CKPT, checkpoint(epoch, val_loss))

    write_history("running", history, best_epoch, best_val)
    if progress:
        progress(Progress("start", start_epoch - 1, cfg.epochs, batches=batches, history=list(history), run_dir=str(run_dir)))
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            t0 = time.monotonic()
            model.train()
            total, seen = torch.zeros((), device=device), 0  # summed on the device: no .item() sync per batch
            for b, batch in enumerate(objective.batches(epoch, gen)):
                if distributed.stop_requested(stop, b, ctx):
                    status = "stopped"
                    break
                n_global = len(batch[0]) if isinstance(batch, tuple) else len(batch)
                if ctx is not None:  # this rank's share of the global batch
                    part = ctx.shard(n_global)
                    batch = tuple(t[part] for t in batch) if isinstance(batch, tuple) else batch[part]
                loss, n = objective.loss(model, batch, precision)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss * distributed.loss_weight(n, n_global, ctx)).backward()
                distributed.all_reduce_gradients(model, ctx)
                scaler.step(opt)
                scaler.update()
                total += loss.detach().float() * n
                seen += n
                if progress:
                    progress(Progress("batch", epoch, cfg.epochs, b + 1, batches, seconds=time.monotonic() - started))
            if status == "stopped":
                epoch -= 1
                break
            distributed.average_buffers(model, ctx)  # BatchNorm statistics: the mean over the ranks
            total = distributed.all_sum(total, ctx)
            seen = int(distributed.all_sum(torch.tensor(seen, device=device), ctx))
            train_loss = float(total) / max(1, seen)
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"training diverged at epoch {epoch} (loss {train_loss}); try a lower learning rate")
            val_loss, extras = objective.validate(model, precision)
            if math.isnan(val_loss):  # no validation images: judge by the training loss
                val_loss = train_loss
            if val_loss < best_val:
                best_val, best_epoch = val_loss, epoch
                save_best(epoch, val_loss)
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, **extras,
                            "seconds": time.monotonic() - t0})
            save_last(epoch)  # atomically, every epoch: a kill loses at most the epoch in progress
            write_history("running", history, best_epoch, best_val)
            elapsed = time.monotonic() - started
            per_epoch = elapsed / max(1, epoch - start_epoch + 1)
            eta = per_epoch * (cfg.epochs - epoch)
            if cfg.max_minutes:  # the time budget ends training first when it is shorter
                eta = max(0.0, min(eta, cfg.max_minutes * 60 - elapsed))
            if progress:
                progress(Progress("epoch", epoch, cfg.epochs, batches, batches, train_loss, val_loss, best_val, elapsed,
                                  eta, objective.preview(model, precision), list(history)))
            ended = distributed.broadcast_object(stop_reason(cfg, epoch, best_epoch, elapsed), ctx)  # one decision
            if ended:
                status = ended
                break
    except BaseException as exc:
        write_history("failed", history, best_epoch, best_val, error=f"{type(exc).__name__}: {exc}")
        raise
    if best_epoch == 0:  # stopped before the first epoch ended: keep the current weights as "best"
        best_val = float("nan")
        objective.before_unimproved_save(model)
        save_best(max(epoch, 0), best_val)
    save_last(max(epoch, 0))
    write_history(status, history, best_epoch, best_val)
    distributed.barrier(ctx)  # the other ranks return once rank 0 has written the run
    if progress:
        progress(Progress("done", epoch, cfg.epochs, batches, batches, best_val_loss=best_val,
                          seconds=time.monotonic() - started, history=list(history), message=status))
    return run_dir
