"""Structural similarity (SSIM) as a training loss and an anomaly map (Bergmann et al., VISAPP 2019).

Bergmann et al. train the AE with 1 - SSIM and take the per-pixel 1 - SSIM between an image and its
reconstruction as the anomaly map: it compares local luminance, contrast and structure (an 11 px Gaussian
window, sigma 1.5) instead of per-pixel intensity, so a texture that is reconstructed slightly shifted or
blurred costs little while a missing or broken structure costs much. The computation is torchmetrics'.
"""

from __future__ import annotations

import torch

WINDOW = 11  # Gaussian window side (Wang et al. 2004; Bergmann et al. 2019)
SIGMA = 1.5


def ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM ``[B, H, W]`` (channel mean) of images ``[B, C, H, W]`` with values in [0, 1].

    Differentiable; an image side smaller than the window uses a window that fits (odd, >= 3)."""
    side = min(x.shape[-2:])
    k = min(WINDOW, side if side % 2 else side - 1)
    if k < 3:
        raise ValueError(f"SSIM needs images of at least 3 px, got {tuple(x.shape[-2:])}")
    # imported here: torchmetrics pulls in scipy.signal, seconds of start-up for every command that never uses SSIM
    from torchmetrics.functional import image as tm_image

    _, full = tm_image.structural_similarity_index_measure(x.float(), y.float(), gaussian_kernel=True, sigma=SIGMA * k / WINDOW, kernel_size=k,
                    data_range=1.0, reduction="none", return_full_image=True)
    return full.mean(1)


def ssim_residual(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The anomaly map ``(1 - SSIM) / 2`` ``[B, H, W]`` in [0, 1]: 0 where ``x`` and ``y`` agree."""
    return (1.0 - ssim_map(x, y)).mul_(0.5).clamp_(0.0, 1.0)
