"""Every CSV the project writes is safe to open in a spreadsheet (OWASP CSV injection) and its own import
reads its exports back unchanged; a path that cannot be resolved is a message; a pipe is never read (issue 14)."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.evaluation.evaluate import scores_csv
from core.evaluation.record import DecisionRecord, decision_record
from core.evaluation.scored import ScoredSet
from core.labels.store import LabelStore, read_label_file
from core.workspace import AccessError, check_allowed, csv_cell_in, csv_cell_out

HOSTILE = ["=cmd|' /C calc'!A0", "+SUM(1,2)", "-2+3", "@A1", "\tleading tab", "\rleading cr", "'=already quoted",
           "''+twice"]
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def _cells(text: str) -> list[str]:
    return [c for row in csv.reader(io.StringIO(text, newline="")) for c in row]


def _unsafe(cells: list[str]) -> list[str]:
    return [c for c in cells if c[:1] in TRIGGERS]


@pytest.mark.parametrize("value", [*HOSTILE, "plain", "", "'", "it's fine", "x=1"])
def test_cells_round_trip_and_never_start_a_formula(value: str) -> None:
    out = csv_cell_out(value)
    assert out[:1] not in TRIGGERS
    assert csv_cell_in(out) == value


def test_numbers_are_left_alone() -> None:
    assert csv_cell_out(-0.5) == -0.5 and csv_cell_out(3) == 3 and csv_cell_out(None) is None


def test_label_export_is_safe_and_imports_back_unchanged(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "a.sqlite")
    for k, note in enumerate(HOSTILE):
        store.set_label("ds", f"test/x/{k:03d}.png", "defective" if k % 2 else "good", note=note)
    text = store.export_csv()
    assert _unsafe(_cells(text)) == []
    out = tmp_path / "labels.csv"
    out.write_text(text, encoding="utf-8")
    other = LabelStore(tmp_path / "b.sqlite")
    other.import_rows(read_label_file(out), check_paths=False)  # "ds" names no folder: only the cells matter here
    assert [r.note for r in other.all_labels()] == [r.note for r in store.all_labels()] == HOSTILE


def test_decision_record_and_scores_csv_are_safe() -> None:
    scores = np.array([-0.7, -0.2, 0.1, 0.9])
    ss = ScoredSet(run_id="r", detector="reconstruction", paths=("test/good/a.png", "test/good/b.png", "test/-cut/c.png",
                                                                   "test/-cut/d.png"),
                   defects=("good", "good", "-cut", "=evil"), labels=np.array([0, 0, 1, 1]), scores=scores)
    rec = decision_record(ss, -0.2, rule="manual", note=HOSTILE[0])
    text = rec.to_csv()
    header, row = list(csv.reader(io.StringIO(text)))
    assert _unsafe([c for k, c in zip(header, row) if k not in ("threshold",) and not k.startswith(("metrics.", "pixel."))]) == []
    back = DecisionRecord.from_csv(text)
    assert back.note == HOSTILE[0] and back.threshold == -0.2  # a negative number stays a number
    cells = _cells(scores_csv(ss))
    assert "=evil" not in cells and "'=evil" in cells and "'-cut" in cells
    assert _unsafe([c for c in cells if not c.lstrip("-").replace(".", "", 1).isdigit()]) == []


def test_paths_that_cannot_be_resolved_are_messages(tmp_path: Path) -> None:
    os.symlink(tmp_path / "a", tmp_path / "b")
    os.symlink(tmp_path / "b", tmp_path / "a")
    with pytest.raises(AccessError, match="symlink loop"):
        check_allowed(tmp_path / "a" / "x", [tmp_path])
    with pytest.raises(AccessError, match="null byte"):
        check_allowed(f"{tmp_path}/x\0y", [tmp_path])
    (tmp_path / "ok").mkdir()
    assert check_allowed(tmp_path / "ok", [tmp_path]) == (tmp_path / "ok").resolve()
    with pytest.raises(AccessError, match="outside the folders"):
        check_allowed("/etc", [tmp_path])


def test_a_fifo_named_png_is_skipped_never_read(tmp_path: Path) -> None:
    cat = tmp_path / "mv" / "widget"
    for folder in ("train/good", "test/good"):
        (cat / folder).mkdir(parents=True)
    for folder in ("train/good", "test/good"):
        Image.new("RGB", (8, 8)).save(cat / folder / "000.png")
    os.mkfifo(cat / "train" / "good" / "pipe.png")
    # in a child process with a timeout: a regression hangs there, not the test run
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from pathlib import Path; from core.data.index import index_path; "
            "from core.labels.store import file_sha1; from core.data.images import read_image, ImageError; "
            "idx = index_path(Path(sys.argv[1])); p = Path(sys.argv[1]) / 'train/good/pipe.png'; "
            "assert all(s.path != p for s in idx.samples), 'listed'; "
            "assert any('pipe.png' in f and 'regular file' in r for f, r in idx.skipped), idx.skipped\n"
            "try:\n    file_sha1(p)\nexcept OSError as e:\n    print('sha1:', e)\n"
            "try:\n    read_image(p)\nexcept ImageError as e:\n    print('read:', e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(cat), str(Path(__file__).resolve().parents[2])],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "sha1: [Errno 22] not a regular file" in out.stdout and "read: " in out.stdout and "regular file" in out.stdout
