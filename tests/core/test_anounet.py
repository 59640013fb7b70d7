"""Ano-Unet: loss terms, frozen F, batched == sequential, cache, stop, early stop, guard, warm start, CLI, bench."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from core.config import AnoUnetConfig, FNetConfig, TrainConfig, UNetConfig
from core.detectors.anounet import AnoUnet, AnoUnetProgress
from core.models.contract import AnomalyOutput
from core.models.fnet import FNet
from core.models.unet import UNet, init_params, unet_apply
from core.training.loop import fit
from core.training.warm_start import resolve_warm_start, warm_start_dir

FAST = dict(early_stop=False, guard=False)


def _fnet(channels: int = 3, seed: int = 0) -> FNet:
    torch.manual_seed(seed)
    f = FNet(FNetConfig(in_channels=channels, base_channels=4, stages=3, embed_dim=8)).eval()
    with torch.no_grad():
        f.center.copy_(F.normalize(torch.randn(8), dim=0))
    return f


def _images(n: int, size: int = 16, channels: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, channels, size, size, generator=g) * 255).to(torch.uint8)


@pytest.fixture(scope="module")
def fnet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = TrainConfig(data="builtin:synthetic", category="bottle", model="fnet", size=32, base_channels=4, fnet_stages=3,
                      fnet_embed_dim=8, fnet_references="paste", epochs=1, batch_size=32, device="cpu")
    return fit(cfg, tmp_path_factory.mktemp("anounet") / "fnet")


def test_grouped_unet_equals_separate_unets() -> None:
    cfg = UNetConfig(3, 4, 3, 2)
    params = [init_params(cfg, s) for s in range(3)]
    stacked = {k: torch.stack([p[k] for p in params]) for k in params[0]}
    x = torch.rand(3, 3, 16, 16)
    together = unet_apply(cfg, stacked, x, copies=3)
    alone = torch.cat([unet_apply(cfg, p, x[i : i + 1]) for i, p in enumerate(params)])
    assert torch.allclose(together, alone, atol=1e-5)
    assert not torch.equal(params[0]["enc.0.conv1.weight"], params[1]["enc.0.conv1.weight"])  # different seeds


def test_residual_unet_starts_as_identity() -> None:
    cfg = UNetConfig(1, 4, 2, 2, residual=True)
    x = torch.rand(2, 1, 16, 16) * 0.9 + 0.05
    assert torch.allclose(UNet(cfg)(x), x, atol=1e-5)


def test_loss_terms_on_toy_tensors() -> None:
    f = _fnet()
    x8 = _images(2)
    ano = AnoUnet(f, AnoUnetConfig(beta=7.0, batch=2, residual=False, **FAST), device="cpu", cache=False)
    from core.detectors.anounet import _Slots

    slots = _Slots(ano.names)
    xs = [img.float() / 255.0 for img in x8]
    slots.add([ano._initial_params(img) for img in x8], xs, [{}, {}])
    y, loss_r, loss_c, total = ano._forward(slots)
    x = torch.stack(xs)
    assert torch.allclose(loss_r, (x - y).abs().flatten(1).sum(1), rtol=1e-5)  # L_R = sum |x - G(x)|
    with torch.no_grad():
        expected_c = (f(y) - f.center).abs().sum(1)
    assert torch.allclose(loss_c, expected_c, rtol=1e-4, atol=1e-5)  # L_C = sum |F(G(x)) - C|
    assert torch.allclose(total, loss_r + 7.0 * loss_c)
    # A residual G is the identity at the start: L_R ~ 0 and L_C is F's own distance of x.
    ano_r = AnoUnet(f, AnoUnetConfig(residual=True, batch=2, **FAST), device="cpu", cache=False)
    slots = _Slots(ano_r.names)
    slots.add([ano_r._initial_params(img) for img in x8], xs, [{}, {}])
    _, loss_r, loss_c, _ = ano_r._forward(slots)
    assert loss_r.max().item() < 1.0
    with torch.no_grad():
        assert torch.allclose(loss_c, f.distance(x), atol=1e-3)


def test_f_stays_frozen() -> None:
    f = _fnet()
    f.train()  # even if handed over in train mode, F is used in eval mode and never updated
    before = {k: v.clone() for k, v in f.state_dict().items()}
    ano = AnoUnet(f, AnoUnetConfig(epochs=3, batch=2, **FAST), device="cpu", cache=False)
    res = ano.run(_images(3))
    assert all(r is not None and r.epochs == 3 for r in res)
    assert not ano.fnet.training  # the copy Ano-Unet uses: eval mode, no parameter takes a gradient
    assert all(p.grad is None and not p.requires_grad for p in ano.fnet.parameters())
    assert all(p.grad is None for p in f.parameters())  # and the caller's module is untouched
    after = f.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights, C and BN running stats


@pytest.mark.parametrize("residual", [False, True])
def test_batched_equals_sequential(residual: bool) -> None:
    f = _fnet()
    imgs = _images(5)
    cfg = AnoUnetConfig(epochs=6, residual=residual, **FAST)
    together = AnoUnet(f, AnoUnetConfig(**{**cfg.__dict__, "batch": 3}), device="cpu", cache=False).run(imgs)  # with refills
    alone = AnoUnet(f, AnoUnetConfig(**{**cfg.__dict__, "batch": 1}), device="cpu", cache=False).run(imgs)
    for a, b in zip(together, alone):
        assert a.key == b.key and a.epochs == b.epochs == 6
        # grouped vs. plain convolutions round differently, and Adam's first, sign-like steps amplify that
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-3)
        np.testing.assert_allclose(a.reconstruction, b.reconstruction, atol=1e-3)
        np.testing.assert_allclose(a.loss_r, b.loss_r, rtol=1e-3)
        assert a.score == pytest.approx(b.score, abs=1e-3)
    # the order in the request does not matter either (each G is seeded by its image's content)
    rev = AnoUnet(f, AnoUnetConfig(**{**cfg.__dict__, "batch": 3}), device="cpu", cache=False).run(imgs.flip(0))
    np.testing.assert_allclose(rev[-1].anomaly_map, together[0].anomaly_map, atol=1e-3)


def test_matches_the_article_style_loop() -> None:
    """One image here follows a plain module + torch.optim.Adam loop (the article's way) step for step."""
    f = _fnet()
    img = _images(1)[0]
    cfg = AnoUnetConfig(epochs=5, batch=1, beta=3.0, **FAST)
    ano = AnoUnet(f, cfg, device="cpu", cache=False)
    res = ano.run(img[None])[0]
    g = UNet(ano.unet_cfg)
    g.load_state_dict(ano._initial_params(img))
    opt = torch.optim.Adam(g.parameters(), lr=cfg.lr)
    x = img.float()[None] / 255.0
    losses = []
    for _ in range(6):
        y = g(x)
        loss_r, loss_c = (x - y).abs().sum(), (f(y) - f.center).abs().sum()
        losses.append(loss_r.item())
        opt.zero_grad()
        (loss_r + cfg.beta * loss_c).backward()
        opt.step()
    np.testing.assert_allclose(res.loss_r, losses, rtol=1e-4)


def test_cache_hit_on_a_repeated_request(tmp_path: Path) -> None:
    f = _fnet()
    imgs = _images(3)
    cfg = AnoUnetConfig(epochs=3, batch=2, **FAST)
    first = AnoUnet(f, cfg, device="cpu", cache=tmp_path).run(imgs)
    events: list[AnoUnetProgress] = []
    again = AnoUnet(f, AnoUnetConfig(**{**cfg.__dict__, "batch": 3}), device="cpu", cache=tmp_path).run(imgs, progress=events.append)
    assert all(r.cached for r in again) and not any(r.cached for r in first)
    assert events[0].phase == "start" and events[0].cached == 3 and [e.phase for e in events] == ["start", "done"]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
        np.testing.assert_array_equal(a.loss_c, b.loss_c)
        assert (a.score, a.epochs, a.stop_reason) == (b.score, b.epochs, b.stop_reason)
    other = AnoUnet(f, AnoUnetConfig(**{**cfg.__dict__, "beta": 9.0}), device="cpu", cache=tmp_path).run(imgs[:1])
    assert not other[0].cached  # other settings: a miss
    changed = imgs[:1].clone()
    changed[0, 0, 0, 0] ^= 1
    assert not AnoUnet(f, cfg, device="cpu", cache=tmp_path).run(changed)[0].cached  # other pixels: a miss
    f2 = _fnet(seed=1)
    assert not AnoUnet(f2, cfg, device="cpu", cache=tmp_path).run(imgs[:1])[0].cached  # another F: a miss


def test_progress_previews_and_stop() -> None:
    f = _fnet()
    stop = threading.Event()
    events: list[AnoUnetProgress] = []

    def on_progress(p: AnoUnetProgress) -> None:
        events.append(p)
        if p.phase == "epoch" and p.slots and p.slots[0].epoch >= 2:
            stop.set()

    res = AnoUnet(f, AnoUnetConfig(epochs=50, batch=2, **FAST), device="cpu", cache=False).run(
        _images(5), progress=on_progress, stop=stop, preview_every=2)
    epochs = [e for e in events if e.phase == "epoch"]
    assert epochs[0].slots[0].preview is not None and epochs[0].slots[0].preview.shape == (3, 16, 16)
    assert epochs[1].slots[0].preview is None  # every 2nd epoch only
    assert all(s.loss_r > 0 and s.loss_c >= 0 for e in epochs for s in e.slots)
    assert [r.stop_reason for r in res[:2]] == ["stopped", "stopped"] and res[2:] == [None, None, None]
    assert events[-1].phase == "done" and events[-1].done == 2


def test_plateau_early_stop() -> None:
    res = AnoUnet(_fnet(), AnoUnetConfig(epochs=200, lr=1e-9, min_epochs=5, window=3, guard=False), device="cpu",
                  cache=False).run(_images(1))[0]
    assert res.stop_reason == "plateau" and res.epochs == 5 and len(res.loss_r) == 6


class _FragileF(FNet):
    """An F that invisible changes fool: its embedding is the mean pixel's offset from 0.5, times 100."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.stack([(x.mean((1, 2, 3)) - 0.5) * 100.0, torch.ones(len(x))], 1), dim=1)


def test_adversarial_guard_rolls_back() -> None:
    f = _FragileF(FNetConfig(in_channels=3, base_channels=2, stages=1, embed_dim=2))
    with torch.no_grad():
        f.center.copy_(torch.tensor([0.0, 1.0]))  # "normal" = mean pixel exactly 0.5
    x = torch.full((1, 3, 16, 16), 0.5)
    x[..., :2, :] = 0.52  # a barely visible brightening: F says "far from normal"
    cfg = AnoUnetConfig(epochs=60, residual=True, beta=1e3, lr=1e-3, window=3, min_epochs=0, noise_level=0.05,
                        feature_drop=0.05, early_stop=False)
    res = AnoUnet(f, cfg, device="cpu", cache=False).run(x)[0]
    assert res.stop_reason == "adversarial"
    assert res.epochs == 0  # rolled back to the output before the window that fooled F
    assert res.feature_distance_after == pytest.approx(res.loss_c[0])
    assert len(res.loss_c) == 4 and res.loss_c[-1] < 0.95 * res.loss_c[0]
    x_seen = (x[0] * 255).round() / 255  # results are computed on the uint8 image
    np.testing.assert_allclose(res.reconstruction, x_seen.numpy(), atol=1e-4)


def test_predict_contract_and_memory_estimate() -> None:
    ano = AnoUnet(_fnet(1), AnoUnetConfig(epochs=2, batch=2, **FAST), device="cpu", cache=False)
    out = ano.predict(torch.rand(3, 1, 16, 16))
    assert isinstance(out, AnomalyOutput)
    assert out.score.shape == (3,) and out.anomaly_map.shape == (3, 16, 16) and out.reconstruction.shape == (3, 1, 16, 16)
    small, big = ano.memory_per_image(16), ano.memory_per_image(32)
    assert 0 < small["activation_bytes"] < big["activation_bytes"]
    assert small["param_state_bytes"] == 16 * small["unet_parameters"]
    with pytest.raises(ValueError, match="images must be"):
        ano.run(_images(1, channels=3))


def test_warm_start_is_trained_once_and_reused(fnet_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.training.warm_start as A

    monkeypatch.setattr(A, "WARM_START_EPOCHS", 2)
    cfg = AnoUnetConfig(epochs=2, batch=2, base_channels=4, levels=2, **FAST)
    state, arch, run_dir = resolve_warm_start("auto", fnet_run, cfg, device="cpu")
    assert Path(run_dir) == warm_start_dir(fnet_run, cfg) and arch.base_channels == 4 and arch.levels == 2
    mtime = (Path(run_dir) / "model.pt").stat().st_mtime_ns
    state2, _, _ = resolve_warm_start("auto", fnet_run, cfg, device="cpu")
    assert (Path(run_dir) / "model.pt").stat().st_mtime_ns == mtime  # reused, not retrained
    assert all(torch.equal(state[k], state2[k]) for k in state)
    from core.detectors.fnet_distance import load_fnet

    f = load_fnet(fnet_run).model
    x = _images(2, size=32)
    res = AnoUnet(f, AnoUnetConfig(epochs=1, lr=1e-12, batch=2, **FAST), warm_state=state, warm_arch=arch, device="cpu",
                  cache=False).run(x)
    warm = UNet(arch)
    warm.load_state_dict(state)
    with torch.no_grad():
        expected = warm(x.float() / 255.0)
    np.testing.assert_allclose(res[0].reconstruction, expected[0].numpy(), atol=1e-5)  # every G starts from it
    assert resolve_warm_start("none", fnet_run, cfg) == (None, None, None)


def test_cli_writes_one_map_per_image(fnet_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.cli.main import main

    out = tmp_path / "maps"
    args = ["anounet", str(fnet_run), "--limit", "4", "--epochs", "3", "--batch", "2", "--beta", "5", "--device", "cpu",
            "--out", str(out), "--json", "--quiet"]
    assert main(args) == 0
    m = json.loads(capsys.readouterr().out)
    assert isinstance(m["pixel_auroc"], float) and m["seconds_per_image"] > 0
    assert m["n_images"] == 4 and m["n_cached"] == 0 and sum(m["stop_reasons"].values()) == 4
    assert len(list(out.rglob("*_map.png"))) == 4 and len(list(out.rglob("*_map.npy"))) == 4
    assert {Path(r["name"]).parent.name for r in m["images"]} == {"good", "broken", "contamination", "scratch"}
    assert main(args) == 0  # the same request again is served from the cache
    assert json.loads(capsys.readouterr().out)["n_cached"] == 4
    assert main(["anounet", str(fnet_run), "--images", "no_such_defect"]) == 2
    assert "neither a test image" in capsys.readouterr().err


def test_cli_metrics_come_from_the_one_evaluation_path(fnet_run: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from core.cli.main import main
    from core.evaluation.curves import summary
    from core.evaluation.scored import scored_set

    ae = fit(TrainConfig(data="builtin:synthetic", category="bottle", model="ae", size=32, base_channels=4, epochs=1,
                         device="cpu"), tmp_path / "ae")
    assert main(["anounet", str(fnet_run), "--limit", "4", "--epochs", "2", "--batch", "2", "--device", "cpu",
                 "--out", str(tmp_path / "o"), "--compare", str(ae), "--json", "--quiet"]) == 0
    m = json.loads(capsys.readouterr().out)
    tests = [f"test/{r['name'].rsplit('/', 1)[0]}/" for r in m["images"]]
    ss_ae = scored_set(ae, "reconstruction")
    paths = [next(p for p in ss_ae.paths if p.startswith(t) and Path(p).stem == Path(r["name"]).name)
             for t, r in zip(tests, m["images"])]
    same = summary(scored_set(ae, "reconstruction", images=paths))
    assert (m["pixel_auroc_compare"], m["aupro_compare"], m["image_auroc_compare"]) == \
        (same["pixel_auroc"], same["aupro"], same["image_auroc"])
    other = fit(TrainConfig(data="builtin:synthetic", category="mesh", model="ae", size=32, base_channels=4, epochs=1,
                            device="cpu"), tmp_path / "ae-mesh")
    assert main(["anounet", str(fnet_run), "--limit", "2", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "p"),
                 "--compare", str(other), "--quiet"]) == 2
    assert "not comparable" in capsys.readouterr().err


def test_bench_anounet_reports_speed_and_memory() -> None:
    from core.cli import bench

    r = bench.run("anounet", data="builtin:synthetic", category="bottle", size=16, epochs=2, k=2)
    for key in ("reference_images_per_minute", "sequential_images_per_minute", "batched_images_per_minute", "speedup",
                "memory_per_image_mb_estimate", "rss_per_image_mb", "max_map_difference_vs_reference"):
        assert key in r
    assert r["k"] == 2 and r["speedup"] > 0 and r["max_map_difference_vs_reference"] < 1e-2


def test_job_task_publishes_curves_previews_and_results(fnet_run: Path) -> None:
    from core.services.jobs import JobRegistry
    from core.services.tasks import anounet_task

    imgs = _images(3, size=32)
    job = JobRegistry().start("anounet", "t", anounet_task(fnet_run, imgs, AnoUnetConfig(epochs=3, batch=2, **FAST),
                                                           preview_every=1, device="cpu", cache=False))
    assert job.join(120)
    snap = job.snapshot()
    assert snap.status == "finished", snap.error
    assert snap.state["phase"] == "done" and snap.state["done"] == 3
    assert sorted(snap.state["results"]) == [0, 1, 2] and len(snap.result["results"]) == 3
    assert len(snap.state["curves"][0]["loss_r"]) == 3 and snap.state["previews"][2].shape == (3, 32, 32)


def test_cli_trains_a_unet_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.cli.main import main
    from core.runs import load_run

    out = tmp_path / "u"
    assert main(["train", "--model", "unet", "--size", "32", "--epochs", "1", "--base-channels", "4", "--unet-levels", "2",
                 "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    assert "pixel AUROC" in capsys.readouterr().out  # a reconstruction model: the usual evaluation
    run = load_run(out)
    assert isinstance(run.model, UNet) and run.model.cfg.levels == 2 and run.model.cfg.base_channels == 4


def test_try_your_image_scores_with_an_image_level_detector(fnet_run: Path) -> None:
    from core.detectors.fnet_distance import load_fnet
    from core.services.predict import analyze_image

    a = analyze_image(load_fnet(fnet_run, torch.device("cpu")), "photo.png", _images(1, 40).numpy()[0].transpose(1, 2, 0))
    assert a.error is None and np.isfinite(a.score) and a.amap is None and a.image.shape == (32, 32, 3)
