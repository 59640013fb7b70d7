"""Job functions for the app: long work wrapped for :class:`core.jobs.JobRegistry`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.jobs import JobContext
from core.train import Progress, TrainConfig, fit


def training_task(cfg: TrainConfig, run_dir: Path | None = None, evaluate: bool = True) -> Callable[[JobContext], dict[str, Any]]:
    """A job that trains ``cfg``, then scores the test split; publishes progress as job state.

    State keys: ``phase``, ``epoch``, ``epochs``, ``batch``, ``batches``, ``history`` (list of
    per-epoch losses), ``preview`` (list of (input, reconstruction) float CHW arrays), ``eta_seconds``,
    ``run_dir``, ``message``.
    """

    def task(ctx: JobContext) -> dict[str, Any]:
        def on_progress(p: Progress) -> None:
            if p.phase == "batch":
                ctx.update(phase="training", batch=p.batch, batches=p.batches, epoch_running=p.epoch)
                return
            update: dict[str, Any] = {"epoch": p.epoch, "epochs": p.epochs, "history": p.history}
            if p.phase == "epoch":
                update.update(phase="training", preview=p.preview, eta_seconds=p.eta_seconds, best_val_loss=p.best_val_loss)
            elif p.phase == "start":
                update.update(phase="training", batches=p.batches, run_dir=p.run_dir)
            else:
                update.update(message=p.message)
            ctx.update(**update)

        ctx.update(phase="loading data", message="")
        out = fit(cfg, run_dir, progress=on_progress, stop=ctx.stop)
        ctx.update(run_dir=str(out))
        result: dict[str, Any] = {"run_dir": str(out)}
        if evaluate:
            from core.evaluate import evaluate_run

            ctx.update(phase="scoring the test images")
            result["metrics"] = evaluate_run(out, device=cfg.device)
        ctx.update(phase="done")
        return result

    return task
