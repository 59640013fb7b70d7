"""Iterative energy-based projection (Dehaene et al., ICLR 2020).

Instead of comparing an image with its (blurry) reconstruction, move the image itself towards the
normal-data manifold learnt by a reconstruction model f, changing as few pixels as possible:

    E(x)      = L_rec(x, f(x)) + lambda * ||x - x0||_1
    x_{t+1}   = x_t - alpha * (grad_x E(x_t) * (x_t - f(x_t))^2)

The gradient is taken at the current iterate x_t (not at x0), through f. The factor
(x_t - f(x_t))^2 restricts the update to pixels the model cannot explain, so the projected image stays
sharp and only the defect moves. L_rec is the model's own training loss (summed BCE for a BCE VAE,
squared error for the AE), via ``model.recon_energy``. Values are clamped to [0, 1].

The anomaly map is |x_T - x0| (optionally plus the remaining reconstruction error at x_T)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from core.config import ProjectionConfig, ScoreConfig
from core.data.images import to_uint8_hwc
from core.detectors.maps import gaussian_blur, image_scores
from core.device import autocast, resolve_precision
from core.models.contract import AnomalyOutput
from core.viz import heatmap, strip


@dataclass
class ProjectionFrame:
    """The state after ``step`` updates (step 0 is the input). Tensors are detached, on the model's device."""

    step: int
    x: torch.Tensor  # [B, C, H, W] current iterate x_t
    recon: torch.Tensor  # [B, C, H, W] f(x_t)
    diff: torch.Tensor  # [B, H, W] |x_t - x0| averaged over channels
    energy: torch.Tensor  # [B] E(x_t)
    rec_energy: torch.Tensor  # [B] L_rec(x_t, f(x_t))
    diverged: torch.Tensor  # [B] bool: this image diverged and is frozen at its last finite iterate
    diverged_step: list[int | None]  # per image: the step at which it diverged


