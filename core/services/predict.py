"""Score single images with a run: decode, convert to the run's channels and size, predict, and
place the score among the run's test scores. Used by the Try-your-image page; no UI here."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from core.data.images import (
    ImageError,
    has_transparency,
    read_image,
    resize,
    to_channels,
    to_float_chw,
)
from core.detectors import registry as detectors
from core.runs import LoadedRun


@dataclass
class Analysis:
    """What the run says about one image, or why the image could not be used (``error``)."""

    name: str
    error: str | None = None
    source_shape: tuple[int, ...] | None = None  # decoded image before conversion, (H, W) or (H, W, C)
    image: np.ndarray | None = None  # uint8 (H, W, C) at the run's size and channels
    score: float | None = None
    amap: np.ndarray | None = None  # float32 (H, W); None for image-level detectors (the f-Net distance)
    recon: np.ndarray | None = None  # float32 (C, H, W) in [0, 1], None for non-reconstructing detectors
    notes: tuple[str, ...] = ()  # what was done to the input that the user should know (e.g. transparency)


@dataclass(frozen=True)
class Position:
    """Where a score falls among the test set's scores."""

    good_percentile: float | None  # % of good test images scoring lower (ties count half)
    defect_percentile: float | None  # % of defective test images scoring lower
    threshold: float | None  # the run's F1-max threshold on the test set
    flagged: bool | None  # score >= threshold


def analyze_image(run: LoadedRun, name: str, img: np.ndarray) -> Analysis:
    """Convert a decoded uint8 image to the run's channels and size, and score it."""
    cfg = run.config
    try:
        x = to_channels(resize(to_channels(img, cfg.channels), cfg.size), cfg.channels)
        out = detectors.build(run).predict(torch.from_numpy(to_float_chw(x))[None])
    except Exception as exc:  # an odd image must never crash the page: say what happened instead
        return Analysis(name, error=f"{name}: could not be analysed ({type(exc).__name__}: {str(exc)[:200]})")
    recon = out.reconstruction
    return Analysis(
        name,
        source_shape=tuple(img.shape),
        image=x,
        score=float(out.score[0]),
        amap=None if out.anomaly_map is None else out.anomaly_map[0].float().numpy(),
        recon=None if recon is None else recon[0].float().clamp(0, 1).numpy(),
    )


def analyze_upload(run: LoadedRun, name: str, data: bytes) -> Analysis:
    """Decode uploaded bytes and score them; a bad file gives an Analysis with ``error`` set."""
    try:
        img = read_image(data, name=name)
    except ImageError as exc:
        return Analysis(name, error=str(exc))
    except Exception as exc:  # decoders raise more than ImageError for hostile input (e.g. MemoryError)
        return Analysis(name, error=f"{name}: not a usable image ({type(exc).__name__})")
    out = analyze_image(run, name, img)
    if out.error is None and has_transparency(data):
        out = replace(out, notes=(*out.notes, "it has transparent pixels: they were composited on black, as the "
                                              "dataset loader does, before scoring"))
    return out


def position(score: float, scores: np.ndarray, labels: np.ndarray, threshold: float | None) -> Position:
    """Percentile of ``score`` among good and among defective test scores, and the threshold verdict."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)

    def pct(values: np.ndarray) -> float | None:
        if values.size == 0:
            return None
        return float((np.sum(values < score) + 0.5 * np.sum(values == score)) / values.size * 100.0)

    flagged = None if threshold is None else bool(score >= threshold)
    return Position(pct(scores[labels == 0]), pct(scores[labels == 1]), threshold, flagged)


def maps_for(run: LoadedRun, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A run's anomaly maps and scores for uint8 ``[N, C, H, W]`` images, at the images' size.

    Images are converted to the run's channels and size; the maps are resized back (bilinear). Used to
    put another detector's map (e.g. Ano-Unet's, at the f-Net's size) beside the run's.
    """
    cfg = run.config
    x = torch.from_numpy(images).float().div_(255.0)
    if x.shape[1] != cfg.channels:
        x = x.mean(1, keepdim=True) if cfg.channels == 1 else x.expand(-1, cfg.channels, -1, -1)
    h = x.shape[-1]
    if h != cfg.size:
        x = F.interpolate(x, size=(cfg.size, cfg.size), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        out = detectors.build(run).predict(x)
    amap = out.anomaly_map.float().unsqueeze(1)
    if amap.shape[-1] != h:
        amap = F.interpolate(amap, size=(h, h), mode="bilinear", align_corners=False)
    return amap[:, 0].numpy(), out.score.float().numpy()
