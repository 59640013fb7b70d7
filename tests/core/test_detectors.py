"""The detector registry and the contract every registered detector keeps, on tiny runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.cli.main import main
from core.config import TrainConfig
from core.data.builtin import open_dataset
from core.data.loading import load_split
from core.detectors import registry
from core.errors import DetectorError
from core.evaluation.curves import curves_for, summary
from core.evaluation.evaluate import evaluate_run
from core.evaluation.pixel import pixel_curves
from core.evaluation.scored import scored_set
from core.models.contract import AnomalyOutput
from core.runs import load_run
from core.services.scored_view import scored_view
from core.training.loop import fit

# Settings that keep each detector quick on a 32 px run; everything else at its registered default.
FAST = {
    "projection": {"steps": "3"},
    "anounet": {"epochs": "40", "lr": "0.005", "batch": "8", "base_channels": "4", "levels": "2", "min_epochs": "0",
                "cache": "false"},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("detectors")
    common = dict(data="builtin:synthetic", category="bottle", size=32, batch_size=16, device="cpu", seed=0)
    return {
        "ae": fit(TrainConfig(model="ae", base_channels=8, depth=3, epochs=8, **common), root / "ae"),
        "fnet": fit(TrainConfig(model="fnet", base_channels=8, fnet_stages=3, fnet_embed_dim=16,
                                fnet_references="paste", epochs=4, **common), root / "fnet"),
        "patchcore": fit(TrainConfig(model="patchcore", feature_size=64, coreset_ratio=0.1, **common), root / "patchcore"),
        "padim": fit(TrainConfig(model="padim", feature_size=64, padim_channels=32, **common), root / "padim"),
    }


def _normal_and_defective() -> torch.Tensor:
    """Four normal test-free training images and the same four with a planted defect: a dark square."""
    index = open_dataset("builtin:synthetic", "bottle")
    x = load_split(index, "train", 32, 3).images[:4].float() / 255.0
    bad = x.clone()
    bad[:, :, 10:20, 10:20] = torch.tensor([0.05, 0.9, 0.05]).view(1, 3, 1, 1)  # a saturated green patch
    return torch.cat([x, bad])


def test_registry_lists_detectors_per_kind_of_run() -> None:
    assert [s.name for s in registry.supported("ae")] == ["reconstruction", "projection"]
    assert [s.name for s in registry.supported("fnet")] == ["fnet-distance", "anounet"]
    assert [s.name for s in registry.supported("patchcore")] == ["patchcore"]
    assert [s.name for s in registry.supported("padim")] == ["padim"]
    assert registry.default_name("vae") == "reconstruction" and registry.default_name("fnet") == "fnet-distance"
    assert registry.get("fnet").name == "fnet-distance"  # the earlier name still works
    with pytest.raises(DetectorError, match="unknown detector 'magic'"):
        registry.get("magic")
    with pytest.raises(DetectorError, match="does not work on ae runs"):
        registry.resolve("ae", "anounet")


def test_settings_are_parsed_and_checked() -> None:
    spec = registry.get("projection")
    s = registry.parse_settings(spec, {"steps": "7", "alpha": "0.2", "map_mode": "combined"})
    assert s["steps"] == 7 and s["alpha"] == 0.2 and s["map_mode"] == "combined" and s["lam"] == spec.setting("lam").default
    for bad, msg in [({"steps": "x"}, "steps must be a int"), ({"map_mode": "other"}, "must be one of"),
                     ({"nope": "1"}, "has no setting 'nope'"), ({"topk_percent": "-1"}, "must be >= 0")]:
        with pytest.raises(DetectorError, match=msg):
            registry.parse_settings(spec, bad)
    assert registry.parse_assignments(["a=1", " b = x "]) == {"a": "1", "b": "x"}
    with pytest.raises(DetectorError, match="KEY=VALUE"):
        registry.parse_assignments(["novalue"])


@pytest.mark.parametrize("name", [s.name for s in registry.REGISTRY.values()])
def test_every_detector_keeps_the_contract(runs: dict[str, Path], name: str) -> None:
    spec = registry.get(name)
    run = load_run(runs[next(m for m in ("ae", *spec.models) if m in runs and m in spec.models)])
    det = registry.build(run, name, FAST.get(name))
    x = _normal_and_defective()
    with torch.no_grad():
        out = det.predict(x)
    assert isinstance(out, AnomalyOutput)
    assert out.score.shape == (8,) and torch.isfinite(out.score).all()
    if spec.has_map:
        assert out.anomaly_map is not None and out.anomaly_map.shape == (8, 32, 32)
        assert torch.isfinite(out.anomaly_map).all() and float(out.anomaly_map.min()) >= 0
        inside = out.anomaly_map[4:, 10:20, 10:20].mean()
        outside = out.anomaly_map[4:].sum((1, 2)).sub(out.anomaly_map[4:, 10:20, 10:20].sum((1, 2))).mean() / (32 * 32 - 100)
        assert inside > outside, "the map is higher where the defect was planted"
    else:
        assert out.anomaly_map is None  # image-level: no fake map
    if out.reconstruction is not None:
        assert out.reconstruction.shape == (8, 3, 32, 32)
        assert float(out.reconstruction.min()) >= 0 and float(out.reconstruction.max()) <= 1
    # higher = more anomalous: each defective copy scores above its normal original
    assert (out.score[4:] > out.score[:4]).all(), out.score.tolist()


def test_cli_lists_detectors_and_evaluates_any_with_settings(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["detectors", str(runs["ae"]), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["default"] == "reconstruction" and [d["name"] for d in listed["detectors"]] == ["reconstruction", "projection"]
    steps = next(s for s in listed["detectors"][1]["settings"] if s["name"] == "steps")
    assert steps["default"] == 25 and steps["type"] == "int" and steps["help"]
    assert main(["detectors", str(runs["fnet"])]) == 0
    assert "fnet-distance" in capsys.readouterr().out

    assert main(["evaluate", str(runs["ae"]), "--detector", "projection", "--set", "steps=3", "--json", "--no-strips"]) == 0
    m = json.loads(capsys.readouterr().out)
    ss = scored_set(runs["ae"], "projection", settings={"steps": 3})
    assert m["detector"] == "projection" and m["image_auroc"] == pytest.approx(summary(ss)["image_auroc"])
    assert m["pixel_auroc"] == pytest.approx(summary(ss)["pixel_auroc"])

    assert main(["evaluate", str(runs["ae"]), "--detector", "projection", "--set", "steps=zero"]) == 2
    assert "steps must be a int" in capsys.readouterr().err
    assert main(["evaluate", str(runs["ae"]), "--detector", "anounet"]) == 2
    assert "does not work on ae runs" in capsys.readouterr().err


def test_one_summary_for_the_cli_and_the_scored_set(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """evaluate --json, metrics.json and the cached scored set's summary report the same numbers."""
    for kind in ("ae", "fnet"):
        assert main(["evaluate", str(runs[kind]), "--json", "--no-strips"]) == 0
        cli = json.loads(capsys.readouterr().out)
        written = json.loads((runs[kind] / "metrics.json").read_text())
        own = summary(scored_set(runs[kind]))
        for key in ("image_auroc", "pixel_auroc", "aupro", "average_precision", "threshold"):
            assert cli[key] == written[key] == pytest.approx(own[key]) if own[key] is not None else cli[key] is None
    assert evaluate_run(runs["fnet"], device="cpu", strips=False)["pixel_auroc"] is None


