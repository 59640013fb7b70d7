"""Tests of dataset indexing, image decoding, split loading/caching, augmentation and built-in data.

Every fixture tree is built in ``tmp_path`` from tiny numpy/PIL images (16-40 px), so the file runs
in a few seconds and never touches ``../shared``.
"""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import core.data.images as images_mod
from core.data.builtin import DIGITS_TEST_PER_ANOMALY, categories, open_dataset
from core.data.images import ImageError, encode_png, read_image, read_mask
from core.data.index import (
    FOLDER_TEST_FRACTION,
    DatasetError,
    DatasetIndex,
    Sample,
    index_folder,
    index_mvtec,
    index_path,
    list_categories,
    mvtec_categories,
)
from core.data.loading import (
    augment_batch,
    clear_cache,
    detect_channels,
    load_samples,
    load_split,
)

# --------------------------------------------------------------------------------------------------
# helpers


def _save(path: Path, arr: np.ndarray | Image.Image, fmt: str | None = None) -> Path:
    """Write ``arr`` (numpy array or PIL image) to ``path``, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    img.save(path, format=fmt)
    return path


def _solid(color: tuple[int, ...] | int, h: int = 24, w: int = 24) -> np.ndarray:
    """A uint8 image of one colour (RGB when ``color`` is a tuple, else gray)."""
    if isinstance(color, tuple):
        return np.full((h, w, len(color)), color, dtype=np.uint8)
    return np.full((h, w), color, dtype=np.uint8)


def _noise(seed: int, h: int = 24, w: int = 24, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w, channels) if channels > 1 else (h, w)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _half_mask(h: int = 20, w: int = 20) -> np.ndarray:
    """0/255 mask whose left half is set."""
    m = np.zeros((h, w), dtype=np.uint8)
    m[:, : w // 2] = 255
    return m


def _names(samples) -> list[str]:
    return [s.path.name for s in samples]


def _crc_test(name: str) -> bool:
    """Independent restatement of the documented deterministic 80/20 rule (crc32 of the file name)."""
    return (zlib.crc32(name.encode("utf-8")) % 10_000) / 10_000.0 < FOLDER_TEST_FRACTION


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    """An MVTec AD root with categories ``bottle`` and ``carpet`` plus noise that must be ignored."""
    root = tmp_path / "mvtec"
    b = root / "bottle"
    for i in range(3):
        _save(b / "train" / "good" / f"{i:03d}.png", _noise(i))
    (b / "train" / "good" / "readme.txt").write_text("not an image")
    _save(b / "train" / "good" / ".hidden.png", _noise(99))  # hidden files are ignored silently
    (b / "train" / "good" / "subdir").mkdir()  # sub-folders are ignored silently
    for i in range(2):
        _save(b / "test" / "good" / f"{i:03d}.png", _noise(10 + i))
    _save(b / "test" / "crack" / "000.png", _noise(20))
    _save(b / "test" / "crack" / "001.png", _noise(21))  # no mask for this one
    (b / "test" / "crack" / "Thumbs.db").write_bytes(b"\x00\x01")
    _save(b / "test" / "scratch" / "000.png", _noise(30))
    _save(b / "test" / ".ipynb_checkpoints" / "000.png", _noise(31))  # hidden folder: not a defect type
    _save(b / "ground_truth" / "crack" / "000_mask.png", _half_mask())
    _save(b / "ground_truth" / "crack" / "999_mask.png", _half_mask())  # mask of no image: harmless
    _save(b / "ground_truth" / "scratch" / "000_mask.png", _half_mask())

    c = root / "carpet"
    _save(c / "train" / "good" / "a.png", _noise(40))
    _save(c / "test" / "good" / "b.png", _noise(41))

    # A half-written category (as left by an interrupted extraction): hidden, so never a category.
    _save(root / ".bottle.tmp-123" / "train" / "good" / "000.png", _noise(50))
    # A folder without train/good is not a category either; a loose file is ignored.
    (root / "docs").mkdir()
    (root / "license.txt").write_text("x")
    return root


@pytest.fixture
def plain_folder(tmp_path: Path) -> Path:
    """A plain folder: good/ (20 images), two defect folders and masks/<defect>/."""
    folder = tmp_path / "screws"
    for i in range(20):
        _save(folder / "good" / f"g{i:02d}.png", _noise(i, 16, 16))
    _save(folder / "dent" / "d0.png", _noise(100, 16, 16))
    _save(folder / "dent" / "d1.png", _noise(101, 16, 16))
    _save(folder / "scratch" / "s0.png", _noise(102, 16, 16))
    (folder / "scratch" / "notes.md").write_text("x")
    _save(folder / "masks" / "dent" / "d0_mask.png", _half_mask(16, 16))
    _save(folder / "masks" / "scratch" / "s0.png", _half_mask(16, 16))  # <stem>.png form
    return folder


# --------------------------------------------------------------------------------------------------
# index: MVTec layout


def test_mvtec_categories_ignore_hidden_and_non_category_folders(mvtec_root: Path):
    assert mvtec_categories(mvtec_root) == ["bottle", "carpet"]
    assert list_categories(mvtec_root) == ["bottle", "carpet"]
    assert list_categories(mvtec_root / "carpet") == ["carpet"]
    assert mvtec_categories(mvtec_root / "missing") == []


def test_index_mvtec_splits_defects_masks_and_skipped(mvtec_root: Path):
    cat = mvtec_root / "bottle"
    idx = index_mvtec(cat)

    assert idx.layout == "mvtec"
    assert idx.category == "bottle"
    assert idx.root == cat
    assert _names(idx.split("train")) == ["000.png", "001.png", "002.png"]
    assert all(s.defect == "good" and s.mask_path is None for s in idx.split("train"))
    assert [(s.defect, s.path.name) for s in idx.split("test")] == [
        ("crack", "000.png"),
        ("crack", "001.png"),
        ("good", "000.png"),
        ("good", "001.png"),
        ("scratch", "000.png"),
    ]
    assert idx.defect_types == ["crack", "scratch"]
    assert idx.counts() == {"train": {"good": 3}, "test": {"crack": 2, "good": 2, "scratch": 1}}
    assert len(idx.samples) == 8

    by_key = {(s.split, s.defect, s.path.name): s for s in idx.samples}
    assert by_key[("test", "crack", "000.png")].mask_path == cat / "ground_truth" / "crack" / "000_mask.png"
    assert by_key[("test", "crack", "001.png")].mask_path is None
    assert by_key[("test", "scratch", "000.png")].mask_path == cat / "ground_truth" / "scratch" / "000_mask.png"
    assert by_key[("test", "good", "000.png")].mask_path is None
    assert idx.has_masks is True
    assert [s.label for s in idx.split("test")] == [1, 1, 0, 0, 1]
    assert by_key[("test", "crack", "000.png")].relpath(cat) == "test/crack/000.png"

    skipped = {Path(f).name: reason for f, reason in idx.skipped}
    assert set(skipped) == {"readme.txt", "Thumbs.db"}
    assert all("not an image file" in reason for reason in skipped.values())
    # hidden files/folders are neither indexed nor reported
    assert not any(".hidden" in str(s.path) or ".ipynb" in str(s.path) for s in idx.samples)


def test_index_mvtec_without_ground_truth_has_no_masks(mvtec_root: Path):
    idx = index_mvtec(mvtec_root / "carpet")
    assert idx.counts() == {"train": {"good": 1}, "test": {"good": 1}}
    assert idx.defect_types == []
    assert idx.has_masks is False
    assert idx.skipped == []


def test_index_path_on_root_defaults_to_first_category(mvtec_root: Path):
    idx = index_path(mvtec_root)
    assert idx.category == "bottle"
    assert idx.root == mvtec_root / "bottle"
    assert index_path(mvtec_root, "carpet").category == "carpet"
    assert index_path(str(mvtec_root), "bottle").counts()["train"] == {"good": 3}


@pytest.mark.parametrize("bad", ["nope", ".bottle.tmp-123", "docs"])
def test_index_path_unknown_category_names_available(mvtec_root: Path, bad: str):
    with pytest.raises(DatasetError) as exc:
        index_path(mvtec_root, bad)
    msg = str(exc.value)
    assert repr(bad) in msg
    assert "available: bottle, carpet" in msg


def test_index_path_on_category_folder(mvtec_root: Path):
    cat = mvtec_root / "bottle"
    idx = index_path(cat)
    assert idx.layout == "mvtec"
    assert idx.category == "bottle"
    assert idx.counts() == index_mvtec(cat).counts()
    assert index_path(cat, "bottle").category == "bottle"
    with pytest.raises(DatasetError, match="single category 'bottle'"):
        index_path(cat, "carpet")


# --------------------------------------------------------------------------------------------------
# index: plain folder layout


# Pinned: changing the split rule would silently change the test set of every existing plain folder.
PLAIN_TEST_GOODS = ["g05.png", "g09.png", "g10.png", "g15.png", "g16.png", "g19.png"]


def test_index_folder_layout(plain_folder: Path):
    idx = index_path(plain_folder)
    assert idx.layout == "folder"
    assert idx.category == "screws"
    assert idx.root == plain_folder
    assert idx.defect_types == ["dent", "scratch"]  # masks/ is not a defect type

    test_goods = [s.path.name for s in idx.split("test") if s.defect == "good"]
    train_goods = _names(idx.split("train"))
    assert test_goods == PLAIN_TEST_GOODS
    assert test_goods == [f"g{i:02d}.png" for i in range(20) if _crc_test(f"g{i:02d}.png")]
    assert sorted(train_goods + test_goods) == [f"g{i:02d}.png" for i in range(20)]
    assert len(train_goods) == 14
    assert all(s.defect == "good" for s in idx.split("train"))

    assert idx.counts() == {"train": {"good": 14}, "test": {"good": 6, "dent": 2, "scratch": 1}}
    by_name = {s.path.name: s for s in idx.samples}
    assert by_name["d0.png"].mask_path == plain_folder / "masks" / "dent" / "d0_mask.png"
    assert by_name["d1.png"].mask_path is None
    assert by_name["s0.png"].mask_path == plain_folder / "masks" / "scratch" / "s0.png"
    assert all(by_name[n].mask_path is None for n in PLAIN_TEST_GOODS)
    assert [Path(f).name for f, _ in idx.skipped] == ["notes.md"]


def test_index_folder_split_is_deterministic(plain_folder: Path, tmp_path: Path):
    first = index_folder(plain_folder)
    second = index_folder(plain_folder)
    assert first.samples == second.samples
    # depends on file names only, not on where the folder lives
    other = tmp_path / "elsewhere" / "copy"
    for s in first.samples:
        dst = other / s.path.relative_to(plain_folder)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(s.path.read_bytes())
    moved = index_folder(other)
    assert [(s.path.name, s.split, s.defect) for s in moved.samples] == [
        (s.path.name, s.split, s.defect) for s in first.samples
    ]


def test_index_folder_tiny_keeps_one_train_image(tmp_path: Path):
    # "x.png" and "z.png" both hash into the test fraction; the first must be moved to train.
    assert _crc_test("x.png") and _crc_test("z.png")
    one = tmp_path / "one"
    _save(one / "good" / "x.png", _noise(1, 16, 16))
    idx = index_path(one)
    assert [(s.path.name, s.split) for s in idx.samples] == [("x.png", "train")]

    two = tmp_path / "two"
    _save(two / "good" / "x.png", _noise(1, 16, 16))
    _save(two / "good" / "z.png", _noise(2, 16, 16))
    idx = index_path(two)
    assert [(s.path.name, s.split) for s in idx.samples] == [("x.png", "train"), ("z.png", "test")]


@pytest.mark.parametrize("good_name", ["normal", "OK"])
def test_index_folder_accepts_other_good_names(tmp_path: Path, good_name: str):
    folder = tmp_path / "f"
    _save(folder / good_name / "a.png", _noise(1, 16, 16))
    _save(folder / "bad" / "b.png", _noise(2, 16, 16))
    idx = index_path(folder)
    assert idx.counts() == {"train": {"good": 1}, "test": {"bad": 1}}


# --------------------------------------------------------------------------------------------------
# index: errors


def test_missing_path_raises(tmp_path: Path):
    with pytest.raises(DatasetError, match="does not exist"):
        index_path(tmp_path / "nope")


def test_file_instead_of_folder_raises(tmp_path: Path):
    f = tmp_path / "a.png"
    _save(f, _noise(1, 16, 16))
    with pytest.raises(DatasetError) as exc:
        index_path(f)
    msg = str(exc.value)
    assert "is not a folder" in msg
    assert "train/good" in msg and "FOLDER/good" in msg


def test_empty_folder_raises_naming_both_layouts(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError) as exc:
        index_path(empty)
    msg = str(exc.value)
    assert "no folder of good images" in msg
    assert "good, normal, ok" in msg
    assert "ROOT/CATEGORY/train/good" in msg and "FOLDER/good" in msg


def test_folder_without_good_folder_raises(tmp_path: Path):
    folder = tmp_path / "defects_only"
    _save(folder / "crack" / "a.png", _noise(1, 16, 16))
    with pytest.raises(DatasetError, match="no folder of good images") as exc:
        index_path(folder)
    assert "train/good" in str(exc.value)


def test_good_folder_without_images_raises(tmp_path: Path):
    folder = tmp_path / "f"
    (folder / "good").mkdir(parents=True)
    (folder / "good" / "list.csv").write_text("a,b")
    _save(folder / "crack" / "a.png", _noise(1, 16, 16))
    with pytest.raises(DatasetError) as exc:
        index_path(folder)
    msg = str(exc.value)
    assert "contains no image" in msg
    assert "FOLDER/good/*.png" in msg


def test_mvtec_with_empty_train_good_raises(tmp_path: Path):
    root = tmp_path / "root"
    (root / "cat" / "train" / "good").mkdir(parents=True)
    (root / "cat" / "train" / "good" / "readme.txt").write_text("x")
    _save(root / "cat" / "test" / "good" / "a.png", _noise(1, 16, 16))
    for call in (lambda: index_path(root), lambda: index_path(root / "cat"), lambda: index_mvtec(root / "cat")):
        with pytest.raises(DatasetError) as exc:
            call()
        msg = str(exc.value)
        assert "contains no image" in msg
        assert "train/good" in msg


def test_index_mvtec_on_non_mvtec_folder_raises(plain_folder: Path):
    with pytest.raises(DatasetError, match="has no train/good folder") as exc:
        index_mvtec(plain_folder)
    assert "ROOT/CATEGORY/ground_truth" in str(exc.value)


# --------------------------------------------------------------------------------------------------
# read_image


def test_read_gray_stays_2d(tmp_path: Path):
    arr = _noise(1, 20, 30, channels=1)
    out = read_image(_save(tmp_path / "g.png", arr))
    assert out.shape == (20, 30)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


def test_read_rgb_from_path_str_and_bytes(tmp_path: Path):
    arr = _noise(2, 18, 22)
    p = _save(tmp_path / "c.png", arr)
    np.testing.assert_array_equal(read_image(p), arr)
    np.testing.assert_array_equal(read_image(str(p)), arr)
    np.testing.assert_array_equal(read_image(p.read_bytes()), arr)
    np.testing.assert_array_equal(read_image(encode_png(arr)), arr)
    gray = _noise(3, 16, 16, channels=1)
    np.testing.assert_array_equal(read_image(encode_png(gray[:, :, None])), gray)


def test_read_rgba_composited_on_black(tmp_path: Path):
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[:8] = (255, 0, 0, 255)  # opaque red
    rgba[8:, :8] = (0, 255, 0, 0)  # fully transparent green
    rgba[8:, 8:] = (200, 100, 50, 128)  # half transparent
    out = read_image(_save(tmp_path / "a.png", rgba))
    assert out.shape == (16, 16, 3)
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[15, 0]) == (0, 0, 0)
    np.testing.assert_allclose(out[15, 15].astype(float), np.array([200, 100, 50]) * 128 / 255, atol=1.01)


def test_read_palette_and_palette_with_transparency(tmp_path: Path):
    idx = np.zeros((16, 16), dtype=np.uint8)
    idx[:, 8:] = 1
    pal = Image.fromarray(idx, mode="L").convert("P")
    pal.putpalette([10, 20, 30, 200, 150, 100] + [0] * (256 * 3 - 6))
    p = _save(tmp_path / "p.png", pal)
    with Image.open(p) as check:
        assert check.mode == "P" and "transparency" not in check.info
    out = read_image(p)
    assert out.shape == (16, 16, 3)
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert tuple(out[0, 15]) == (200, 150, 100)

    pal.info["transparency"] = 0  # palette entry 0 transparent -> black
    pt = tmp_path / "pt.png"
    pal.save(pt, transparency=0)
    with Image.open(pt) as check:
        assert check.mode == "P" and "transparency" in check.info
    out = read_image(pt)
    assert out.shape == (16, 16, 3)
    assert tuple(out[0, 0]) == (0, 0, 0)
    assert tuple(out[0, 15]) == (200, 150, 100)


def test_read_one_bit(tmp_path: Path):
    bits = np.zeros((16, 16), dtype=bool)
    bits[4:8, 4:8] = True
    p = _save(tmp_path / "b.png", Image.fromarray(bits))
    with Image.open(p) as check:
        assert check.mode == "1"
    out = read_image(p)
    assert out.shape == (16, 16) and out.dtype == np.uint8
    assert set(np.unique(out).tolist()) == {0, 255}
    np.testing.assert_array_equal(out == 255, bits)


def test_read_16bit_scaled(tmp_path: Path):
    arr = np.zeros((16, 16), dtype=np.uint16)
    arr[0, :] = 65535
    arr[1, :] = 32768
    arr[2, :] = 257  # 1/255 of full range
    p = _save(tmp_path / "16.png", arr)
    with Image.open(p) as check:
        assert check.mode.startswith("I;16")
    out = read_image(p)
    assert out.shape == (16, 16) and out.dtype == np.uint8
    assert (out[0] == 255).all()
    assert (out[1] == 128).all()
    assert (out[2] == 1).all()
    assert (out[3:] == 0).all()


def test_read_float_image(tmp_path: Path):
    arr = np.zeros((16, 16), dtype=np.float32)
    arr[0, :] = 1.0
    arr[1, :] = 0.5
    p = _save(tmp_path / "f.tif", Image.fromarray(arr), fmt="TIFF")
    with Image.open(p) as check:
        assert check.mode == "F"
    out = read_image(p)
    assert out.shape == (16, 16) and out.dtype == np.uint8
    assert (out[0] == 255).all() and (out[1] == 128).all() and (out[2:] == 0).all()

    arr255 = np.zeros((16, 16), dtype=np.float32)
    arr255[0, :] = 200.0
    out = read_image(_save(tmp_path / "f255.tif", Image.fromarray(arr255), fmt="TIFF"))
    assert (out[0] == 200).all() and (out[1:] == 0).all()


def test_read_zero_byte_file(tmp_path: Path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png: empty file \(0 bytes\)"):
        read_image(p)
    with pytest.raises(ImageError, match=r"upload: empty file"):
        read_image(b"")


def test_read_truncated_png(tmp_path: Path):
    data = _png_bytes(_noise(5, 40, 40))
    p = tmp_path / "trunc.png"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as exc:
        read_image(p)
    msg = str(exc.value)
    assert msg.startswith("trunc.png: ")
    assert "corrupt or truncated" in msg
    with pytest.raises(ImageError, match="corrupt or truncated"):
        read_image(data[: len(data) // 2], name="half")


def test_read_random_bytes(tmp_path: Path):
    p = tmp_path / "noise.png"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(ImageError, match=r"noise\.png: not a readable image"):
        read_image(p)


def test_read_missing_file_and_folder(tmp_path: Path):
    with pytest.raises(ImageError, match="gone.png: not a readable image"):
        read_image(tmp_path / "gone.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageError, match="dir.png"):
        read_image(tmp_path / "dir.png")


def test_read_refuses_too_many_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    p = _save(tmp_path / "big.png", _noise(1, 16, 20))  # 320 pixels
    monkeypatch.setattr(images_mod, "MAX_PIXELS", 320)
    assert read_image(p).shape == (16, 20, 3)  # exactly at the limit: fine
    monkeypatch.setattr(images_mod, "MAX_PIXELS", 319)
    with pytest.raises(ImageError) as exc:
        read_image(p)
    assert "big.png: 20x16 pixels is larger than the limit of 319 pixels" in str(exc.value)
    with pytest.raises(ImageError, match="larger than the limit"):
        read_image(p.read_bytes())


def _fds_open_on(path: Path) -> int:
    fd_dir = Path("/proc/self/fd")
    n = 0
    for fd in fd_dir.iterdir():
        try:
            n += os.readlink(fd) == str(path)
        except OSError:
            pass
    return n


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
def test_refused_images_release_their_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = _png_bytes(_noise(5, 40, 40))
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as exc:
        read_image(trunc)
    assert exc.value.__traceback__ is not None  # the failing frame is still alive here ...
    assert _fds_open_on(trunc) == 0  # ... and yet the file is closed (not locked until GC)

    big = _save(tmp_path / "big.png", _noise(1, 16, 20))
    monkeypatch.setattr(images_mod, "MAX_PIXELS", 10)
    with pytest.raises(ImageError) as exc:
        read_image(big)
    assert _fds_open_on(big) == 0


# --------------------------------------------------------------------------------------------------
# read_mask


def test_read_mask_resized_nearest_and_binary(tmp_path: Path):
    m = np.zeros((20, 20), dtype=np.uint8)
    m[5:10, 2:7] = 255
    m[0, 0] = 100  # below the 127 threshold: not foreground
    p = _save(tmp_path / "m.png", m)

    native = read_mask(p)
    assert native.dtype == bool and native.shape == (20, 20)
    np.testing.assert_array_equal(native, m > 127)

    up = read_mask(p, 40)
    assert up.dtype == bool and up.shape == (40, 40)
    np.testing.assert_array_equal(up, np.kron(m > 127, np.ones((2, 2), dtype=bool)))

    down = read_mask(p, 10)
    assert down.dtype == bool and down.shape == (10, 10)
    np.testing.assert_array_equal(down, (m > 127)[::2, ::2])

    rect = read_mask(str(p), (10, 30))
    assert rect.shape == (10, 30) and rect.dtype == bool
    assert 0 < rect.sum() < rect.size


def test_read_mask_rgb(tmp_path: Path):
    m = np.zeros((16, 16, 3), dtype=np.uint8)
    m[:8, :, 0] = 255  # red foreground
    m[8:12, :, :] = 100  # dark gray: background
    out = read_mask(_save(tmp_path / "rgb.png", m), 32)
    assert out.shape == (32, 32) and out.dtype == bool
    assert out[:16].all() and not out[16:].any()


def test_read_mask_unreadable_raises(tmp_path: Path):
    p = tmp_path / "m.png"
    p.write_bytes(b"garbage")
    with pytest.raises(ImageError, match="m.png"):
        read_mask(p, 16)


# --------------------------------------------------------------------------------------------------
# loading


RED, GREEN, BLUE, ORANGE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 100, 50)


@pytest.fixture
def load_tree(tmp_path: Path) -> Path:
    """MVTec category with good RGB images of mixed sizes, broken files and masks of every kind."""
    cat = tmp_path / "root" / "widget"
    tg = cat / "train" / "good"
    _save(tg / "a.png", _solid(RED, 24, 24))
    _save(tg / "b.png", _solid(GREEN, 40, 30))  # non-square, larger: resized
    _save(tg / "c.png", _solid(BLUE, 16, 16))
    _save(tg / "d.png", _solid(ORANGE, 20, 20))
    (tg / "e_empty.png").write_bytes(b"")
    (tg / "f_random.png").write_bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes())
    data = _png_bytes(_noise(7, 40, 40))
    (tg / "g_trunc.png").write_bytes(data[: len(data) // 2])

    _save(cat / "test" / "good" / "ok.png", _solid(RED, 24, 24))
    _save(cat / "test" / "crack" / "masked.png", _solid(GREEN, 24, 24))
    _save(cat / "test" / "crack" / "nomask.png", _solid(BLUE, 24, 24))
    _save(cat / "test" / "hole" / "badmask.png", _solid(ORANGE, 24, 24))
    (cat / "test" / "hole" / "broken.png").write_bytes(b"")
    _save(cat / "ground_truth" / "crack" / "masked_mask.png", _half_mask(32, 32))
    (cat / "ground_truth" / "hole").mkdir(parents=True)
    (cat / "ground_truth" / "hole" / "badmask_mask.png").write_bytes(b"not a png")
    return cat


def test_load_train_skips_broken_and_reports(load_tree: Path):
    idx = index_path(load_tree)
    assert len(idx.split("train")) == 7
    split = load_split(idx, "train", 16, 3)

    assert isinstance(split.images, torch.Tensor)
    assert split.images.dtype == torch.uint8
    assert tuple(split.images.shape) == (4, 3, 16, 16)
    assert len(split) == 4
    assert _names(split.samples) == ["a.png", "b.png", "c.png", "d.png"]
    assert sorted(Path(f).name for f, _ in split.skipped) == ["e_empty.png", "f_random.png", "g_trunc.png"]
    reasons = {Path(f).name: r for f, r in split.skipped}
    assert "empty file (0 bytes)" in reasons["e_empty.png"]
    assert "not a readable image" in reasons["f_random.png"]
    assert "corrupt or truncated" in reasons["g_trunc.png"]

    # solid colours survive resizing exactly, in sample order
    for i, color in enumerate([RED, GREEN, BLUE, ORANGE]):
        assert (split.images[i] == torch.tensor(color, dtype=torch.uint8).view(3, 1, 1)).all()

    assert split.masks.dtype == torch.bool and tuple(split.masks.shape) == (4, 16, 16)
    assert not split.masks.any()
    assert split.has_mask.dtype == bool and split.has_mask.tolist() == [True] * 4
    assert split.labels.tolist() == [0, 0, 0, 0]

    f = split.float_images()
    assert f.dtype == torch.float32 and f.min() >= 0 and f.max() <= 1
    assert f[0, 0, 0, 0].item() == 1.0
    assert split.images[0, 0, 0, 0].item() == 255  # float_images does not touch the cached tensor


def test_load_train_gray_conversion(load_tree: Path):
    idx = index_path(load_tree)
    split = load_split(idx, "train", 20, 1)
    assert tuple(split.images.shape) == (4, 1, 20, 20)
    # ITU-R 601 luma (what cv2 and PIL use): 0.299 R + 0.587 G + 0.114 B
    expected = [76, 150, 29, 124]
    assert [int(split.images[i, 0, 5, 5]) for i in range(4)] == expected
    assert all(bool((split.images[i] == expected[i]).all()) for i in range(4))


def test_load_gray_source_as_three_channels(tmp_path: Path):
    cat = tmp_path / "g"
    _save(cat / "train" / "good" / "a.png", _noise(3, 24, 24, channels=1))
    _save(cat / "train" / "good" / "b.png", _noise(4, 16, 16, channels=1))
    idx = index_path(cat)
    assert detect_channels(idx) == 1
    three = load_split(idx, "train", 16, 3)
    assert tuple(three.images.shape) == (2, 3, 16, 16)
    assert torch.equal(three.images[:, 0], three.images[:, 1]) and torch.equal(three.images[:, 1], three.images[:, 2])
    one = load_split(idx, "train", 16, 1)
    assert tuple(one.images.shape) == (2, 1, 16, 16)
    assert torch.equal(one.images[:, 0], three.images[:, 0])
    # b.png is already 16x16: pixels are untouched
    np.testing.assert_array_equal(one.images[1, 0].numpy(), _noise(4, 16, 16, channels=1))


def test_load_test_masks_and_has_mask(load_tree: Path):
    idx = index_path(load_tree)
    split = load_split(idx, "test", 16, 3)
    assert [(s.defect, s.path.name) for s in split.samples] == [
        ("crack", "masked.png"),
        ("crack", "nomask.png"),
        ("good", "ok.png"),
        ("hole", "badmask.png"),
    ]
    assert split.labels.tolist() == [1, 1, 0, 1]
    assert split.has_mask.tolist() == [True, False, True, False]
    assert split.masks.dtype == torch.bool and tuple(split.masks.shape) == (4, 16, 16)
    # 32x32 mask with its left half set, resized to 16
    assert split.masks[0, :, :8].all() and not split.masks[0, :, 8:].any()
    assert not split.masks[1:].any()

    skipped = {Path(f).name: r for f, r in split.skipped}
    assert set(skipped) == {"broken.png", "badmask_mask.png"}
    assert "empty file" in skipped["broken.png"]
    assert skipped["badmask_mask.png"].startswith("mask ignored: badmask_mask.png: not a readable image")


def test_load_samples_with_masks_false_ignores_masks(load_tree: Path):
    idx = index_path(load_tree)
    tests = [s for s in idx.split("test") if s.path.name == "masked.png"]
    split = load_samples(tests, 16, 3, with_masks=False)
    assert split.has_mask.tolist() == [False]
    assert not split.masks.any()


def test_load_samples_empty_and_all_broken(tmp_path: Path, load_tree: Path):
    empty = load_samples([], 16, 3)
    assert tuple(empty.images.shape) == (0, 3, 16, 16) and empty.images.dtype == torch.uint8
    assert tuple(empty.masks.shape) == (0, 16, 16) and empty.masks.dtype == torch.bool
    assert empty.has_mask.shape == (0,) and len(empty) == 0

    idx = index_path(load_tree)
    broken = [s for s in idx.split("train") if s.path.name in ("e_empty.png", "f_random.png")]
    out = load_samples(broken, 16, 1)
    assert tuple(out.images.shape) == (0, 1, 16, 16)
    assert len(out.skipped) == 2


def test_cache_identity_and_invalidation(load_tree: Path):
    idx = index_path(load_tree)
    first = load_split(idx, "train", 16, 3)
    assert load_split(idx, "train", 16, 3) is first
    assert load_split(index_path(load_tree), "train", 16, 3) is first  # a fresh index of the same files
    assert load_split(idx, "train", 20, 3) is not first  # other size
    assert load_split(idx, "train", 16, 1) is not first  # other channels

    # rewrite a.png with other content, same pixel size; force a new mtime
    a = load_tree / "train" / "good" / "a.png"
    st = a.stat()
    _save(a, _solid(BLUE, 24, 24))
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    second = load_split(idx, "train", 16, 3)
    assert second is not first
    assert (second.images[0, 2] == 255).all() and (second.images[0, 0] == 0).all()
    assert (first.images[0, 0] == 255).all()  # the old object is not mutated
    assert load_split(idx, "train", 16, 3) is second

    # a file that became readable is picked up
    (load_tree / "train" / "good" / "e_empty.png").write_bytes(_png_bytes(_solid(GREEN, 16, 16)))
    third = load_split(idx, "train", 16, 3)
    assert third is not second
    assert _names(third.samples) == ["a.png", "b.png", "c.png", "d.png", "e_empty.png"]

    clear_cache()
    assert load_split(idx, "train", 16, 3) is not third


def test_cache_invalidated_by_changed_mask(load_tree: Path):
    idx = index_path(load_tree)
    first = load_split(idx, "test", 16, 3)
    assert first.has_mask.tolist() == [True, False, True, False]
    mask = load_tree / "ground_truth" / "hole" / "badmask_mask.png"
    _save(mask, _half_mask(16, 16))  # the broken mask gets fixed on disk
    second = load_split(idx, "test", 16, 3)
    assert second is not first
    assert second.has_mask.tolist() == [True, False, True, True]
    assert second.masks[3, :, :8].all() and not second.masks[3, :, 8:].any()


def test_cache_keyed_by_labels_too(load_tree: Path):
    p = load_tree / "test" / "good" / "ok.png"
    as_good = load_samples([Sample(p, "test", "good")], 16, 3)
    as_defect = load_samples([Sample(p, "test", "crack")], 16, 3)
    assert as_good is not as_defect
    assert as_good.labels.tolist() == [0] and as_good.has_mask.tolist() == [True]
    assert as_defect.labels.tolist() == [1] and as_defect.has_mask.tolist() == [False]
    assert as_defect.samples[0].defect == "crack"


def test_detect_channels(load_tree: Path, tmp_path: Path):
    assert detect_channels(index_path(load_tree)) == 3

    gray_rgb = tmp_path / "grayrgb"  # gray content saved as RGB
    g = _noise(1, 16, 16, channels=1)
    _save(gray_rgb / "train" / "good" / "a.png", np.repeat(g[:, :, None], 3, axis=2))
    assert detect_channels(index_path(gray_rgb)) == 1

    broken_first = tmp_path / "bf"  # unreadable files are passed over
    (broken_first / "train" / "good").mkdir(parents=True)
    (broken_first / "train" / "good" / "a.png").write_bytes(b"")
    _save(broken_first / "train" / "good" / "b.png", g)
    assert detect_channels(index_path(broken_first)) == 1

    unreadable = tmp_path / "ur"
    (unreadable / "train" / "good").mkdir(parents=True)
    (unreadable / "train" / "good" / "a.png").write_bytes(b"junk")
    assert detect_channels(index_path(unreadable)) == 3


# --------------------------------------------------------------------------------------------------
# augment_batch


def _unique_batch(b: int = 4, c: int = 3, h: int = 20, w: int = 24) -> torch.Tensor:
    return torch.arange(b * c * h * w, dtype=torch.float32).view(b, c, h, w)


def test_augment_crops_come_from_input():
    src = _unique_batch()
    g = torch.Generator().manual_seed(0)
    out = augment_batch(src, 8, hflip=False, vflip=False, generator=g)
    assert tuple(out.shape) == (4, 3, 8, 8)
    h, w = 20, 24
    offsets = set()
    for i in range(4):
        local = int(out[i, 0, 0, 0].item()) - i * 3 * h * w
        y, x = divmod(local, w)
        assert 0 <= y <= h - 8 and 0 <= x <= w - 8
        assert torch.equal(out[i], src[i, :, y : y + 8, x : x + 8])
        offsets.add((y, x))
    assert len(offsets) > 1  # crops are random per image


def test_augment_uint8_dtype_and_values_from_source():
    src = torch.randint(0, 256, (3, 1, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = augment_batch(src, 16, hflip=True, vflip=True, generator=torch.Generator().manual_seed(2))
    assert out.dtype == torch.uint8 and tuple(out.shape) == (3, 1, 16, 16)
    for i in range(3):
        assert set(out[i].flatten().tolist()) <= set(src[i].flatten().tolist())


def test_augment_flips_reproducible_and_valid():
    src = _unique_batch(b=32, c=2, h=10, w=10)
    a = augment_batch(src, 10, hflip=True, vflip=True, generator=torch.Generator().manual_seed(123))
    b = augment_batch(src, 10, hflip=True, vflip=True, generator=torch.Generator().manual_seed(123))
    assert torch.equal(a, b)
    assert tuple(a.shape) == tuple(src.shape)
    kinds = []
    for i in range(32):
        variants = {
            "none": src[i],
            "h": src[i].flip(2),
            "v": src[i].flip(1),
            "hv": src[i].flip(1).flip(2),
        }
        match = [k for k, v in variants.items() if torch.equal(a[i], v)]
        assert len(match) == 1
        kinds.append(match[0])
    assert set(kinds) == {"none", "h", "v", "hv"}  # 32 images: every combination occurs

    c = augment_batch(src, 10, hflip=True, vflip=True, generator=torch.Generator().manual_seed(124))
    assert not torch.equal(a, c)


def test_augment_noop_without_crop_or_flip():
    src_sq = _unique_batch(h=16, w=16)
    out = augment_batch(src_sq, 16, hflip=False, vflip=False)
    assert torch.equal(out, src_sq)
    only_h = augment_batch(src_sq, 16, hflip=True, vflip=False, generator=torch.Generator().manual_seed(0))
    for i in range(src_sq.shape[0]):
        assert torch.equal(only_h[i], src_sq[i]) or torch.equal(only_h[i], src_sq[i].flip(2))


# --------------------------------------------------------------------------------------------------
# built-in datasets


@pytest.fixture(scope="module")
def digits_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[DatasetIndex, Path]:
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANOMALYLAB_HOME", str(home))
        yield open_dataset("builtin:digits"), home


def test_builtin_digits(digits_index):
    from sklearn.datasets import load_digits

    idx, home = digits_index
    assert idx.category == "7"
    assert idx.layout == "mvtec"
    assert idx.root.is_relative_to(home)
    n7 = int((load_digits().target == 7).sum())
    n_train = int(round(n7 * 0.8))

    assert {s.defect for s in idx.split("train")} == {"good"}
    counts = idx.counts()
    assert counts["train"] == {"good": n_train}
    expected_defects = [f"digit_{d}" for d in range(10) if d != 7]
    assert idx.defect_types == expected_defects
    assert counts["test"] == {"good": n7 - n_train, **{d: DIGITS_TEST_PER_ANOMALY for d in expected_defects}}
    assert DIGITS_TEST_PER_ANOMALY == 20
    assert idx.skipped == []
    assert not idx.has_masks
    # no leftover temp folder next to the category
    assert [p.name for p in idx.root.parent.iterdir()] == ["7"]

    for s in idx.samples:
        img = read_image(s.path)
        assert img.shape == (32, 32) and img.dtype == np.uint8
    loaded = load_split(idx, "train", 32, detect_channels(idx))
    assert tuple(loaded.images.shape) == (n_train, 1, 32, 32)


def test_builtin_digits_reused_on_second_open(digits_index, monkeypatch: pytest.MonkeyPatch):
    idx, home = digits_index
    monkeypatch.setenv("ANOMALYLAB_HOME", str(home))
    first = idx.samples[0].path
    mtime = first.stat().st_mtime_ns
    again = open_dataset("builtin:digits", "7")
    assert again.samples == idx.samples
    assert first.stat().st_mtime_ns == mtime  # not rewritten


def test_builtin_unknown_name_and_category(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ANOMALYLAB_HOME", str(tmp_path))
    with pytest.raises(DatasetError) as exc:
        open_dataset("builtin:nope")
    assert "'builtin:nope'" in str(exc.value)
    assert "builtin:synthetic, builtin:digits" in str(exc.value)
    with pytest.raises(DatasetError, match="unknown built-in dataset"):
        categories("builtin:nope")
    with pytest.raises(DatasetError, match="available: 7, 0, 1"):
        open_dataset("builtin:digits", "x")
    assert not (tmp_path / "cache" / "digits" / "v1" / "x").exists()


def test_builtin_categories():
    assert categories("builtin:synthetic") == ["bottle", "mesh", "fabric"]
    assert categories("builtin:digits") == ["7", "0", "1", "2", "3", "4", "5", "6", "8", "9"]


def test_open_dataset_path_spec(mvtec_root: Path, plain_folder: Path):
    assert open_dataset(str(mvtec_root)).category == "bottle"
    assert open_dataset(str(mvtec_root), "carpet").category == "carpet"
    assert categories(str(mvtec_root)) == ["bottle", "carpet"]
    assert categories(str(plain_folder)) == ["screws"]
    assert open_dataset(str(plain_folder), "screws").layout == "folder"


def test_plain_folder_rejects_a_foreign_category(tmp_path) -> None:
    import numpy as np
    from PIL import Image

    from core.data.index import DatasetError, index_path

    root = tmp_path / "parts"
    (root / "good").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "good" / "a.png")
    assert index_path(root, "parts").category == "parts"
    with pytest.raises(DatasetError, match="single plain folder"):
        index_path(root, "teapot")


def test_unlabeled_folder_images_are_unknown_and_left_out_of_metrics(plain_folder: Path):
    from core.config import TrainConfig
    from core.evaluation.evaluate import evaluate_run
    from core.training.loop import fit

    for i in range(3):
        _save(plain_folder / "unlabeled" / f"u{i}.png", _noise(100 + i))
    idx = index_path(plain_folder)
    unknown = [s for s in idx.split("test") if s.defect == "unlabeled"]
    assert len(unknown) == 3 and all(s.label == -1 for s in unknown)
    assert "unlabeled" not in idx.defect_types
    run = fit(TrainConfig(data=str(plain_folder), model="ae", size=32, base_channels=4, depth=3, epochs=1, device="cpu"),
              plain_folder.parent / "run")
    m = evaluate_run(run, device="cpu", strips=False)
    assert m["n_unknown"] == 3 and m["n_images"] == len(idx.split("test")) - 3
