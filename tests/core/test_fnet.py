"""f-Net: embeddings, defect pastes, reference sources, training as a run, evaluation, MobileNetV2 option."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core import runs
from core.config import FNetConfig, TrainConfig
from core.data.references import paste_defect, paste_defects, reference_sets
from core.detectors.fnet_distance import FNetDetector, is_fnet_run, load_fnet
from core.evaluation.evaluate import evaluate_run
from core.models.contract import AnomalyOutput
from core.models.fnet import FNet, find_mobilenet_weights, load_backbone_weights
from core.training.fnet import _loss
from core.training.loop import fit

TINY_FNET = dict(data="builtin:synthetic", category="bottle", model="fnet", size=32, base_channels=8, fnet_stages=3,
                 fnet_embed_dim=16, fnet_references="paste,digits", epochs=2, batch_size=32, device="cpu")


@pytest.fixture(scope="module")
def fnet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit(TrainConfig(**TINY_FNET), tmp_path_factory.mktemp("fnet") / "run")


def test_embedding_is_unit_norm_and_distance_is_l1_to_center() -> None:
    torch.manual_seed(0)
    f = FNet(FNetConfig(in_channels=3, base_channels=4, stages=3, embed_dim=8)).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        e = f(x)
        f.center.copy_(e[0])
        d = f.distance(x)
    assert e.shape == (3, 8) and torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert d[0].item() == pytest.approx(0.0, abs=1e-6)
    assert d[1].item() == pytest.approx((e[1] - e[0]).abs().sum().item(), rel=1e-5)
    out = FNetDetector(f).predict(x)
    assert isinstance(out, AnomalyOutput) and out.reconstruction is None
    assert out.score.shape == (3,) and out.anomaly_map is None  # F does not localize: no fake map
    assert torch.allclose(out.score, d)


def test_l2_constrained_softmax_logits_scale_with_alpha() -> None:
    f = FNet(FNetConfig(in_channels=1, base_channels=4, stages=2, embed_dim=4, n_classes=3, alpha=10.0))
    emb = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    with torch.no_grad():
        f.classifier.bias.zero_()
    assert torch.allclose(f.logits(emb), (10.0 * emb) @ f.classifier.weight.T)
    labels = torch.tensor([0, 1, 2, 0, 1])
    assert _loss(f, emb, labels, "l2softmax").item() > 0
    doc = _loss(f, emb, labels, "doc")  # descriptiveness on classes 1, 2 + compactness of the normal ones
    assert torch.isfinite(doc) and doc.item() > 0


@pytest.mark.parametrize("kind", ["patch", "blob", "scratch"])
def test_paste_changes_the_image_inside_its_mask(kind: str) -> None:
    rng = np.random.default_rng(3)
    img = np.full((64, 64, 3), 0.5, np.float32)
    donor = np.random.default_rng(1).random((64, 64, 3)).astype(np.float32)
    out, mask = paste_defect(img, donor, rng, kind)
    assert out.shape == img.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    assert mask.any() and mask.mean() < 0.5
    changed = np.abs(out - img).max(2) > 1e-3
    assert changed[mask].mean() > 0.5  # the mask marks what changed
    assert not changed[~mask].mean() > 0.2  # and little outside it (soft edges only)


def test_paste_batch_is_reproducible() -> None:
    imgs = (torch.rand(4, 1, 32, 32) * 255).to(torch.uint8)
    a, ma = paste_defects(imgs, imgs, np.random.default_rng(0))
    b, mb = paste_defects(imgs, imgs, np.random.default_rng(0))
    assert a.dtype == torch.uint8 and a.shape == imgs.shape and ma.shape == (4, 32, 32)
    assert torch.equal(a, b) and torch.equal(ma, mb)


def test_reference_sources_exclude_the_normal_data() -> None:
    sets, notes = reference_sets("builtin:digits", "7", 16, 1, ["digits", "textures"])
    assert not any(name == "digits" for name, _ in sets)
    assert any("digits skipped" in n for n in notes)
    sets, _ = reference_sets("builtin:synthetic", "bottle", 16, 3, ["digits"])
    (name, imgs), = sets
    assert name == "digits" and imgs.shape[1:] == (3, 16, 16) and imgs.dtype == torch.uint8
    with pytest.raises(ValueError, match="unknown reference source"):
        reference_sets("builtin:synthetic", "bottle", 16, 3, ["cifar"])


def test_fnet_trains_as_a_run_with_center_and_loads_weights_only(fnet_run: Path) -> None:
    payload = torch.load(fnet_run / "model.pt", map_location="cpu", weights_only=True)
    assert payload["config"]["model"] == "fnet" and payload["arch"]["embed_dim"] == 16
    assert payload["classes"] == ["normal", "paste", "digits"]
    assert payload["state_dict"]["center"].abs().sum() > 0
    hist = json.loads((fnet_run / "history.json").read_text())
    assert hist["status"] == "finished" and len(hist["epochs"]) == 2 and "val_auroc" in hist["epochs"][0]
    resolved = json.loads((fnet_run / "config.json").read_text())["resolved"]
    assert resolved["classes"] == ["normal", "paste", "digits"]
    run = load_fnet(fnet_run)
    assert not run.model.training and not any(p.requires_grad for p in run.model.parameters())
    assert is_fnet_run(fnet_run) and torch.equal(run.model.center, payload["state_dict"]["center"])


def test_evaluate_reports_image_roc_and_null_pixel_metrics(fnet_run: Path) -> None:
    m = evaluate_run(fnet_run, device="cpu")
    assert isinstance(m["image_auroc"], float) and m["pixel_auroc"] is None and m["aupro"] is None
    assert m["model"] == "fnet" and m["n_images"] > 0
    lines = (fnet_run / "scores.csv").read_text().splitlines()
    assert lines[0] == "path,defect,label,score,has_mask" and len(lines) == 1 + m["n_images"]


def test_cli_train_and_evaluate_fnet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.cli.main import main

    out = tmp_path / "f"
    assert main(["train", "--model", "fnet", "--size", "32", "--epochs", "1", "--base-channels", "4", "--fnet-stages", "2",
                 "--references", "paste", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    assert "image AUROC" in capsys.readouterr().out
    assert main(["evaluate", str(out), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    for key in ("image_auroc", "f1_max", "threshold", "pixel_auroc", "aupro"):
        assert key in m
    assert m["pixel_auroc"] is None


def test_bad_fnet_settings() -> None:
    with pytest.raises(ValueError, match="fnet_loss"):
        TrainConfig(model="fnet", fnet_loss="triplet").validate()
    with pytest.raises(ValueError, match="fnet_references"):
        TrainConfig(model="fnet", fnet_references="paste,imagenet").validate()
    with pytest.raises(ValueError, match="resume"):
        fit(TrainConfig(**TINY_FNET), None, resume=True)
    with pytest.raises(runs.RunError, match="not an f-Net run"):
        ae = fit(TrainConfig(data="builtin:synthetic", size=32, base_channels=4, depth=3, epochs=1, device="cpu"))
        load_fnet(ae)


def test_mobilenet_backbone_uses_a_local_file_and_never_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import mobilenet_v2

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        find_mobilenet_weights()
    ckpt = tmp_path / "th" / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    ckpt.parent.mkdir(parents=True)
    torch.manual_seed(1)
    reference = mobilenet_v2(weights=None).state_dict()
    torch.save(reference, ckpt)
    assert find_mobilenet_weights() == ckpt
    f = FNet(FNetConfig(in_channels=1, embed_dim=8, backbone="mobilenet_v2"))
    assert load_backbone_weights(f, ckpt) > 100
    assert torch.equal(f.features[0][0].weight, reference["features.0.0.weight"])
    with torch.no_grad():
        assert f.eval()(torch.rand(2, 1, 32, 32)).shape == (2, 8)  # gray input is repeated to 3 channels
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="MobileNetV2"):
        load_backbone_weights(f, tmp_path / "bad.pth")
