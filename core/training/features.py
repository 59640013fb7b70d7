"""Fitting the feature detectors (PatchCore, PaDiM) into a run folder: one pass over the normal training
images through the frozen backbone, no epochs and no optimizer, so what a run is depends on the data and
settings only, never on how busy the machine is.

The run folder has the usual layout (``config.json``, ``model.pt``, ``history.json``); the checkpoint holds
the fitted tensors only (the backbone comes from its package) and a ``fit`` record: patches, bank size,
seconds per phase and the memory of the fitted tensors and of the coreset's working set.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from core import runs
from core.config import TrainConfig
from core.data.builtin import open_dataset
from core.data.loading import load_split
from core.data.report import training_channels
from core.detectors.padim import GaussianAccumulator, select_channels
from core.detectors.patchcore import PROJECTION_DIM, greedy_coreset
from core.device import resolve_device
from core.errors import ConfigError
from core.models.feature_models import (
    FeatureConfig,
    FeatureModel,
    PaDiMModel,
    PatchCoreModel,
)
from core.training.common import Progress, ProgressFn

FIT_BATCH = 16  # images per backbone batch


def feature_config(cfg: TrainConfig, channels: int) -> FeatureConfig:
    """The :class:`FeatureConfig` of a run's settings (before fitting sets the sizes)."""
    fc = FeatureConfig(backbone=cfg.feature_backbone, weights=cfg.feature_weights, layers=cfg.layers(),
                       input_size=cfg.backbone_size(), align_stride=8, in_channels=channels,
                       precision=cfg.feature_precision)
    fc.validate()
    return fc


def _mb(*tensors: torch.Tensor) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def fit_features(cfg: TrainConfig, run_dir: Path | None = None, *, progress: ProgressFn | None = None,
                 stop: threading.Event | None = None) -> Path:
    """Fit ``cfg.model`` (``patchcore`` or ``padim``) on the normal training images of ``cfg.data``.

    Progress: ``start``, one ``batch`` per backbone batch (``batch`` / ``batches``), ``epoch`` when the
    fitted model is saved, ``done``. A set ``stop`` ends the run as ``stopped`` before anything is saved.
    """
    cfg.validate()
    started = time.monotonic()
    device = resolve_device(cfg.device)
    index = open_dataset(cfg.data, cfg.category, seed=cfg.data_seed)
    channels, channels_note = (cfg.channels, None) if cfg.channels else training_channels(index)
    cfg = replace(cfg, category=index.category, channels=channels, epochs=1)
    train = load_split(index, "train", cfg.size, cfg.channels)
    if len(train) == 0:
        raise ConfigError(f"no readable training image in {index.root} ({len(train.skipped)} skipped)")
    fc = feature_config(cfg, cfg.channels)
    run_dir = Path(run_dir) if run_dir else runs.new_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    batches = math.ceil(len(train) / FIT_BATCH)
    runs.write_config(run_dir, cfg, {"device": str(device), "precision": fc.precision, "data_root": str(index.root),
                                     "n_train": len(train), "n_val": 0, "skipped": train.skipped + index.skipped,
                                     "channels_note": channels_note})
    runs.write_history(run_dir, "running", [], 0, math.nan)
    if progress:
        progress(Progress("start", 0, 1, batches=batches, run_dir=str(run_dir)))
    try:
        probe = (PatchCoreModel if cfg.model == "patchcore" else PaDiMModel)(fc).to(device)
        backbone_s = time.monotonic()
        feats, acc, keep = [], GaussianAccumulator(), None
        for b in range(batches):
            if stop is not None and stop.is_set():
                runs.write_history(run_dir, "stopped", [], 0, math.nan)
                if progress:
                    progress(Progress("done", 0, 1, b, batches, seconds=time.monotonic() - started, message="stopped"))
                return run_dir
            x = train.images[b * FIT_BATCH : (b + 1) * FIT_BATCH].to(device).float().div_(255.0)
            f = probe.features(x)
            if cfg.model == "patchcore":
                feats.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
            else:
                if keep is None:
                    keep = select_channels(f.shape[1], cfg.padim_channels, cfg.seed).to(device)
                acc.add(f[:, keep])
            if progress:
                progress(Progress("batch", 1, 1, b + 1, batches, seconds=time.monotonic() - started,
                                  message="extracting features"))
        backbone_s = time.monotonic() - backbone_s
        if progress:
            progress(Progress("batch", 1, 1, batches, batches, seconds=time.monotonic() - started,
                              message="selecting the coreset" if cfg.model == "patchcore" else "fitting the Gaussians"))
        fit_s = time.monotonic()
        model, stats = (_patchcore(fc, feats, cfg) if cfg.model == "patchcore" else _padim(fc, acc, keep))
        stats.update(n_train=len(train), backbone_seconds=backbone_s, fit_seconds=time.monotonic() - fit_s,
                     seconds=time.monotonic() - started, model_mb=_mb(*model.buffers()), device=str(device))
        payload = {**runs.checkpoint_payload(cfg, model, epoch=1, val_loss=math.nan), "fit": stats}
        runs.save_checkpoint(run_dir / runs.BEST_CKPT, payload)
    except BaseException as exc:
        runs.write_history(run_dir, "failed", [], 0, math.nan, error=f"{type(exc).__name__}: {exc}")
        raise
    entry = {"epoch": 1, "seconds": stats["seconds"], **{k: v for k, v in stats.items() if isinstance(v, (int, float))}}
    runs.write_history(run_dir, "finished", [entry], 1, math.nan)
    if progress:
        progress(Progress("epoch", 1, 1, batches, batches, seconds=stats["seconds"], eta_seconds=0.0, history=[entry]))
        progress(Progress("done", 1, 1, batches, batches, seconds=stats["seconds"], history=[entry], message="finished"))
    return run_dir


def _patchcore(fc: FeatureConfig, feats: list[torch.Tensor], cfg: TrainConfig) -> tuple[FeatureModel, dict[str, Any]]:
    bank = torch.cat(feats)
    del feats[:]
    n = max(1, int(math.ceil(cfg.coreset_ratio * bank.shape[0])))
    t0 = time.monotonic()
    idx = greedy_coreset(bank, n, seed=cfg.seed) if n < bank.shape[0] else torch.arange(bank.shape[0])
    model = PatchCoreModel(replace(fc, feature_dim=int(bank.shape[1]), bank_size=n)).to(bank.device)
    model.bank.copy_(bank[idx.to(bank.device)])
    working = bank.shape[0] * (min(PROJECTION_DIM, bank.shape[1]) + 3) * 4 / 2**20  # projected bank + 3 vectors
    return model, {"patches": int(bank.shape[0]), "bank_size": n, "feature_dim": int(bank.shape[1]),
                   "coreset_seconds": time.monotonic() - t0, "all_patches_mb": _mb(bank), "coreset_working_mb": working}


def _padim(fc: FeatureConfig, acc: GaussianAccumulator, keep: torch.Tensor | None) -> tuple[FeatureModel, dict[str, Any]]:
    if keep is None or acc.n < 2:
        raise ConfigError("PaDiM needs at least 2 training images")
    mean, inv_cov = acc.finish()
    model = PaDiMModel(replace(fc, feature_dim=int(len(keep)))).to(mean.device)
    model.channel_idx.copy_(keep)
    model.mean.copy_(mean)
    model.inv_cov.copy_(inv_cov)
    return model, {"feature_dim": int(len(keep)), "positions": int(mean.shape[0])}
