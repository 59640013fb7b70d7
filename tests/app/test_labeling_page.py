"""AppTest of the Label page, and labels flowing into the Results and Threshold pages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.config import TrainConfig
from core.evaluation.curves import curves_for, operating_point, summary
from core.evaluation.scored import scored_set
from core.labels.store import dataset_key
from core.training.loop import fit
from views import explorer, labeling
from views.components import ui

APP = str(Path(__file__).resolve().parents[2] / "app.py")
KEY = dataset_key("builtin:synthetic", "fabric")


@pytest.fixture(scope="module")
def fabric_run() -> Path:
    return fit(TrainConfig(data="builtin:synthetic", category="fabric", model="ae", size=32, base_channels=4, depth=3, epochs=1,
                           device="cpu"))


def _open(page: str, run_id: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page(page).run()
    at.selectbox(key=ui.KEY_SOURCE).set_value("builtin:synthetic").run()
    at.selectbox(key=ui.KEY_CATEGORY).set_value("fabric").run()
    if run_id is not None:
        at.selectbox(key=ui.KEY_RUN).set_value(run_id).run()
    assert not at.exception, at.exception
    return at


def _current(at: AppTest) -> str:
    return at.session_state[labeling.KEY_CURRENT]


def test_label_buttons_store_advance_and_undo(fabric_run: Path) -> None:
    store = ui.label_store()
    at = _open("views/labeling.py", fabric_run.name)
    assert at.title[0].value == "Label"
    first = _current(at)
    assert store.get(KEY, first) is None, "the unlabeled queue starts with an unlabeled image"
    at.button(key="label_good").click().run()
    assert not at.exception, at.exception
    assert store.get(KEY, first).label == "good"
    second = _current(at)
    assert second != first
    at.selectbox(key=labeling.KEY_DEFECT).set_value("hole").run()
    at.text_input(key=labeling.KEY_NOTE).set_value("visible tear").run()
    at.button(key="label_defective").click().run()
    rec = store.get(KEY, second)
    assert rec.label == "defective" and rec.defect_type == "hole" and rec.note == "visible tear"
    third = _current(at)
    at.button(key="label_unsure").click().run()
    assert store.get(KEY, third).label == "unsure"
    # Previous goes back to the image just labeled; undo restores "no label" exactly.
    at.button(key="label_prev").click().run()
    assert _current(at) == third
    at.button(key="label_undo").click().run()
    assert store.get(KEY, third) is None
    assert any("Undone" in t.value for t in at.toast)
    assert any("labeled by hand" in c.value for c in at.sidebar.caption)
    # G then Z: the undo acts on the image just labeled (the page has advanced), shows it and names it.
    fourth = _current(at)
    at.button(key="label_good").click().run()
    assert store.get(KEY, fourth).label == "good" and _current(at) != fourth
    at.button(key="label_undo").click().run()
    assert store.get(KEY, fourth) is None and _current(at) == fourth
    assert any("Undone on" in t.value and Path(fourth).name in t.value for t in at.toast)
    # Redo puts it back; a second Undo then goes further back, to "defective" on the second image.
    at.button(key="label_redo").click().run()
    assert store.get(KEY, fourth).label == "good"
    at.button(key="label_undo").click().run()
    at.button(key="label_undo").click().run()
    assert store.get(KEY, fourth) is None and store.get(KEY, second) is None and _current(at) == second
    # Model-based queues and the heatmap.
    for queue in ("disagree", "closest", "random"):
        at.segmented_control(key=labeling.KEY_QUEUE).set_value(queue).run()
        assert not at.exception, at.exception
    at.toggle(key=labeling.KEY_HEAT).set_value(True).run()
    assert not at.exception, at.exception
    at.toggle(key=labeling.KEY_PAINT).set_value(True).run()
    assert not at.exception, at.exception  # the canvas component, or a message where it cannot load


def test_labels_flow_into_results_threshold_and_evaluate(fabric_run: Path) -> None:
    store = ui.label_store()
    ss = scored_set(fabric_run)
    goods = [p for p, lab in zip(ss.paths, ss.labels) if lab == 0][:3]
    for p in goods:  # call three good images defective
        store.set_label(KEY, p, "defective", defect_type="stain")
    at = _open("views/results.py", fabric_run.name)
    at.selectbox(key=ui.KEY_LABEL_SOURCE).set_value("merged").run()
    assert not at.exception, at.exception
    assert any("labels: Merged" in c.value for c in at.caption)
    merged = summary(ui.relabeled(ss, ui.Selection("builtin:synthetic", "fabric", fabric_run, label_source="merged")))
    assert next(m.value for m in at.metric if m.label == "Image AUROC") == ui.fmt_metric(merged["image_auroc"])
    assert merged["n_defective"] != summary(ss)["n_defective"], "the relabeled good images now count as defective"
    # The choice survives a page switch, and the Threshold page counts the relabeled images.
    at.switch_page("views/explorer.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key=ui.KEY_LABEL_SOURCE).value == "merged"
    eff = ui.effective_labels_for("builtin:synthetic", "fabric", "merged")
    n_def = int((eff.labels == 1).sum())
    assert all(eff.labels[eff.relpaths.index(p)] == 1 for p in goods)
    t = at.session_state[explorer.KEY_T]
    op = operating_point(curves_for(ui.relabeled(ss, ui.Selection("builtin:synthetic", "fabric", fabric_run,
                                                                          label_source="merged"))), t)
    assert op["n_pos"] == n_def
    # evaluate --labels merged agrees.
    from core.evaluation.evaluate import evaluate_with_rule

    m = evaluate_with_rule(fabric_run, {}, labels="merged")
    assert m["n_defective"] == n_def and m["label_disagreements"] >= len(goods)
    assert np.isclose(m["image_auroc"], merged["image_auroc"])


def test_label_page_import_export(fabric_run: Path) -> None:
    at = _open("views/labeling.py")
    downloads = [d.proto.label for d in at.get("download_button")]
    assert downloads == ["Labels as CSV", "Labels as JSON"]
    rel = _current(at)
    assert ui.label_store().get(KEY, rel) is None, "the unlabeled queue starts with an unlabeled image of this dataset"
    bad = f"dataset,path,label\n{KEY},{rel},good\n{KEY},test/nope/1.png,good\n{KEY},{rel},broken\n".encode()
    at.file_uploader(key=labeling.KEY_IMPORT).set_value(("bad.csv", bad, "text/csv")).run()
    assert not at.exception, at.exception
    assert any("rows 2, 3" in e.value and "nothing imported" in e.value for e in at.error)
    assert ui.label_store().get(KEY, rel) is None, "a bad file applies nothing"
    good = f"dataset,path,label\n{KEY},{rel},good\n".encode()
    at.file_uploader(key=labeling.KEY_IMPORT).set_value(("good.csv", good, "text/csv")).run()
    assert any("1 row(s) imported" in t.value for t in at.toast)
    assert ui.label_store().get(KEY, rel).label == "good"
    mvtec = next(b for b in at.button if b.label == "Export as MVTec folder")
    mvtec.click().run()
    assert not at.exception, at.exception
    assert any("Written to" in s.value for s in at.success)


def test_label_page_import_applies_the_allowed_roots_and_discloses_nothing(fabric_run: Path, tmp_path: Path) -> None:
    """Issue 14: rows naming /etc or a folder outside the roots are refused, in words that do not tell whether
    anything exists there."""
    outside = tmp_path / "elsewhere"
    (outside / "good").mkdir(parents=True)
    at = _open("views/labeling.py")
    errors = []
    for ds in ("/etc", str(outside), str(tmp_path / "no-such-folder")):
        rows = f"dataset,path,label\n{ds},passwd,good\n".encode()
        at.file_uploader(key=labeling.KEY_IMPORT).set_value(("rows.csv", rows, "text/csv")).run()
        assert not at.exception, at.exception
        shown = [e.value for e in at.error]
        assert len(shown) == 1 and "outside the folders this server may read" in shown[0], shown
        errors.append(shown[0].replace(ds, "DS"))
    assert len(set(errors)) == 1
    assert not ui.label_store().export_rows("/etc")
