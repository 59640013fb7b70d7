"""What every training loop shares: the progress record, the train/validation split and the stop rule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from core.config import TrainConfig
from core.data.loading import split_train_val

__all__ = ["Objective", "Progress", "ProgressFn", "split_train_val", "stop_reason"]


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


def stop_reason(cfg: TrainConfig, epoch: int, best_epoch: int, elapsed: float) -> str | None:
    """Why training ends after ``epoch``: ``early_stopped`` (no improvement for ``patience`` epochs),
    ``time_budget`` (over ``max_minutes``), or None to go on. Shared by every training loop."""
    if epoch - best_epoch >= cfg.patience:
        return "early_stopped"
    if cfg.max_minutes and elapsed > cfg.max_minutes * 60:
        return "time_budget"
    return None


class Objective:
    """What a kind of model brings to the one training loop (:func:`core.training.loop.fit`).

    The loop owns everything shared: device and precision, seeds, the dataset, the run folder, the
    optimizer and its steps, the stop event, progress, validation bookkeeping, best / last checkpoints,
    the history and the stop rule. An objective owns its data, its model and its loss.
    """

    #: whether ``--resume`` from ``last.pt`` is supported
    resumable = True
    #: what :meth:`setup` resolved, stored in ``config.json``'s ``resolved`` (counts, skipped files, ...)
    resolved: dict
    #: batches per epoch (for progress)
    n_batches: int

    def setup(self, cfg: TrainConfig, index, device):  # pragma: no cover - interface
        """Load the data for ``cfg`` (channels and category resolved) and return the untrained model."""
        raise NotImplementedError

    def batches(self, epoch: int, gen):  # pragma: no cover - interface
        """The training batches of one epoch, in order."""
        raise NotImplementedError

    def loss(self, model, batch, precision: str):  # pragma: no cover - interface
        """``(loss, number of images)`` of one batch, the model in train mode."""
        raise NotImplementedError

    def validate(self, model, precision: str) -> tuple[float, dict[str, float]]:  # pragma: no cover - interface
        """The validation loss (lower is better; picks the best checkpoint) and extra per-epoch values."""
        raise NotImplementedError

    def preview(self, model, precision: str) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """(input, output) pairs shown while training, or None."""
        return None

    def before_unimproved_save(self, model) -> None:
        """Called when training ended before any epoch improved, just before the current weights are kept as best."""
    def payload_extras(self) -> dict:
        """Extra keys of every checkpoint."""
        return {}
