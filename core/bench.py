"""Benchmarks: the project's code against a reference in the same run, reported as ratios.

``train``: training images/s of :func:`core.train.fit` against a loop written the way the bottle AE
article writes it (PIL decode + torchvision transforms in a DataLoader every epoch, fp32 NCHW,
``loss.item()`` every batch), same model, data, batch size and epochs. Optionally both are trained
longer and their test image AUROC compared.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from core import metrics
from core.data.builtin import open_dataset
from core.data.index import Sample
from core.data.loading import clear_cache, detect_channels, load_split
from core.evaluate import score_split
from core.models import build_model
from core.scoring import ReconstructionDetector
from core.train import TrainConfig, _split_train_val, fit


class _ReferenceDataset(torch.utils.data.Dataset):
    """Decodes every image with PIL on every access, as the article's Dataset does."""

    def __init__(self, samples: list[Sample], size: int, channels: int) -> None:
        from torchvision import transforms

        self.samples = samples
        self.mode = "L" if channels == 1 else "RGB"
        self.transform = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.samples[i].path) as img:
            return self.transform(img.convert(self.mode))


def _reference_train(cfg: TrainConfig, train_samples: list[Sample], channels: int, epochs: int) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.arch(channels))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loader = torch.utils.data.DataLoader(_ReferenceDataset(train_samples, cfg.size, channels), batch_size=cfg.batch_size, shuffle=True)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        losses = []
        for x in loader:
            loss, _ = model.loss(x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())  # the per-batch host sync the article's loop does
    return model, time.perf_counter() - t0


def _auroc(model: torch.nn.Module, cfg: TrainConfig, test) -> float | None:
    model = model.float().to(memory_format=torch.contiguous_format).cpu()
    scored = score_split(ReconstructionDetector(model, cfg.score_config()), test)
    return metrics.image_auroc(scored.scores, test.labels)


def bench_train(data: str, category: str | None, size: int, epochs: int, batch_size: int, quality_epochs: int = 0) -> dict[str, Any]:
    """Measure training throughput (and optionally AUROC) of fit() vs. the reference loop."""
    index = open_dataset(data, category)
    channels = detect_channels(index)
    cfg = TrainConfig(data=data, category=index.category, size=size, epochs=epochs, batch_size=batch_size,
                      channels=channels, patience=10**6, device="cpu")
    tr_idx, _ = _split_train_val(len(index.split("train")), cfg.val_fraction, cfg.seed)
    train_samples = [index.split("train")[i] for i in tr_idx]
    n = len(train_samples)

    _reference_train(cfg, train_samples[: batch_size], channels, 1)  # warm-up (allocator, kernels)
    _, ref_seconds = _reference_train(cfg, train_samples, channels, epochs)

    clear_cache()  # the project's loop pays its one-time decode inside the timing
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_dir = fit(cfg, Path(tmp) / "run")
        ours_seconds = time.perf_counter() - t0
        precision = __import__("json").loads((run_dir / "config.json").read_text())["resolved"]["precision"]

    result: dict[str, Any] = {
        "benchmark": "train",
        "data": data,
        "category": index.category,
        "size": size,
        "batch_size": batch_size,
        "epochs": epochs,
        "train_images": n,
        "reference_images_per_s": n * epochs / ref_seconds,
        "ours_images_per_s": n * epochs / ours_seconds,
        "ours_precision": precision,
        "speedup": ref_seconds / ours_seconds,
        "target_speedup": 2.5,
        "note": "ours includes the one-time decode, validation loss and checkpoint writes",
    }
    if quality_epochs:
        test = load_split(index, "test", size, channels)
        ref_model, _ = _reference_train(cfg, train_samples, channels, quality_epochs)
        with tempfile.TemporaryDirectory() as tmp:
            from core.runs import load_run

            run_dir = fit(TrainConfig(**{**cfg.__dict__, "epochs": quality_epochs}), Path(tmp) / "run")
            ours_model = load_run(run_dir).model
        result.update(quality_epochs=quality_epochs, reference_image_auroc=_auroc(ref_model, cfg, test),
                      ours_image_auroc=_auroc(ours_model, cfg, test))
    return result


def run(what: str, **kwargs: Any) -> dict[str, Any]:
    """Run the benchmark named ``what``."""
    if what == "train":
        return bench_train(kwargs["data"], kwargs.get("category"), kwargs["size"], kwargs["epochs"],
                           kwargs["batch_size"], kwargs.get("quality_epochs", 0))
    if what == "project":
        return bench_project(kwargs["data"], kwargs.get("category"), kwargs["size"], kwargs.get("steps") or 10, 16)
    raise ValueError(f"unknown benchmark {what!r}")




def bench_project(data: str, category: str | None, size: int, steps: int, batch_size: int = 16) -> dict[str, Any]:
    """Projection throughput: one batch of ``batch_size`` images vs. the same images one at a time,
    and the cost of one projection step relative to one training step on the same batch.

    The VAE is the default architecture at ``size`` (weights untrained: timing does not depend on them).
    """
    from core.models import ConvVAE, VAEConfig
    from core.projection import ProjectionConfig, run_projection

    index = open_dataset(data, category)
    channels = detect_channels(index)
    test = load_split(index, "test", size, channels)
    x = test.float_images()[:batch_size]
    if len(x) < batch_size:
        raise ValueError(f"the test split has only {len(x)} images; need {batch_size}")
    torch.manual_seed(0)
    model = ConvVAE(VAEConfig(in_channels=channels, size=size, z_dim=128)).eval()
    cfg = ProjectionConfig(steps=steps)
    run_projection(model, x[:2], ProjectionConfig(steps=1))  # warm-up

    t0 = time.perf_counter()
    run_projection(model, x, cfg)
    batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(batch_size):
        run_projection(model, x[i : i + 1], cfg)
    sequential = time.perf_counter() - t0

    # One training step on the same batch, as core.train does it (channels_last, the same precision).
    from core.device import autocast, resolve_precision

    train_model = ConvVAE(VAEConfig(in_channels=channels, size=size, z_dim=128)).train().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(train_model.parameters(), lr=1e-3)
    precision = resolve_precision("auto", torch.device("cpu"))

    def train_steps(n: int, prec: str) -> float:
        xb = x.contiguous(memory_format=torch.channels_last)
        t = time.perf_counter()
        for _ in range(n):
            with autocast(torch.device("cpu"), prec):
                loss, _ = train_model.loss(xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t) / n

    train_steps(1, "fp32")
    n = max(3, min(steps, 10))
    train_fp32 = train_steps(n, "fp32")
    train_project = train_steps(n, precision)
    step = batched / (steps + 1)  # steps + 1 energy/gradient evaluations (the last one has no update)
    return {
        "benchmark": "project",
        "data": data, "category": index.category, "size": size, "channels": channels, "steps": steps,
        "batch_size": batch_size,
        "batched_seconds": batched, "sequential_seconds": sequential,
        "speedup_batched": sequential / batched, "target_speedup_batched": 3.0,
        "projection_step_seconds": step,
        "train_step_seconds_fp32": train_fp32,
        f"train_step_seconds_{precision}": train_project,
        "step_cost_vs_train_step_fp32": step / train_fp32,
        f"step_cost_vs_train_step_{precision}": step / train_project,
        "target_step_cost": 1.5,
    }