@pytest.mark.parametrize("detector", ["reconstruction", "projection"])
def test_cli_results_and_threshold_sources_agree(runs: dict[str, Path], detector: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The same run and detector give the same image and pixel AUROC on the CLI, in the Results page's
    view (core.services.scored_view) and in the Threshold page's curves (core.evaluation curves / pixel)."""
    settings = FAST.get(detector, {})
    args = [f"--set={k}={v}" for k, v in settings.items()]
    assert main(["evaluate", str(runs["ae"]), "--detector", detector, *args, "--json", "--no-strips"]) == 0
    cli = json.loads(capsys.readouterr().out)
    results = scored_view(load_run(runs["ae"]), detector, settings)["metrics"]
    ss = scored_set(runs["ae"], detector, settings=settings)
    threshold = {"image_auroc": curves_for(ss).auroc, "pixel_auroc": pixel_curves(ss).pixel_auroc}
    for key in ("image_auroc", "pixel_auroc"):
        assert cli[key] == results[key] == threshold[key], key


def test_normalized_reconstruction_standardizes_by_held_out_normals(runs: dict[str, Path]) -> None:
    from core.detectors.reconstruction import STD_FLOOR, run_normal_error

    run = load_run(runs["ae"])
    plain = registry.build(run, "reconstruction", {"normalize": False})
    norm = registry.build(run, "reconstruction", {"normalize": True})
    stats = run_normal_error(run, plain.score)
    assert stats.n_images >= 2 and stats.mean.shape == (32, 32) and float(stats.std.min()) >= 0
    assert run_normal_error(run, plain.score) is stats  # cached per run, checkpoint and score settings
    x = _normal_and_defective()
    with torch.no_grad():
        p, n = plain.predict(x), norm.predict(x)
    std = torch.maximum(stats.std, STD_FLOOR * stats.std.mean())
    assert torch.allclose(n.anomaly_map, ((p.anomaly_map - stats.mean) / std).clamp_min(0), atol=1e-5)
    assert (n.score[4:] > n.score[:4]).all() and float(n.anomaly_map.min()) >= 0
