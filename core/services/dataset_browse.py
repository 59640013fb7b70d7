"""What the Dataset page computes without Streamlit: counts per split and defect type, the filtered
image list and its pages, file stamps and signatures, and the background job that decodes every file."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from core.data.index import DatasetIndex, Sample
from core.data.report import data_report
from core.services.jobs import JobContext
from core.services.thumbnails import check_images

SPLIT_ORDER = ("train", "test")
GOOD = "good"


@dataclass(frozen=True)
class Filters:
    """What the user chose to browse. Empty ``splits``/``defects`` mean all of them."""

    splits: tuple[str, ...]
    defects: tuple[str, ...]
    only_mask: bool
    page_size: int


def rel(path: Path | str, root: Path) -> str:
    """``path`` relative to the dataset root when it lies below it."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def defect_order(defects: Iterable[str]) -> list[str]:
    """The distinct defect types, ``good`` first, then the others alphabetically."""
    return sorted(set(defects), key=lambda d: (d != GOOD, d))


def split_order(splits: Iterable[str]) -> list[str]:
    """``train``, ``test``, then any other split alphabetically."""
    splits = set(splits)
    return [sp for sp in SPLIT_ORDER if sp in splits] + sorted(splits - set(SPLIT_ORDER))


def count_rows(index: DatasetIndex) -> list[dict]:
    """One row per (split, defect): image count and how many carry a pixel mask."""
    masks: dict[tuple[str, str], int] = {}
    for s in index.samples:
        if s.mask_path is not None:
            masks[(s.split, s.defect)] = masks.get((s.split, s.defect), 0) + 1
    counts = index.counts()
    return [
        {"split": sp, "defect": d, "count": counts[sp][d], "masks": masks.get((sp, d), 0)}
        for sp in split_order(counts)
        for d in defect_order(counts[sp])
    ]


def count_totals(rows: list[dict]) -> dict[str, int]:
    """``train``, ``test_good``, ``test_defective`` and ``masks`` summed over :func:`count_rows`."""
    return {
        "train": sum(r["count"] for r in rows if r["split"] == "train"),
        "test_good": sum(r["count"] for r in rows if r["split"] == "test" and r["defect"] == GOOD),
        "test_defective": sum(r["count"] for r in rows if r["split"] == "test" and r["defect"] != GOOD),
        "masks": sum(r["masks"] for r in rows),
    }


def filter_samples(samples: list[Sample], f: Filters) -> list[Sample]:
    """Samples matching the split/defect/mask filters, in index order."""
    return [
        s for s in samples
        if (not f.splits or s.split in f.splits)
        and (not f.defects or s.defect in f.defects)
        and (not f.only_mask or s.mask_path is not None)
    ]


def page_count(n: int, page_size: int) -> int:
    return max(1, math.ceil(n / page_size))


def mtimes(samples: list[Sample]) -> tuple[int, ...]:
    """``st_mtime_ns`` per file (-1 when it cannot be stat'ed): a few microseconds per file."""
    out = []
    for s in samples:
        try:
            out.append(os.stat(s.path).st_mtime_ns)
        except OSError:
            out.append(-1)
    return tuple(out)


def files_signature(samples: list[Sample]) -> str:
    """A short hash of the file list (the check's cache key together with the root)."""
    digest = hashlib.sha1()
    for s in samples:
        digest.update(str(s.path).encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()[:16]


def check_job_id(index: DatasetIndex) -> str:
    """One check job per dataset root and file list: every session sees the same (cached) result."""
    key = f"{index.root}|{index.category}|{files_signature(index.samples)}"
    return "dataset-check-" + hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def check_files_task(paths: list[str], size: int, chunk: int = 64,
                     index: DatasetIndex | None = None) -> Callable[[JobContext], list[tuple[str, str]]]:
    """A job that decodes every file (making its ``size`` thumbnail) in chunks of ``chunk``, publishing
    ``done`` / ``total`` / ``failures`` and honouring the stop request; its result is ``[(path, reason)]``.
    With ``index``, a finished check also publishes ``report``: :func:`core.data.report.data_report`
    (the colour channels of every image, non-binary masks)."""

    def run(ctx: JobContext) -> list[tuple[str, str]]:
        failures: list[tuple[str, str]] = []
        ctx.update(done=0, total=len(paths))
        for start in range(0, len(paths), chunk):
            if ctx.stop.is_set():
                break
            failures += check_images(paths[start : start + chunk], size)
            ctx.update(done=min(len(paths), start + chunk), failures=list(failures))
        if index is not None and not ctx.stop.is_set():
            ctx.update(report=data_report(index))
        return failures

    return run
