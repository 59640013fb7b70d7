"""AppTest: the Dataset page on the built-in synthetic data and on a custom MVTec tree with bad files."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from views.components import ui

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PAGE = "views/dataset.py"


def _dataset_page(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, at.exception
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _thumbnail_count(at: AppTest) -> int:
    """Images on the page minus the full-size view."""
    return len(at.get("image")) - 1


def _thumb_labels(at: AppTest) -> list[str]:
    """The thumbnails' labels (buttons under them that open the full-size view)."""
    return [b.label for b in at.button if (b.key or "").startswith("dataset_open_")]


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [w.value for w in at.warning]
    parts += [i.value for i in at.info] + [s.value for s in at.success] + [e.label for e in at.expander]
    return "\n".join(str(p) for p in parts)


def _check_all(at: AppTest, until: str) -> str:
    """Click "Check all files" and rerun until ``until`` shows (at most 60 s); the page's texts."""
    at.button(key="dataset_check_all").click().run()
    assert not at.exception
    deadline = time.monotonic() + 60
    while until not in _texts(at) and time.monotonic() < deadline:
        time.sleep(0.2)
        at.run()
    assert not at.exception
    return _texts(at)


def test_dataset_page_on_builtin_synthetic() -> None:
    at = _dataset_page(AppTest.from_file(APP, default_timeout=120))
    assert at.title[0].value == "Dataset"
    # Counts table: one row per split/defect with count and masks.
    counts = next(df.value for df in at.dataframe if {"split", "defect", "count", "masks"} <= set(df.value.columns))
    assert ("train", "good") in set(zip(counts["split"], counts["defect"]))
    assert counts["count"].sum() > 0 and counts.loc[counts["defect"] != "good", "masks"].sum() > 0
    # Key widgets: filters and pagination.
    for key in ("dataset_splits", "dataset_defects"):
        assert at.multiselect(key=key) is not None
    assert at.checkbox(key="dataset_only_mask").value is False
    assert at.selectbox(key="dataset_page_size").value == 48
    assert list(at.selectbox(key="dataset_page_size").options) == ["24", "48", "96", "300"]
    assert len(at.get("pagination")) == 1
    assert _thumbnail_count(at) == 48
    labels = _thumb_labels(at)
    assert len(labels) == 48 and all(" · " in c for c in labels)
    # a thumbnail opens the full-size view
    at.button(key="dataset_open_5").click().run()
    assert not at.exception, at.exception
    assert at.session_state["dataset_view"].endswith(labels[5].split(" · ", 1)[1])

    # Filter to one defect type: only its images, each with a mask.
    at.multiselect(key="dataset_defects").set_value(["broken"]).run()
    assert not at.exception
    n_broken = int(counts.loc[counts["defect"] == "broken", "count"].sum())
    assert _thumbnail_count(at) == n_broken
    assert all(c.startswith("broken · ") for c in _thumb_labels(at))
    at.checkbox(key="dataset_only_mask").check().run()
    assert not at.exception and _thumbnail_count(at) == n_broken
    assert "ground_truth/broken/" in _texts(at)

    # Mask overlay style and toggle; stepping through images.
    at.segmented_control(key="dataset_overlay_style").set_value("Fill").run()
    assert not at.exception
    first = at.selectbox(key="dataset_view").value
    at.button(key="dataset_next").click().run()
    assert not at.exception and at.selectbox(key="dataset_view").value != first
    at.button(key="dataset_prev").click().run()
    assert at.selectbox(key="dataset_view").value == first
    at.toggle(key="dataset_overlay").set_value(False).run()
    assert not at.exception

    # Back to everything, small pages, jump to page 3.
    at.multiselect(key="dataset_defects").set_value([]).run()
    at.checkbox(key="dataset_only_mask").uncheck().run()
    at.selectbox(key="dataset_page_size").set_value(24).run()
    assert not at.exception and _thumbnail_count(at) == 24
    at.get("pagination")[0].set_value(3).run()
    assert not at.exception
    assert "Images 49–72 of" in _texts(at)
    at.multiselect(key="dataset_splits").set_value(["test"]).run()
    assert not at.exception
    assert "Images 1–24 of" in _texts(at), "new filters start again on page 1"
    at.selectbox(key="dataset_page_size").set_value(300).run()
    assert not at.exception and _thumbnail_count(at) == int(counts.loc[counts["split"] == "test", "count"].sum())


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture()
def custom_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _workspace: Path) -> Path:
    """An MVTec-layout root with a corrupt PNG, a stray text file and a defect image without a mask."""
    root = tmp_path / "mydata"
    cat = root / "widget"
    rng = np.random.default_rng(1)
    for i in range(6):
        _png(cat / "train" / "good" / f"{i:03d}.png", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    _png(cat / "train" / "good" / "wide.png", rng.integers(0, 255, (300, 1200), dtype=np.uint8))  # gray, > display cap
    for i in range(2):
        _png(cat / "test" / "good" / f"{i:03d}.png", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    mask = np.zeros((40, 40), np.uint8)
    mask[10:20, 10:20] = 255
    for i in range(3):
        _png(cat / "test" / "dent" / f"{i:03d}.png", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
        if i < 2:  # 002.png has no mask
            _png(cat / "ground_truth" / "dent" / f"{i:03d}_mask.png", mask)
    (cat / "test" / "dent" / "003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated garbage")
    (cat / "test" / "dent" / "readme.txt").write_text("not an image")
    monkeypatch.setenv("ANOMALYLAB_DATA", str(root))
    monkeypatch.setenv("ANOMALYLAB_ALLOWED_ROOTS", f"{root.resolve()}:{_workspace}")
    st.cache_data.clear()  # the sidebar's dataset list is cached; it must see the new data root
    yield root.resolve()
    st.cache_data.clear()


def test_dataset_page_lists_skipped_and_corrupt_files(custom_tree: Path) -> None:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[ui.KEY_SOURCE] = str(custom_tree)
    _dataset_page(at)
    assert str(custom_tree) in at.caption[0].value and "widget" in at.caption[0].value
    # The index skips the text file; the grid reports the undecodable PNG of the current page.
    tables = [df.value for df in at.dataframe if "file" in df.value.columns]
    assert any("test/dent/readme.txt" in set(t["file"]) for t in tables)
    assert any("test/dent/003.png" in set(t["file"]) for t in tables)
    assert any("cannot be decoded" in w.value for w in at.warning)
    assert any("(unreadable)" in c for c in _thumb_labels(at))

    # A defect image without a mask says so.
    labels = list(at.selectbox(key="dataset_view").options)  # "defect · name · split"
    at.selectbox(key="dataset_view").select_index(labels.index("dent · 002.png · test")).run()
    assert not at.exception
    assert "no pixel ground truth" in _texts(at).lower()
    # The corrupt image in the full view is a warning, not a traceback.
    at.selectbox(key="dataset_view").select_index(labels.index("dent · 003.png · test")).run()
    assert not at.exception and any("cannot be shown" in w.value for w in at.warning)
    # A large image is shown downscaled, with its real size in the details.
    at.selectbox(key="dataset_view").select_index(labels.index("good · wide.png · train")).run()
    assert not at.exception and "1200 × 300 px, gray (shown at 1024 × 256)" in _texts(at)

    # "Check all files" decodes everything in the background and lists the failure with its reason.
    text = _check_all(at, "Do not decode")
    assert "Do not decode" in text and "1 of 13 checked files" in text
    failed = next(df.value for df in at.dataframe if "file" in df.value.columns and "test/dent/003.png" in set(df.value["file"]))
    assert "003.png" in failed.loc[failed["file"] == "test/dent/003.png", "reason"].iloc[0]
    assert any("1 skipped file, 1 unreadable" in e.label for e in at.expander)
    at.button(key="dataset_check_again").click().run()
    assert not at.exception


def test_dataset_page_on_builtin_digits() -> None:
    """Tiny gray images and no masks at all: the page still renders every part."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[ui.KEY_SOURCE] = "builtin:digits"
    _dataset_page(at)
    assert _thumbnail_count(at) == 48
    at.checkbox(key="dataset_only_mask").check().run()
    assert not at.exception and len(at.get("image")) == 0, "no thumbnail and no full view"
    assert any("No image matches" in i.value for i in at.info)
    at.checkbox(key="dataset_only_mask").uncheck().run()
    at.multiselect(key="dataset_defects").set_value(["digit_1"]).run()
    assert not at.exception and "no pixel ground truth" in _texts(at).lower()


def test_dataset_page_does_not_follow_links_out_of_the_roots_and_reports_channels_and_masks(
        custom_tree: Path, tmp_path: Path) -> None:
    """Issue 14: a link below an allowed root that leads outside is skipped, not listed; the full check reports
    the mixed colour/gray training images and a non-binary mask."""
    outside = tmp_path / "outside"
    rng = np.random.default_rng(5)
    for i in range(7):
        _png(outside / f"secret{i}.png", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    cat = custom_tree / "widget"
    (cat / "train" / "good" / "leak.png").symlink_to(outside / "secret0.png")
    (cat / "test" / "stolen").symlink_to(outside, target_is_directory=True)
    _png(cat / "ground_truth" / "dent" / "000_mask.png", np.tile(np.linspace(0, 255, 40).astype(np.uint8), (40, 1)))
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[ui.KEY_SOURCE] = str(custom_tree)
    _dataset_page(at)
    text = _texts(at)
    assert "secret" not in " ".join(_thumb_labels(at)) and "leak.png" not in " ".join(_thumb_labels(at))
    tables = [df.value for df in at.dataframe if "file" in df.value.columns]
    skipped = next(t for t in tables if "train/good/leak.png" in set(t["file"]))
    reasons = set(skipped.loc[skipped["file"].isin(["train/good/leak.png", "test/stolen/secret3.png"]), "reason"])
    assert reasons == {"a link that leads outside the folders this server may read"}
    assert str(outside) not in text
    text = _check_all(at, "Channels")
    assert "training images: 6 colour, 1 gray" in text and "A run trains in **RGB**" in text
    assert any("mix colour (6) and gray (1" in w.value for w in at.warning)
    assert any("1 of 2 masks are not binary" in w.value for w in at.warning)
    assert any("2 data warnings" in e.label for e in at.expander)
