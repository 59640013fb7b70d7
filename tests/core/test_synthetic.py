"""Tests of the synthetic MVTec-layout dataset generator (small images and counts keep them fast)."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import synthetic
from core.data.synthetic import (
    CATEGORIES,
    DEFECT_TYPES,
    generate,
    generate_category,
    render_sample,
)

SMALL = {"size": 64, "n_train": 6, "n_test_good": 3, "n_test_per_defect": 2}
PROJECT_DIR = Path(__file__).resolve().parents[2]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (relative posix path -> bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _dead_pid() -> int:
    """The pid of a process that has already exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("category", CATEGORIES)
def test_layout_counts_and_masks(tmp_path: Path, category: str) -> None:
    out = generate_category(tmp_path, category, seed=1, **SMALL)
    assert out == tmp_path / category
    names = lambda folder: sorted(p.name for p in folder.iterdir())  # noqa: E731
    assert names(out / "train" / "good") == [f"{i:03d}.png" for i in range(6)]
    assert names(out / "test") == sorted(["good", *DEFECT_TYPES[category]])
    assert names(out / "test" / "good") == ["000.png", "001.png", "002.png"]
    assert names(out / "ground_truth") == sorted(DEFECT_TYPES[category])
    assert len(DEFECT_TYPES[category]) >= 3
    for path in [*(out / "train" / "good").iterdir(), *(out / "test").rglob("*.png")]:
        with Image.open(path) as img:
            assert img.mode == "RGB" and img.size == (64, 64), path
    for defect in DEFECT_TYPES[category]:
        assert names(out / "test" / defect) == ["000.png", "001.png"]
        assert names(out / "ground_truth" / defect) == ["000_mask.png", "001_mask.png"]
        for i in range(2):
            mask = _load(out / "ground_truth" / defect / f"{i:03d}_mask.png")
            assert mask.shape == (64, 64) and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 255}
            assert (mask == 255).sum() >= synthetic.MIN_DEFECT_PIXELS
    marker = json.loads((out / ".complete").read_text())
    assert marker["version"] == synthetic.SYNTHETIC_VERSION and marker["seed"] == 1 and marker["size"] == 64


@pytest.mark.parametrize("category", CATEGORIES)
def test_defect_changes_the_image_exactly_inside_its_mask(tmp_path: Path, category: str) -> None:
    out = generate_category(tmp_path, category, **SMALL)
    for defect in DEFECT_TYPES[category]:
        for i in range(2):
            sample = render_sample(category, defect, i, size=64)
            # What render_sample returns is what is on disk, so its clean image is a fair reference.
            assert np.array_equal(sample.image, _load(out / "test" / defect / f"{i:03d}.png"))
            assert np.array_equal(sample.mask, _load(out / "ground_truth" / defect / f"{i:03d}_mask.png"))
            inside = sample.mask == 255
            diff = np.abs(sample.image.astype(np.int16) - sample.clean.astype(np.int16)).max(axis=2)
            assert not diff[~inside].any(), f"{defect} #{i} changes pixels outside its mask"
            assert diff[inside].mean() > 8, f"{defect} #{i} is invisible"
            assert (diff[inside] > 0).mean() > 0.6, f"{defect} #{i}: most mask pixels must be changed"


@pytest.mark.parametrize("category", ["bottle", "fabric"])
def test_defects_stand_out_from_the_typical_normal_image(category: str) -> None:
    # Independent of the clean/defect pairing: compare with the per-pixel median of normal test images.
    # (Not for mesh: its random lattice phase makes a median image meaningless.)
    typical = np.median(np.stack([render_sample(category, "good", i, size=64).image for i in range(8)]), axis=0)
    for defect in DEFECT_TYPES[category]:
        inside, outside = [], []
        for i in range(6):
            sample = render_sample(category, defect, i, size=64)
            diff = np.abs(sample.image - typical).mean(axis=2)
            inside.append(diff[sample.mask == 255].mean())
            outside.append(diff[sample.mask == 0].mean())
        assert np.mean(inside) > 1.5 * np.mean(outside), defect


def test_masks_are_never_tiny_and_normals_vary() -> None:
    for category in CATEGORIES:
        for defect in DEFECT_TYPES[category]:
            for i in range(15):
                assert (render_sample(category, defect, i, size=48).mask == 255).sum() >= synthetic.MIN_DEFECT_PIXELS
        a, b = (render_sample(category, "train", i, size=64).image.astype(np.int16) for i in (0, 1))
        assert np.abs(a - b).mean() > 3, f"{category}: normal images should vary"
        normal = render_sample(category, "train", 0, size=64)
        assert not normal.mask.any() and normal.image is normal.clean


