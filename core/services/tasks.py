"""Job functions for the app: long work wrapped for :class:`core.services.jobs.JobRegistry`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.config import TrainConfig
from core.detectors.anounet import AnoUnet, AnoUnetProgress
from core.detectors.fnet_distance import load_fnet
from core.device import resolve_device
from core.evaluation.evaluate import evaluate_run
from core.services.jobs import JobContext
from core.training.common import Progress
from core.training.loop import fit
from core.training.warm_start import resolve_warm_start


def training_task(cfg: TrainConfig, run_dir: Path | None = None, evaluate: bool = True) -> Callable[[JobContext], dict[str, Any]]:
    """A job that trains ``cfg``, then scores the test split; publishes progress as job state.

    State keys: ``phase``, ``epoch``, ``epochs``, ``batch``, ``batches``, ``history`` (list of
    per-epoch losses), ``preview`` (list of (input, reconstruction) float CHW arrays), ``eta_seconds``,
    ``run_dir``, ``message``.
    """

    def task(ctx: JobContext) -> dict[str, Any]:
        def on_progress(p: Progress) -> None:
            if p.phase == "batch":
                ctx.update(phase=p.message or "training", batch=p.batch, batches=p.batches, epoch_running=p.epoch)
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
            ctx.update(phase="scoring the test images")
            result["metrics"] = evaluate_run(out, device=cfg.device)
        ctx.update(phase="done")
        return result

    return task


def anounet_task(
    fnet_run_dir: Path | str, images: Any, cfg: Any, *, warm_start: str = "none", preview_every: int = 5,
    device: str = "auto", cache: bool = True,
) -> Callable[[JobContext], dict[str, Any]]:
    """A job that runs Ano-Unet (``core.anounet``) on uint8 images ``[N, C, H, W]`` with an f-Net run.

    State keys: ``phase`` ("warm start", "optimizing", "done"), ``done``, ``total``, ``cached``, ``epoch``
    (highest epoch in flight), ``curves`` ({image index: {"loss_r", "loss_c", "pixel_change": lists}}),
    ``previews`` ({image index: latest G(x), float CHW}, every ``preview_every`` epochs), ``results``
    ({image index: :class:`core.anounet.ImageResult`}, as images finish). Returns ``{"results": [...]}``
    in request order (None for images a stop request kept from starting).
    """

    def task(ctx: JobContext) -> dict[str, Any]:
        # The worker owns these; the published state always gets fresh copies (a snapshot may be
        # deep-copying the previous ones in another thread).
        curves: dict[int, dict[str, list[float]]] = {}
        previews: dict[int, Any] = {}
        finished: dict[int, Any] = {}

        def on_progress(p: AnoUnetProgress) -> None:
            update: dict[str, Any] = {"done": p.done, "total": p.total, "cached": p.cached}
            if p.slots:
                update["epoch"] = max(s.epoch for s in p.slots)
                for s in p.slots:
                    c = curves.setdefault(s.index, {"loss_r": [], "loss_c": [], "pixel_change": []})
                    c["loss_r"].append(s.loss_r)
                    c["loss_c"].append(s.loss_c)
                    c["pixel_change"].append(s.pixel_change)
                    if s.preview is not None:
                        previews[s.index] = s.preview
                update["curves"] = {i: {k: list(v) for k, v in c.items()} for i, c in curves.items()}
                update["previews"] = dict(previews)
            if p.results:
                finished.update(zip(p.finished, p.results))
                update["results"] = dict(finished)
            ctx.update(**update)


        ctx.update(phase="loading", done=0, total=len(images), cached=0, curves={}, previews={}, results={})
        dev = resolve_device(device)
        run = load_fnet(fnet_run_dir, dev)
        if warm_start not in ("", "none"):
            ctx.update(phase="warm start")
        state, arch, _ = resolve_warm_start(warm_start, fnet_run_dir, cfg, device=dev, stop=ctx.stop)
        ctx.update(phase="optimizing")
        ano = AnoUnet(run.model, cfg, warm_state=state, warm_arch=arch, device=dev, cache=cache)
        results = ano.run(images, progress=on_progress, stop=ctx.stop, preview_every=preview_every)
        ctx.update(phase="done")
        return {"results": results}

    return task
