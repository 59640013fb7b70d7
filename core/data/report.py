"""What a dataset holds beyond its file list: colour channels per image and the kind of every mask.

Both need the pixels, so each file is decoded once per (path, size, mtime) in a process and remembered.
``decide_channels`` is what training uses: RGB as soon as one training image has colour (a gray image
repeated across three channels loses nothing; colour turned gray does), with a note when the images mix.
Masks are read as defect where a pixel is above half their range; a mask with values in between (a
gradient, anti-aliased edges, a JPEG) is counted, since thresholding it decides the pixel ground truth.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cachetools import LRUCache

from core.data.images import ImageError, read_image
from core.data.index import DatasetIndex, Sample

GRAY, COLOR = "gray", "color"

_CACHE: LRUCache[tuple[str, int, int], tuple[str, Any]] = LRUCache(200_000)
_LOCK = threading.Lock()


def _file_key(path: Path) -> tuple[str, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return str(path), st.st_size, st.st_mtime_ns


def _cached(path: Path, kind: str, compute) -> Any:
    key = _file_key(path)
    if key is None:
        return None
    full = (kind, *key)
    with _LOCK:
        if full in _CACHE:
            return _CACHE[full]
    try:
        value = compute(read_image(path))
    except ImageError:
        value = None
    with _LOCK:
        _CACHE[full] = value
    return value


def image_kind(path: Path) -> str | None:
    """``"gray"`` (one channel, or three equal ones) or ``"color"``; None when the file does not decode."""

    def kind(img: np.ndarray) -> str:
        if img.ndim == 2 or img.shape[2] == 1:
            return GRAY
        return GRAY if np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2]) else COLOR

    return _cached(Path(path), "channels", kind)


def mask_values(path: Path) -> tuple[int, int] | None:
    """(pixels with a value strictly between the mask's lowest and highest level, all pixels); None when
    the mask does not decode. A binary mask (0/255, or 0/1) has none in between."""

    def count(img: np.ndarray) -> tuple[int, int]:
        arr = img.max(axis=2) if img.ndim == 3 else img
        lo, hi = int(arr.min()), int(arr.max())
        between = int(np.count_nonzero((arr > lo) & (arr < hi))) if hi - lo > 1 else 0
        return between, int(arr.size)

    return _cached(Path(path), "mask", count)


@dataclass
class ChannelCensus:
    """How many images are gray and how many have colour (names kept, at most ``keep`` of each)."""

    gray: int = 0
    color: int = 0
    unreadable: int = 0
    gray_files: list[str] = field(default_factory=list)
    color_files: list[str] = field(default_factory=list)

    @property
    def mixed(self) -> bool:
        return self.gray > 0 and self.color > 0


def channel_census(samples: Iterable[Sample], root: Path | None = None, keep: int = 20) -> ChannelCensus:
    """Decode every image of ``samples`` (cached) and count gray and colour ones."""
    out = ChannelCensus()
    for s in samples:
        kind = image_kind(s.path)
        name = s.relpath(root) if root is not None else str(s.path)
        if kind is None:
            out.unreadable += 1
        elif kind == GRAY:
            out.gray += 1
            if len(out.gray_files) < keep:
                out.gray_files.append(name)
        else:
            out.color += 1
            if len(out.color_files) < keep:
                out.color_files.append(name)
    return out


def decide_channels(census: ChannelCensus) -> tuple[int, str | None]:
    """The channels a run uses (3 when any image has colour, else 1) and a note when the images mix."""
    if not census.mixed:
        return (3 if census.color else 1 if census.gray else 3), None
    few = census.gray_files[:5]
    return 3, (f"the training images mix colour ({census.color}) and gray ({census.gray}, e.g. {', '.join(few)}): "
               "training in RGB, with each gray image repeated across the three channels")


def training_channels(index: DatasetIndex) -> tuple[int, str | None]:
    """:func:`decide_channels` over the training images of ``index``."""
    return decide_channels(channel_census(index.split("train"), Path(index.root)))


@dataclass
class MaskCensus:
    """Masks that are binary and masks with values between their two levels."""

    binary: int = 0
    non_binary: int = 0
    unreadable: int = 0
    non_binary_files: list[tuple[str, float]] = field(default_factory=list)  # (file, share of in-between pixels)


def mask_census(samples: Iterable[Sample], root: Path | None = None, keep: int = 20) -> MaskCensus:
    """Read every mask of ``samples`` (cached) and count the non-binary ones."""
    out = MaskCensus()
    for s in samples:
        if s.mask_path is None:
            continue
        got = mask_values(s.mask_path)
        if got is None:
            out.unreadable += 1
            continue
        between, total = got
        if between:
            out.non_binary += 1
            if len(out.non_binary_files) < keep:
                name = Path(s.mask_path).relative_to(root).as_posix() if root and Path(root) in Path(s.mask_path).parents \
                    else str(s.mask_path)
                out.non_binary_files.append((name, between / max(1, total)))
        else:
            out.binary += 1
    return out


def data_report(index: DatasetIndex) -> dict[str, Any]:
    """The data report of one category: counts per split and defect type, skipped files, the channels of
    every image (and what a run will use), and the kind of every mask; JSON-ready, with ``warnings``."""
    root = Path(index.root)
    per_split = {split: channel_census(index.split(split), root) for split in ("train", "test")}
    channels, note = decide_channels(per_split["train"])
    masks = mask_census(index.samples, root)
    warnings = []
    if note:
        warnings.append(note)
    if per_split["test"].mixed:
        warnings.append(f"the test images mix colour ({per_split['test'].color}) and gray ({per_split['test'].gray}); "
                        f"they are converted to the run's {'RGB' if channels == 3 else 'gray'}")
    if masks.non_binary:
        warnings.append(f"{masks.non_binary} of {masks.binary + masks.non_binary} masks are not binary (values between "
                        "their two levels): a pixel counts as defect above half the range (128 of 255)")
    return {
        "root": str(root), "category": index.category, "layout": index.layout, "counts": index.counts(),
        "skipped": [{"file": f, "reason": r} for f, r in index.skipped],
        "channels": {"train_gray": per_split["train"].gray, "train_color": per_split["train"].color,
                     "test_gray": per_split["test"].gray, "test_color": per_split["test"].color,
                     "unreadable": per_split["train"].unreadable + per_split["test"].unreadable,
                     "mixed": per_split["train"].mixed or per_split["test"].mixed,
                     "gray_files": per_split["train"].gray_files + per_split["test"].gray_files,
                     "run_channels": channels},
        "masks": {"binary": masks.binary, "non_binary": masks.non_binary, "unreadable": masks.unreadable,
                  "non_binary_files": [{"file": f, "share_between": round(x, 4)} for f, x in masks.non_binary_files]},
        "warnings": warnings,
    }
