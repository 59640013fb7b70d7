"""The Dataset page's computations (core.services.dataset_browse)."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from core.data.index import DatasetIndex, Sample
from core.services.dataset_browse import (
    Filters,
    check_files_task,
    check_job_id,
    count_rows,
    count_totals,
    defect_order,
    files_signature,
    filter_samples,
    mtimes,
    page_count,
    rel,
    split_order,
)


def _samples(root: Path) -> list[Sample]:
    return [
        Sample(root / "train/good/0.png", "train", "good"),
        Sample(root / "test/good/1.png", "test", "good"),
        Sample(root / "test/scratch/2.png", "test", "scratch", root / "ground_truth/scratch/2_mask.png"),
        Sample(root / "test/crack/3.png", "test", "crack"),
        Sample(root / "val/good/4.png", "val", "good"),
    ]


def test_orders_and_relative_paths(tmp_path: Path) -> None:
    assert defect_order({"scratch", "good", "crack"}) == ["good", "crack", "scratch"]
    assert split_order(["val", "test", "extra", "train"]) == ["train", "test", "extra", "val"]
    assert rel(tmp_path / "test/a.png", tmp_path) == "test/a.png"
    assert rel("/elsewhere/a.png", tmp_path) == "/elsewhere/a.png"
    assert page_count(0, 24) == 1 and page_count(48, 24) == 2 and page_count(49, 24) == 3


def test_counts_and_filters(tmp_path: Path) -> None:
    samples = _samples(tmp_path)
    index = DatasetIndex(root=tmp_path, category="x", layout="mvtec", samples=samples)
    rows = count_rows(index)
    assert [(r["split"], r["defect"], r["count"], r["masks"]) for r in rows] == [
        ("train", "good", 1, 0), ("test", "good", 1, 0), ("test", "crack", 1, 0), ("test", "scratch", 1, 1), ("val", "good", 1, 0)]
    assert count_totals(rows) == {"train": 1, "test_good": 1, "test_defective": 2, "masks": 1}
    assert filter_samples(samples, Filters((), (), False, 24)) == samples
    assert [s.defect for s in filter_samples(samples, Filters(("test",), (), False, 24))] == ["good", "scratch", "crack"]
    assert [s.defect for s in filter_samples(samples, Filters((), ("scratch", "crack"), True, 24))] == ["scratch"]


def test_stamps_signature_and_job_id(tmp_path: Path) -> None:
    samples = _samples(tmp_path)
    (tmp_path / "train/good").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(samples[0].path)
    stamps = mtimes(samples[:2])
    assert stamps[0] > 0 and stamps[1] == -1
    assert files_signature(samples) == files_signature(list(samples)) != files_signature(samples[:2])
    index = DatasetIndex(root=tmp_path, category="x", layout="mvtec", samples=samples)
    assert check_job_id(index).startswith("dataset-check-") and check_job_id(index) == check_job_id(index)


def test_check_files_task_reports_failures_and_stops(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    state: dict = {}
    ctx = SimpleNamespace(stop=threading.Event(), update=state.update)
    failures = check_files_task([str(good), str(bad)], size=16, chunk=1)(ctx)
    assert [p for p, _ in failures] == [str(bad)] and state["done"] == 2 and state["total"] == 2
    ctx.stop.set()
    assert check_files_task([str(bad)], size=16)(ctx) == []
