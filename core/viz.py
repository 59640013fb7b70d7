"""Heatmaps, overlays and figure strips, all returned as uint8 RGB arrays."""

from __future__ import annotations

import cv2
import numpy as np

from core.data.images import to_uint8_hwc
from core.errors import ConfigError


def _anchored_lut() -> np.ndarray:
    """256 RGB colours: below the middle dark blue to pale blue-grey (under the threshold), from the middle up
    yellow to deep red (at or above it), a visible step at the boundary."""
    lut = np.zeros((256, 3), np.float32)
    lo = np.linspace(0, 1, 128)[:, None]
    lut[:128] = (1 - lo) * np.array([25, 40, 110]) + lo * np.array([170, 190, 215])
    hi = np.linspace(0, 1, 128)[:, None]
    lut[128:] = (1 - hi) * np.array([255, 215, 0]) + hi * np.array([180, 0, 20])
    return lut.round().astype(np.uint8)


ANCHORED_LUT = _anchored_lut()


def heatmap_anchored(amap: np.ndarray, threshold: float) -> np.ndarray:
    """Colour a map ``(H, W)`` relative to a decision threshold: ``t = v / (v + threshold)`` puts the threshold
    at the middle of :data:`ANCHORED_LUT`, so yellow-to-red means "at or above the threshold" and blue
    "below it", whatever the map's range (every page that anchors to the same threshold agrees)."""
    amap = np.clip(np.asarray(amap, dtype=np.float32), 0.0, None)
    thr = max(float(threshold), 1e-12)
    t = amap / (amap + thr)
    idx = np.where(amap >= thr, np.maximum(128, (t * 255.0).astype(np.int32)), np.minimum(127, (t * 255.0).astype(np.int32)))
    return ANCHORED_LUT[idx]


def heatmap(amap: np.ndarray, vmin: float = 0.0, vmax: float | None = None) -> np.ndarray:
    """Colour a float map ``(H, W)`` with the JET colormap; returns RGB uint8 ``(H, W, 3)``.

    ``vmin``/``vmax`` fix the scale so that several images can be compared; by default the map's
    own maximum is used.
    """
    amap = np.asarray(amap, dtype=np.float32)
    top = float(amap.max()) if vmax is None else float(vmax)
    scaled = np.clip((amap - vmin) / max(top - vmin, 1e-12), 0.0, 1.0)
    bgr = cv2.applyColorMap((scaled * 255.0 + 0.5).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend an RGB heatmap over an image (uint8 RGB or gray)."""
    if image.ndim == 2 or image.shape[2] == 1:
        image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    return cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)


def mask_contour(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
    """Draw the outline of a boolean mask on an RGB image (copy)."""
    out = image.copy() if image.ndim == 3 and image.shape[2] == 3 else overlay(image, np.zeros((*image.shape[:2], 3), np.uint8), 0.0)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, image.shape[0] // 128)
    cv2.drawContours(out, contours, -1, color, thickness)
    return out


def strip(panels: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Place RGB panels of equal height side by side with a white gap."""
    h = panels[0].shape[0]
    parts = []
    for i, p in enumerate(panels):
        if p.ndim == 2:
            p = np.repeat(p[:, :, None], 3, axis=2)
        if p.shape[0] != h:
            p = cv2.resize(p, (int(p.shape[1] * h / p.shape[0]), h), interpolation=cv2.INTER_NEAREST)
        if i:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
        parts.append(p)
    return np.concatenate(parts, axis=1)


def result_strip(x: np.ndarray, recon: np.ndarray, amap: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """The article's figure: [input | reconstruction | heatmap] from float CHW arrays and a map."""
    return strip([to_uint8_hwc(x), to_uint8_hwc(recon), heatmap(amap, 0.0, vmax)])


def annotate(img: np.ndarray, text: str) -> np.ndarray:
    """A copy of ``img`` with a white caption bar on top (for GIF frames)."""
    bar_h = max(14, img.shape[0] // 16)
    bar = np.full((bar_h, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (4, bar_h - 4), cv2.FONT_HERSHEY_SIMPLEX, bar_h / 32.0, (20, 20, 20), 1, cv2.LINE_AA)
    return np.concatenate([bar, img], axis=0)


def column_headers(img: np.ndarray, labels: list[str], col_width: int, gap: int) -> np.ndarray:
    """A copy of ``img`` with a white bar on top naming its columns (``col_width`` px each, ``gap`` px apart)."""
    bar_h = max(14, min(28, col_width // 6))
    bar = np.full((bar_h, img.shape[1], 3), 255, np.uint8)
    scale = bar_h / 36.0
    for j, text in enumerate(labels):
        (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        x = j * (col_width + gap) + max(2, (col_width - tw) // 2)
        cv2.putText(bar, text, (x, bar_h - 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (20, 20, 20), 1, cv2.LINE_AA)
    return np.concatenate([bar, img], axis=0)


def gif_bytes(frames: list[np.ndarray], duration_ms: int = 200, last_hold_ms: int = 1200) -> bytes:
    """Encode RGB uint8 frames as a looping animated GIF (one GIF frame per input frame)."""
    import io

    from PIL import Image

    if not frames:
        raise ConfigError("no frames to write")
    images = [Image.fromarray(f) for f in frames]
    durations = [duration_ms] * (len(images) - 1) + [last_hold_ms]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0,
                   optimize=False, disposal=1)
    return buf.getvalue()


HEATMAP_QUANTILE = 0.999  # the common colour scale of a set's heatmaps tops out at this quantile


def heatmap_vmax(maps: np.ndarray | None) -> float:
    """The top of a set's common heatmap colour scale."""
    if maps is None or not maps.size:
        return 1.0
    return float(np.quantile(maps.astype(np.float32), HEATMAP_QUANTILE))
