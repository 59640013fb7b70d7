"""Path confinement and label-import validation (issue 14, items 2, 3 and 9): links leading out of the allowed
folders are not followed by the index, label imports apply the roots without telling what exists outside them,
rows are checked on disk when their dataset cannot be opened, JSON types are validated, and one field-size
policy holds for CSV and JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from core.data.images import save_png
from core.data.index import OUTSIDE_ROOTS, index_path
from core.labels.store import MAX_NOTE_CHARS, LabelImportError, LabelStore, dataset_key
from core.workspace import set_read_roots

pytestmark = pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")


def _img(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)


@pytest.fixture
def roots(tmp_path: Path):
    """An allowed root holding an MVTec category whose folders link to files and a folder outside the root."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    cat = allowed / "mv" / "part"
    for i in range(3):
        save_png(cat / "train" / "good" / f"{i:03d}.png", _img(i))
        save_png(outside / "secret" / f"s{i}.png", _img(10 + i))
    save_png(cat / "test" / "good" / "000.png", _img(20))
    save_png(allowed / "shared" / "other.png", _img(21))
    (cat / "train" / "good" / "leak.png").symlink_to(outside / "secret" / "s0.png")
    (cat / "test" / "crack").symlink_to(outside / "secret", target_is_directory=True)
    (cat / "test" / "good" / "inside.png").symlink_to(allowed / "shared" / "other.png")  # a link inside the roots
    set_read_roots([allowed])
    yield allowed, outside, cat
    set_read_roots(None)


def test_the_index_does_not_follow_links_out_of_the_roots(roots) -> None:
    allowed, outside, cat = roots
    index = index_path(cat)
    names = {s.path.name for s in index.samples}
    assert names == {"000.png", "001.png", "002.png", "inside.png"}
    reasons = {Path(f).name: r for f, r in index.skipped}
    assert reasons["leak.png"] == OUTSIDE_ROOTS and reasons["s1.png"] == OUTSIDE_ROOTS
    assert all(str(outside) not in r for r in reasons.values())  # where a link leads is not said


def test_without_confinement_the_cli_follows_links(roots) -> None:
    _, _, cat = roots
    set_read_roots(None)
    assert "leak.png" in {s.path.name for s in index_path(cat).samples}


def test_the_environment_variable_confines_too(roots, monkeypatch: pytest.MonkeyPatch) -> None:
    allowed, _, cat = roots
    set_read_roots(None)
    monkeypatch.setenv("ANOMALYLAB_ALLOWED_ROOTS", str(allowed))
    assert "leak.png" not in {s.path.name for s in index_path(cat).samples}


def test_label_import_applies_the_roots_and_discloses_nothing(roots, tmp_path: Path) -> None:
    allowed, outside, cat = roots
    store = LabelStore(tmp_path / "labels.sqlite")
    messages = []
    for ds in ("/etc", str(outside / "secret"), str(outside / "no-such-folder"), str(tmp_path / "nothing-here")):
        with pytest.raises(LabelImportError) as err:
            store.import_rows([{"dataset": ds, "path": "passwd", "label": "good"}], roots=[allowed])
        messages.append(str(err.value).replace(ds, "DS"))
    assert len(set(messages)) == 1 and "outside the folders this server may read" in messages[0]
    ok = store.import_rows([{"dataset": str(cat), "path": "train/good/000.png", "label": "good"}], roots=[allowed])
    assert ok.rows == 1
    with pytest.raises(LabelImportError, match="not an image of dataset"):  # the link out of the roots is no image
        store.import_rows([{"dataset": str(cat), "path": "train/good/leak.png", "label": "good"}], roots=[allowed])


def test_rows_are_checked_on_disk_when_the_dataset_cannot_be_opened(tmp_path: Path) -> None:
    folder = tmp_path / "loose"  # no good/ folder: not a dataset layout
    save_png(folder / "a" / "x.png", _img(0))
    store = LabelStore(tmp_path / "labels.sqlite")
    with pytest.raises(LabelImportError, match="looked for on disk"):
        store.import_rows([{"dataset": str(folder), "path": "a/missing.png", "label": "defective"}])
    result = store.import_rows([{"dataset": str(folder), "path": "a/x.png", "label": "defective"}])
    assert result.rows == 1 and result.unverified == [dataset_key(str(folder))]
    assert store.get(dataset_key(str(folder)), "a/x.png").content_hash  # hashed from the file on disk


def test_json_types_are_validated(tmp_path: Path, mvtec_key: str) -> None:
    store = LabelStore(tmp_path / "labels.sqlite")
    bad = [{"dataset": {"a": 1}, "path": "test/good/000.png", "label": "good"},
           {"dataset": mvtec_key, "path": ["x"], "label": "good"},
           {"dataset": mvtec_key, "path": "test/good/000.png", "label": 1},
           {"dataset": mvtec_key, "path": "test/good/000.png", "label": "good", "note": {"n": 1}}]
    for row in bad:
        with pytest.raises(LabelImportError, match="must be text"):
            store.import_rows([row])
    assert not store.export_rows()


@pytest.fixture
def mvtec_key(tmp_path: Path) -> str:
    cat = tmp_path / "mv" / "w"
    save_png(cat / "train" / "good" / "000.png", _img(0))
    save_png(cat / "test" / "good" / "000.png", _img(1))
    return dataset_key(str(cat))


def test_one_field_size_policy_for_csv_and_json(tmp_path: Path, mvtec_key: str) -> None:
    store = LabelStore(tmp_path / "labels.sqlite")
    huge = "x" * (10 * 1024 * 1024)
    row = {"dataset": mvtec_key, "path": "test/good/000.png", "label": "good", "note": huge}
    (tmp_path / "big.json").write_text(json.dumps([row]))
    with pytest.raises(LabelImportError, match=f"at most {MAX_NOTE_CHARS:,}"):
        store.import_file(tmp_path / "big.json")
    (tmp_path / "big.csv").write_text("dataset,path,label,note\r\n" + f"{mvtec_key},test/good/000.png,good,{huge}\r\n")
    with pytest.raises(LabelImportError, match=f"at most {MAX_NOTE_CHARS:,}"):  # the same words, not a csv error
        store.import_file(tmp_path / "big.csv")
    with pytest.raises(Exception, match=f"at most {MAX_NOTE_CHARS:,}"):
        store.set_label(mvtec_key, "test/good/000.png", "good", note=huge)
    # a note at the limit, with a mask, round-trips through its own CSV export
    store.set_label(mvtec_key, "test/good/000.png", "defective", note="=" + "y" * (MAX_NOTE_CHARS - 1),
                    mask=np.ones((16, 16), bool))
    store.export_csv(tmp_path / "out.csv")
    other = LabelStore(tmp_path / "again.sqlite")
    assert other.import_file(tmp_path / "out.csv").rows == 1
    assert other.get(mvtec_key, "test/good/000.png").note == store.get(mvtec_key, "test/good/000.png").note
