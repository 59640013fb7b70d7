"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

Locally aware patch features of a frozen ImageNet backbone are collected from the normal training images
into a memory bank, reduced by greedy k-center coreset selection; a test patch's anomaly is its distance
to the nearest bank patch. The map is that distance per patch, bilinearly upsampled to the image and
Gaussian-smoothed; the image score is the largest patch distance away from the border (see
:func:`core.detectors.maps.interior`), optionally reweighted by how isolated
its nearest bank patch is (the paper's eq. 7, ``b`` neighbours).

Memory stays bounded: the coreset keeps one distance per bank patch (on a random projection of the
features, as the paper does) and the nearest-neighbour search runs over chunks of queries.
"""

from __future__ import annotations

import math

import torch

from core.detectors.maps import interior, patch_map
from core.models.contract import AnomalyOutput
from core.models.feature_models import PatchCoreModel

PROJECTION_DIM = 128  # the paper's random projection for the coreset distances
QUERY_CHUNK = 4096  # queries per block of the nearest-neighbour search
SCORE_MARGIN = 1 / 16  # border share of each side left out of the image score (the papers' 256 -> 224 crop)


@torch.no_grad()
def random_projection(x: torch.Tensor, dim: int, seed: int = 0) -> torch.Tensor:
    """``x`` ``[N, D]`` projected to ``dim`` dimensions by a seeded Gaussian matrix (Johnson-Lindenstrauss);
    ``x`` itself when ``D <= dim``."""
    if x.shape[1] <= dim:
        return x
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(x.shape[1], dim, generator=g).div_(math.sqrt(dim)).to(x.device, x.dtype)
    return x @ r


@torch.no_grad()
def greedy_coreset(bank: torch.Tensor, n: int, *, projection_dim: int = PROJECTION_DIM, seed: int = 0,
                   low_precision: bool = True) -> torch.Tensor:
    """Indices ``[n]`` of a greedy k-center coreset of ``bank`` ``[N, D]``.

    Start from a seeded random patch; then repeatedly add the patch farthest from the chosen ones. Each step
    costs one matrix-vector product on the projected bank (``|z|^2 - 2 z.c + |c|^2``) and a few passes over
    one distance per patch: memory is the projected bank plus three ``[N]`` vectors. The step is bound by
    reading the projected bank, so ``low_precision`` keeps it in bf16, half the bytes (measured on a 2-core
    CPU without bf16 instructions: 6.4 ms per step instead of 22 ms for 214k patches); norms and running
    distances stay fp32.
    """
    total = bank.shape[0]
    n = max(1, min(int(n), total))
    z = random_projection(bank.float(), projection_dim, seed)
    if low_precision:
        z = z.to(torch.bfloat16)
    z = z.contiguous()
    sq = z.float().pow(2).sum(1)
    g = torch.Generator().manual_seed(seed)
    idx = int(torch.randint(total, (1,), generator=g))
    chosen = torch.empty(n, dtype=torch.long)
    min_d = torch.full((total,), math.inf, device=z.device)
    dot = torch.empty(total, dtype=z.dtype, device=z.device)
    d = torch.empty_like(min_d)
    for k in range(n):
        chosen[k] = idx
        torch.mv(z, z[idx], out=dot)
        torch.add(sq, dot.float() if low_precision else dot, alpha=-2.0, out=d)
        d.add_(sq[idx])  # squared distance to the new centre
        torch.minimum(min_d, d, out=min_d)
        min_d[idx] = -1.0  # chosen patches are never picked again, even where duplicates give distance 0
        idx = int(torch.argmax(min_d))
    return chosen


@torch.no_grad()
def greedy_coreset_reference(bank: torch.Tensor, n: int, *, seed: int = 0) -> torch.Tensor:
    """The straightforward k-center greedy (full fp32 distances on the whole bank each step), as common
    implementations write it: the reference of the tests and of ``bench patchcore``."""
    total = bank.shape[0]
    n = max(1, min(int(n), total))
    g = torch.Generator().manual_seed(seed)
    idx = int(torch.randint(total, (1,), generator=g))
    chosen, min_d = [], None
    for _ in range(n):
        chosen.append(idx)
        d = torch.linalg.norm(bank - bank[idx : idx + 1], dim=1)
        min_d = d if min_d is None else torch.minimum(min_d, d)
        min_d[idx] = -1.0  # chosen patches stay at -1: the minimum with a distance >= 0 keeps it
        idx = int(torch.argmax(min_d))
    return torch.tensor(chosen, dtype=torch.long)


@torch.no_grad()
def nearest(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk: int = QUERY_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances ``[M, k]`` and indices ``[M, k]`` of the ``k`` nearest bank rows of each query."""
    b_sq = (bank * bank).sum(1)
    dists, idxs = [], []
    for i in range(0, queries.shape[0], chunk):
        q = queries[i : i + chunk]
        d2 = (q * q).sum(1, keepdim=True) - 2.0 * (q @ bank.T) + b_sq
        v, j = torch.topk(d2, k, dim=1, largest=False)
        dists.append(v.clamp_min_(0.0).sqrt_())
        idxs.append(j)
    return torch.cat(dists), torch.cat(idxs)


class PatchCoreDetector:
    """The contract's detector over a fitted :class:`PatchCoreModel`.

    Args:
        model: the fitted memory bank.
        smooth_sigma: Gaussian smoothing of the upsampled map, in pixels of the image (the paper's 4 at 224 px).
        reweight: the paper's image-score reweighting with ``neighbours`` bank neighbours.
        score_margin: border share of each side left out of the image score (see :func:`interior`).
    """

    def __init__(self, model: PatchCoreModel, *, smooth_sigma: float = 4.0, reweight: bool = False,
                 neighbours: int = 9, score_margin: float = SCORE_MARGIN) -> None:
        self.model = model.eval()
        self.smooth_sigma = smooth_sigma
        self.score_margin = score_margin
        self.reweight = reweight
        self.neighbours = neighbours

    @torch.no_grad()
    def patch_distances(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per patch: nearest-bank distance ``[B, g, g]``, nearest bank index ``[B, g, g]``, features ``[B, g*g, D]``."""
        f = self.model.features(x)
        b, d, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(-1, d)
        dist, idx = nearest(q, self.model.bank)
        return dist[:, 0].view(b, h, w), idx[:, 0].view(b, h, w), q.view(b, h * w, d)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> AnomalyOutput:
        dist, idx, q = self.patch_distances(x)
        b, g = x.shape[0], dist.shape[-1]
        cells = torch.arange(g * g, device=dist.device).view(g, g)
        inner = interior(cells, self.score_margin).reshape(-1)  # positions that enter the image score
        score, at = dist.view(b, -1)[:, inner].max(1)
        if self.reweight and self.model.bank.shape[0] > 1:
            score = self._reweighted(score, inner[at], idx.view(b, -1), q)
        return AnomalyOutput(score, patch_map(dist, x.shape[-2:], self.smooth_sigma), None)

    def _reweighted(self, score: torch.Tensor, where: torch.Tensor, idx: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Eq. 7: ``s = (1 - exp|m_test - m*| / sum_{m in N_b(m*)} exp|m_test - m|) * s*``."""
        bank = self.model.bank
        rows = torch.arange(len(score))
        m_test = q[rows, where]  # [B, D] the most anomalous patch of each image
        m_star = bank[idx[rows, where]]  # [B, D] its nearest bank patch
        k = min(self.neighbours, bank.shape[0])
        _, nb = nearest(m_star, bank, k)  # N_b(m*), m* itself included
        d_nb = torch.linalg.norm(bank[nb] - m_test[:, None], dim=2)  # [B, k]
        w = 1.0 - torch.exp(score - torch.logsumexp(d_nb, dim=1))  # exp(s*) / sum exp(d), stably
        return w * score
