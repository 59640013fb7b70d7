"""Latent-space views of a VAE (MNIST AE/VAE article): 2-D scatter of the codes and a decoded grid.

The encoder's latent *means* are the codes. A 2-D latent is shown as it is; a larger one is
projected on its two principal directions (PCA with numpy's SVD). The decoded grid walks the same
plane: for ``z_dim == 2`` the plane itself, otherwise ``mean + a * pc1 + b * pc2``, so every tile of
the grid sits where the scatter puts the codes that decode to something like it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.data.images import to_uint8_hwc
from core.device import module_device
from core.errors import ConfigError

LATENT_VIEW_MAX_SIZE = 64
"""Latent views are offered for images up to this side: a grid of larger images is unreadable."""

Extent = tuple[float, float, float, float]  # (x_min, x_max, y_min, y_max) in projected coordinates


@dataclass(frozen=True)
class LatentBasis:
    """How 2-D plane coordinates map back to latent codes: ``z = mean + coords @ components``.

    Attributes:
        mean: ``[z_dim]`` centre of the plane (zeros for an identity projection).
        components: ``[2, z_dim]`` orthonormal directions (rows); identity rows for ``z_dim == 2``.
        explained: ``[2]`` fraction of the codes' variance along each direction.
        extent: the codes' percentile box in plane coordinates, the default range of the grid.
        identity: True when the plane is the latent space itself (``z_dim == 2``).
    """

    mean: np.ndarray
    components: np.ndarray
    explained: np.ndarray
    extent: Extent
    identity: bool

    @property
    def z_dim(self) -> int:
        """Dimension of the latent space."""
        return int(self.components.shape[1])

    def to_latent(self, coords: np.ndarray) -> np.ndarray:
        """Plane coordinates ``[N, 2]`` -> latent codes ``[N, z_dim]``."""
        return self.mean[None, :] + np.asarray(coords, dtype=np.float64) @ self.components


def has_latent(model: torch.nn.Module) -> bool:
    """True for models with ``encode(x) -> (mu, logvar)`` and ``decode(z)`` (the VAE)."""
    return callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None))


def shows_latent(model: torch.nn.Module, size: int) -> bool:
    """Whether the app offers the latent views: a VAE on images of at most ``LATENT_VIEW_MAX_SIZE`` px."""
    return has_latent(model) and size <= LATENT_VIEW_MAX_SIZE


@torch.no_grad()
def latent_codes(model: torch.nn.Module, images_float: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Latent means of a batch of images.

    Args:
        model: a model with ``encode(x) -> (mu, logvar)`` in eval mode.
        images_float: ``[N, C, H, W]`` float images in [0, 1] (numpy or torch).
        batch_size: images per forward pass.

    Returns:
        float32 ``[N, z_dim]``.

    Raises:
        ValueError: for a model without an encoder or images that are not ``[N, C, H, W]``.
    """
    if not has_latent(model):
        raise ConfigError(f"{type(model).__name__} has no latent space (needs encode() and decode())")
    x = torch.as_tensor(images_float)
    if x.ndim != 4:
        raise ConfigError(f"images must be [N, C, H, W], got shape {tuple(x.shape)}")
    model.eval()
    device = module_device(model)
    out = [model.encode(x[i : i + batch_size].to(device).float())[0].float().cpu() for i in range(0, len(x), batch_size)]
    if not out:
        z_dim = int(getattr(getattr(model, "cfg", None), "z_dim", 0))
        return np.zeros((0, z_dim), np.float32)
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def _percentile_extent(coords: np.ndarray, percentiles: tuple[float, float]) -> Extent:
    lo = np.percentile(coords, percentiles[0], axis=0)
    hi = np.percentile(coords, percentiles[1], axis=0)
    box = []
    for a, b in zip(lo, hi):
        a, b = float(a), float(b)
        if b - a < 1e-6:  # all codes equal along this axis: still show a neighbourhood
            a, b = a - 1.0, b + 1.0
        box += [a, b]
    return (box[0], box[1], box[2], box[3])


def project_2d(codes: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)) -> tuple[np.ndarray, LatentBasis]:
    """Project latent codes on a plane: identity for 2-D codes, the two principal directions otherwise.

    Principal directions come from the SVD of the centred codes; each direction's sign is fixed so
    that its largest-magnitude entry is positive (the same codes always give the same picture).
    A 1-D latent is shown on the x axis with y = 0.

    Args:
        codes: ``[N, z_dim]`` latent codes, ``N >= 1``.
        percentiles: the box of the codes kept in ``basis.extent`` (default 1st to 99th percentile).

    Returns:
        ``(coords [N, 2] float64, basis)``.

    Raises:
        ValueError: for empty or non-2-D input, or non-finite codes.
    """
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
        raise ConfigError(f"codes must be a non-empty [N, z_dim] array, got shape {codes.shape}")
    if not np.isfinite(codes).all():
        raise ConfigError("codes contain NaN or inf")
    n, z_dim = codes.shape
    if z_dim <= 2:
        components = np.eye(2, z_dim)
        mean = np.zeros(z_dim)
        coords = codes @ components.T
        var = coords.var(axis=0)
        identity = True
    else:
        mean = codes.mean(axis=0)
        centred = codes - mean
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        components = vt[:2].copy()
        signs = np.sign(components[np.arange(2), np.abs(components).argmax(axis=1)])
        components *= np.where(signs == 0, 1.0, signs)[:, None]
        coords = centred @ components.T
        var = (s[:2] ** 2) / max(n, 1)
        identity = False
    total = float(codes.var(axis=0).sum())
    explained = var / total if total > 0 else np.zeros(2)
    basis = LatentBasis(mean, components, explained, _percentile_extent(coords, percentiles), identity)
    return coords, basis


@torch.no_grad()
def decoded_grid(model: torch.nn.Module, basis_info: LatentBasis, n: int = 12, extent: Extent | float | None = None) -> np.ndarray:
    """Decode an ``n x n`` grid of points of the latent plane into one image.

    Column ``j`` goes left to right along the plane's x axis, row ``i`` top to bottom from the
    largest y to the smallest, so the grid is oriented like a scatter plot of the codes.

    Args:
        model: a model with ``decode(z) -> [B, C, H, W]`` in [0, 1].
        basis_info: from :func:`project_2d`.
        n: tiles per side.
        extent: ``(x_min, x_max, y_min, y_max)``, a half-width ``e`` for ``[-e, e]^2``, or None for
            ``basis_info.extent`` (the codes' percentile box).

    Returns:
        uint8 RGB ``[n * H, n * W, 3]`` (gray images are repeated on the three channels).

    Raises:
        ValueError: for a model without a decoder, ``n < 1`` or an empty extent.
    """
    if not has_latent(model):
        raise ConfigError(f"{type(model).__name__} has no decoder")
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    box = basis_info.extent if extent is None else (-extent, extent, -extent, extent) if isinstance(extent, (int, float)) else extent
    x0, x1, y0, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ConfigError(f"extent must have x_max > x_min and y_max > y_min, got {box}")
    xs = np.linspace(x0, x1, n)
    ys = np.linspace(y1, y0, n)  # top row = largest y
    plane = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)  # row-major: (row i, column j)
    z = torch.from_numpy(basis_info.to_latent(plane)).float().to(module_device(model))
    model.eval()
    tiles = model.decode(z).float().clamp(0, 1).cpu().numpy()  # [n*n, C, H, W]
    c, h, w = tiles.shape[1:]
    grid = tiles.reshape(n, n, c, h, w).transpose(2, 0, 3, 1, 4).reshape(c, n * h, n * w)
    return to_uint8_hwc(grid)
