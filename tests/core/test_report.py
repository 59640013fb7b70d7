"""The review report (issue 15): every section, the same numbers as `evaluate --json --rule saved`, bounded size,
the embedded decision record, the paired test, the intervals' pixel decomposition, PDF or a clear message."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from core.cli.main import main
from core.config import TrainConfig
from core.errors import ConfigError
from core.evaluation import metrics
from core.evaluation.bootstrap import PixelDecomposition, delong_paired
from core.evaluation.operating import OperatingPoint, save_point
from core.evaluation.record import DecisionRecord
from core.evaluation.scored import scored_set
from core.services import report as report_mod
from core.training.loop import fit

SECTIONS = ("decision", "data", "model", "metrics", "curves", "confusion", "record")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("report_runs")
    kw = dict(data="builtin:synthetic", category="bottle", model="ae", size=32, base_channels=4, depth=3, device="cpu")
    a = fit(TrainConfig(**kw, epochs=2), base / "a")
    b = fit(TrainConfig(**kw, epochs=1, seed=1), base / "b")
    return a, b


def _evaluate_json(run: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["evaluate", str(run), "--rule", "saved", "--json", "--no-strips"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_report_has_every_section_and_the_numbers_of_evaluate(runs, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run, other = runs
    ss = scored_set(run)
    mid = float(np.sort(ss.scores)[len(ss.scores) // 2])
    save_point(run, "reconstruction", OperatingPoint(rule="manual", threshold=mid, cost_fp=2.0, cost_fn=5.0,
                                                     note="chosen in review"))
    ev = _evaluate_json(run, capsys)
    out = tmp_path / "review.html"
    assert main(["report", str(run), "--out", str(out), "--compare", str(other), "--json", "--boot", "200"]) == 0
    rep = json.loads(capsys.readouterr().out)
    doc = out.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f"<h2 id={section}>" in doc
    d = rep["decision"]
    for key in ("threshold", "tp", "fp", "tn", "fn", "tpr", "fpr", "precision", "cost_per_1000"):
        assert d[key] == pytest.approx(ev[key], abs=1e-12), key
    for key in ("image_auroc", "average_precision", "pixel_auroc", "aupro"):
        assert rep["metrics"][key] == pytest.approx(ev[key], abs=1e-12), key
        assert f"{ev[key]:.3f}" in doc
        lo, hi = rep["intervals"][key]
        assert lo <= ev[key] + 1e-9 and ev[key] <= hi + 1e-9
    assert rep["intervals"]["image_auroc"] == pytest.approx(ev["image_auroc_ci"], abs=0.02)
    # plain words at the top
    assert f"catches <b>{ev['tp']} of {ev['tp'] + ev['fn']} defective parts" in doc
    assert f"{ev['cost_per_1000']:.1f} per 1,000 parts" in doc and "a false alarm costs 2" in doc
    # data and model
    assert rep["data"]["counts"]["test"]["good"] == 24 and rep["model"]["epochs_trained"] == 2
    assert re.fullmatch(r"[0-9a-f]{64}", rep["model"]["checkpoint_sha256"])
    # per defect: every defective image is in one row, and the caught counts add up to tp
    assert sum(r["n"] for r in rep["per_defect"]) == ev["n_defective"]
    assert sum(r["caught"] for r in rep["per_defect"]) == ev["tp"]
    # the galleries: every false alarm and miss (below the cap), with its score
    g = rep["galleries"]
    assert (g["n_false_alarms"], g["n_misses"]) == (ev["fp"], ev["fn"])
    assert doc.count("<figure>") == min(60, ev["fp"]) + min(60, ev["fn"]) + min(8, ev["tp"])
    assert all(f"{p}<br>score" in doc for p in g["false_alarms"] + g["misses"])
    # compared run: a paired test with its p-value
    test = rep["compare"][0]["test"]
    assert test["method"].startswith("DeLong") and 0.0 <= test["p_value"] <= 1.0 and f"p = {test['p_value']:.3g}" in doc
    # the record is embedded and is the decision
    rec = DecisionRecord.from_html(doc)
    assert rec.threshold == ev["threshold"] and rec.rule == "manual" and rec.note == "chosen in review"
    assert rec.metrics.tp == ev["tp"] and rec.costs.cost_fp == 2.0
    # self-contained: plotly.js inline once, no external script, stylesheet or image
    assert doc.count("<script type='text/javascript'>") == 1 and doc.count(report_mod.get_plotlyjs()) == 1
    ours = doc.replace(report_mod.get_plotlyjs(), "")  # (plotly.js names URLs it only fetches for maps)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", ours) and "cdn.plot.ly" not in ours
    assert rep["bytes"] == len(doc.encode("utf-8")) and "MB (plotly.js" in doc
    assert rep["bytes"] < len(report_mod.get_plotlyjs()) + 2_000_000  # thumbnails, not full images


def test_the_report_refuses_to_replace_a_file_it_did_not_write(runs, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = runs
    mine = tmp_path / "notes.html"
    mine.write_text("<html>my own notes</html>")
    assert main(["report", str(run), "--out", str(mine), "--boot", "50"]) != 0
    assert "not an AnomalyLab report" in capsys.readouterr().err and "my own notes" in mine.read_text()
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(out), "--boot", "50"]) == 0
    assert main(["report", str(run), "--out", str(out), "--boot", "50"]) == 0  # its own earlier report: replaced
    assert main(["report", str(run), "--out", str(tmp_path / "r.txt")]) != 0


def test_pdf_where_chromium_is_installed_or_a_message(runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = runs
    if report_mod.chromium_path() is not None and report_mod.sync_playwright is not None:
        assert main(["report", str(run), "--out", str(tmp_path / "a.html"), "--pdf", "--boot", "50"]) == 0
        assert (tmp_path / "a.pdf").read_bytes()[:5] == b"%PDF-"
    monkeypatch.setattr(report_mod, "chromium_path", lambda: None)
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(tmp_path / "b.html"), "--pdf", "--boot", "50"]) == 0
    err = capsys.readouterr().err
    assert "no PDF" in err and "Chromium" in err and (tmp_path / "b.html").exists() and not (tmp_path / "b.pdf").exists()
    with pytest.raises(ConfigError, match="Chromium"):
        report_mod.write_pdf(tmp_path / "b.html", tmp_path / "b.pdf")


def test_the_pixel_decomposition_gives_the_full_set_metrics_exactly(runs) -> None:
    run, _ = runs
    ss = scored_set(run)
    sel = ss.pixel_known
    dec = PixelDecomposition(ss.maps[sel], ss.masks[sel])
    w = np.ones((1, int(sel.sum())))
    maps = ss.maps[sel].astype(np.float32)
    assert dec.pixel_auroc(w)[0] == pytest.approx(metrics.pixel_auroc(maps, ss.masks[sel]), abs=1e-9)
    assert dec.aupro(w)[0] == pytest.approx(metrics.aupro(maps, ss.masks[sel]), abs=1e-9)


def test_delong_paired_test() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(30), np.zeros(30)].astype(int)
    good = y + rng.normal(0, 0.3, 60)
    noise = rng.normal(0, 1, 60)
    same = delong_paired(good, good, y)
    assert same["difference"] == 0 and same["p_value"] == 1.0
    far = delong_paired(good, noise, y)
    assert far["auroc_a"] == pytest.approx(metrics.image_auroc(good, y))
    assert far["auroc_b"] == pytest.approx(metrics.image_auroc(noise, y))
    assert far["difference"] > 0.3 and far["p_value"] < 1e-4
    # against a paired bootstrap of the same difference: the same conclusion and a similar standard error
    diffs = []
    for _ in range(2000):
        i = np.r_[rng.choice(30, 30), 30 + rng.choice(30, 30)]
        diffs.append(metrics.image_auroc(good[i], y[i]) - metrics.image_auroc(noise[i], y[i]))
    assert far["se"] == pytest.approx(float(np.std(diffs)), rel=0.35)
    assert delong_paired(good, noise, np.zeros(60, int)) is None


def test_a_report_without_labeled_images_says_the_decision_cannot_be_judged(
        runs, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    run, _ = runs
    monkeypatch.setenv("ANOMALYLAB_HOME", str(tmp_path / "ws"))  # an empty label store: "mine" labels nothing
    assert main(["report", str(run), "--out", str(tmp_path / "mine.html"), "--labels", "mine", "--boot", "50"]) == 0
    err = capsys.readouterr().err
    assert "No defective or good test image has a label here (labels: mine)" in err
    assert "cannot be judged" in (tmp_path / "mine.html").read_text(encoding="utf-8")


def test_a_preset_operating_point_makes_a_report(runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.evaluation.curves import PRESETS

    run, _ = runs
    preset = next(iter(PRESETS))
    save_point(run, "reconstruction", OperatingPoint(rule=f"preset:{preset}"))
    ev = _evaluate_json(run, capsys)
    assert main(["report", str(run), "--out", str(tmp_path / "p.html"), "--boot", "50", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["decision"]["threshold"] == ev["threshold"]
    rec = DecisionRecord.from_html((tmp_path / "p.html").read_text(encoding="utf-8"))
    assert rec.preset == preset and rec.threshold == ev["threshold"]
