"""PaDiM (Defard et al., "PaDiM: a Patch Distribution Modeling Framework", ICPR 2021).

Per patch position, a multivariate Gaussian of the normal images' features (a random subset of the
backbone's channels; covariance + 0.01 I); a test patch's anomaly is its Mahalanobis distance to the
Gaussian of its position. The map is upsampled to the image and Gaussian-smoothed; the image score is the largest
patch distance away from the border (as for PatchCore). Fitting needs one pass over the training images and no coreset.
"""

from __future__ import annotations

import torch

from core.detectors.maps import interior, patch_map
from core.detectors.patchcore import SCORE_MARGIN
from core.models.contract import AnomalyOutput
from core.models.feature_models import PaDiMModel

COVARIANCE_EPS = 0.01  # the paper's regularization of each covariance


class GaussianAccumulator:
    """Running per-position sums of ``[B, D, g, g]`` features (float64), then mean and inverse covariance."""

    def __init__(self) -> None:
        self.n = 0
        self.s1: torch.Tensor | None = None  # [P, D]
        self.s2: torch.Tensor | None = None  # [P, D, D]

    @torch.no_grad()
    def add(self, f: torch.Tensor) -> None:
        b, d, h, w = f.shape
        x = f.permute(2, 3, 0, 1).reshape(h * w, b, d).double()  # [P, B, D]
        s1, s2 = x.sum(1), torch.bmm(x.transpose(1, 2), x)
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.n += b

    @torch.no_grad()
    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean`` ``[P, D]`` and ``inv_cov`` ``[P, D, D]`` (float32); the unbiased covariance + eps I."""
        if self.s1 is None or self.s2 is None or self.n < 2:
            raise ValueError("PaDiM needs at least 2 training images")
        mean = self.s1 / self.n
        cov = (self.s2 - self.n * mean[:, :, None] * mean[:, None, :]) / (self.n - 1)
        cov += COVARIANCE_EPS * torch.eye(cov.shape[-1], dtype=cov.dtype)
        return mean.float(), torch.linalg.inv(cov).float()


def select_channels(total: int, keep: int, seed: int = 0) -> torch.Tensor:
    """The seeded random channel subset (sorted), all channels when ``keep >= total``."""
    if keep >= total or keep <= 0:
        return torch.arange(total)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=g)[:keep].sort().values


class PaDiMDetector:
    """The contract's detector over a fitted :class:`PaDiMModel`."""

    def __init__(self, model: PaDiMModel, *, smooth_sigma: float = 4.0, score_margin: float = SCORE_MARGIN) -> None:
        self.model = model.eval()
        self.smooth_sigma = smooth_sigma
        self.score_margin = score_margin

    @torch.no_grad()
    def patch_distances(self, x: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance per patch ``[B, g, g]``."""
        f = self.model.features(x)[:, self.model.channel_idx]
        b, d, h, w = f.shape
        diff = f.permute(2, 3, 0, 1).reshape(h * w, b, d) - self.model.mean[:, None]  # [P, B, D]
        m2 = torch.einsum("pbd,pde,pbe->pb", diff, self.model.inv_cov, diff)
        return m2.clamp_min_(0.0).sqrt_().T.reshape(b, h, w)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> AnomalyOutput:
        dist = self.patch_distances(x)
        amap = patch_map(dist, x.shape[-2:], self.smooth_sigma)
        return AnomalyOutput(interior(dist, self.score_margin).flatten(1).max(1).values, amap, None)
