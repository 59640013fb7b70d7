"""Decode images once, resize, cache as uint8 tensors; augmentation on batches.

Decoding is the slow part of a naive training loop (PIL decode + transforms every epoch). Here a
split is decoded once per (files, size, channels) and kept as one uint8 tensor; training batches are
sliced from it and converted to float on the fly.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from cachetools import LRUCache

from core.data.images import ImageError, read_image, read_mask, resize, to_channels
from core.data.index import DatasetIndex, Sample
from core.data.report import training_channels


@dataclass
class LoadedSplit:
    """Decoded images of one split, in the order of ``samples``."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    samples: list[Sample]
    masks: torch.Tensor  # bool [N, H, W]; all False where an image has no mask
    has_mask: np.ndarray  # bool [N]: True where pixel ground truth exists (defect with a mask, or good)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        """1 for defective, 0 for good, per image."""
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def float_images(self) -> torch.Tensor:
        """Images as float32 in [0, 1]."""
        return self.images.float().div_(255.0)

    def subset(self, indices: Sequence[int]) -> LoadedSplit:
        """The images at ``indices``, in that order (``skipped`` is kept: it describes the whole split)."""
        idx = list(indices)
        return LoadedSplit(self.images[idx], [self.samples[i] for i in idx], self.masks[idx], self.has_mask[idx],
                           list(self.skipped))


def detect_channels(index: DatasetIndex) -> int:
    """3 when any training image has colour, else 1 (every image is looked at; see
    :func:`core.data.report.training_channels`, which also says when they mix)."""
    return training_channels(index)[0]


_CACHE_MAX_BYTES = 2 * 1024**3
# Least recently used splits go first once their images pass _CACHE_MAX_BYTES (the newest one always stays).
_CACHE: LRUCache[str, LoadedSplit] = LRUCache(_CACHE_MAX_BYTES, getsizeof=lambda v: max(1, min(v.images.numel(), _CACHE_MAX_BYTES)))
_CACHE_LOCK = threading.Lock()


def _cache_key(samples: list[Sample], size: int, channels: int, with_masks: bool) -> str:
    h = hashlib.sha1(f"{size}|{channels}|{with_masks}".encode())
    for s in samples:
        # split and defect decide the returned samples, labels and has_mask, so they are part of the key.
        h.update(f"|{s.split}|{s.defect}".encode())
        for path in (s.path, s.mask_path):
            if path is None:
                h.update(b"|no-mask")
                continue
            # A changed mask file must invalidate the entry just like a changed image.
            try:
                st = path.stat()
                h.update(f"|{path}|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"|{path}|missing".encode())
    return h.hexdigest()


def load_samples(samples: list[Sample], size: int, channels: int, *, with_masks: bool = True) -> LoadedSplit:
    """Decode and resize ``samples`` (cached by file identity, size and channels).

    Unreadable images (corrupt, truncated, empty, too large) are skipped and reported in
    ``skipped``; a mask that cannot be read leaves its image without pixel ground truth.
    """
    key = _cache_key(samples, size, channels, with_masks)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            return hit
    images, kept, masks, has_mask, skipped = [], [], [], [], []
    for s in samples:
        try:
            img = to_channels(resize(to_channels(read_image(s.path), channels), size), channels)
        except ImageError as exc:
            skipped.append((str(s.path), str(exc)))
            continue
        mask = np.zeros((size, size), dtype=bool)
        known = s.label == 0
        if with_masks and s.mask_path is not None:
            try:
                mask = read_mask(s.mask_path, size)
                known = True
            except ImageError as exc:
                skipped.append((str(s.mask_path), f"mask ignored: {exc}"))
        images.append(img.transpose(2, 0, 1))
        kept.append(s)
        masks.append(mask)
        has_mask.append(known)
    if images:
        tensor = torch.from_numpy(np.stack(images))
        mask_tensor = torch.from_numpy(np.stack(masks))
    else:
        tensor = torch.zeros((0, channels, size, size), dtype=torch.uint8)
        mask_tensor = torch.zeros((0, size, size), dtype=torch.bool)
    loaded = LoadedSplit(tensor, kept, mask_tensor, np.array(has_mask, dtype=bool), skipped)
    with _CACHE_LOCK:
        _CACHE[key] = loaded
    return loaded


def load_split(index: DatasetIndex, split: str, size: int, channels: int) -> LoadedSplit:
    """Decode one split of ``index`` (see :func:`load_samples`)."""
    return load_samples(index.split(split), size, channels, with_masks=(split == "test"))


def clear_cache() -> None:
    """Drop every cached split (tests, and after files changed on disk)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def augment_batch(
    batch: torch.Tensor, size: int, *, hflip: bool, vflip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random ``size`` x ``size`` crops (when the batch is larger) and random flips, per image.

    Args:
        batch: ``[B, C, H, W]`` with ``H, W >= size``.
        size: output side.
        hflip: flip left-right with probability 0.5.
        vflip: flip top-bottom with probability 0.5.
        generator: RNG for reproducible augmentation.
    """
    b, _, h, w = batch.shape
    if (h, w) != (size, size):
        ys = torch.randint(0, h - size + 1, (b,), generator=generator).tolist()
        xs = torch.randint(0, w - size + 1, (b,), generator=generator).tolist()
        batch = torch.stack([img[:, y : y + size, x : x + size] for img, y, x in zip(batch, ys, xs)])
    if hflip:
        flip = torch.rand(b, generator=generator) < 0.5
        batch = torch.where(flip.view(b, 1, 1, 1).to(batch.device), batch.flip(3), batch)
    if vflip:
        flip = torch.rand(b, generator=generator) < 0.5
        batch = torch.where(flip.view(b, 1, 1, 1).to(batch.device), batch.flip(2), batch)
    return batch


def split_train_val(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation images: a seeded permutation, at least one of each when n >= 2."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * fraction)) if n >= 2 else 0
    if fraction > 0 and n >= 2:
        n_val = max(1, min(n_val, n - 1))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
