"""Thumbnails: shape, the on-disk cache (hits, invalidation), placeholders for bad files, the file check."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import core.services.thumbnails as thumbs
from core.services.thumbnails import (
    cache_key,
    check_images,
    contact_sheet,
    placeholder,
    thumbnail,
    thumbnail_or_error,
    thumbnail_status,
    thumbnails,
)


@pytest.fixture(autouse=True)
def _own_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets an empty thumbnail cache."""
    ws = tmp_path / "ws"
    monkeypatch.setenv("ANOMALYLAB_HOME", str(ws))
    return ws


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _gradient(h: int = 40, w: int = 40, channels: int = 3) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    base = ((x * 255) // max(1, w - 1)).astype(np.uint8)
    if channels == 1:
        return base
    return np.stack([base, ((y * 255) // max(1, h - 1)).astype(np.uint8), np.full_like(base, 90)], axis=2)


@pytest.fixture()
def decode_log(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every path that core.services.thumbnails decodes (source images and cached thumbnails)."""
    calls: list[Path] = []
    real = thumbs.read_image

    def counting(source, name=None):  # noqa: ANN001 - mirrors core.data.images.read_image
        calls.append(Path(source))
        return real(source, name)

    monkeypatch.setattr(thumbs, "read_image", counting)
    return calls


def _decodes_of(log: list[Path], path: Path) -> int:
    return sum(1 for p in log if p == path)


def test_shape_and_dtype_for_rgb_gray_rgba_and_non_square(tmp_path: Path) -> None:
    rgb = _save(tmp_path / "rgb.png", _gradient())
    gray = _save(tmp_path / "gray.png", _gradient(channels=1))
    rgba = _save(tmp_path / "rgba.png", np.dstack([_gradient(), np.full((40, 40), 200, np.uint8)]))
    wide = _save(tmp_path / "wide.png", _gradient(20, 80))
    for path in (rgb, gray, rgba, wide):
        t = thumbnail(path, 32)
        assert t.shape == (32, 32, 3) and t.dtype == np.uint8, path.name
    # Non-square images are letterboxed: aspect kept, padding above and below (JPEG cache: +-8).
    t = thumbnail(wide, 32).astype(int)
    assert np.abs(t[:4] - thumbs.PAD_VALUE).max() <= 8 and np.abs(t[-4:] - thumbs.PAD_VALUE).max() <= 8
    assert np.abs(t[16] - thumbs.PAD_VALUE).max() > 100
    # Content is kept: left of the gradient is dark, right is bright.
    t = thumbnail(rgb, 32)
    assert t[16, 2, 0] < 60 and t[16, -3, 0] > 190


def test_second_call_reads_the_cache_without_decoding_the_source(tmp_path: Path, decode_log: list[Path]) -> None:
    path = _save(tmp_path / "a.png", _gradient())
    first, err = thumbnail_or_error(path, 48)
    assert err is None and _decodes_of(decode_log, path) == 1
    second, err = thumbnail_or_error(path, 48)
    assert err is None and _decodes_of(decode_log, path) == 1, "cache hit must not decode the source image"
    # The cache holds a small JPEG: equal up to compression noise.
    assert np.abs(first.astype(int) - second.astype(int)).mean() < 3
    cached = list((Path(os.environ["ANOMALYLAB_HOME"]) / "cache" / "thumbs").rglob("*.jpg"))
    assert len(cached) == 1 and cached[0].stem == cache_key(path, 48)
    assert not list(cached[0].parent.glob("*.tmp")), "atomic writes leave no temp file"
    # Another size is another entry.
    thumbnail(path, 24)
    assert _decodes_of(decode_log, path) == 2


def test_cache_is_invalidated_when_the_file_changes(tmp_path: Path, decode_log: list[Path]) -> None:
    path = _save(tmp_path / "a.png", np.zeros((40, 40, 3), np.uint8))
    assert thumbnail(path, 32).max() < 10
    old_key = cache_key(path, 32)
    st = path.stat()
    _save(path, np.full((40, 40, 3), 250, np.uint8))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # a later mtime, whatever the clock
    assert cache_key(path, 32) != old_key
    assert thumbnail(path, 32).min() > 240, "an edited file gets a new thumbnail"
    assert _decodes_of(decode_log, path) == 2
    # Only the mtime changes (same bytes): still a new key, since the file may have been replaced.
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 9_000_000_000))
    thumbnail(path, 32)
    assert _decodes_of(decode_log, path) == 3


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n not really a png", b"hello"])
def test_corrupt_file_gives_the_placeholder_and_a_reason(tmp_path: Path, decode_log: list[Path], content: bytes) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    img, err = thumbnail_or_error(path, 40)
    assert err is not None and "bad.png" in err
    assert np.array_equal(img, placeholder(40)) and img.shape == (40, 40, 3) and img.dtype == np.uint8
    assert np.array_equal(thumbnail(path, 40), placeholder(40)), "thumbnail() never raises for a bad file"
    # The failure is cached too: browsing does not retry the decode on every rerun.
    assert _decodes_of(decode_log, path) == 1
    assert thumbnail_or_error(path, 40)[1] == err
    # Fixing the file clears the error.
    _save(path, _gradient())
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 5_000_000_000))
    assert thumbnail_or_error(path, 40)[1] is None


def test_truncated_png_and_missing_file(tmp_path: Path) -> None:
    good = _save(tmp_path / "full.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    img, err = thumbnail_or_error(cut, 32)
    assert err is not None and np.array_equal(img, placeholder(32))
    img, err = thumbnail_or_error(tmp_path / "missing.png", 32)
    assert err is not None and "missing.png" in err and np.array_equal(img, placeholder(32))


def test_placeholder_is_gray_with_a_red_cross() -> None:
    p = placeholder(64)
    assert p.shape == (64, 64, 3) and p.dtype == np.uint8
    assert tuple(p[2, 2]) == (200, 200, 200)
    r, g, b = (int(v) for v in p[32, 32])
    assert r > 150 and g < 100 and b < 100
    p[0, 0] = 0  # callers get a copy they may draw on
    assert tuple(placeholder(64)[0, 0]) == (200, 200, 200)


def test_batch_keeps_order_and_reports_progress(tmp_path: Path) -> None:
    paths = [_save(tmp_path / f"{i}.png", np.full((20, 20, 3), i * 20, np.uint8)) for i in range(10)]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    seen: list[tuple[int, int]] = []
    out = thumbnails([*paths[:5], bad, *paths[5:]], 16, workers=3, progress=lambda d, t: seen.append((d, t)))
    assert len(out) == 11 and out[5][1] is not None
    means = [int(t.mean()) for t, _ in out[:5] + out[6:]]
    assert means == sorted(means), "results come back in input order"
    assert seen[-1] == (11, 11)
    assert thumbnails(paths, 16, workers=1) and len(thumbnails([], 16)) == 0


def test_check_images_lists_failures_and_a_second_check_decodes_nothing(tmp_path: Path, decode_log: list[Path]) -> None:
    paths = [_save(tmp_path / f"{i}.png", _gradient(24, 24)) for i in range(6)]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n")
    failures = check_images([*paths, bad], workers=2)
    assert [Path(f) for f, _ in failures] == [bad] and "broken.png" in failures[0][1]
    n = len(decode_log)
    assert check_images([*paths, bad]) == failures
    assert len(decode_log) == n, "a warm check only looks up cached results"
    assert thumbnail_status(paths[0]) is None


def test_bad_size_is_a_value_error(tmp_path: Path) -> None:
    path = _save(tmp_path / "a.png", _gradient())
    with pytest.raises(ValueError, match="thumbnail size"):
        thumbnail(path, 0)
    with pytest.raises(ValueError, match="thumbnail size"):
        thumbnails([path], 5000)


def test_contact_sheet_tiles_and_validates() -> None:
    tiles = [np.full((16, 16, 3), v, np.uint8) for v in (0, 100, 200)]
    sheet = contact_sheet(tiles, columns=2, gap=2)
    assert sheet.shape == (2 + 2 * 18, 2 + 2 * 18, 3) and sheet.dtype == np.uint8
    assert tuple(sheet[2, 2]) == (0, 0, 0) and tuple(sheet[2, 20]) == (100, 100, 100)
    assert tuple(sheet[-3, -3]) == (255, 255, 255), "the empty cell stays white"
    labelled = contact_sheet(tiles, columns=3, labels=["good · 000.png", "b", "c"])
    assert labelled.shape[0] > sheet.shape[0] // 2
    with pytest.raises(ValueError):
        contact_sheet([], 2)
    with pytest.raises(ValueError):
        contact_sheet(tiles, 0)
    with pytest.raises(ValueError):
        contact_sheet(tiles, 2, labels=["a"])
    with pytest.raises(ValueError):
        contact_sheet([tiles[0], np.zeros((8, 8, 3), np.uint8)], 2)
