"""Latent views: projection on hand-made codes, decoded grids of tiny untrained VAEs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.config import AEConfig, VAEConfig
from core.models import ConvAutoencoder, ConvVAE
from core.services.latent import (
    decoded_grid,
    has_latent,
    latent_codes,
    project_2d,
    shows_latent,
)


def _vae(z_dim: int) -> ConvVAE:
    torch.manual_seed(0)
    return ConvVAE(VAEConfig(in_channels=1, size=16, z_dim=z_dim, bottleneck=8)).eval()


def test_identity_projection_for_2d_codes() -> None:
    codes = np.random.default_rng(0).normal(size=(50, 2))
    coords, basis = project_2d(codes)
    np.testing.assert_allclose(coords, codes)
    assert basis.identity and basis.z_dim == 2
    np.testing.assert_allclose(basis.to_latent(coords), codes)
    x0, x1, y0, y1 = basis.extent
    np.testing.assert_allclose([x0, x1], np.percentile(codes[:, 0], [1, 99]))
    np.testing.assert_allclose([y0, y1], np.percentile(codes[:, 1], [1, 99]))


def test_pca_finds_the_known_principal_direction() -> None:
    rng = np.random.default_rng(1)
    z_dim = 6
    d1 = np.zeros(z_dim)
    d1[[0, 3]] = [1.0, 1.0]
    d1 /= np.linalg.norm(d1)
    d2 = np.zeros(z_dim)
    d2[[1, 4]] = [1.0, -1.0]
    d2 /= np.linalg.norm(d2)
    centre = np.arange(z_dim, dtype=float)
    a, b = rng.normal(0, 5.0, 400), rng.normal(0, 1.0, 400)
    codes = centre + a[:, None] * d1 + b[:, None] * d2 + rng.normal(0, 0.01, (400, z_dim))
    coords, basis = project_2d(codes)
    assert not basis.identity and coords.shape == (400, 2)
    assert abs(basis.components[0] @ d1) > 0.999
    assert abs(basis.components[1] @ d2) > 0.999
    np.testing.assert_allclose(basis.components @ basis.components.T, np.eye(2), atol=1e-9)
    np.testing.assert_allclose(basis.mean, codes.mean(0))
    # Signs are fixed: the largest-magnitude entry of each direction is positive.
    for comp in basis.components:
        assert comp[np.abs(comp).argmax()] > 0
    # Almost all the variance lies in the plane, most of it along the first direction.
    assert basis.explained.sum() > 0.99 and basis.explained[0] > 0.9
    # Coordinates are the centred codes along the directions; the plane maps back to the codes.
    assert abs(np.corrcoef(coords[:, 0], a)[0, 1]) > 0.999
    assert abs(np.corrcoef(coords[:, 1], b)[0, 1]) > 0.99
    np.testing.assert_allclose(basis.to_latent(coords), codes, atol=0.05)


def test_project_rejects_bad_codes() -> None:
    with pytest.raises(ValueError):
        project_2d(np.zeros((0, 3)))
    with pytest.raises(ValueError):
        project_2d(np.array([[np.nan, 1.0, 2.0]]))
    # Identical codes still give a usable (non-empty) box for the grid.
    _, basis = project_2d(np.ones((5, 4)))
    x0, x1, y0, y1 = basis.extent
    assert x1 > x0 and y1 > y0


@pytest.mark.parametrize("z_dim", [2, 5])
def test_codes_and_decoded_grid_of_an_untrained_vae(z_dim: int) -> None:
    model = _vae(z_dim)
    images = np.random.default_rng(2).random((7, 1, 16, 16)).astype(np.float32)
    codes = latent_codes(model, images, batch_size=3)
    assert codes.shape == (7, z_dim) and codes.dtype == np.float32
    with torch.no_grad():
        np.testing.assert_allclose(codes, model.encode(torch.from_numpy(images))[0].numpy(), rtol=1e-5, atol=1e-5)
    coords, basis = project_2d(codes)
    assert coords.shape == (7, 2) and basis.identity == (z_dim == 2)
    grid = decoded_grid(model, basis, n=4)
    assert grid.shape == (64, 64, 3) and grid.dtype == np.uint8
    grid = decoded_grid(model, basis, n=3, extent=3.0)
    assert grid.shape == (48, 48, 3) and grid.dtype == np.uint8
    grid = decoded_grid(model, basis, n=2, extent=(-1.0, 1.0, -2.0, 2.0))
    assert grid.shape == (32, 32, 3)


def test_grid_orientation_matches_the_plane() -> None:
    """Top-left tile decodes (x_min, y_max); bottom-right tile decodes (x_max, y_min)."""
    model = _vae(2)
    _, basis = project_2d(np.random.default_rng(3).normal(size=(20, 2)))
    grid = decoded_grid(model, basis, n=3, extent=(-2.0, 2.0, -1.0, 1.0))
    with torch.no_grad():
        corners = model.decode(torch.tensor([[-2.0, 1.0], [2.0, -1.0]])).numpy()
    top_left = np.clip(corners[0, 0] * 255 + 0.5, 0, 255).astype(np.uint8)
    bottom_right = np.clip(corners[1, 0] * 255 + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(grid[:16, :16, 0], top_left)
    np.testing.assert_array_equal(grid[32:, 32:, 0], bottom_right)


def test_models_without_latent_are_refused() -> None:
    ae = ConvAutoencoder(AEConfig(in_channels=1, base_channels=2, depth=2))
    assert not has_latent(ae) and has_latent(_vae(2))
    assert shows_latent(_vae(2), 32) and not shows_latent(_vae(2), 128) and not shows_latent(ae, 32)
    with pytest.raises(ValueError, match="no latent"):
        latent_codes(ae, np.zeros((1, 1, 16, 16), np.float32))
    _, basis = project_2d(np.zeros((3, 2)) + [[0, 0], [1, 1], [2, 0]])
    with pytest.raises(ValueError):
        decoded_grid(ae, basis)
    with pytest.raises(ValueError, match="extent"):
        decoded_grid(_vae(2), basis, extent=(1.0, 0.0, 0.0, 1.0))
