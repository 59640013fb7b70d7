"""Every image conversion in one place: decoding, mode normalization, resizing, uint8 <-> float.

Images travel through the project as ``uint8`` numpy arrays of shape ``(H, W, 3)`` (RGB) or
``(H, W)`` (gray) until they become float tensors in ``[0, 1]`` of shape ``(C, H, W)``.
"""

from __future__ import annotations

import io
import stat
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from core.errors import AnomalyLabError, ConfigError
from core.workspace import atomic_write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_PIXELS = 40_000_000
"""Refuse images above this many pixels (decompression-bomb guard; a 6000x6000 photo still loads)."""

# PIL warns at its own limit and raises at twice it; we check the size ourselves before decoding.
Image.MAX_IMAGE_PIXELS = None


class ImageError(AnomalyLabError):
    """An image that cannot be used, with a reason a person can act on."""


def is_image_file(path: Path) -> bool:
    """True for a regular file with an image suffix that is not hidden."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _open(source: Path | bytes, name: str) -> Image.Image:
    try:
        if isinstance(source, (bytes, bytearray)):
            if not source:
                raise ImageError(f"{name}: empty file (0 bytes)")
            img = Image.open(io.BytesIO(source))
        else:
            st = source.stat()
            if not stat.S_ISREG(st.st_mode):  # a pipe or device would block the reader forever
                raise ImageError(f"{name}: not a regular file (a pipe, device or socket)")
            if st.st_size == 0:
                raise ImageError(f"{name}: empty file (0 bytes)")
            img = Image.open(source)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: not a readable image ({exc.__class__.__name__})") from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        img.close()  # release the file handle now (a refused file must not stay open/locked)
        raise ImageError(f"{name}: {w}x{h} pixels is larger than the limit of {MAX_PIXELS:,} pixels")
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        img.close()
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from None
    return img


def _to_uint8_array(img: Image.Image) -> np.ndarray:
    """Normalize any PIL mode (1, L, P, LA, RGBA, I;16, I, F, CMYK, ...) to uint8 RGB or L."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit scans use the full 0..65535 range; 32-bit int/float images are scaled by their max.
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if mode == "F" and arr.max(initial=0) <= 1.0:
            top = 1.0
        return np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite on black: transparent background should not look like a defect-free white.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
        return np.asarray(img, dtype=np.uint8)
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def has_transparency(data: bytes) -> bool:
    """True when encoded image ``data`` has an alpha channel or a transparent colour (it is composited on
    black when decoded, as :func:`read_image` does); False for anything unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
    except Exception:  # noqa: BLE001  (a probe: read_image reports bad files)
        return False


def read_image(source: Path | str | bytes, name: str | None = None) -> np.ndarray:
    """Decode an image file (or its bytes) to uint8 RGB ``(H, W, 3)`` or gray ``(H, W)``.

    Raises:
        ImageError: for empty, corrupt, truncated, non-image or oversized input.
    """
    if isinstance(source, str):
        source = Path(source)
    label = name or (source.name if isinstance(source, Path) else "upload")
    img = _open(source, label)
    arr = _to_uint8_array(img)
    if arr.ndim == 3 and arr.shape[2] not in (1, 3):
        raise ImageError(f"{label}: unsupported channel count {arr.shape[2]}")
    return np.ascontiguousarray(arr)


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """Convert a uint8 image to ``channels`` (1 or 3) as ``(H, W, channels)``."""
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == channels:
        return img
    if channels == 1:
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[:, :, None]
    return np.repeat(img, 3, axis=2)


def resize(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize to ``size`` (square int or (H, W)); area filter when shrinking, bilinear when growing."""
    h, w = (size, size) if isinstance(size, int) else size
    if img.shape[:2] == (h, w):
        return img
    interp = cv2.INTER_AREA if h < img.shape[0] else cv2.INTER_LINEAR
    out = cv2.resize(img, (w, h), interpolation=interp)
    if img.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out


def read_mask(path: Path | str, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth mask as bool ``(H, W)``: defect above 127 (a 0/1 mask: above 0); resized
    nearest-neighbour when ``size`` is given. A mask with values in between is thresholded as well
    (:func:`core.data.report.mask_census` counts those)."""
    arr = read_image(Path(path))
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    mask = arr > 127 if arr.max() > 1 else arr > 0
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else size
        if mask.shape != (h, w):
            mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    return mask


def to_float_chw(img: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W, C)`` -> float32 ``(C, H, W)`` in [0, 1]."""
    if img.ndim == 2:
        img = img[:, :, None]
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32) / 255.0


def to_uint8_hwc(x: np.ndarray) -> np.ndarray:
    """float ``(C, H, W)`` in [0, 1] -> uint8 ``(H, W, 3)`` RGB (gray is repeated, for display)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    img = np.clip(x.transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return img


def encode_png(img: np.ndarray) -> bytes:
    """Encode a uint8 RGB or gray image as PNG bytes."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def save_png(path: Path | str, img: np.ndarray) -> None:
    """Write a uint8 image as PNG atomically."""
    atomic_write_bytes(path, encode_png(img))
