"""AppTest of the Threshold page with two runs on the same test set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.config import TrainConfig
from core.evaluation.curves import Costs, choose_threshold, curves_for, operating_point
from core.evaluation.operating import clear_point, load_point
from core.evaluation.pixel import pixel_curves
from core.evaluation.record import decision_record
from core.evaluation.scored import scored_set
from core.training.loop import fit
from views import explorer
from views.components import ui

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PAGE = "views/explorer.py"


@pytest.fixture(scope="module")
def two_runs() -> tuple[Path, Path]:
    a = fit(TrainConfig(data="builtin:synthetic", category="bottle", model="ae", size=32, base_channels=4, depth=3, epochs=2,
                        device="cpu"))
    b = fit(TrainConfig(data="builtin:synthetic", category="bottle", model="vae", size=32, z_dim=8, base_channels=8, epochs=1,
                        device="cpu"))
    return a, b


def _open(run_id: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page(PAGE).run()
    at.selectbox(key=ui.KEY_SOURCE).set_value("builtin:synthetic").run()
    at.selectbox(key=ui.KEY_CATEGORY).set_value("bottle").run()
    at.selectbox(key=ui.KEY_RUN).set_value(run_id).run()
    assert not at.exception, at.exception
    return at


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _roc(at: AppTest) -> dict:
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return next(c for c in charts if "false-alarm" in str(c["layout"]["xaxis"]["title"]))


def test_threshold_page_rules_comparison_and_consequences(two_runs: tuple[Path, Path]) -> None:
    a, b = two_runs
    at = _open(a.name)
    assert at.title[0].value == "Threshold"
    ss = scored_set(a)
    curves = curves_for(ss)
    assert at.selectbox(key=explorer.KEY_RULE).value == "youden"  # the default rule (core.evaluation.operating)
    youden = choose_threshold(curves, "youden")
    assert at.session_state[explorer.KEY_T] == pytest.approx(youden)
    op = operating_point(curves, youden)
    assert _metric(at, "Defects caught (TPR)") == f"{op['tpr']:.1%}"
    assert _metric(at, "Flagged") == f"{op['flagged']} of {op['n']}"

    # A second run on the same ROC, with its AUROC and bootstrap interval in the legend.
    at.multiselect(key=explorer.KEY_COMPARE).set_value([f"{b.name}|reconstruction"]).run()
    assert not at.exception, at.exception
    names = [t.get("name", "") for t in _roc(at)["data"]]
    assert sum("AUROC" in n for n in names) == 2 and all("[" in n for n in names if "AUROC" in n)

    # Target false-alarm rate: the threshold flags at most that share of good images.
    at.selectbox(key=explorer.KEY_RULE).set_value("fpr").run()
    at.number_input(key=explorer.KEY_FPR).set_value(10.0).run()
    t = at.session_state[explorer.KEY_T]
    assert t == pytest.approx(choose_threshold(curves, "fpr", target_fpr=0.10))
    assert operating_point(curves, t)["fpr"] <= 0.10
    assert float(_metric(at, "False alarms (FPR)").rstrip("%")) <= 10.0

    # Minimum expected cost, with the costs typed in.
    at.selectbox(key=explorer.KEY_RULE).set_value("cost").run()
    at.number_input(key=explorer.KEY_COST_FN).set_value(50.0).run()
    costs = Costs(1.0, 50.0, 0.0)
    t = at.session_state[explorer.KEY_T]
    assert t == pytest.approx(choose_threshold(curves, "cost", costs=costs))
    assert _metric(at, "Cost per 1,000 parts") == f"{operating_point(curves, t, costs)['cost_per_1000']:,.0f}"
    assert any(tr.get("name") == "equal expected cost" for tr in _roc(at)["data"])

    # Presets of the article's two ways of use.
    at.selectbox(key=explorer.KEY_RULE).set_value("preset:anything_unusual").run()
    assert operating_point(curves, at.session_state[explorer.KEY_T])["tpr"] >= 0.99

    # Typing a threshold switches to manual and moves every consequence.
    mid = float(sorted(ss.scores)[len(ss.scores) // 2])
    at.number_input(key=explorer.KEY_TYPED).set_value(mid).run()
    assert not at.exception, at.exception
    assert at.selectbox(key=explorer.KEY_RULE).value == "manual"
    assert at.session_state[explorer.KEY_T] == pytest.approx(mid)
    op = operating_point(curves, mid)
    assert _metric(at, "Flagged") == f"{op['flagged']} of {op['n']}"
    tabs = [t.label for t in at.tabs]
    assert f"False alarms ({op['fp']})" in tabs and f"Misses ({op['fn']})" in tabs

    # The slider too.
    at.slider(key=explorer.KEY_SLIDER).set_value(float(curves.score_max)).run()
    assert at.session_state[explorer.KEY_T] == pytest.approx(float(curves.score_max), rel=1e-3)

    # Pixel level: metrics at the pixel threshold.
    assert {"Pixel F1", "IoU", "AUPRO"} <= {m.label for m in at.metric}


def test_threshold_page_decision_record_round_trip_and_mismatch(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = two_runs
    at = _open(a.name)
    at.selectbox(key=explorer.KEY_RULE).set_value("tpr").run()
    at.number_input(key=explorer.KEY_MISS).set_value(20.0).run()
    t = at.session_state[explorer.KEY_T]
    labels = [d.proto.label for d in at.get("download_button")]
    assert labels == ["Download JSON", "Download CSV"]
    ss = scored_set(a)
    record = decision_record(ss, t, rule="tpr", target_tpr=0.8, costs={"cost_fp": 1, "cost_fn": 10})

    # Import restores the choice on a fresh page.
    at2 = _open(a.name)
    _upload(at2, "decision.json", record.to_json().encode())
    assert at2.selectbox(key=explorer.KEY_RULE).value == "tpr"
    assert at2.number_input(key=explorer.KEY_MISS).value == pytest.approx(20.0)
    assert at2.session_state[explorer.KEY_T] == pytest.approx(t)
    assert any("restored" in s.value for s in at2.success)

    # A record of another run says so.
    other = decision_record(scored_set(b), 0.5, rule="manual")
    _upload(at2, "other.csv", other.to_csv().encode())
    assert any("does not match" in w.value for w in at2.warning)
    assert at2.selectbox(key=explorer.KEY_RULE).value == "manual"

    # Garbage is refused with a message.
    _upload(at2, "notes.json", b"{not json")
    assert any("not a decision record" in e.value for e in at2.error)


def _upload(at: AppTest, name: str, data: bytes) -> None:
    mime = "text/csv" if name.endswith(".csv") else "application/json"
    at.file_uploader(key=explorer.KEY_RECORD).set_value((name, data, mime)).run()
    assert not at.exception, at.exception


def test_threshold_page_compares_fnet_and_anounet_detectors(two_runs: tuple[Path, Path]) -> None:
    a, _ = two_runs
    fnet = fit(TrainConfig(data="builtin:synthetic", category="bottle", model="fnet", size=32, base_channels=4, fnet_stages=3,
                           fnet_embed_dim=8, fnet_references="paste", epochs=1, batch_size=32, device="cpu"))
    at = _open(a.name)
    at.multiselect(key=explorer.KEY_COMPARE).set_value([f"{fnet.name}|fnet-distance", f"{fnet.name}|anounet"]).run()
    assert not at.exception, at.exception
    job = ui.job_registry().get(f"scoring-{fnet.name}-anounet")  # Ano-Unet over the test set runs in the background
    assert job is not None and job.join(300) and job.snapshot().status == "finished", job.snapshot().error
    at.run()
    assert not at.exception, at.exception
    names = [t.get("name", "") for t in _roc(at)["data"]]
    assert sum("AUROC" in n for n in names) == 3
    assert any("Ano-Unet map" in n for n in names) and any("f-Net distance" in n for n in names)
    ss = scored_set(fnet, "anounet")
    assert ss.maps is not None and ss.maps.shape[1:] == (32, 32) and pixel_curves(ss) is not None


def test_chosen_threshold_is_used_by_results_try_and_label_pages(two_runs: tuple[Path, Path]) -> None:
    a, _ = two_runs
    at = _open(a.name)
    ss = scored_set(a)
    mid = float(sorted(ss.scores)[len(ss.scores) // 3])
    at.number_input(key=explorer.KEY_TYPED).set_value(mid).run()
    at.number_input(key=explorer.KEY_COST_FP).set_value(3.0).run()
    saved = load_point(a, "reconstruction")
    assert saved is not None and saved.rule == "manual" and saved.threshold == pytest.approx(mid) and saved.cost_fp == 3.0
    named = "the manual threshold of the operating point saved"
    at.switch_page("views/try_image.py").run()
    assert not at.exception, at.exception
    assert any(named in c.value for c in at.caption)
    at.switch_page("views/results.py").run()
    assert not at.exception, at.exception
    assert any(named in c.value and f"({mid:.4g})" in c.value for c in at.caption)
    at.switch_page("views/labeling.py").run()
    assert not at.exception, at.exception
    assert any(f"threshold {mid:.4g}: {named}" in c.value for c in at.caption)

    # Back on Threshold (its widget values were dropped by Streamlit on the way): the same choice.
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    assert at.selectbox(key=explorer.KEY_RULE).value == "manual"
    assert at.session_state[explorer.KEY_T] == pytest.approx(mid)
    assert at.number_input(key=explorer.KEY_COST_FP).value == 3.0

    # A new session (a reload, or a server restart) finds the run and its operating point again.
    again = AppTest.from_file(APP, default_timeout=120).run()
    again.switch_page(PAGE).run()
    assert not again.exception, again.exception
    assert again.selectbox(key=ui.KEY_RUN).value == a.name
    assert again.selectbox(key=explorer.KEY_RULE).value == "manual"
    assert again.session_state[explorer.KEY_T] == pytest.approx(mid)
    assert again.number_input(key=explorer.KEY_COST_FP).value == 3.0
    clear_point(a, "reconstruction")


def test_threshold_url_opens_the_run_detector_and_threshold(two_runs: tuple[Path, Path]) -> None:
    a, b = two_runs
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"data": "builtin:synthetic", "category": "bottle", "run": b.name,
                            "detector": "reconstruction", "threshold": "0.0123"})
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    assert at.selectbox(key=ui.KEY_RUN).value == b.name
    assert at.selectbox(key=explorer.KEY_RULE).value == "manual"
    assert at.session_state[explorer.KEY_T] == pytest.approx(0.0123)
    saved = load_point(b, "reconstruction")
    assert saved is not None and saved.threshold == pytest.approx(0.0123)  # saved as the run's operating point
    assert at.query_params["run"] == [b.name] or at.query_params["run"] == b.name
    clear_point(b, "reconstruction")


def test_switching_runs_gives_the_new_runs_pixel_threshold(two_runs: tuple[Path, Path]) -> None:
    a, b = two_runs
    at = _open(a.name)
    lo = at.slider(key=explorer.KEY_PIXEL_T).min
    at.slider(key=explorer.KEY_PIXEL_T).set_value(lo).run()
    assert not at.exception, at.exception
    assert any("precision" in w.value for w in at.warning)  # every pixel segmented: a visible warning
    assert load_point(a, "reconstruction").pixel_threshold == pytest.approx(lo)
    at.selectbox(key=ui.KEY_RUN).set_value(b.name).run()
    assert not at.exception, at.exception
    pc = pixel_curves(scored_set(b))
    assert at.slider(key=explorer.KEY_PIXEL_T).value == pytest.approx(float(pc.f1_threshold), rel=1e-6)
    at.selectbox(key=ui.KEY_RUN).set_value(a.name).run()
    assert at.slider(key=explorer.KEY_PIXEL_T).value == pytest.approx(lo)  # and a's own comes back
    clear_point(a, "reconstruction")


def test_threshold_page_makes_the_report_and_importing_it_restores_the_decision(two_runs: tuple[Path, Path]) -> None:
    """Issue 15: "Make report" writes the review report of the shown decision into the run folder; uploading that
    HTML file as a record on a fresh page restores the decision (rule, target, costs, threshold)."""
    from core.services.report import stored_report
    from views.components import report_button

    a, _ = two_runs
    at = _open(a.name)
    at.selectbox(key=explorer.KEY_RULE).set_value("tpr").run()
    at.number_input(key=explorer.KEY_MISS).set_value(25.0).run()
    at.number_input(key=explorer.KEY_COST_FP).set_value(4.0).run()
    t = at.session_state[explorer.KEY_T]
    at.button(key="thr_report_make").click().run()
    assert not at.exception, at.exception
    job = ui.job_registry().get(report_button._job_id(a, "reconstruction", "dataset"))
    assert job is not None and job.join(300) and job.snapshot().status == "finished", job.snapshot().error
    at.run()
    made = stored_report(a, "reconstruction")
    assert made is not None
    download = next(d for d in at.get("download_button") if d.proto.label.startswith("Download report"))
    assert f"({made['bytes'] / 1e6:.1f} MB)" in download.proto.label
    from core.services.report import chromium_path
    labels = [d.proto.label for d in at.get("download_button")]
    if chromium_path() is not None:  # CI installs Chromium: the page offers the PDF too
        assert "Download as PDF" in labels and Path(made["pdf"]).read_bytes()[:5] == b"%PDF-"
    else:
        assert "Download as PDF" not in labels and any("No PDF on this server" in c.value for c in at.caption)
    doc = Path(made["path"]).read_bytes()

    at2 = _open(a.name)
    at2.selectbox(key=explorer.KEY_RULE).set_value("manual").run()
    at2.file_uploader(key=explorer.KEY_RECORD).set_value(("report.html", doc, "text/html")).run()
    assert not at2.exception, at2.exception
    assert at2.selectbox(key=explorer.KEY_RULE).value == "tpr"
    assert at2.number_input(key=explorer.KEY_MISS).value == pytest.approx(25.0)
    assert at2.number_input(key=explorer.KEY_COST_FP).value == pytest.approx(4.0)
    assert at2.session_state[explorer.KEY_T] == pytest.approx(t)
    assert any("restored" in s.value for s in at2.success)
    # a changed decision makes the stored report stale: the page offers to make it again
    at2.number_input(key=explorer.KEY_MISS).set_value(10.0).run()
    assert stored_report(a, "reconstruction") is None
    assert any(b.label == "Make report" for b in at2.button)
