"""The Ano-Unet warm start: a reconstruction U-Net trained once on the normal images and kept in the f-Net run."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.config import AnoUnetConfig, TrainConfig, UNetConfig
from core.runs import BEST_CKPT, RunError, load_checkpoint, load_run, read_history
from core.training.loop import fit

WARM_START_EPOCHS = 40


WARM_START_VERSION = 2  # bump when the U-Net's forward changes: old warm-start runs are then not reused


_WARM_LOCK = threading.Lock()


# --------------------------------------------------------------------------- #
# Warm start, image selection, evaluation (the CLI's ``anounet`` command)
# --------------------------------------------------------------------------- #
def warm_start_dir(fnet_run_dir: Path | str, cfg: AnoUnetConfig) -> Path:
    """Where ``warm_start="auto"`` keeps its U-Net run: inside the f-Net's run folder."""
    return Path(fnet_run_dir) / f"warm_unet_v{WARM_START_VERSION}_b{cfg.base_channels}_l{cfg.levels}_s{cfg.seed}"


def resolve_warm_start(
    spec: str, fnet_run_dir: Path | str, cfg: AnoUnetConfig, *, device: str = "auto",
    progress: Callable[[Any], None] | None = None, stop: threading.Event | None = None,
) -> tuple[dict[str, torch.Tensor] | None, UNetConfig | None, str | None]:
    """The warm-start U-Net's parameters and architecture for ``spec``.

    Args:
        spec: ``none`` (cold start, as the article), ``auto`` (train a U-Net once to reproduce the f-Net's
            normal training images, :data:`WARM_START_EPOCHS` epochs, kept in :func:`warm_start_dir`
            and reused afterwards), or the folder of a ``unet`` run.
        fnet_run_dir: the f-Net run (its data, size and channels define the warm start's).
        cfg: Ano-Unet settings (G's width and levels for ``auto``).
        progress, stop: passed to :func:`core.train.fit` when ``auto`` has to train.

    Returns:
        ``(state, arch, run folder)``, all None for ``none``.

    Raises:
        core.runs.RunError: the given run is not a usable U-Net run.
    """

    if spec in ("", "none", None):
        return None, None, None
    if spec == "auto":
        run_dir = warm_start_dir(fnet_run_dir, cfg)
        with _WARM_LOCK:
            ready = (run_dir / BEST_CKPT).is_file() and read_history(run_dir).get("status") in ("finished", "early_stopped", "time_budget")
            if not ready:

                fc = TrainConfig.from_dict(load_checkpoint(Path(fnet_run_dir) / BEST_CKPT)["config"])
                warm_cfg = TrainConfig(
                    data=fc.data, category=fc.category, model="unet", size=fc.size, channels=fc.channels,
                    epochs=WARM_START_EPOCHS, batch_size=16, patience=10, base_channels=cfg.base_channels,
                    unet_levels=cfg.levels, seed=cfg.seed, data_seed=fc.data_seed, device=device, augment=False,
                )
                fit(warm_cfg, run_dir, progress=progress, stop=stop)
    else:
        run_dir = Path(spec)
    run = load_run(run_dir, "cpu")
    if run.config.model != "unet":
        raise RunError(f"--warm-start needs a unet run (python -m core train --model unet), {run_dir.name} is {run.config.model}")
    return {k: v.detach() for k, v in run.model.named_parameters()}, run.model.cfg, str(run_dir)
