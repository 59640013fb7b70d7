"""Built-in datasets (no download) and resolving a dataset spec to an index.

A dataset spec is either ``builtin:synthetic``, ``builtin:digits`` or a filesystem path. Built-in data
is materialized once as an MVTec-layout folder under ``<workspace>/cache/`` so that everything
downstream (index, loading, labels, pages) treats every dataset the same way.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from core.data import synthetic
from core.data.images import save_png
from core.data.index import (
    DatasetError,
    DatasetIndex,
    index_path,
    list_categories,
    mvtec_categories,
)
from core.workspace import atomic_write_text, cache_dir

BUILTIN_PREFIX = "builtin:"
BUILTINS = ("synthetic", "digits")
DIGITS_DEFAULT_NORMAL = "7"
DIGITS_VERSION = "v1"
DIGITS_SIZE = 32
DIGITS_TEST_PER_ANOMALY = 20
ENV_DATA_ROOTS = "ANOMALYLAB_DATA"


def is_builtin(spec: str) -> bool:
    """True for ``builtin:NAME`` specs."""
    return str(spec).startswith(BUILTIN_PREFIX)


def builtin_name(spec: str) -> str:
    """``builtin:digits`` -> ``digits``; raises DatasetError for an unknown name."""
    name = str(spec)[len(BUILTIN_PREFIX) :]
    if name not in BUILTINS:
        raise DatasetError(f"unknown built-in dataset {spec!r}; available: {', '.join(BUILTIN_PREFIX + b for b in BUILTINS)}")
    return name


def digits_categories() -> list[str]:
    """Digit classes usable as the normal class; the default (7, as in the MNIST VAE article) first."""
    rest = [str(d) for d in range(10) if str(d) != DIGITS_DEFAULT_NORMAL]
    return [DIGITS_DEFAULT_NORMAL, *rest]


def synthetic_root(seed: int = 0) -> Path:
    """Cache folder of the synthetic dataset for ``seed``."""
    return cache_dir("synthetic") / f"{synthetic.SYNTHETIC_VERSION}-seed{seed}"


def materialize_digits(normal: str, root: Path | None = None) -> Path:
    """Write scikit-learn's digits as an MVTec-layout category where ``normal`` is the good class.

    Train: 80% of the normal digit; test: the other 20% as good and ``DIGITS_TEST_PER_ANOMALY`` of
    every other digit as the defect type ``digit_<d>``. Images are 32x32 gray, white ink on black.
    """
    from sklearn.datasets import load_digits

    if normal not in digits_categories():
        raise DatasetError(f"digits category must be one of 0-9, got {normal!r}")
    root = root or cache_dir("digits") / DIGITS_VERSION
    target = root / normal
    marker = target / ".complete"
    if marker.is_file():
        return target
    bunch = load_digits()
    images = np.clip(bunch.images / 16.0 * 255.0, 0, 255).astype(np.uint8)
    labels = bunch.target
    tmp = root / f".{normal}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    idx_normal = np.flatnonzero(labels == int(normal))
    n_train = int(round(len(idx_normal) * 0.8))

    def write(folder: Path, indices: np.ndarray) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(indices):
            big = cv2.resize(images[i], (DIGITS_SIZE, DIGITS_SIZE), interpolation=cv2.INTER_CUBIC)
            save_png(folder / f"{k:03d}.png", big)

    write(tmp / "train" / "good", idx_normal[:n_train])
    write(tmp / "test" / "good", idx_normal[n_train:])
    for d in range(10):
        if str(d) != normal:
            write(tmp / "test" / f"digit_{d}", np.flatnonzero(labels == d)[:DIGITS_TEST_PER_ANOMALY])
    atomic_write_text(tmp / ".complete", json.dumps({"version": DIGITS_VERSION, "normal": normal}))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def builtin_categories(name: str) -> list[str]:
    """Categories of a built-in dataset."""
    return list(synthetic.CATEGORIES) if name == "synthetic" else digits_categories()


def categories(spec: str) -> list[str]:
    """Categories of any dataset spec (built-in or path)."""
    if is_builtin(spec):
        return builtin_categories(builtin_name(spec))
    return list_categories(Path(spec))


def builtin_category(spec: str, category: str | None) -> str:
    """The category of a built-in dataset: ``category``, or the first one; DatasetError for an unknown one."""
    cats = builtin_categories(builtin_name(spec))
    category = category or cats[0]
    if category not in cats:
        raise DatasetError(f"{spec} has no category {category!r}; available: {', '.join(cats)}")
    return category


def open_dataset(spec: str, category: str | None = None, *, seed: int = 0) -> DatasetIndex:
    """Resolve a dataset spec and category to an index, generating built-in data on first use.

    Args:
        spec: ``builtin:synthetic``, ``builtin:digits`` or a folder path.
        category: the category; default the first one.
        seed: the synthetic generator's seed.

    Raises:
        DatasetError: for unknown names, missing paths or bad layouts.
    """
    if is_builtin(spec):
        name = builtin_name(spec)
        category = builtin_category(spec, category)
        if name == "synthetic":
            root = synthetic_root(seed)
            synthetic.generate_category(root, category, seed=seed)
            return index_path(root / category)
        return index_path(materialize_digits(category))
    return index_path(Path(spec), category)


def _project_dir() -> Path:
    return Path(__file__).resolve().parents[2]


def data_roots() -> list[Path]:
    """Folders scanned for datasets: ``$ANOMALYLAB_DATA`` (os.pathsep-separated), ``./data``, ``../shared/data``."""
    roots: list[Path] = []
    env = os.environ.get(ENV_DATA_ROOTS, "")
    roots += [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    for base in (Path.cwd(), _project_dir()):
        roots += [base / "data", base.parent / "shared" / "data"]
    out: list[Path] = []
    for r in roots:
        r = r.resolve()
        if r.is_dir() and r not in out:
            out.append(r)
    return out


def discover_datasets(max_depth: int = 2) -> list[tuple[str, list[str]]]:
    """Datasets found below :func:`data_roots`: ``[(path, categories)]`` for MVTec roots."""
    found: list[tuple[str, list[str]]] = []

    def visit(folder: Path, depth: int) -> None:
        cats = mvtec_categories(folder)
        if cats:
            found.append((str(folder), cats))
            return
        if depth < max_depth:
            for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                visit(sub, depth + 1)

    for root in data_roots():
        visit(root, 0)
    return found


def all_datasets() -> list[tuple[str, list[str]]]:
    """Built-in datasets first, then discovered folders: ``[(spec, categories)]``."""
    builtins = [(BUILTIN_PREFIX + name, builtin_categories(name)) for name in BUILTINS]
    return builtins + discover_datasets()
