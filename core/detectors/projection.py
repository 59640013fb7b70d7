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
    halvings: torch.Tensor | None = None  # [B] int: times alpha was halved for this image so far (monotone guard)
    alpha: torch.Tensor | None = None  # [B] the step size each image takes next (halved on a rise, doubled back after)
    stalled: torch.Tensor | None = None  # [B] bool: no step (down to alpha / 2**MAX_HALVINGS) lowered its energy


#: how often the guard halves alpha within one step before the image stays where it is (alpha / 1024)
MAX_HALVINGS = 10


def energy(model: torch.nn.Module, x: torch.Tensor, x0: torch.Tensor, lam: float,
           precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image E(x), L_rec(x, f(x)) and f(x); the model runs in ``precision`` (resolved), the energy in fp32."""
    with autocast(x.device, precision):
        recon = model.reconstruct(x)
    recon = recon.float()
    rec = model.recon_energy(x, recon)
    return rec + lam * (x - x0).abs().flatten(1).sum(1), rec, recon


def _evaluate(model: torch.nn.Module, x: torch.Tensor, x0: torch.Tensor, lam: float, precision: str,
              with_grad: bool, skip: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """E, L_rec, f(x) and (``with_grad``) grad_x L_rec at ``x`` (through f), detached; images in ``skip`` get no
    gradient. The L1 term's (sub)gradient is added by :func:`_energy_gradient`."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(with_grad)
        e, rec, recon = energy(model, xg, x0, lam, precision)
        grad = None
        if with_grad:
            target = rec if skip is None else rec.masked_fill(skip, 0.0)
            (grad,) = torch.autograd.grad(torch.where(torch.isfinite(target), target, 0.0).sum(), xg)
    return e.detach(), rec.detach(), recon.detach().float(), grad


def _energy_gradient(grad_rec: torch.Tensor, x: torch.Tensor, x0: torch.Tensor, lam: float, steepest: bool) -> torch.Tensor:
    """grad_x E = grad_x L_rec + lam * sign(x - x0). Where x = x0 the L1 term has no gradient: autograd's choice
    (sign 0, the article's update) makes every such pixel move however small its grad_x L_rec, and the L1 cost of
    moving it (lam per unit) can exceed the gain, so the step raises E. ``steepest`` takes the subgradient of least
    norm there instead (soft-thresholding grad_x L_rec by lam): a pixel leaves x0 only when that lowers E."""
    grad_rec = torch.where(torch.isfinite(grad_rec), grad_rec, 0.0)
    moved = x != x0
    plain = grad_rec + lam * torch.sign(x - x0)
    if not steepest:
        return plain
    at_x0 = torch.sign(grad_rec) * (grad_rec.abs() - lam).clamp_min(0.0)
    return torch.where(moved, plain, at_x0)


def project(model: torch.nn.Module, x0: torch.Tensor, cfg: ProjectionConfig) -> Iterator[ProjectionFrame]:
    """Yield the projection frames of a batch, lazily: step 0 (the input) then one per update.

    With ``cfg.monotone`` (the default) no image's energy ever rises: the step follows the steepest-descent
    subgradient of E (:func:`_energy_gradient`, the same gradient wherever x != x0), and when a step would still raise
    an image's energy (or make it non-finite) alpha is halved for that image and the step retried, up to
    :data:`MAX_HALVINGS` times (after a step that lowers E at once, its alpha doubles back towards ``cfg.alpha``); an image that no such step improves stays where it is (``stalled``). The
    paper's plain update (``monotone=False``) instead freezes an image whose energy becomes non-finite or
    explodes past ``divergence_factor`` x its start, at its last finite iterate (``diverged_step``).
    Memory stays O(batch) unless the caller keeps frames.
    """
    cfg.validate()
    model.eval()
    x0 = x0.detach().float()
    precision = resolve_precision(cfg.precision, x0.device)
    b = x0.shape[0]
    x = x0.clone()
    alpha = torch.full((b,), float(cfg.alpha), device=x.device)
    halvings = torch.zeros(b, dtype=torch.int64, device=x.device)
    stalled = torch.zeros(b, dtype=torch.bool, device=x.device)
    e, rec, recon, grad = _evaluate(model, x, x0, cfg.lam, precision, cfg.steps > 0)
    initial = e.abs().clamp_min(1e-6)
    diverged = ~torch.isfinite(e)
    diverged_step: list[int | None] = [0 if d else None for d in diverged.tolist()]

    def frame(step: int) -> ProjectionFrame:
        return ProjectionFrame(step, x, recon, (x - x0).abs().mean(1), e, rec, diverged.clone(), list(diverged_step),
                               halvings.clone(), alpha.clone(), stalled.clone())

    yield frame(0)
    for step in range(1, cfg.steps + 1):
        active = ~diverged & ~stalled
        if not bool(active.any()):  # nothing moves any more: the same state for the remaining steps
            yield frame(step)
            continue
        last = step == cfg.steps
        direction = _energy_gradient(grad, x, x0, cfg.lam, cfg.monotone) * (x - recon).pow(2)
        sel = active.view(b, 1, 1, 1)
        cand = torch.where(sel, (x - alpha.view(b, 1, 1, 1) * direction).clamp(0.0, 1.0), x)
        e_c, rec_c, recon_c, grad_c = _evaluate(model, cand, x0, cfg.lam, precision, not last, diverged)
        if cfg.monotone:
            rose = active & ~(e_c <= e)  # a NaN energy counts as a rise
            # an image whose step at its (halved) alpha lowered E at once gets its alpha doubled back for the
            # next step, up to the configured one: one bad step does not slow the rest of its projection
            alpha = torch.where(active & ~rose, (alpha * 2).clamp(max=float(cfg.alpha)), alpha)
            for _ in range(MAX_HALVINGS):
                if not bool(rose.any()):
                    break
                idx = torch.nonzero(rose).flatten()
                alpha[idx] = alpha[idx] / 2
                halvings[idx] += 1
                retry = (x[idx] - alpha[idx].view(-1, 1, 1, 1) * direction[idx]).clamp(0.0, 1.0)
                e_r, rec_r, recon_r, grad_r = _evaluate(model, retry, x0[idx], cfg.lam, precision, not last)
                cand[idx], e_c[idx], rec_c[idx], recon_c[idx] = retry, e_r, rec_r, recon_r
                if grad_r is not None:
                    grad_c[idx] = grad_r
                rose = torch.zeros_like(rose)
                rose[idx] = ~(e_r <= e[idx])
            if bool(rose.any()):  # no step lowers its energy: it stays at x_t
                stalled |= rose
                keep = rose.view(b, 1, 1, 1)
                cand, recon_c = torch.where(keep, x, cand), torch.where(keep, recon, recon_c)
                e_c, rec_c = torch.where(rose, e, e_c), torch.where(rose, rec, rec_c)
                if grad_c is not None:
                    grad_c = torch.where(keep, grad, grad_c)
        else:
            bad = active & (~torch.isfinite(e_c) | (e_c > cfg.divergence_factor * initial))
            for i in torch.nonzero(bad).flatten().tolist():
                diverged_step[i] = step
            diverged |= bad
            keep = bad.view(b, 1, 1, 1)  # those images keep their last finite iterate
            cand, recon_c = torch.where(keep, x, cand), torch.where(keep, recon, recon_c)
            e_c, rec_c = torch.where(bad, e, e_c), torch.where(bad, rec, rec_c)
        x, e, rec, recon, grad = cand, e_c, rec_c, recon_c, grad_c
        yield frame(step)


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
        an image diverged or the run stopped early); ``extras["diverged_step"]`` is -1 for images that did not diverge;
        ``extras["alpha_halvings"]`` counts the guard's halvings of alpha per image, ``extras["stalled"]`` marks images
        that no step could improve.
        """
        maps = gaussian_blur(projection_map(frame, x0, self.cfg.map_mode), self.score.smooth_sigma)
        raw_sum = (frame.x - x0.float()).abs().flatten(1).sum(1) * 255.0
        extras = {"diverged_step": torch.tensor([-1 if s is None else s for s in frame.diverged_step], dtype=torch.int64)}
        if frame.halvings is not None:
            extras["alpha_halvings"] = frame.halvings.detach().cpu()
            extras["stalled"] = frame.stalled.detach().cpu()
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
