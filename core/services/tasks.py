"""Job functions for the app: long work wrapped for :class:`core.services.jobs.JobRegistry`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import runs
from core.config import TrainConfig, config_dict
from core.detectors.anounet import AnoUnet, AnoUnetProgress
from core.detectors.fnet_distance import load_fnet
from core.device import resolve_device
from core.errors import ConfigError
from core.evaluation.evaluate import evaluate_run
from core.services.jobs import JobContext, WorkerTask
from core.training.common import Progress
from core.training.loop import fit
from core.training.warm_start import resolve_warm_start
from core.workspace import ENV_ALLOWED_ROOTS, atomic_write_json, cache_dir, read_roots


def training_task(cfg: TrainConfig, run_dir: Path | None = None, evaluate: bool = True) -> WorkerTask:
    """A job that trains ``cfg``, then scores the test split; publishes progress as job state.

    State keys: ``phase``, ``epoch``, ``epochs``, ``batch``, ``batches``, ``history`` (list of
    per-epoch losses), ``preview`` (list of (input, reconstruction) float CHW arrays), ``eta_seconds``,
    ``run_dir``, ``message``.
    """
    return WorkerTask(_train, {"cfg": cfg, "run_dir": run_dir, "evaluate": evaluate})


def _train(ctx: JobContext, cfg: TrainConfig, run_dir: Path | None, evaluate: bool) -> dict[str, Any]:
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


LAUNCH_POLL_S = 1.0  # a distributed training's history.json is read this often
STOP_GRACE_S = 90.0  # after Stop, the ranks' time to agree, finish their batch and write the run


def distributed_training_task(cfg: TrainConfig, nproc: int, run_dir: Path | None = None, evaluate: bool = True) -> WorkerTask:
    """A job that trains ``cfg`` data-parallel in ``nproc`` processes on this machine (``python -m core train --nproc``:
    torchrun, one process per GPU with NCCL, gloo on CPU) and follows it through the run's ``history.json``; the
    ranks also score the test split when ``evaluate``. State keys as :func:`training_task` (no preview), plus
    ``nproc`` and ``log`` (the launch's output file)."""
    if int(nproc) < 2:
        raise ConfigError("a distributed training needs at least 2 processes")
    return WorkerTask(_train_distributed, {"cfg": cfg, "nproc": int(nproc), "run_dir": run_dir, "evaluate": evaluate})


def _train_distributed(ctx: JobContext, cfg: TrainConfig, nproc: int, run_dir: Path | None, evaluate: bool) -> dict[str, Any]:
    out = Path(run_dir) if run_dir is not None else runs.new_run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    launch = cache_dir("launch")
    spec, log_path = launch / f"{out.name}.json", launch / f"{out.name}.log"
    atomic_write_json(spec, {"config": config_dict(cfg)})
    cmd = [sys.executable, "-m", "core", "train", "--config", str(spec), "--out", str(out), "--nproc", str(nproc),
           "--quiet", *([] if evaluate else ["--no-eval"])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if (roots := read_roots()) is not None:  # the ranks read only where this server may
        env[ENV_ALLOWED_ROOTS] = os.pathsep.join(str(r) for r in roots)
    ctx.update(phase=f"starting {nproc} processes", message="", run_dir=str(out), nproc=nproc, log=str(log_path),
               epochs=cfg.epochs, history=[])
    started, stop_sent = time.monotonic(), None
    with open(log_path, "wb") as log:
        # its own process group: Stop sends SIGINT to the launcher, torchrun and the ranks, as Ctrl-C in a terminal
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            while proc.poll() is None:
                if ctx.stop.is_set() and stop_sent is None:  # the ranks agree and leave at the same batch
                    os.killpg(proc.pid, signal.SIGINT)
                    stop_sent = time.monotonic()
                elif stop_sent is not None and time.monotonic() - stop_sent > STOP_GRACE_S:
                    os.killpg(proc.pid, signal.SIGTERM)
                _follow_history(ctx, out, cfg, started)
                time.sleep(LAUNCH_POLL_S)
        finally:
            if proc.poll() is None:  # the job itself failed: leave no rank behind
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    _follow_history(ctx, out, cfg, started)
    if proc.returncode != 0 and not ctx.stop.is_set():
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-12:]
        raise RuntimeError(f"the {nproc}-process training ended with exit code {proc.returncode}: "
                           + (" | ".join(tail) or "no output"))
    result: dict[str, Any] = {"run_dir": str(out), "nproc": nproc}
    if evaluate and (out / "metrics.json").is_file():
        result["metrics"] = runs.read_json(out / "metrics.json")
    ctx.update(phase="done")
    return result


def _follow_history(ctx: JobContext, out: Path, cfg: TrainConfig, started: float) -> None:
    """Publish the epochs rank 0 has written so far, with the ETA from their mean time."""
    try:
        hist = runs.read_history(out)
    except (runs.RunError, OSError):
        return
    epochs = hist.get("epochs") or []
    if not epochs:
        return
    last = int(epochs[-1].get("epoch", len(epochs)))
    per = (time.monotonic() - started) / max(1, len(epochs))
    ctx.update(phase="training" if hist.get("status") == "running" else "scoring the test images", epoch=last,
               epochs=cfg.epochs, history=epochs, best_val_loss=hist.get("best_val_loss"),
               eta_seconds=per * max(0, cfg.epochs - last))


def anounet_task(
    fnet_run_dir: Path | str, images: Any, cfg: Any, *, warm_start: str = "none", preview_every: int = 5,
    device: str = "auto", cache: bool = True,
) -> WorkerTask:
    """A job that runs Ano-Unet (``core.anounet``) on uint8 images ``[N, C, H, W]`` with an f-Net run.

    State keys: ``phase`` ("warm start", "optimizing", "done"), ``done``, ``total``, ``cached``, ``epoch``
    (highest epoch in flight), ``curves`` ({image index: {"loss_r", "loss_c", "pixel_change": lists}}),
    ``previews`` ({image index: latest G(x), float CHW}, every ``preview_every`` epochs), ``results``
    ({image index: :class:`core.anounet.ImageResult`}, as images finish). Returns ``{"results": [...]}``
    in request order (None for images a stop request kept from starting).
    """
    return WorkerTask(_anounet, {"fnet_run_dir": str(fnet_run_dir), "images": np.asarray(images), "cfg": cfg,
                                 "warm_start": warm_start, "preview_every": preview_every, "device": device, "cache": cache})


def _anounet(ctx: JobContext, fnet_run_dir: str, images: np.ndarray, cfg: Any, warm_start: str, preview_every: int,
             device: str, cache: bool) -> dict[str, Any]:
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
    results = ano.run(torch.from_numpy(images), progress=on_progress, stop=ctx.stop, preview_every=preview_every)
    ctx.update(phase="done")
    return {"results": results}