def test_same_seed_identical_bytes_and_different_seed_differs(tmp_path: Path) -> None:
    first = _files(generate(tmp_path / "a", seed=3, **SMALL))
    second = _files(generate(tmp_path / "b", seed=3, **SMALL))
    other = _files(generate(tmp_path / "c", seed=4, **SMALL))
    assert first == second
    assert first.keys() == other.keys()
    images = [k for k in first if k.endswith(".png") and "ground_truth" not in k]
    assert all(first[k] != other[k] for k in images)


def test_determinism_does_not_depend_on_the_process(tmp_path: Path) -> None:
    # Python's str hash() is salted per process: a seed derived from it would differ here.
    code = (
        "import hashlib; from core.data.synthetic import render_sample as r; "
        "print(hashlib.sha256(r('fabric', 'hole', 2, seed=5, size=48).image.tobytes()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, check=True)
    here = hashlib.sha256(render_sample("fabric", "hole", 2, seed=5, size=48).image.tobytes()).hexdigest()
    assert done.stdout.strip() == here


def test_unknown_category_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown synthetic category"):
        generate_category(tmp_path, "toaster", **SMALL)
    with pytest.raises(ValueError):
        generate(tmp_path, ["bottle", "toaster"], **SMALL)
    with pytest.raises(ValueError):
        render_sample("toaster", "train", 0)
    with pytest.raises(ValueError):
        render_sample("bottle", "bent", 0)  # a mesh defect, not a bottle one
    with pytest.raises(ValueError):
        generate(tmp_path, n_tran=3)
    assert not any(tmp_path.iterdir()), "nothing is written when the arguments are wrong"


def test_second_call_is_a_cache_hit(tmp_path: Path) -> None:
    out = generate_category(tmp_path, "mesh", **SMALL)
    watched = [out / ".complete", out / "train" / "good" / "000.png", out / "ground_truth" / "bent" / "001_mask.png"]
    before = [p.stat().st_mtime_ns for p in watched]
    assert generate_category(tmp_path, "mesh", **SMALL) == out
    assert generate(tmp_path, ["mesh"], **SMALL) == tmp_path
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mesh"], "no temporary folders left"


def test_other_parameters_replace_the_cached_folder(tmp_path: Path) -> None:
    generate_category(tmp_path, "fabric", **SMALL)
    out = generate_category(tmp_path, "fabric", **{**SMALL, "n_train": 4})
    assert len(list((out / "train" / "good").iterdir())) == 4
    assert json.loads((out / ".complete").read_text())["n_train"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fabric"]


def test_leftovers_and_incomplete_folders_are_recovered(tmp_path: Path) -> None:
    stale = tmp_path / f".bottle.tmp-{_dead_pid()}"
    (stale / "train" / "good").mkdir(parents=True)
    (stale / "train" / "good" / "000.png").write_bytes(b"half")
    own = tmp_path / f".bottle.tmp-{os.getpid()}"
    own.mkdir()
    incomplete = tmp_path / "bottle"
    (incomplete / "train" / "good").mkdir(parents=True)
    (incomplete / "train" / "good" / "junk.png").write_bytes(b"junk")  # no .complete marker

    out = generate_category(tmp_path, "bottle", **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bottle"]
    assert not (out / "train" / "good" / "junk.png").exists()
    assert len(list((out / "train" / "good").iterdir())) == SMALL["n_train"]

    # A complete-looking folder that lost files after the marker was written is regenerated too.
    (out / "test" / "good" / "001.png").unlink()
    generate_category(tmp_path, "bottle", **SMALL)
    assert (out / "test" / "good" / "001.png").is_file()


def test_interrupted_run_leaves_no_half_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_write = synthetic._write_png

    def failing_write(path: Path, array: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        real_write(path, array)

    monkeypatch.setattr(synthetic, "_write_png", failing_write)
    with pytest.raises(KeyboardInterrupt):
        generate_category(tmp_path, "fabric", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_defaults_are_large_enough(tmp_path: Path) -> None:
    params = inspect.signature(generate_category).parameters
    assert {k: params[k].default for k in synthetic.DEFAULT_COUNTS} == synthetic.DEFAULT_COUNTS
    assert params["size"].default == 128 and params["seed"].default == 0
    for category in CATEGORIES:
        counts = synthetic.expected_counts(category)
        assert counts["train"] >= 150 and counts["test"] >= 60, category
    # One category at full defaults, end to end (about a second).
    out = generate_category(tmp_path, "bottle")
    assert len(list((out / "train" / "good").glob("*.png"))) == synthetic.expected_counts("bottle")["train"]
    assert len(list((out / "test").rglob("*.png"))) == synthetic.expected_counts("bottle")["test"]
    with Image.open(out / "test" / "scratch" / "000.png") as img:
        assert img.size == (128, 128) and img.mode == "RGB"


def test_module_does_not_import_ui_or_torch() -> None:
    code = "import sys, core.data.synthetic; print(sorted(m for m in ('torch', 'streamlit') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
