"""Time estimates before a job starts, from throughput measured on this machine.

A calibration runs a few steps of the real code path (a training step of the model at the chosen size and
batch, a backbone forward and a coreset step, a projection step, an Ano-Unet step) on the chosen device,
and is kept in ``<workspace>/calibration.json`` under a key naming what was measured, the device and the
number of CPU threads: measured once, then reused. An estimate multiplies the measured time by the work
the settings ask for; it says what it assumed and when it was measured, so a page never states a speed
that was not measured here. Estimates are upper bounds where a job may end early (early stopping, the
Ano-Unet plateau stop) and account for a time budget.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch

from core.config import FEATURE_MODELS, AnoUnetConfig, ProjectionConfig, TrainConfig
from core.detectors.anounet import AnoUnet
from core.detectors.patchcore import greedy_coreset
from core.detectors.projection import project
from core.device import resolve_device
from core.models import build_model
from core.models.backbone import get_backbone
from core.workspace import atomic_write_json, workspace_dir

CALIBRATION_FILE = "calibration.json"
VAL_COST = 0.35  # a validation image costs about this share of a training image (forward only)
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Estimate:
    """An expected duration and how it was obtained."""

    seconds: float
    basis: str  # what was measured, e.g. "0.21 s per batch of 32 at 128 px on cpu"
    measured_utc: str
    upper_bound: bool = False  # the job may end sooner (early stopping, plateaus)
    capped_by_budget: bool = False

    def text(self) -> str:
        """``about 4m 10s (measured on this machine: ...; 2026-12-01 15:04 UTC)``."""
        head = ("at most " if self.upper_bound else "about ") + fmt_duration(self.seconds)
        tail = "; the time budget ends it" if self.capped_by_budget else ""
        when = self.measured_utc.replace("T", " ").rstrip("Z")[:16]
        return f"{head} (measured on this machine: {self.basis}, {when} UTC{tail})"


def fmt_duration(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


# ---------------------------------------------------------------------- the kept measurements
def _path():
    return workspace_dir() / CALIBRATION_FILE


def _read() -> dict[str, Any]:
    try:
        raw = json.loads(_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _key(what: str, device: torch.device) -> str:
    return f"{what}|{device.type}|threads={torch.get_num_threads()}|{socket.gethostname()}"


def measured(what: str, device: torch.device) -> dict[str, Any] | None:
    """The kept measurement of ``what`` on ``device`` (``seconds`` per unit, ``measured_utc``), or None."""
    got = _read().get(_key(what, device))
    return got if isinstance(got, dict) and isinstance(got.get("seconds"), (int, float)) else None


def calibrate(what: str, device: torch.device, step: Callable[[], None], repeats: int = 3) -> dict[str, Any]:
    """Time ``step`` (after one warm-up call), keep the best of ``repeats`` under ``what`` and return it."""
    with torch.inference_mode(False):
        step()
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - t0)
    entry = {"seconds": best, "measured_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    with _LOCK:
        data = _read()
        data[_key(what, device)] = entry
        try:
            atomic_write_json(_path(), data)
        except OSError:
            pass  # a read-only workspace only loses the cache
    return entry


def _get(what: str, device: torch.device, step: Callable[[], None] | None, calibrate_missing: bool) -> dict[str, Any] | None:
    got = measured(what, device)
    if got is None and calibrate_missing and step is not None:
        got = calibrate(what, device, step)
    return got


# ---------------------------------------------------------------------- training
def _train_step(cfg: TrainConfig, channels: int, device: torch.device) -> Callable[[], None]:
    model = build_model(cfg.model, cfg.arch(channels)).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(cfg.batch_size, channels, cfg.size, cfg.size, device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = model.loss(x)[0]
        loss.backward()
        opt.step()

    return step


def _feature_steps(cfg: TrainConfig, channels: int, device: torch.device) -> tuple[Callable[[], None], Callable[[], None]]:
    """A backbone forward of 4 images and 20 coreset picks on a 20,000-patch bank (the two parts of fitting)."""
    backbone = get_backbone(cfg.feature_backbone, cfg.feature_weights, device)
    layers, side = cfg.layers(), cfg.backbone_size()
    x = torch.rand(4, channels, cfg.size, cfg.size, device=device)
    dim = int(backbone.features(x[:1], layers, input_size=side).shape[1])
    bank = torch.randn(20000, dim, device=device)

    def features() -> None:
        backbone.features(x, layers, input_size=side, precision=cfg.feature_precision)

    def coreset() -> None:
        greedy_coreset(bank, 20)

    return features, coreset


def train_estimate(cfg: TrainConfig, n_train: int, channels: int = 3, *, calibrate_missing: bool = True) -> Estimate | None:
    """Expected training (AE, VAE, U-Net) or fitting (PatchCore, PaDiM) time of ``cfg`` on ``n_train`` normal
    images; None when it is not measured yet and ``calibrate_missing`` is False (or for the f-Net, whose data
    is built from references)."""
    device = resolve_device(cfg.device)
    if cfg.model == "fnet":
        return None
    if cfg.model in FEATURE_MODELS:
        what = f"features:{cfg.feature_backbone}:{cfg.backbone_size()}:{cfg.feature_layers or 'default'}:{cfg.feature_precision}"
        if calibrate_missing and (measured(what, device) is None or measured("coreset20k", device) is None):
            f, c = _feature_steps(cfg, channels, device)
        else:
            f = c = None
        feat, core = _get(what, device, f, calibrate_missing), _get("coreset20k", device, c, calibrate_missing)
        if feat is None or core is None:
            return None
        per_image = feat["seconds"] / 4
        seconds = per_image * n_train
        basis = f"{per_image:.2f} s per image for the features"
        if cfg.model == "patchcore":
            patches = n_train * (cfg.backbone_size() // 8) ** 2
            picks = max(1, int(cfg.coreset_ratio * patches))
            per_pick = core["seconds"] / 20 * patches / 20000  # a coreset step reads the whole projected bank
            seconds += picks * per_pick
            basis += f", {per_pick * 1000:.2f} ms per coreset pick of {picks:,}"
        return Estimate(seconds, basis, feat["measured_utc"])
    val = int(round(n_train * cfg.val_fraction))
    n_fit = max(1, n_train - val)
    what = f"train:{cfg.model}:{cfg.size}:{cfg.batch_size}:{json.dumps(cfg.arch(channels), sort_keys=True)}"
    got = _get(what, device, _train_step(cfg, channels, device) if calibrate_missing and measured(what, device) is None
               else None, calibrate_missing)
    if got is None:
        return None
    per_batch = got["seconds"]
    per_epoch = per_batch * (math.ceil(n_fit / cfg.batch_size) + VAL_COST * math.ceil(val / cfg.batch_size))
    seconds = per_epoch * cfg.epochs
    capped = bool(cfg.max_minutes) and cfg.max_minutes * 60 < seconds
    if capped:
        seconds = cfg.max_minutes * 60
    return Estimate(seconds, f"{per_batch:.2f} s per batch of {cfg.batch_size} at {cfg.size} px on {device.type}, "
                             f"{cfg.epochs} epochs of {n_fit} images", got["measured_utc"],
                    upper_bound=cfg.patience < cfg.epochs, capped_by_budget=capped)


# ---------------------------------------------------------------------- projection and Ano-Unet
def projection_estimate(model: torch.nn.Module, cfg: ProjectionConfig, n_images: int, size: int, channels: int,
                        batch: int = 16, *, model_id: str = "") -> Estimate:
    """Expected time to project ``n_images`` (``batch`` at a time) with ``cfg``: one projection step of a
    batch is measured once per model architecture and size."""
    device = next(model.parameters()).device
    k = max(1, min(batch, n_images))
    what = f"projection:{type(model).__name__}:{model_id}:{size}:{k}:{cfg.precision}"
    x = torch.rand(k, channels, size, size, device=device)
    step_cfg = ProjectionConfig(**{**cfg.__dict__, "steps": 2})

    def step() -> None:
        for _ in project(model, x, step_cfg):
            pass

    got = _get(what, device, step if measured(what, device) is None else None, True)
    per_step = got["seconds"] / 2  # type: ignore[index]
    seconds = per_step * cfg.steps * math.ceil(n_images / k)
    return Estimate(seconds, f"{per_step:.3f} s per step of {k} image(s) at {size} px", got["measured_utc"])  # type: ignore[index]


def anounet_estimate(fnet: torch.nn.Module, cfg: AnoUnetConfig, n_images: int, size: int, *, model_id: str = "",
                     device: str = "auto") -> Estimate:
    """Expected (at most) time of Ano-Unet on ``n_images``: an Adam step of ``cfg.batch`` U-Nets is measured
    once per f-Net, size and U-Net settings; images may stop earlier on a plateau."""
    k = max(1, min(cfg.batch, n_images))
    what = (f"anounet:{model_id}:{size}:{k}:{cfg.base_channels}:{cfg.levels}:{cfg.precision}")
    probe = AnoUnet(fnet, AnoUnetConfig(**{**cfg.__dict__, "epochs": 3, "early_stop": False, "guard": False,
                                           "batch": k}), device=device, cache=False)
    images = torch.randint(0, 256, (k, fnet.cfg.in_channels, size, size), dtype=torch.uint8)

    def step() -> None:
        probe.run(images, preview_every=0)

    got = _get(what, probe.device, step if measured(what, probe.device) is None else None, True)
    per_epoch = got["seconds"] / 3  # type: ignore[index]
    seconds = per_epoch * cfg.epochs * math.ceil(n_images / k)
    return Estimate(seconds, f"{per_epoch:.3f} s per Adam step of {k} image(s) at {size} px", got["measured_utc"],  # type: ignore[index]
                    upper_bound=cfg.early_stop)
