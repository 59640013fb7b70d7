"""Model shapes, the output contract, and scoring."""

from __future__ import annotations

import pytest
import torch

from core.config import AEConfig, ScoreConfig, VAEConfig
from core.detectors.maps import gaussian_blur, image_scores
from core.detectors.reconstruction import ReconstructionDetector
from core.models import AnomalyOutput, ConvAutoencoder, ConvVAE, build_model


@pytest.mark.parametrize("channels", [1, 3])
def test_ae_shapes_and_article_widths(channels: int) -> None:
    model = ConvAutoencoder(AEConfig(in_channels=channels, base_channels=16, depth=6))
    widths = [block[0].out_channels for block in model.encoder]
    assert widths == [16, 32, 64, 128, 256, 512]  # the bottle AE article's encoder
    assert [block[0].out_channels for block in model.decoder] == [256, 128, 64, 32, 16]
    x = torch.rand(2, channels, 128, 128)
    assert model(x).shape == x.shape


def test_ae_rejects_size_not_divisible() -> None:
    with pytest.raises(ValueError, match="divisible by 32"):
        AEConfig(depth=6).validate(100)


@pytest.mark.parametrize(("size", "channels"), [(32, 1), (64, 3), (128, 3)])
def test_vae_shapes_train_vs_eval(size: int, channels: int) -> None:
    model = ConvVAE(VAEConfig(in_channels=channels, size=size, z_dim=8))
    x = torch.rand(3, channels, size, size)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, 8)
    recon = model.reconstruct(x)
    assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1
    model.eval()
    # eval uses the latent mean: deterministic
    assert torch.equal(model.reconstruct(x), model.reconstruct(x))
    model.train()
    torch.manual_seed(0)
    a, _ = model.loss(x)
    torch.manual_seed(1)
    b, _ = model.loss(x)
    assert a.item() != b.item()  # training samples z


def test_vae_loss_is_bce_plus_kl() -> None:
    model = ConvVAE(VAEConfig(in_channels=1, size=16, z_dim=2, bottleneck=8)).eval()
    x = torch.rand(2, 1, 16, 16)
    loss, logits = model.loss(x)
    mu, logvar = model.encode(x)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    kl = -0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp(), 1)
    assert loss.item() == pytest.approx((bce + kl).mean().item(), rel=1e-5)
    # the energy used by projection agrees with the training reconstruction term
    energy = model.recon_energy(x, torch.sigmoid(logits))
    assert torch.allclose(energy, bce, rtol=1e-3)


def test_vae_bad_config() -> None:
    with pytest.raises(ValueError, match="recon_loss"):
        VAEConfig(recon_loss="l1").validate()
    with pytest.raises(ValueError, match="unknown model"):
        build_model("gan", {})


def test_detector_contract_shapes_and_identity_model() -> None:
    class Identity(torch.nn.Module):
        def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
            return x

    out = ReconstructionDetector(Identity(), ScoreConfig(smooth_sigma=0)).predict(torch.rand(4, 3, 32, 32))
    assert isinstance(out, AnomalyOutput)
    assert out.score.shape == (4,) and out.anomaly_map.shape == (4, 32, 32) and out.reconstruction.shape == (4, 3, 32, 32)
    assert torch.all(out.score == 0) and torch.all(out.anomaly_map == 0)


def test_scores_follow_defect_and_modes() -> None:
    class Flat(torch.nn.Module):  # reconstructs everything as gray 0.5
        def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full_like(x, 0.5)

    x = torch.full((2, 1, 20, 20), 0.5)
    x[1, 0, 5:7, 5:7] = 1.0  # a 2x2 defect of amplitude 0.5
    for mode, expected in [("max", 0.5), ("mean", 0.5 * 4 / 400), ("sum", 0.5 * 4 * 255), ("topk", 0.5)]:
        out = ReconstructionDetector(Flat(), ScoreConfig(mode=mode, topk_percent=1.0, smooth_sigma=0)).predict(x)
        assert out.score[0].item() == 0
        assert out.score[1].item() == pytest.approx(expected, rel=1e-5), mode
    with pytest.raises(ValueError, match="score mode"):
        ScoreConfig(mode="median").validate()


def test_gaussian_blur_preserves_mass_and_spreads() -> None:
    m = torch.zeros(1, 21, 21)
    m[0, 10, 10] = 1.0
    b = gaussian_blur(m, 2.0)
    assert b.sum().item() == pytest.approx(1.0, rel=1e-4)
    assert b[0, 10, 10] < 1.0 and b[0, 10, 12] > 0
    assert torch.equal(gaussian_blur(m, 0), m)
    assert image_scores(b, ScoreConfig(mode="max")).item() == pytest.approx(b.max().item())
