"""The projection update rule on hand-checkable models, energy decrease, divergence, detector contract."""

from __future__ import annotations

import pytest
import torch

from core.config import ProjectionConfig
from core.detectors.projection import ProjectionDetector, project, run_projection
from core.models.contract import AnomalyOutput


class ConstantModel(torch.nn.Module):
    """f(x) = m everywhere; L_rec = sum (x - f(x))^2. Then grad_x E = 2 (x - m) + lam * sign(x - x0)."""

    def __init__(self, m: float) -> None:
        super().__init__()
        self.m = m

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, self.m)

    def recon_energy(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        return (x - recon).pow(2).flatten(1).sum(1)


class ScaleModel(torch.nn.Module):
    """f(x) = s * x: the gradient flows through f as well (d/dx (x - s x)^2 = 2 (1 - s)^2 x)."""

    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.s * x

    def recon_energy(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        return (x - recon).pow(2).flatten(1).sum(1)


def _frames(model, x0, **kw):
    return list(project(model, x0, ProjectionConfig(**kw)))


def test_first_steps_match_the_hand_computed_rule() -> None:
    m, alpha, lam = 0.2, 0.5, 0.1
    x0 = torch.tensor([0.8]).view(1, 1, 1, 1)
    frames = _frames(ConstantModel(m), x0, steps=2, alpha=alpha, lam=lam, monotone=False)  # the article's update
    # step 1: at x0 autograd gives the L1 term a zero (sub)gradient: x1 = x0 - a * 2 (x0 - m) * (x0 - m)^2
    x1 = 0.8 - alpha * (2 * (0.8 - m)) * (0.8 - m) ** 2
    # step 2: the gradient is taken at x1, and sign(x1 - x0) = -1 pulls back towards x0
    x2 = x1 - alpha * (2 * (x1 - m) + lam * -1.0) * (x1 - m) ** 2
    assert frames[1].x.item() == pytest.approx(x1, rel=1e-6)
    assert frames[2].x.item() == pytest.approx(x2, rel=1e-6)
    # taking the gradient at x0 instead (the common mistake) gives a different iterate
    wrong = x1 - alpha * (2 * (0.8 - m)) * (x1 - m) ** 2
    assert abs(frames[2].x.item() - wrong) > 1e-3


def test_the_guarded_update_takes_the_steepest_subgradient_at_x0() -> None:
    m, alpha, lam = 0.2, 0.5, 0.1
    x0 = torch.tensor([0.8, 0.25]).view(2, 1, 1, 1)
    frames = _frames(ConstantModel(m), x0, steps=2, alpha=alpha, lam=lam)
    # at x0 the least-norm subgradient of L_rec + lam |x - x0| is grad L_rec soft-thresholded by lam:
    # 2 (0.8 - m) = 1.2 -> 1.1; for the second image 2 (0.25 - m) = 0.1 <= lam: it stays (moving costs more than it gains)
    x1 = 0.8 - alpha * (2 * (0.8 - m) - lam) * (0.8 - m) ** 2
    assert frames[1].x[0].item() == pytest.approx(x1, rel=1e-6)
    assert frames[1].x[1].item() == pytest.approx(0.25) and frames[2].x[1].item() == pytest.approx(0.25)
    # away from x0 it is the article's gradient: sign(x1 - x0) = -1
    x2 = x1 - alpha * (2 * (x1 - m) + lam * -1.0) * (x1 - m) ** 2
    assert frames[2].x[0].item() == pytest.approx(x2, rel=1e-6)
    energies = torch.stack([f.energy for f in frames])
    assert (energies[1:] <= energies[:-1]).all()


def test_gradient_flows_through_the_model() -> None:
    s, alpha = 0.5, 1.0
    x0 = torch.tensor([0.6]).view(1, 1, 1, 1)
    frames = _frames(ScaleModel(s), x0, steps=1, alpha=alpha, lam=0.0)
    # E = (x - s x)^2: dE/dx = 2 (1 - s)^2 x (through f), mask = (x - s x)^2
    expected = 0.6 - alpha * (2 * (1 - s) ** 2 * 0.6) * ((1 - s) * 0.6) ** 2
    assert frames[1].x.item() == pytest.approx(expected, rel=1e-6)


def test_mask_factor_freezes_explained_pixels() -> None:
    x0 = torch.tensor([[0.2, 0.9]]).view(1, 1, 1, 2)
    last = run_projection(ConstantModel(0.2), x0, ProjectionConfig(steps=5, alpha=0.5, lam=0.0))
    assert last.x[0, 0, 0, 0].item() == pytest.approx(0.2)  # f explains it: (x - f)^2 = 0, never moves
    assert last.x[0, 0, 0, 1].item() < 0.9  # the "defect" moves towards f


def test_lambda_keeps_the_projection_closer_to_the_input() -> None:
    x0 = torch.rand(2, 1, 8, 8)
    far = run_projection(ConstantModel(0.5), x0, ProjectionConfig(steps=10, alpha=1.0, lam=0.0))
    near = run_projection(ConstantModel(0.5), x0, ProjectionConfig(steps=10, alpha=1.0, lam=0.5))
    assert (near.x - x0).abs().sum() < (far.x - x0).abs().sum()


def test_values_stay_in_range_and_frames_are_lazy() -> None:
    x0 = torch.rand(3, 3, 8, 8)
    gen = project(ConstantModel(-5.0), x0, ProjectionConfig(steps=4, alpha=10.0, lam=0.0))
    first = next(gen)
    assert first.step == 0 and torch.equal(first.x, x0)
    rest = list(gen)
    assert [f.step for f in rest] == [1, 2, 3, 4]
    assert all(f.x.min() >= 0 and f.x.max() <= 1 for f in rest)


def test_energy_decreases_on_a_trained_model(tmp_path) -> None:
    from core.config import TrainConfig
    from core.evaluation.scored import load_test_split
    from core.runs import load_run
    from core.training.loop import fit

    run = load_run(fit(TrainConfig(data="builtin:digits", model="vae", size=32, z_dim=8, epochs=3, device="cpu"), tmp_path / "v"))
    _, split = load_test_split(run)
    x0 = split.float_images()[-8:]  # anomalous digits (not the normal 7)
    frames = list(project(run.model, x0, ProjectionConfig(steps=10)))  # the shipped alpha and lambda
    per_image = torch.stack([f.energy for f in frames])  # [steps + 1, B]
    assert (per_image[-1] < per_image[0]).all()
    assert (per_image[1:] <= per_image[:-1]).all()  # the guard: no image's energy ever rises
    assert (frames[-1].x - x0).abs().max() > 0.01  # the image really moved


def test_the_plain_update_raises_the_energy_of_a_weak_vae_and_the_guard_does_not(tmp_path) -> None:
    from core.config import TrainConfig
    from core.evaluation.projection import evaluate_projection

    # the case: a small VAE after one epoch, the default alpha (E about 2,100 at 32 px RGB)
    from core.training.loop import fit

    run_dir = fit(TrainConfig(data="builtin:synthetic", category="bottle", model="vae", size=32, z_dim=8, epochs=1,
                              base_channels=16, device="cpu"), tmp_path / "v")
    plain = evaluate_projection(run_dir, ProjectionConfig(steps=8, monotone=False), limit=8, device="cpu")
    guarded = evaluate_projection(run_dir, ProjectionConfig(steps=8), limit=8, device="cpu")
    assert plain["energy_rises"] > 0 and plain["energy"][-1] > plain["energy"][0]
    assert guarded["energy_rises"] == 0 and guarded["energy"][-1] <= guarded["energy"][0]
    assert guarded["monotone"] and {"n_guarded", "alpha_halvings", "n_stalled"} <= set(guarded)


def test_the_guard_halves_alpha_for_the_image_whose_step_would_raise_its_energy() -> None:
    # f = 0.5, x0 = 0.9 (E = 0.16): at alpha 8 the step lands at 0 (E = 0.25, a rise); at alpha 4 at 0.388
    x0 = torch.tensor([0.9, 0.6]).view(2, 1, 1, 1)
    frames = _frames(ConstantModel(0.5), x0, steps=4, alpha=8.0, lam=0.0)
    energies = torch.stack([f.energy for f in frames])
    assert (energies[1:] <= energies[:-1]).all()
    last = frames[-1]
    assert frames[1].halvings.tolist() == [1, 0] and frames[1].alpha[0].item() == 4.0  # after step 1
    assert last.alpha[0].item() <= 8.0 and last.alpha[1].item() == 8.0  # doubled back up to alpha, never above
    assert abs(frames[1].x[0].item() - (0.9 - 4.0 * 0.8 * 0.16)) < 1e-6
    assert not last.stalled.any() and not last.diverged.any()
    plain = torch.stack([f.energy for f in _frames(ConstantModel(0.5), x0, steps=4, alpha=8.0, lam=0.0, monotone=False)])
    assert plain[1, 0] > plain[0, 0]
    out = ProjectionDetector(ConstantModel(0.5), ProjectionConfig(steps=4, alpha=8.0, lam=0.0)).predict(x0)
    assert out.extras["alpha_halvings"].tolist()[0] >= 1 and out.extras["stalled"].tolist() == [False, False]


class ExplodingModel(ConstantModel):
    """Reconstruction energy becomes NaN for an image that starts above 0.7 once it has moved below 0.85."""

    def recon_energy(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        e = super().recon_energy(x, recon)
        mean = x.flatten(1).mean(1)
        return torch.where((mean > 0.7) & (mean < 0.85), torch.tensor(float("nan")), e)


def test_divergence_stops_that_image_and_keeps_its_last_finite_iterate() -> None:
    x0 = torch.cat([torch.full((1, 1, 4, 4), 0.5), torch.full((1, 1, 4, 4), 0.9)])
    frames = _frames(ExplodingModel(0.1), x0, steps=6, alpha=0.05, lam=0.0, monotone=False)
    last = frames[-1]
    assert last.diverged.tolist() == [False, True]
    step = last.diverged_step[1]
    assert step is not None and step >= 1 and last.diverged_step[0] is None
    assert last.x[1].mean().item() >= 0.85  # frozen at the last iterate whose energy was finite
    assert torch.isfinite(last.x).all() and frames[-1].step == 6  # the other image went on
    assert last.x[0].mean().item() < 0.5


def test_with_the_guard_a_non_finite_energy_is_a_rise_and_alpha_is_halved() -> None:
    x0 = torch.cat([torch.full((1, 1, 4, 4), 0.5), torch.full((1, 1, 4, 4), 0.9)])
    frames = _frames(ExplodingModel(0.1), x0, steps=6, alpha=0.05, lam=0.0)
    last = frames[-1]
    assert not last.diverged.any() and last.halvings[0] == 0 and last.halvings[1] > 0
    energies = torch.stack([f.energy for f in frames])
    assert torch.isfinite(energies).all() and (energies[1:] <= energies[:-1]).all()
    assert last.x[1].mean().item() >= 0.85 and last.x[0].mean().item() < 0.5


def test_detector_contract() -> None:
    det = ProjectionDetector(ConstantModel(0.5), ProjectionConfig(steps=3))
    out = det.predict(torch.rand(2, 3, 16, 16))
    assert isinstance(out, AnomalyOutput)
    assert out.score.shape == (2,) and out.anomaly_map.shape == (2, 16, 16) and out.reconstruction.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="map_mode"):
        ProjectionConfig(map_mode="nope").validate()


def test_cli_project_json_and_gif(tmp_path) -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    from core.config import TrainConfig
    from core.training.loop import fit

    run_dir = fit(TrainConfig(data="builtin:synthetic", category="mesh", model="vae", size=32, z_dim=8, epochs=1, device="cpu"),
                  tmp_path / "vae")
    gif = tmp_path / "p.gif"
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-m", "core", "project", str(run_dir), "--steps", "4", "--limit", "20",
                        "--images", "scratch", "good", "--gif", str(gif), "--json"], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert len(m["energy"]) == 5 and m["n_images"] == 20
    for key in ("pixel_auroc", "pixel_auroc_reconstruction", "aupro", "aupro_reconstruction"):
        assert isinstance(m[key], float), key
    with Image.open(gif) as im:
        assert im.n_frames == 5 == m["gif_frames"]  # step 0 (the input) and one frame per step
    # the command is a thin wrapper over the one evaluation path: the same numbers from the cached scored sets
    from core.evaluation.curves import summary
    from core.evaluation.scored import scored_set

    ss = scored_set(run_dir, "projection", settings={"steps": 4})
    assert Path(m["scored"]).is_file()
    assert len(ss) > 20  # the whole split is a different cache entry from the 20 chosen images
    from core.evaluation.projection import evaluate_projection

    again = evaluate_projection(run_dir, ProjectionConfig(steps=4), images=["scratch", "good"], limit=20, device="cpu")
    assert {k: again[k] for k in ("image_auroc", "pixel_auroc", "aupro", "energy", "n_diverged")} == \
        {k: m[k] for k in ("image_auroc", "pixel_auroc", "aupro", "energy", "n_diverged")}
    picked = ([p for p in ss.paths if p.startswith("test/scratch/")] + [p for p in ss.paths if p.startswith("test/good/")])[:20]
    chosen = scored_set(run_dir, "projection", settings={"steps": 4}, images=picked)
    assert summary(chosen)["pixel_auroc"] == m["pixel_auroc"] and chosen.extras["energy"].shape == (20, 5)
    r = subprocess.run([sys.executable, "-m", "core", "project", str(run_dir), "--images", "teapot"], cwd=root,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "neither a test image" in r.stderr


def test_bench_project_reports_ratios() -> None:
    from core.cli.bench import bench_project

    r = bench_project("builtin:synthetic", "bottle", 32, steps=1, batch_size=16)
    assert r["batched_seconds"] > 0 and r["sequential_seconds"] > 0
    assert {"speedup_batched", "step_cost_vs_train_step_fp32", "target_step_cost"} <= set(r)


def test_projection_works_with_the_autoencoder_too() -> None:
    from core.config import AEConfig
    from core.models import ConvAutoencoder

    torch.manual_seed(0)
    model = ConvAutoencoder(AEConfig(in_channels=1, base_channels=4, depth=3)).eval()
    x0 = torch.rand(2, 1, 16, 16)
    frames = list(project(model, x0, ProjectionConfig(steps=3)))
    assert len(frames) == 4 and not frames[-1].diverged.any()
    assert frames[-1].energy.mean() < frames[0].energy.mean()
