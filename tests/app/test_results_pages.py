"""AppTest of the Results and Try-your-image pages on tiny runs trained here.

The runs are picked with the sidebar widgets that every page draws (``ui.selection()``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from app_helpers import category_without_run
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.config import TrainConfig
from core.evaluation.evaluate import evaluate_run
from core.runs import load_run
from core.services import predict
from core.training.loop import fit
from views import results, try_image
from views.components import ui

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture(scope="module")
def ae_run() -> Path:
    run_dir = fit(TrainConfig(data="builtin:synthetic", category="bottle", size=32, base_channels=4, depth=3, epochs=1, device="cpu"))
    evaluate_run(run_dir, device="cpu", strips=False)
    return run_dir


@pytest.fixture(scope="module")
def vae_run() -> Path:
    return fit(TrainConfig(data="builtin:digits", category="7", model="vae", size=32, z_dim=2, base_channels=8, epochs=1, device="cpu"))


def _open(page: str, source: str, category: str, run_id: str | None = None) -> AppTest:
    """Open ``page`` and select data, category and (optionally) run with the sidebar widgets."""
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page(page).run()
    assert not at.exception
    at.selectbox(key=ui.KEY_SOURCE).set_value(source).run()
    at.selectbox(key=ui.KEY_CATEGORY).set_value(category).run()
    if run_id is not None:
        at.selectbox(key=ui.KEY_RUN).set_value(run_id).run()
    assert not at.exception
    return at


def _png(img: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, mode).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- Results page
def test_results_page_shows_metrics_strips_and_reacts_to_filters(ae_run: Path) -> None:
    at = _open("views/results.py", "builtin:synthetic", "bottle", ae_run.name)
    assert at.title[0].value == "Results"
    tiles = {m.label: m.value for m in at.metric}
    assert {"Image AUROC", "Avg precision", "F1-max", "F1 threshold", "Pixel AUROC", "AUPRO"} <= set(tiles)
    assert tiles["Image AUROC"] != "—" and tiles["Pixel AUROC"] != "—"  # synthetic data has masks
    assert [t.label for t in at.tabs] == ["Test images", "Score distribution"]  # an AE has no latent views
    assert len(at.tabs[0].image) == 1 + results.PER_PAGE  # the colour bar, then one strip per image of the page
    assert len(at.get("plotly_chart")) == 1  # the score histogram
    assert any("99.9% quantile" in c.value for c in at.caption)
    assert len(at.pagination) == 1 and at.pagination[0].num_pages > 1

    def ranks() -> list[int]:
        return [int(m.value[3:].split("**")[0]) for m in at.markdown if m.value.startswith("**#")]

    assert ranks() == list(range(1, results.PER_PAGE + 1)), "each strip is captioned with its rank and score"
    at.pagination[0].set_value(2).run()
    assert not at.exception and ranks()[0] == results.PER_PAGE + 1
    at.multiselect(key=results.KEY_DEFECTS).set_value(["scratch"]).run()
    assert not at.exception
    assert ranks()[0] == 1  # a new filter starts from its first page
    names = [c.value for c in at.caption if c.value.startswith("test/")]
    assert names and all(n.startswith("test/scratch/") for n in names)

    def scores() -> list[float]:
        return [float(m.value.split("score **")[1].split("**")[0]) for m in at.markdown if m.value.startswith("**#")]

    high_first = scores()
    assert high_first == sorted(high_first, reverse=True)
    at.selectbox(key=results.KEY_SORT).set_value(results.SORT_ASC).run()
    assert not at.exception
    low_first = scores()
    assert low_first == sorted(low_first) and low_first[0] <= high_first[-1]

    at.toggle(key=results.KEY_MASKS).set_value(False).run()
    assert not at.exception
    at.multiselect(key=results.KEY_DEFECTS).set_value([]).run()
    assert not at.exception and any("pick at least one type" in i.value for i in at.info)


def test_results_page_for_a_digits_vae_shows_latent_views(ae_run: Path, vae_run: Path) -> None:
    at = _open("views/results.py", "builtin:synthetic", "bottle", ae_run.name)
    at.multiselect(key=results.KEY_DEFECTS).set_value(["good"]).run()
    at.selectbox(key=ui.KEY_SOURCE).set_value("builtin:digits").run()
    at.selectbox(key=ui.KEY_RUN).set_value(vae_run.name).run()
    assert not at.exception
    # A newly selected run shows all its types again (the digits' defect types are other digits).
    assert at.multiselect(key=results.KEY_DEFECTS).value == ["good", *(f"digit_{d}" for d in range(10) if d != 7)]
    tiles = {m.label: m.value for m in at.metric}
    assert tiles["Pixel AUROC"] == "—" and tiles["AUPRO"] == "—"  # digits have no masks
    assert tiles["Image AUROC"] != "—"
    assert [t.label for t in at.tabs] == ["Test images", "Score distribution", "Latent space"]
    latent = at.tabs[2]
    assert len(latent.get("plotly_chart")) == 1  # the scatter
    assert len(latent.image) == 1  # the decoded grid
    assert any("Decoded 12×12 grid" in c.value for c in latent.caption)
    assert any("2-D latent means" in c.value for c in latent.caption)


def test_results_and_try_pages_without_a_run_show_guidance(ae_run: Path) -> None:
    free = [category_without_run()]
    for page in ("views/results.py", "views/try_image.py"):
        at = _open(page, "builtin:synthetic", free[0])
        assert ui.KEY_RUN not in [sb.key for sb in at.selectbox]  # no run for this category
        assert any("No trained model" in i.value for i in at.info)
        assert not at.metric and not at.image


# --------------------------------------------------------------------------- Try your image
def test_analyze_upload_reports_bad_files_and_scores_good_ones(ae_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = load_run(ae_run)
    bad = predict.analyze_upload(run, "notes.png", b"this is not an image")
    assert bad.error and "notes.png" in bad.error and "not a readable image" in bad.error and bad.score is None
    empty = predict.analyze_upload(run, "empty.png", b"")
    assert empty.error and "empty.png" in empty.error and "empty" in empty.error
    rng = np.random.default_rng(0)
    photo = _png(rng.integers(0, 255, (80, 60, 3), dtype=np.uint8))
    cut = predict.analyze_upload(run, "cut.png", photo[: len(photo) // 2])
    assert cut.error and "cut.png" in cut.error

    rgba = predict.analyze_upload(run, "logo.png", _png(rng.integers(0, 255, (40, 50, 4), dtype=np.uint8)))
    assert rgba.error is None and np.isfinite(rgba.score)
    assert rgba.image.shape == (32, 32, 3) and rgba.amap.shape == (32, 32) and rgba.recon.shape == (3, 32, 32)
    assert rgba.source_shape == (40, 50, 3)
    deep = predict.analyze_upload(run, "scan.png", _png(rng.integers(0, 65535, (64, 64), dtype=np.uint16)))
    assert deep.error is None and deep.image.shape == (32, 32, 3)

    monkeypatch.setattr("core.data.images.MAX_PIXELS", 100)
    big = predict.analyze_upload(run, "huge.png", photo)
    assert big.error and "huge.png" in big.error and "larger than the limit" in big.error


def test_position_among_test_scores() -> None:
    scores = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 20.0])
    labels = np.array([0, 0, 0, 0, 1, 1])
    pos = predict.position(3.5, scores, labels, threshold=10.0)
    assert pos.good_percentile == 75.0 and pos.defect_percentile == 0.0 and pos.flagged is False
    pos = predict.position(20.0, scores, labels, threshold=10.0)
    assert pos.good_percentile == 100.0 and pos.defect_percentile == 75.0 and pos.flagged is True
    pos = predict.position(2.0, scores[:4], labels[:4], threshold=None)
    assert pos.good_percentile == 37.5 and pos.defect_percentile is None and pos.flagged is None


def test_try_page_scores_an_example_and_uploads(ae_run: Path) -> None:
    at = _open("views/try_image.py", "builtin:synthetic", "bottle", ae_run.name)
    assert at.title[0].value == "Try your image"
    assert [m.label for m in at.metric] == ["Anomaly score"]  # the example test image, without any upload
    assert len(at.image) == 1 and len(at.get("plotly_chart")) == 1
    assert any("ground truth" in m.value for m in at.markdown)

    good = _png(np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    at.file_uploader(key=try_image.KEY_UPLOADS).set_value(
        [("part.png", good, "image/png"), ("broken.png", b"\x89PNG not really", "image/png"), ("gray.png", good[:400], "image/png")]
    ).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 2 and any("broken.png" in e for e in errors) and any("gray.png" in e for e in errors)
    assert [m.label for m in at.metric] == ["Anomaly score"]  # the good upload still works
    assert any("part.png" in m.value for m in at.markdown)
    assert any("good test images" in m.value for m in at.markdown)