def energy(model: torch.nn.Module, x: torch.Tensor, x0: torch.Tensor, lam: float,
           precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image E(x), L_rec(x, f(x)) and f(x); the model runs in ``precision`` (resolved), the energy in fp32."""
    with autocast(x.device, precision):
        recon = model.reconstruct(x)
    recon = recon.float()
    rec = model.recon_energy(x, recon)
    return rec + lam * (x - x0).abs().flatten(1).sum(1), rec, recon


def project(model: torch.nn.Module, x0: torch.Tensor, cfg: ProjectionConfig) -> Iterator[ProjectionFrame]:
    """Yield the projection frames of a batch, lazily: step 0 (the input) then one per update.

    Memory stays O(batch) unless the caller keeps frames. An image whose energy becomes non-finite
    or explodes stops moving (it keeps its last finite iterate) and is reported in ``diverged_step``;
    the other images of the batch go on.
    """
    cfg.validate()
    model.eval()
    x0 = x0.detach().float()
    precision = resolve_precision(cfg.precision, x0.device)
    x = x0.clone()
    b = x.shape[0]
    diverged = torch.zeros(b, dtype=torch.bool, device=x.device)
    diverged_step: list[int | None] = [None] * b
    initial: torch.Tensor | None = None
    x_prev, recon_prev = x, None
    for step in range(cfg.steps + 1):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            e, rec, recon = energy(model, xg, x0, cfg.lam, precision)
            if initial is None:
                initial = e.detach().abs().clamp_min(1e-6)
            bad = ~torch.isfinite(e.detach()) | (e.detach() > cfg.divergence_factor * initial)
            newly = bad & ~diverged
            for i in torch.nonzero(newly).flatten().tolist():
                diverged_step[i] = step
            diverged |= bad
            if bool(newly.any()) and recon_prev is not None:  # keep the last finite iterate of those images
                sel = newly.view(b, 1, 1, 1)
                x = torch.where(sel, x_prev, x)
                recon = torch.where(sel, recon_prev, recon)
            grad = None
            if step < cfg.steps and not bool(diverged.all()):
                (grad,) = torch.autograd.grad(e.masked_fill(diverged, 0.0).sum(), xg)
        recon = recon.detach().float()
        yield ProjectionFrame(step, x, recon, (x - x0).abs().mean(1), e.detach(), rec.detach(), diverged.clone(), list(diverged_step))
        if grad is None:
            break
        x_prev, recon_prev = x, recon
        update = cfg.alpha * grad * (x - recon).pow(2)
        keep = diverged.view(b, 1, 1, 1) | ~torch.isfinite(update)
        x = torch.where(keep, x, (x - update).clamp(0.0, 1.0))


def run_projection(model: torch.nn.Module, x0: torch.Tensor, cfg: ProjectionConfig) -> ProjectionFrame:
    """Run all steps and return the last frame (per image, the last finite iterate)."""
    last = None
    for last in project(model, x0, cfg):
        pass
    assert last is not None
    return last


def projection_map(frame: ProjectionFrame, x0: torch.Tensor, mode: str) -> torch.Tensor:
    """The anomaly map ``[B, H, W]`` of a finished projection."""
    proj = (frame.x - x0.float()).abs().mean(1)
    if mode == "combined":
        return proj + (frame.x - frame.recon).abs().mean(1)
    return proj


class ProjectionDetector:
    """Detector with the common contract: map from the projection, reconstruction = projected image."""

    def __init__(self, model: torch.nn.Module, cfg: ProjectionConfig | None = None, score: ScoreConfig | None = None) -> None:
        self.model = model.eval()
        self.cfg = cfg or ProjectionConfig()
        self.cfg.validate()
        self.score = score or ScoreConfig()

    def predict(self, x: torch.Tensor) -> AnomalyOutput:
        energies: list[torch.Tensor] = []
        last = None
        for last in project(self.model, x, self.cfg):
            energies.append(last.energy.detach().float())
        assert last is not None
        return self.output(last, x, energies)

    def output(self, frame: ProjectionFrame, x0: torch.Tensor, energies: list[torch.Tensor] | None = None) -> AnomalyOutput:
        """The contract's output of a finished projection (the one place its map and score are made).

        ``energies`` (``E(x_t)`` per step, each ``[B]``) go to ``extras["energy"]`` ``[B, steps + 1]`` (NaN after
        an image diverged or the run stopped early); ``extras["diverged_step"]`` is -1 for images that did not diverge.
        """
        maps = gaussian_blur(projection_map(frame, x0, self.cfg.map_mode), self.score.smooth_sigma)
        raw_sum = (frame.x - x0.float()).abs().flatten(1).sum(1) * 255.0
        extras = {"diverged_step": torch.tensor([-1 if s is None else s for s in frame.diverged_step], dtype=torch.int64)}
        if energies is not None:
            e = torch.full((x0.shape[0], self.cfg.steps + 1), float("nan"))
            for step, values in enumerate(energies):
                e[:, step] = torch.where(torch.isfinite(values), values, torch.nan).cpu()
            extras["energy"] = e
        return AnomalyOutput(image_scores(maps, self.score, raw_sum), maps, frame.x, extras)


def mean_energy_curve(energies: list[torch.Tensor]) -> list[float]:
    """Mean energy per step over a list of per-step ``[B]`` tensors (non-finite values skipped)."""
    out = []
    for e in energies:
        e = e[torch.isfinite(e)]
        out.append(float(e.mean()) if e.numel() else math.nan)
    return out


def projection_panel(x0: torch.Tensor, frame: ProjectionFrame, vmax: float, k: int | None = None) -> np.ndarray:
    """Rows of [x0 | x_t | f(x_t) | heatmap of |x_t - x0|] for the first ``k`` images of a frame (uint8 RGB)."""
    n = x0.shape[0] if k is None else min(k, x0.shape[0])
    rows = []
    for i in range(n):
        rows.append(strip([to_uint8_hwc(x0[i].cpu().numpy()), to_uint8_hwc(frame.x[i].cpu().numpy()),
                           to_uint8_hwc(frame.recon[i].clamp(0, 1).cpu().numpy()), heatmap(frame.diff[i].cpu().numpy(), 0.0, vmax)]))
        rows.append(np.full((2, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)
