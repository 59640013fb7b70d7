"""The "other" images an f-Net learns to tell from the normal ones, made without any download: synthetic
defect pastes into normal images, the other built-in categories, scikit-learn's digits, scikit-image's textures."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from core.config import REFERENCE_SOURCES
from core.data import synthetic
from core.data.builtin import open_dataset
from core.data.images import resize, to_channels
from core.data.loading import load_split
from core.errors import ConfigError

PASTE_KINDS = ("patch", "blob", "scratch")


REFERENCES_PER_SOURCE = 240  # at most this many images per reference source (memory stays small)


# --------------------------------------------------------------------------- #
# "Other" images
# --------------------------------------------------------------------------- #
def _resize_stack(images: list[np.ndarray], size: int, channels: int) -> torch.Tensor:
    """uint8 HxW(xC) arrays -> uint8 ``[N, channels, size, size]``."""
    out = [to_channels(resize(to_channels(img, channels), size), channels).transpose(2, 0, 1) for img in images]
    return torch.from_numpy(np.stack(out)) if out else torch.zeros((0, channels, size, size), dtype=torch.uint8)


def _digits(size: int, channels: int, n: int) -> torch.Tensor:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    imgs = np.clip(bunch.images / 16.0 * 255.0, 0, 255).astype(np.uint8)
    pick = np.linspace(0, len(imgs) - 1, min(n, len(imgs))).astype(int)
    return _resize_stack([cv2.resize(imgs[i], (size, size), interpolation=cv2.INTER_CUBIC) for i in pick], size, channels)


def _textures(size: int, channels: int, n: int, seed: int) -> list[tuple[str, torch.Tensor]]:
    try:
        from skimage import data as skdata  # optional: not a project dependency
    except ImportError:
        return []
    rng = np.random.default_rng(seed)
    out = []
    for name in ("brick", "grass", "gravel"):
        try:
            tex = np.asarray(getattr(skdata, name)())
        except Exception:  # a missing bundled file: skip that texture
            continue
        tex = tex.astype(np.uint8)
        h, w = tex.shape[:2]
        crops = []
        for _ in range(max(1, n // 3)):
            side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crops.append(tex[y : y + side, x : x + side])
        out.append((f"textures:{name}", _resize_stack(crops, size, channels)))
    return out


def reference_sets(
    data: str, category: str, size: int, channels: int, sources: list[str], *, seed: int = 0, data_seed: int = 0,
) -> tuple[list[tuple[str, torch.Tensor]], list[str]]:
    """The "other" image sets (one class each) for F's training, without any download.

    Args:
        data: the normal data's spec (excluded from the references where it is built-in).
        category: the normal category.
        size: image side.
        channels: 1 or 3.
        sources: any of ``synthetic``, ``digits``, ``textures`` (``paste`` is made on the fly and ignored here).

    Returns:
        ``[(class name, uint8 [N, C, size, size])]`` and notes on what was skipped and why.
    """

    sets: list[tuple[str, torch.Tensor]] = []
    notes: list[str] = []
    for src in sources:
        if src == "paste":
            continue
        if src == "synthetic":
            for cat in synthetic.CATEGORIES:
                if data == "builtin:synthetic" and cat == category:
                    continue
                imgs = load_split(open_dataset("builtin:synthetic", cat, seed=data_seed), "train", size, channels).images
                sets.append((f"synthetic:{cat}", imgs[:REFERENCES_PER_SOURCE]))
        elif src == "digits":
            if data == "builtin:digits":
                notes.append("digits skipped: the normal data is builtin:digits (other digits are its test anomalies)")
                continue
            sets.append(("digits", _digits(size, channels, REFERENCES_PER_SOURCE)))
        elif src == "textures":
            tex = _textures(size, channels, REFERENCES_PER_SOURCE, seed)
            if not tex:
                notes.append("textures skipped: scikit-image is not installed")
            sets += tex
        else:
            raise ConfigError(f"unknown reference source {src!r}; available: {', '.join(REFERENCE_SOURCES)}")
    return [(n, t) for n, t in sets if len(t)], notes


# --------------------------------------------------------------------------- #
# Synthetic defect pastes
# --------------------------------------------------------------------------- #
def paste_defect(img: np.ndarray, donor: np.ndarray, rng: np.random.Generator, kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Paste one synthetic defect into ``img``.

    Args:
        img: float32 ``(H, W, C)`` in [0, 1].
        donor: float32 ``(H', W', C)`` another image (the source of ``patch`` defects).
        rng: the random generator.
        kind: ``patch`` (a piece of the donor, brightness-jittered), ``blob`` (a soft colour ellipse) or
            ``scratch`` (a thin polyline); default random.

    Returns:
        The defective image (float32, same shape) and its bool mask ``(H, W)``.
    """
    h, w, c = img.shape
    side = min(h, w)
    kind = kind or str(rng.choice(PASTE_KINDS))
    alpha = np.zeros((h, w), np.float32)
    if kind == "patch":
        ph, pw = (max(2, int(side * rng.uniform(0.08, 0.3))) for _ in range(2))
        dh, dw = donor.shape[:2]
        ph, pw = min(ph, dh, h), min(pw, dw, w)
        sy, sx = int(rng.integers(0, dh - ph + 1)), int(rng.integers(0, dw - pw + 1))
        patch = donor[sy : sy + ph, sx : sx + pw] * rng.uniform(0.6, 1.4)
        if rng.random() < 0.5:
            patch = patch[::-1, ::-1]
        ty, tx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        paint = img.copy()
        paint[ty : ty + ph, tx : tx + pw] = patch
        alpha[ty : ty + ph, tx : tx + pw] = 1.0
    else:
        canvas = np.zeros((h, w), np.uint8)
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        if kind == "blob":
            axes = (max(1, int(side * rng.uniform(0.03, 0.15))), max(1, int(side * rng.uniform(0.03, 0.15))))
            cv2.ellipse(canvas, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
            canvas = cv2.GaussianBlur(canvas, (0, 0), max(0.5, side / 128))
        elif kind == "scratch":
            pts = [(cx, cy)]
            for _ in range(int(rng.integers(1, 4))):
                ang, length = rng.uniform(0, 2 * np.pi), side * rng.uniform(0.08, 0.3)
                pts.append((int(pts[-1][0] + length * np.cos(ang)), int(pts[-1][1] + length * np.sin(ang))))
            thick = max(1, int(round(side * rng.uniform(0.008, 0.03))))
            cv2.polylines(canvas, [np.array(pts, np.int32)], False, 255, thick, cv2.LINE_AA)
        else:
            raise ConfigError(f"paste kind must be one of {', '.join(PASTE_KINDS)}, got {kind!r}")
        alpha = canvas.astype(np.float32) / 255.0
        tone = rng.random()
        if tone < 0.35:
            colour = rng.uniform(0.0, 0.2, c)  # dark
        elif tone < 0.7:
            colour = rng.uniform(0.8, 1.0, c)  # bright
        else:
            colour = rng.uniform(0.0, 1.0, c)  # any colour
        texture = 1.0 + 0.15 * rng.standard_normal((h, w, 1))
        paint = np.clip(colour.reshape(1, 1, c) * texture, 0, 1).astype(np.float32)
    alpha *= rng.uniform(0.6, 1.0)
    out = img * (1 - alpha[..., None]) + paint * alpha[..., None]
    return np.clip(out, 0, 1).astype(np.float32), alpha > 0.25


def paste_defects(images: torch.Tensor, donors: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`paste_defect` on every image of a uint8 batch ``[N, C, H, W]``; donors are picked from ``donors``.

    Returns:
        uint8 ``[N, C, H, W]`` defective images and bool ``[N, H, W]`` masks.
    """
    out, masks = [], []
    imgs = images.permute(0, 2, 3, 1).numpy().astype(np.float32) / 255.0
    for img in imgs:
        donor = donors[int(rng.integers(0, len(donors)))].permute(1, 2, 0).numpy().astype(np.float32) / 255.0
        d, m = paste_defect(img, donor, rng)
        out.append(np.round(d * 255.0).astype(np.uint8).transpose(2, 0, 1))
        masks.append(m)
    return torch.from_numpy(np.stack(out)), torch.from_numpy(np.stack(masks))
