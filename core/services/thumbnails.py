"""Small previews of dataset images, decoded once and cached on disk.

A thumbnail is a ``(size, size, 3)`` uint8 RGB array: the image scaled to fit the square (aspect
ratio kept, letterboxed on a neutral gray). The first request decodes the full image through
:mod:`core.data.images`; the result is written as a small JPEG under
``<workspace>/cache/thumbs/`` and every later request only reads that file (about 4 KB).

The cache key is the SHA-1 of (absolute path, mtime_ns, file size, thumbnail size, version), so an
edited or replaced image gets a new thumbnail and stale entries are simply never read again.
A file that cannot be decoded gets a placeholder (gray with a red X) and its reason is cached next
to it (``<key>.err``): browsing a folder with a corrupt file does not re-decode it on every rerun,
and fixing the file (new mtime/size) clears the error.

No streamlit here: the Dataset page and any CLI or test call the same functions.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
from PIL import Image

from core.data.images import ImageError, read_image, resize, to_channels
from core.errors import ConfigError
from core.workspace import atomic_write_bytes, cache_dir

THUMB_VERSION = "v1"
"""Bump when the thumbnail pixels change (size rule, padding, encoding): it invalidates the cache."""

DEFAULT_SIZE = 112
JPEG_QUALITY = 90
PAD_VALUE = 224
"""Letterbox colour for non-square images (light gray, visible on light and dark themes)."""

MIN_SIZE = 8
MAX_SIZE = 1024

ThumbResult = tuple[np.ndarray, str | None]
T = TypeVar("T")


def _check_size(size: int) -> int:
    size = int(size)
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"thumbnail size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
    return size


def cache_key(path: Path | str, size: int = DEFAULT_SIZE) -> str:
    """The SHA-1 cache key of ``path`` at ``size``: changes whenever the file's mtime or length does.

    Raises:
        OSError: when the file cannot be stat'ed (missing, no permission).
    """
    absolute = os.path.abspath(os.fspath(path))
    st = os.stat(absolute)
    text = f"{absolute}\0{st.st_mtime_ns}\0{st.st_size}\0{int(size)}\0{THUMB_VERSION}"
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()


def _cache_file(key: str) -> Path:
    # Two-level layout: a few thousand thumbnails per dataset should not sit in one directory.
    return cache_dir("thumbs") / key[:2] / f"{key}.jpg"


@lru_cache(maxsize=8)
def _placeholder(size: int) -> np.ndarray:
    img = np.full((size, size, 3), 200, np.uint8)
    margin = max(2, size // 5)
    thickness = max(1, size // 24)
    red = (210, 40, 40)
    cv2.line(img, (margin, margin), (size - 1 - margin, size - 1 - margin), red, thickness, cv2.LINE_AA)
    cv2.line(img, (size - 1 - margin, margin), (margin, size - 1 - margin), red, thickness, cv2.LINE_AA)
    img.flags.writeable = False
    return img


def placeholder(size: int = DEFAULT_SIZE) -> np.ndarray:
    """The thumbnail of an unreadable file: gray with a red X, ``(size, size, 3)`` uint8."""
    return _placeholder(_check_size(size)).copy()


def fit_square(img: np.ndarray, size: int) -> np.ndarray:
    """Scale a uint8 image (gray or RGB) to fit ``size`` x ``size``, keep its aspect ratio, pad with gray."""
    rgb = to_channels(img, 3)
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = resize(rgb, (nh, nw))
    if (nh, nw) == (size, size):
        return np.ascontiguousarray(small)
    out = np.full((size, size, 3), PAD_VALUE, np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = small
    return out


def _encode_jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _read_cached(key: str, size: int) -> ThumbResult | None:
    """The cached thumbnail or cached error for ``key``; None on a cache miss (or a damaged entry)."""
    file = _cache_file(key)
    err_file = file.with_suffix(".err")
    try:
        if file.is_file():
            arr = read_image(file)
            if arr.shape == (size, size, 3):
                return arr, None
        elif err_file.is_file():
            return placeholder(size), err_file.read_text(encoding="utf-8") or "unreadable image"
    except (ImageError, OSError, UnicodeDecodeError):
        pass  # a damaged cache entry is a miss: decode the source again and overwrite it
    return None


def thumbnail_or_error(path: Path | str, size: int = DEFAULT_SIZE) -> ThumbResult:
    """The thumbnail of ``path`` and ``None``, or the placeholder and the reason it could not be made.

    Never raises for a bad image or a missing file; raises ValueError only for a bad ``size``.
    """
    size = _check_size(size)
    name = Path(path).name
    try:
        key = cache_key(path, size)
    except OSError as exc:
        return placeholder(size), f"{name}: cannot read the file ({exc.strerror or exc.__class__.__name__})"
    hit = _read_cached(key, size)
    if hit is not None:
        return hit
    file = _cache_file(key)
    try:
        thumb = fit_square(read_image(Path(path)), size)
    except (ImageError, OSError, cv2.error) as exc:
        reason = str(exc) if isinstance(exc, ImageError) else f"{name}: cannot decode ({exc.__class__.__name__})"
        try:
            atomic_write_bytes(file.with_suffix(".err"), reason.encode("utf-8"))
        except OSError:
            pass  # a read-only cache only costs speed
        return placeholder(size), reason
    try:
        atomic_write_bytes(file, _encode_jpeg(thumb))
    except OSError:
        pass
    return thumb, None


def thumbnail(path: Path | str, size: int = DEFAULT_SIZE) -> np.ndarray:
    """The ``(size, size, 3)`` uint8 RGB thumbnail of ``path``; a placeholder when it is unreadable."""
    return thumbnail_or_error(path, size)[0]


def default_workers() -> int:
    """Threads for a batch: decoding releases the GIL and the atomic write waits on fsync, so 2 per CPU."""
    return max(1, min(8, 2 * (os.cpu_count() or 1)))


def _parallel(
    fn: Callable[[Path | str], T],
    paths: Sequence[Path | str],
    workers: int | None,
    progress: Callable[[int, int], None] | None,
) -> list[T]:
    total = len(paths)
    workers = workers or default_workers()
    if workers <= 1 or total <= 1:
        out = []
        for i, p in enumerate(paths, 1):
            out.append(fn(p))
            if progress:
                progress(i, total)
        return out
    results = []
    with ThreadPoolExecutor(max_workers=min(workers, total), thread_name_prefix="thumbs") as pool:
        for i, r in enumerate(pool.map(fn, paths), 1):
            results.append(r)
            if progress and (i == total or i % 32 == 0):
                progress(i, total)
    return results


def thumbnails(
    paths: Sequence[Path | str],
    size: int = DEFAULT_SIZE,
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[ThumbResult]:
    """:func:`thumbnail_or_error` for many files, in order; cache misses are decoded on a few threads.

    Args:
        paths: image files.
        size: thumbnail edge in pixels.
        workers: threads (default :func:`default_workers`); 1 runs everything in the calling thread.
        progress: called as ``progress(done, total)`` from the calling thread.
    """
    size = _check_size(size)
    return _parallel(lambda p: thumbnail_or_error(p, size), paths, workers, progress)


def thumbnail_status(path: Path | str, size: int = DEFAULT_SIZE) -> str | None:
    """Why ``path`` cannot be decoded, or None when it can; makes its thumbnail on a cache miss.

    A cached thumbnail or cached error answers without decoding anything (a few stat calls).
    """
    size = _check_size(size)
    try:
        key = cache_key(path, size)
    except OSError as exc:
        return f"{Path(path).name}: cannot read the file ({exc.strerror or exc.__class__.__name__})"
    file = _cache_file(key)
    if file.is_file():
        return None
    err_file = file.with_suffix(".err")
    if err_file.is_file():
        try:
            return err_file.read_text(encoding="utf-8") or "unreadable image"
        except (OSError, UnicodeDecodeError):
            pass
    return thumbnail_or_error(path, size)[1]


def check_images(
    paths: Sequence[Path | str],
    size: int = DEFAULT_SIZE,
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[str, str]]:
    """Decode every file once and return ``[(file, reason)]`` for those that fail, in input order.

    Decoding a file is what making its thumbnail does, so the check also warms the thumbnail cache,
    and checking unchanged files again only looks up cached results.
    """
    size = _check_size(size)
    reasons = _parallel(lambda p: thumbnail_status(p, size), paths, workers, progress)
    return [(str(p), r) for p, r in zip(paths, reasons) if r is not None]


def contact_sheet(
    thumbs: Sequence[np.ndarray], columns: int, labels: Sequence[str] | None = None, gap: int = 4
) -> np.ndarray:
    """Tile equal-size RGB thumbnails into one white-gapped image, ``columns`` per row.

    Labels (optional, one per thumbnail) are written in a strip under each tile. Useful for exports
    and reports; the Dataset page renders individual images (measured fast enough, and each stays
    addressable).

    Raises:
        ValueError: for no thumbnails, ``columns < 1``, mixed sizes or a label count mismatch.
    """
    if not thumbs:
        raise ConfigError("contact_sheet needs at least one thumbnail")
    if columns < 1:
        raise ConfigError(f"columns must be >= 1, got {columns}")
    if labels is not None and len(labels) != len(thumbs):
        raise ConfigError(f"got {len(labels)} labels for {len(thumbs)} thumbnails")
    th, tw = thumbs[0].shape[:2]
    if any(t.shape[:2] != (th, tw) for t in thumbs):
        raise ConfigError("all thumbnails must have the same height and width")
    label_h = 14 if labels is not None else 0
    rows = -(-len(thumbs) // columns)
    cell_h, cell_w = th + label_h + gap, tw + gap
    sheet = np.full((rows * cell_h + gap, columns * cell_w + gap, 3), 255, np.uint8)
    for i, t in enumerate(thumbs):
        r, c = divmod(i, columns)
        y, x = gap + r * cell_h, gap + c * cell_w
        sheet[y : y + th, x : x + tw] = to_channels(t, 3)
        if labels is not None:
            # Hershey fonts are ASCII only; cut the label until it fits under its tile.
            text = labels[i].encode("ascii", "replace").decode("ascii")
            while len(text) > 1 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.35, 1)[0][0] > tw:
                text = text[:-1]
            cv2.putText(sheet, text, (x, y + th + label_h - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                        (40, 40, 40), 1, cv2.LINE_AA)
    return sheet
