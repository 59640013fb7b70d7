"""Deterministic synthetic anomaly-detection data in the MVTec AD folder layout.

Three categories imitate MVTec classes closely enough for a small convolutional autoencoder to learn
the normal look while still having natural variation between normal images:

* ``bottle``: a bottle mouth seen from above (concentric glass rings on a dark background),
* ``mesh``: a regular wire lattice (like MVTec ``grid``),
* ``fabric``: an irregular woven texture (like ``carpet``).

Every image is rendered from its own random generator, seeded from ``(seed, category, split,
index)`` with ``zlib.crc32`` (Python's ``hash()`` is salted per process), so the same seed gives
byte-identical files and no global random state is touched. A defective image is its normal
counterpart with a defect painted on top; the defect is kept exactly where its mask is 255, so the
mask and the changed pixels agree (see :func:`render_sample`).

Written layout (``NNN`` = ``000``, ``001``, ...)::

    ROOT/CATEGORY/train/good/NNN.png
    ROOT/CATEGORY/test/good/NNN.png
    ROOT/CATEGORY/test/<defect>/NNN.png
    ROOT/CATEGORY/ground_truth/<defect>/NNN_mask.png
    ROOT/CATEGORY/.complete          (JSON: version and parameters; written last)
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from core.errors import ConfigError

SYNTHETIC_VERSION = "v1"
"""Bump whenever the generated pixels or layout change: it invalidates every cached copy."""

CATEGORIES: tuple[str, ...] = ("bottle", "mesh", "fabric")

DEFECT_TYPES: dict[str, tuple[str, ...]] = {
    "bottle": ("broken", "contamination", "scratch"),
    "mesh": ("bent", "broken", "contamination", "scratch"),
    "fabric": ("cut", "hole", "stain"),
}

DEFAULT_COUNTS: dict[str, int] = {"n_train": 160, "n_test_good": 24, "n_test_per_defect": 12}
"""Images per split written by :func:`generate_category` unless told otherwise."""

MIN_SIZE = 32
MIN_DEFECT_PIXELS = 20
"""Every mask has at least this many defect pixels (smaller defects are redrawn larger)."""

MARKER_NAME = ".complete"

# A pixel counts as changed by a defect when some channel moved by more than this (about 8/255):
# above the sensor noise so the mask marks visible changes, low enough to keep subtle defects.
_CHANGE_THRESHOLD = 0.032
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # noisy images barely compress better at higher levels

Array = np.ndarray


class Sample(NamedTuple):
    """One rendered image.

    Attributes:
        image: ``(size, size, 3)`` uint8 RGB, as written to disk.
        mask: ``(size, size)`` uint8, 255 on defect pixels (all zero for normal images).
        clean: the same image without its defect (equal to ``image`` for normal images).
    """

    image: Array
    mask: Array
    clean: Array


@dataclass(frozen=True)
class _Scene:
    """A noise-free normal image plus what defect painters need to know about it."""

    image: Array  # float32 (H, W, 3) in [0, 1]
    support: Array  # float32 (H, W): 1 where defects may be placed (inside the object)
    background: Array  # float32 (H, W, 3): what shows through where material is missing
    rerender: Callable[[Array, Array], Array] | None = None  # image with coordinates displaced by (dy, dx)
    info: dict[str, float] = field(default_factory=dict)  # geometry hints (e.g. bottle centre and radius)


# --------------------------------------------------------------------------------------------- seeds


def _rng_for(seed: int, category: str, kind: str, index: int) -> np.random.SeedSequence:
    """Seed sequence of one image; ``kind`` is ``train``, ``good`` or a defect type."""
    # crc32 is stable across processes and platforms, unlike hash() of a str.
    words = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, zlib.crc32(category.encode()), zlib.crc32(kind.encode()), index]
    return np.random.SeedSequence(words)


# ------------------------------------------------------------------------------------------ helpers


def _coords(size: int) -> tuple[Array, Array]:
    """Pixel-centre coordinate grids ``(yy, xx)`` as float32."""
    ax = np.arange(size, dtype=np.float32)
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    return yy, xx


def _normalized(a: Array) -> Array:
    """Zero-mean, unit-std copy (a blurred noise field's std depends on the blur; this removes it)."""
    a = a - a.mean()
    return a / (a.std() + 1e-6)


def _smooth_noise(rng: np.random.Generator, size: int, sigma_y: float, sigma_x: float | None = None) -> Array:
    """Gaussian-blurred white noise with unit std: a cheap band-limited random field."""
    noise = rng.standard_normal((size, size), dtype=np.float32)
    sx = sigma_x if sigma_x is not None else sigma_y
    return _normalized(cv2.GaussianBlur(noise, (0, 0), sigmaX=sx, sigmaY=sigma_y, borderType=cv2.BORDER_REFLECT))


def _blend(image: Array, color: Array | tuple[float, float, float], alpha: Array) -> Array:
    """Alpha-composite ``color`` (an RGB triple or an image) over ``image``."""
    a = alpha[..., None]
    return image * (1.0 - a) + np.asarray(color, dtype=np.float32) * a


def _blob_alpha(
    size: int, rng: np.random.Generator, center: tuple[float, float], radius: float, softness: float, roughness: float
) -> Array:
    """Irregular blob: a disc whose radius wobbles with the angle, with a soft edge ``softness`` px wide.

    Args:
        center: ``(y, x)`` of the blob.
        radius: mean radius in pixels.
        softness: width of the edge ramp in pixels (about 0.7 gives a hard anti-aliased edge).
        roughness: 0 for an ellipse-like blob, about 0.3 for a ragged one.
    """
    yy, xx = _coords(size)
    dy, dx = yy - center[0], xx - center[1]
    # A random elongation and orientation, so blobs are not all round.
    angle = rng.uniform(0, np.pi)
    stretch = rng.uniform(1.0, 1.8)
    ca, sa = np.cos(angle), np.sin(angle)
    u = (ca * dx + sa * dy) / np.sqrt(stretch)
    v = (-sa * dx + ca * dy) * np.sqrt(stretch)
    rho = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    wobble = np.zeros_like(theta)
    for k in range(2, 7):
        wobble += rng.normal(0, roughness / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    edge = radius * (1.0 + wobble)
    return np.clip((edge - rho) / max(softness, 1e-3) + 0.5, 0.0, 1.0).astype(np.float32)


def _curve_points(
    rng: np.random.Generator, start: tuple[float, float], length: float, bend: float, jitter: float, n: int
) -> Array:
    """Points ``(x, y)`` of a gently bending, optionally jagged curve starting at ``start = (y, x)``."""
    heading = rng.uniform(0, 2 * np.pi)
    turn = rng.normal(0, bend, n).cumsum()
    step = length / n
    angles = heading + turn
    xs = start[1] + np.concatenate([[0.0], np.cos(angles).cumsum() * step])
    ys = start[0] + np.concatenate([[0.0], np.sin(angles).cumsum() * step])
    pts = np.stack([xs, ys], axis=1)
    if jitter > 0:
        pts[1:-1] += rng.normal(0, jitter, pts[1:-1].shape)
    return pts


def _stroke_alpha(size: int, points: Array, thickness: int, blur: float = 0.0) -> Array:
    """Anti-aliased polyline through ``points`` (``(x, y)``) as an alpha map in [0, 1]."""
    canvas = np.zeros((size, size), np.uint8)
    shift = 4  # sub-pixel precision: coordinates are passed in 1/16 px
    pts = np.round(points * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(canvas, [pts], False, 255, thickness=max(1, int(thickness)), lineType=cv2.LINE_AA, shift=shift)
    alpha = canvas.astype(np.float32) / 255.0
    if blur > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), blur)
        alpha = np.clip(alpha / max(alpha.max(), 1e-6), 0.0, 1.0)
    return alpha


def _random_point(rng: np.random.Generator, support: Array, margin: int) -> tuple[float, float]:
    """A uniformly chosen ``(y, x)`` where ``support`` > 0.5, at least ``margin`` px from the border."""
    inner = support[margin:-margin, margin:-margin] > 0.5 if margin > 0 else support > 0.5
    ys, xs = np.nonzero(inner)
    if len(ys) == 0:  # degenerate support (tiny images): fall back to the centre
        c = support.shape[0] / 2.0
        return c, c
    i = rng.integers(len(ys))
    return float(ys[i] + margin + rng.uniform(-0.5, 0.5)), float(xs[i] + margin + rng.uniform(-0.5, 0.5))


def _defect_size(rng: np.random.Generator, small: float, large: float) -> float:
    """A defect size between ``small`` and ``large``, skewed towards small ones (log-uniform)."""
    return float(np.exp(rng.uniform(np.log(small), np.log(large))))


def _add_noise(image: Array, rng: np.random.Generator, sigma: float) -> Array:
    """Sensor noise: mostly luminance, a little chroma (as in real RGB cameras)."""
    size = image.shape[0]
    luma = rng.standard_normal((size, size, 1), dtype=np.float32) * sigma
    chroma = rng.standard_normal((size, size, 3), dtype=np.float32) * (sigma * 0.35)
    return image + luma + chroma


def _to_uint8(image: Array) -> Array:
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ------------------------------------------------------------------------------------------- bottle


def _render_bottle(rng: np.random.Generator, size: int) -> _Scene:
    """A bottle mouth from above: dark opening, bright lip rings, dimmer shoulder, dark background."""
    s = size / 128.0
    yy, xx = _coords(size)
    cy = size / 2.0 + rng.uniform(-3, 3) * s
    cx = size / 2.0 + rng.uniform(-3, 3) * s
    radius = size * rng.uniform(0.41, 0.45)
    squash = rng.uniform(0.97, 1.03)  # the camera is never exactly above the bottle
    dy, dx = (yy - cy) * squash, xx - cx
    r = np.sqrt(dx * dx + dy * dy) / radius
    theta = np.arctan2(dy, dx)

    # Background: dark, brighter towards one side (lighting), with a faint smooth texture.
    c = size / 2.0
    vignette = 1.0 - 0.45 * (((xx - c) ** 2 + (yy - c) ** 2) / (c * c))
    bg_level = rng.uniform(0.07, 0.14)
    light_dir = rng.uniform(0, 2 * np.pi)
    bg = bg_level * vignette * (1.0 + 0.15 * (np.cos(light_dir) * (xx - c) + np.sin(light_dir) * (yy - c)) / c)
    bg = bg + 0.01 * _smooth_noise(rng, size, 6 * s)
    bg_rgb = np.repeat(bg[..., None], 3, axis=2).astype(np.float32)

    # Radial brightness profile of the glass: knots on r / radius, jittered per bottle.
    knots = np.array([0.0, 0.28, 0.38, 0.45, 0.52, 0.66, 0.78, 0.84, 0.90, 0.97, 1.0])
    knots[1:-1] += rng.uniform(-0.015, 0.015, len(knots) - 2)
    values = np.array([0.06, 0.10, 0.18, 0.62, 0.40, 0.34, 0.52, 0.72, 0.42, 0.24, 0.16])
    values = values * rng.uniform(0.88, 1.12) + rng.uniform(-0.03, 0.03, len(values))
    glass = np.interp(r, knots, values).astype(np.float32)
    # Directional light: one side of the rings brighter, plus a specular arc on the outer lip.
    glass *= 1.0 + rng.uniform(0.06, 0.14) * np.cos(theta - light_dir)
    ang = np.angle(np.exp(1j * (theta - light_dir - np.pi)))
    spec = np.exp(-(((r - 0.8) / 0.035) ** 2)) * np.exp(-(ang / 0.5) ** 2) * rng.uniform(0.1, 0.25)
    glass += spec.astype(np.float32) + 0.012 * _smooth_noise(rng, size, 2.5 * s)
    tint = np.array([0.92, 1.0, 0.84], np.float32) + rng.uniform(-0.03, 0.03, 3).astype(np.float32)

    inside = np.clip((1.0 - r) * radius + 0.5, 0.0, 1.0).astype(np.float32)  # anti-aliased rim
    image = _blend(bg_rgb, 0.0, inside) + (glass[..., None] * tint) * inside[..., None]
    support = (r < 0.95).astype(np.float32)
    info = {"cy": cy, "cx": cx, "radius": radius, "squash": squash}
    return _Scene(image.astype(np.float32), support, bg_rgb, None, info)


def _bottle_radius(scene: _Scene) -> Array:
    """Distance from the bottle axis in units of the bottle radius, per pixel."""
    info = scene.info
    yy, xx = _coords(scene.image.shape[0])
    dy, dx = (yy - info["cy"]) * info["squash"], xx - info["cx"]
    return np.sqrt(dx * dx + dy * dy) / info["radius"]


def _bottle_scratch(scene: _Scene, rng: np.random.Generator, scale: float) -> tuple[Array, Array]:
    size = scene.image.shape[0]
    radius = scene.info["radius"]
    start = _random_point(rng, scene.support, 2)
    length = _defect_size(rng, 0.15, 0.8) * radius * scale
    pts = _curve_points(rng, start, length, bend=0.12, jitter=0.15, n=12)
    alpha = _stroke_alpha(size, pts, thickness=int(rng.integers(1, 3))) * rng.uniform(0.55, 1.0)
    alpha *= scene.support
    color = (0.9, 0.9, 0.86) if rng.random() < 0.6 else (0.02, 0.03, 0.02)
    return _blend(scene.image, color, alpha), alpha


def _bottle_broken(scene: _Scene, rng: np.random.Generator, scale: float) -> tuple[Array, Array]:
    """A chip out of the outer or inner lip: the glass is gone and the fracture edge catches light."""
    size = scene.image.shape[0]
    info = scene.info
    radius = info["radius"]
    # Chips happen at edges: mostly the outer rim, sometimes the inner lip.
    ring = rng.uniform(0.9, 1.0) if rng.random() < 0.7 else rng.uniform(0.4, 0.5)
    phi = rng.uniform(0, 2 * np.pi)
    center = (info["cy"] + ring * radius * np.sin(phi), info["cx"] + ring * radius * np.cos(phi))
    chip = _defect_size(rng, 0.07, 0.28) * radius * scale
    hole = _blob_alpha(size, rng, center, chip, softness=0.8, roughness=0.35)
    glass = (_bottle_radius(scene) < 1.0).astype(np.float32)
    hole *= glass
    # Fracture edge: a thin bright band just inside the chip outline, on the remaining glass.
    grown = cv2.dilate((hole > 0.5).astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    edge = np.clip(grown.astype(np.float32) - hole, 0.0, 1.0) * glass
    out = _blend(scene.image, scene.background * rng.uniform(0.6, 1.0), hole)
    out = _blend(out, (0.82, 0.86, 0.78), edge * rng.uniform(0.4, 0.8))
    return out, np.maximum(hole, edge)


def _contamination(scene: _Scene, rng: np.random.Generator, scale: float, small: float, large: float) -> tuple[Array, Array]:
    """A coloured, slightly mottled blob with a soft edge (dirt, glue, a drop of something)."""
    size = scene.image.shape[0]
    s = size / 128.0
    center = _random_point(rng, scene.support, 3)
    radius = _defect_size(rng, small, large) * s * scale
    alpha = _blob_alpha(size, rng, center, radius, softness=rng.uniform(0.8, 3.0) * s, roughness=0.3)
    mottle = 0.8 + 0.2 * _smooth_noise(rng, size, 1.5 * s)
    alpha = np.clip(alpha * mottle, 0, 1) * rng.uniform(0.45, 0.95) * scene.support
    palette = np.array(
        [[0.45, 0.28, 0.12], [0.85, 0.82, 0.70], [0.62, 0.50, 0.18], [0.20, 0.32, 0.15], [0.70, 0.35, 0.20]],
        np.float32,
    )
    color = palette[rng.integers(len(palette))] * rng.uniform(0.8, 1.15)
    return _blend(scene.image, color, alpha), alpha


def _bottle_contamination(scene: _Scene, rng: np.random.Generator, scale: float) -> tuple[Array, Array]:
    return _contamination(scene, rng, scale, 3.0, 14.0)


# --------------------------------------------------------------------------------------------- mesh


def _render_mesh(rng: np.random.Generator, size: int) -> _Scene:
    """A woven wire lattice with a small random phase, rotation, lighting gradient and wire shading."""
    s = size / 128.0
    yy, xx = _coords(size)
    period = size * rng.uniform(0.085, 0.1)
    half_width = period * rng.uniform(0.13, 0.17)
    rot = np.deg2rad(rng.uniform(-1.5, 1.5))
    phase = rng.uniform(0, period, 2)
    bg_level = rng.uniform(0.16, 0.26)
    wire_level = rng.uniform(0.58, 0.72)
    light = rng.uniform(-0.12, 0.12, 2)
    bg_field = bg_level * (1.0 + 0.1 * _smooth_noise(rng, size, 10 * s))
    c = size / 2.0
    shading = 1.0 + light[0] * (xx - c) / c + light[1] * (yy - c) / c
    background = np.repeat((bg_field * shading)[..., None], 3, axis=2).astype(np.float32)
    cos_r, sin_r = np.cos(rot), np.sin(rot)

    def wires(disp_y: Array, disp_x: Array) -> Array:
        x, y = xx + disp_x, yy + disp_y
        u = cos_r * x + sin_r * y + phase[0]
        v = -sin_r * x + cos_r * y + phase[1]
        du = np.abs(((u / period) + 0.5) % 1.0 - 0.5) * period  # distance to the nearest vertical wire
        dv = np.abs(((v / period) + 0.5) % 1.0 - 0.5) * period
        # Round wires: brightest along the axis (cylinder shading), anti-aliased 1 px at the edge.
        prof_u = np.sqrt(np.clip(1.0 - (du / (half_width + 0.5)) ** 2, 0.0, 1.0))
        prof_v = np.sqrt(np.clip(1.0 - (dv / (half_width + 0.5)) ** 2, 0.0, 1.0))
        # Weave: wires go over and under each other, so each is dimmer where it dips below.
        over = np.cos(np.pi * v / period) * np.cos(np.pi * u / period)
        lum_u = prof_u * (0.85 + 0.15 * over)
        lum_v = prof_v * (0.85 - 0.15 * over)
        coverage = np.maximum(np.clip(prof_u * 3, 0, 1), np.clip(prof_v * 3, 0, 1))
        lum = np.maximum(lum_u, lum_v)
        wire = (wire_level * (0.55 + 0.45 * lum) * shading)[..., None]
        return _blend(background, 0.0, coverage) + wire * coverage[..., None]

    zero = np.zeros((size, size), np.float32)
    image = wires(zero, zero).astype(np.float32)
    return _Scene(image, np.ones((size, size), np.float32), background, wires, {"period": period})


def _mesh_bent(scene: _Scene, rng: np.random.Generator, scale: float) -> tuple[Array, Array]:
    """Wires pushed sideways by a smooth bump, as if the mesh had been dented."""
    size = scene.image.shape[0]
    period = scene.info["period"]
    yy, xx = _coords(size)
    cy, cx = _random_point(rng, scene.support, int(0.1 * size))
    sigma = _defect_size(rng, 0.35, 1.1) * period * scale
    bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma * sigma)).astype(np.float32)
    amplitude = rng.uniform(0.3, 0.5) * period
    direction = rng.uniform(0, 2 * np.pi)
    if scene.rerender is None:
        raise TypeError("bent needs a scene that can be re-rendered with displaced coordinates")
    out = scene.rerender(bump * amplitude * np.sin(direction), bump * amplitude * np.cos(direction))
    return out.astype(np.float32), (bump > 0.03).astype(np.float32)


def _mesh_broken(scene: _Scene, rng: np.random.Generator, scale: float) -> tuple[Array, Array]:
    """Wires cut away over a ragged patch, with dark torn ends."""
    size = scene.image.shape[0]
    period = scene.info["period"]
    center = _random_point(rng, scene.support, 2)
    radius = _defect_size(rng, 0.35, 1.3) * period * scale
    gap = _blob_alpha(size, rng, center, radius, softness=0.8, roughness=0.35)
    # Torn ends are darker (shadowed, bent down) than the open background between wires.
    ends = cv2.dilate((gap > 0.5).astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    ends = np.clip(ends.astype(np.float32) - gap, 0, 1)
    out = _blend(scene.image, scene.background * rng.uniform(0.8, 1.0), gap)
    out = _blend(out, scene.image * 0.55, ends)
    return out, np.maximum(gap, ends)


def _mesh_contamination(scene: _Scene, rng: np.random.Generator, scale: float) -> tuple[Array, Array]:
    return _contamination(scene, rng, scale, 3.0, 16.0)


def _scratch_line(scene: _Scene, rng: np.random.Generator, scale: float, small: float, large: float) -> tuple[Array, Array]:
    """A thin bright or dark thread/scratch lying across the surface."""
    size = scene.image.shape[0]
    start = _random_point(rng, scene.support, 2)
    length = _defect_size(rng, small, large) * size * scale
    pts = _curve_points(rng, start, length, bend=0.15, jitter=0.2, n=14)
    alpha = _stroke_alpha(size, pts, thickness=int(rng.integers(1, 3))) * rng.uniform(0.6, 1.0) * scene.support
    color = (0.92, 0.9, 0.85) if rng.random() < 0.5 else (0.03, 0.03, 0.03)
    return _blend(scene.image, color, alpha), alpha


def _mesh_scratch(scene: _Scene, rng: np.random.Generator, scale: float) -> tuple[Array, Array]:
    return _scratch_line(scene, rng, scale, 0.15, 0.6)


# ------------------------------------------------------------------------------------------- fabric


def _render_fabric(rng: np.random.Generator, size: int) -> _Scene:
    """Woven carpet-like texture: anisotropic fibre noise, a weave pattern and a per-image tint."""
    s = size / 128.0
    yy, xx = _coords(size)
    rot = np.deg2rad(rng.uniform(-3, 3))
    u = np.cos(rot) * xx + np.sin(rot) * yy
    v = -np.sin(rot) * xx + np.cos(rot) * yy
    period = rng.uniform(4.5, 5.5) * s
    coarse = _smooth_noise(rng, size, 7 * s)
    wobble = _smooth_noise(rng, size, 3 * s)
    # Weave: alternating warp and weft tufts; the wobble keeps it from looking machine-perfect.
    weave = np.sin(2 * np.pi * u / period + 0.9 * wobble) * np.sin(2 * np.pi * v / period + 0.9 * coarse)
    fibres = _smooth_noise(rng, size, 2.2 * s, 0.7 * s)  # vertical fibres: blurred more along y
    speckle = _smooth_noise(rng, size, 0.8 * s)
    tex = 0.6 * weave + 0.4 * fibres + 0.3 * speckle + 0.25 * coarse
    # One fabric, slightly different dye lots: small brightness and tint changes only.
    base = np.array([0.50, 0.42, 0.33], np.float32) * rng.uniform(0.94, 1.06) + rng.uniform(-0.015, 0.015, 3).astype(np.float32)
    lum = 1.0 + rng.uniform(0.17, 0.22) * tex
    image = (lum[..., None] * base).astype(np.float32)
    # The backing seen through holes and cuts: dark with a little texture of its own.
    backing = (0.06 + 0.02 * speckle)[..., None] * np.array([1.0, 0.95, 0.9], np.float32)
    return _Scene(image, np.ones((size, size), np.float32), backing.astype(np.float32))


def _fabric_stain(scene: _Scene, rng: np.random.Generator, scale: float) -> tuple[Array, Array]:
    """A soft-edged stain, darker at its rim (liquid dries towards the edge)."""
    size = scene.image.shape[0]
    s = size / 128.0
    center = _random_point(rng, scene.support, 3)
    radius = _defect_size(rng, 3.5, 18.0) * s * scale
    alpha = _blob_alpha(size, rng, center, radius, softness=rng.uniform(1.5, 4.0) * s, roughness=0.3)
    rim = np.clip(1.0 - np.abs(alpha - 0.5) * 2.5, 0, 1)
    alpha = np.clip(alpha * rng.uniform(0.35, 0.8) + 0.25 * rim * (alpha > 0.05), 0, 1)
    palette = np.array([[0.35, 0.12, 0.12], [0.18, 0.15, 0.10], [0.78, 0.74, 0.62], [0.20, 0.24, 0.35]], np.float32)
    color = palette[rng.integers(len(palette))]
    # Stains dye the fibres rather than covering them: keep the texture by tinting multiplicatively.
    dyed = scene.image * (color / np.array([0.5, 0.42, 0.33], np.float32)) * 0.9
    return _blend(scene.image, np.clip(dyed, 0, 1), alpha), alpha


def _fabric_cut(scene: _Scene, rng: np.random.Generator, scale: float) -> tuple[Array, Array]:
    """A slit: a dark jagged line where the backing shows, with lighter frayed fibres alongside."""
    size = scene.image.shape[0]
    start = _random_point(rng, scene.support, 4)
    length = _defect_size(rng, 0.12, 0.5) * size * scale
    pts = _curve_points(rng, start, length, bend=0.08, jitter=0.5, n=10)
    core = _stroke_alpha(size, pts, thickness=int(rng.integers(1, 3)))
    fray = _stroke_alpha(size, pts, thickness=4, blur=0.8)
    fray = np.clip(fray - core, 0, 1) * rng.uniform(0.2, 0.45)
    out = _blend(scene.image, np.clip(scene.image * 1.35, 0, 1), fray)
    out = _blend(out, scene.background, core)
    return out, np.maximum(core, fray)


def _fabric_hole(scene: _Scene, rng: np.random.Generator, scale: float) -> tuple[Array, Array]:
    """A ragged hole showing the dark backing, ringed by pulled, lighter fibres."""
    size = scene.image.shape[0]
    s = size / 128.0
    center = _random_point(rng, scene.support, 4)
    radius = _defect_size(rng, 2.5, 12.0) * s * scale
    hole = _blob_alpha(size, rng, center, radius, softness=1.0, roughness=0.4)
    halo = _blob_alpha(size, rng, center, radius + 2.0 * s, softness=1.5 * s, roughness=0.2)
    halo = np.clip(halo - hole, 0, 1) * rng.uniform(0.25, 0.5)
    out = _blend(scene.image, np.clip(scene.image * 1.3, 0, 1), halo)
    out = _blend(out, scene.background, hole)
    return out, np.maximum(hole, halo)


# ----------------------------------------------------------------------------------------- registry

_Renderer = Callable[[np.random.Generator, int], _Scene]
_Painter = Callable[[_Scene, np.random.Generator, float], tuple[Array, Array]]

_RENDERERS: dict[str, _Renderer] = {"bottle": _render_bottle, "mesh": _render_mesh, "fabric": _render_fabric}
_NOISE_SIGMA: dict[str, float] = {"bottle": 0.012, "mesh": 0.014, "fabric": 0.01}
_PAINTERS: dict[str, dict[str, _Painter]] = {
    "bottle": {"broken": _bottle_broken, "contamination": _bottle_contamination, "scratch": _bottle_scratch},
    "mesh": {"bent": _mesh_bent, "broken": _mesh_broken, "contamination": _mesh_contamination, "scratch": _mesh_scratch},
    "fabric": {"cut": _fabric_cut, "hole": _fabric_hole, "stain": _fabric_stain},
}


def _restrict_to_mask(base: Array, painted: Array, region: Array, fill_px: int = 3) -> tuple[Array, Array]:
    """Keep the defect only where it visibly changed the image, and return that as the mask.

    Painting soft edges and re-rendered coordinates touches pixels by tiny amounts far from the defect;
    masking the painted image to the visibly changed pixels makes "mask == changed pixels" exact.
    A closing of ``fill_px`` fills gaps inside one defect (e.g. the open squares between bent wires,
    which an annotator would include in the defect area).
    """
    change = np.abs(painted - base).max(axis=2)
    inside = region > 0.02
    changed = ((change > _CHANGE_THRESHOLD) & inside).astype(np.uint8)
    k = max(3, fill_px | 1)  # odd kernel
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    mask = cv2.morphologyEx(changed, cv2.MORPH_CLOSE, kernel).astype(bool) & inside
    return np.where(mask[..., None], painted, base), mask


def _fill_px(scene: _Scene, kind: str) -> int:
    """Closing size for the mask: a wire mesh defect covers whole cells, others only painted pixels."""
    period = scene.info.get("period")
    if period is not None and kind in ("bent", "broken"):
        return int(round(period * 0.7))
    return 3


def _check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise ConfigError(f"unknown synthetic category {category!r}; available: {', '.join(CATEGORIES)}")


def render_sample(category: str, kind: str, index: int, *, seed: int = 0, size: int = 128) -> Sample:
    """Render one image exactly as :func:`generate_category` writes it.

    Args:
        category: one of :data:`CATEGORIES`.
        kind: ``"train"`` or ``"good"`` (normal train / test images) or a defect type of the category.
        index: the image's number within its folder.
        seed: dataset seed.
        size: image side in pixels (at least ``MIN_SIZE``).

    Returns:
        The image, its mask, and the image without its defect.

    Raises:
        ValueError: for an unknown category or kind, or a too small size.
    """
    _check_category(category)
    if kind not in ("train", "good") and kind not in DEFECT_TYPES[category]:
        raise ConfigError(f"unknown kind {kind!r} for {category}; use train, good or one of {DEFECT_TYPES[category]}")
    if size < MIN_SIZE:
        raise ConfigError(f"size must be at least {MIN_SIZE}, got {size}")
    # Independent streams: the defect's randomness must not shift the normal look or the noise,
    # so that the clean version of a defective image is reproducible on its own.
    scene_ss, defect_ss, noise_ss = _rng_for(seed, category, kind, index).spawn(3)
    scene = _RENDERERS[category](np.random.default_rng(scene_ss), size)
    noise_rng = np.random.default_rng(noise_ss)
    noisy_base = _add_noise(scene.image, noise_rng, _NOISE_SIGMA[category])
    clean = _to_uint8(noisy_base)
    if kind in ("train", "good"):
        return Sample(clean, np.zeros((size, size), np.uint8), clean)

    defect_rng = np.random.default_rng(defect_ss)
    painter = _PAINTERS[category][kind]
    scale = 1.0
    for _attempt in range(12):
        painted, region = painter(scene, defect_rng, scale)
        painted, mask = _restrict_to_mask(scene.image, painted.astype(np.float32), region, _fill_px(scene, kind))
        if mask.sum() >= MIN_DEFECT_PIXELS:
            break
        scale *= 1.3  # too small or too faint to be a fair test: redraw it bigger
    else:  # pragma: no cover - only reachable for degenerate sizes
        raise RuntimeError(f"could not place a {kind} defect on {category} #{index}")
    # The same noise on top of the defect, so pixels outside the mask are identical to ``clean``.
    image = _to_uint8(painted + (noisy_base - scene.image))
    return Sample(image, mask.astype(np.uint8) * 255, clean)


# ------------------------------------------------------------------------------------------- on disk


def _plan(category: str, n_train: int, n_test_good: int, n_test_per_defect: int) -> list[tuple[str, str, int]]:
    """Every image to write: ``(folder relative to the category, kind, count)``."""
    plan = [("train/good", "train", n_train), ("test/good", "good", n_test_good)]
    plan += [(f"test/{d}", d, n_test_per_defect) for d in DEFECT_TYPES[category]]
    return plan


def expected_counts(category: str, **counts: int) -> dict[str, int]:
    """Number of images per split (``train``, ``test``) that :func:`generate_category` writes.

    Args:
        category: one of :data:`CATEGORIES`.
        **counts: overrides of :data:`DEFAULT_COUNTS`.
    """
    _check_category(category)
    c = {**DEFAULT_COUNTS, **counts}
    n_test = c["n_test_good"] + c["n_test_per_defect"] * len(DEFECT_TYPES[category])
    return {"train": c["n_train"], "test": n_test}


def _params(category: str, seed: int, size: int, n_train: int, n_test_good: int, n_test_per_defect: int) -> dict:
    return {
        "version": SYNTHETIC_VERSION,
        "category": category,
        "seed": seed,
        "size": size,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_per_defect": n_test_per_defect,
        "defect_types": list(DEFECT_TYPES[category]),
    }


def _count_pngs(folder: Path) -> int:
    try:
        return sum(1 for e in os.scandir(folder) if e.name.endswith(".png") and e.is_file())
    except OSError:
        return -1


def _is_complete(target: Path, params: dict) -> bool:
    """True when ``target`` holds a finished dataset with exactly these parameters."""
    try:
        recorded = json.loads((target / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if recorded != params:
        return False
    # A cheap guard against files deleted by hand after the marker was written.
    for folder, kind, count in _plan(params["category"], params["n_train"], params["n_test_good"], params["n_test_per_defect"]):
        if _count_pngs(target / folder) != count:
            return False
        if kind not in ("train", "good") and _count_pngs(target / "ground_truth" / kind) != count:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists but belongs to someone else
        return True
    return True


def _remove_leftovers(root: Path, category: str) -> None:
    """Delete temporary folders of this category left behind by interrupted runs (dead processes)."""
    for prefix in (f".{category}.tmp-", f".{category}.old-"):
        for path in root.glob(prefix + "*"):
            suffix = path.name[len(prefix) :]
            pid = int(suffix) if suffix.isdigit() else None
            # A live process may still be writing its own temporary folder: leave that alone.
            if pid is None or pid == os.getpid() or not _pid_alive(pid):
                shutil.rmtree(path, ignore_errors=True)


def _write_png(path: Path, array: Array) -> None:
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)  # cv2 writes BGR
    if not cv2.imwrite(str(path), array, _PNG_PARAMS):
        raise OSError(f"could not write {path}")


def _write_category(folder: Path, category: str, seed: int, size: int, plan: list[tuple[str, str, int]]) -> None:
    for rel, kind, count in plan:
        out_dir = folder / rel
        out_dir.mkdir(parents=True, exist_ok=True)
        mask_dir = folder / "ground_truth" / kind
        if kind not in ("train", "good"):
            mask_dir.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            sample = render_sample(category, kind, i, seed=seed, size=size)
            _write_png(out_dir / f"{i:03d}.png", sample.image)
            if kind not in ("train", "good"):
                _write_png(mask_dir / f"{i:03d}_mask.png", sample.mask)


def generate_category(
    root: Path,
    category: str,
    *,
    seed: int = 0,
    size: int = 128,
    n_train: int = DEFAULT_COUNTS["n_train"],
    n_test_good: int = DEFAULT_COUNTS["n_test_good"],
    n_test_per_defect: int = DEFAULT_COUNTS["n_test_per_defect"],
) -> Path:
    """Write ``root/category`` in the MVTec AD layout and return it.

    The folder is built as ``root/.CATEGORY.tmp-PID`` and renamed into place at the end, so an
    interrupted run never leaves a half-written dataset. A finished folder with the same version and
    parameters is returned untouched; one that is incomplete or was made with other parameters is
    replaced.

    Args:
        root: dataset root (created if missing).
        category: one of :data:`CATEGORIES`.
        seed: dataset seed; the same seed gives byte-identical files.
        size: image side in pixels.
        n_train: normal training images.
        n_test_good: normal test images.
        n_test_per_defect: test images (and masks) per defect type.

    Returns:
        ``root / category``.

    Raises:
        ValueError: for an unknown category, a size below ``MIN_SIZE`` or a negative count.
    """
    _check_category(category)
    if size < MIN_SIZE:
        raise ConfigError(f"size must be at least {MIN_SIZE}, got {size}")
    if min(n_train, n_test_good, n_test_per_defect) < 0:
        raise ConfigError("image counts must not be negative")
    if seed < 0:
        raise ConfigError(f"seed must not be negative, got {seed}")
    root = Path(root)
    target = root / category
    params = _params(category, int(seed), int(size), int(n_train), int(n_test_good), int(n_test_per_defect))
    if _is_complete(target, params):
        return target

    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root, category)
    tmp = root / f".{category}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_category(tmp, category, params["seed"], params["size"], _plan(category, n_train, n_test_good, n_test_per_defect))
        # The marker goes in last: its presence means every image before it was written.
        (tmp / MARKER_NAME).write_text(json.dumps(params, sort_keys=True), encoding="utf-8")
        _swap_into_place(tmp, target, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _swap_into_place(tmp: Path, target: Path, params: dict) -> None:
    """Rename the finished ``tmp`` to ``target``, moving an outdated ``target`` aside first."""
    if _is_complete(target, params):  # another process finished the same data meanwhile
        return
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:
        # Lost a race against another process renaming the same data into place: fine if it is ours.
        if not _is_complete(target, params):
            raise


def generate(root: Path, categories: Iterable[str] | None = None, *, seed: int = 0, size: int = 128, **counts: int) -> Path:
    """Generate all (or the given) categories below ``root`` and return ``root``.

    Args:
        root: dataset root.
        categories: category names; default :data:`CATEGORIES`.
        seed: dataset seed.
        size: image side in pixels.
        **counts: ``n_train``, ``n_test_good`` and/or ``n_test_per_defect`` (see :func:`generate_category`).

    Raises:
        ValueError: for an unknown category or count name (checked before anything is written).
    """
    names = list(CATEGORIES if categories is None else categories)
    for name in names:
        _check_category(name)
    unknown = set(counts) - set(DEFAULT_COUNTS)
    if unknown:
        raise ConfigError(f"unknown count argument(s) {sorted(unknown)}; allowed: {sorted(DEFAULT_COUNTS)}")
    for name in names:
        generate_category(Path(root), name, seed=seed, size=size, **counts)
    return Path(root)
