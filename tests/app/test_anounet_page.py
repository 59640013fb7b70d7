"""AppTest of the Ano-Unet page on a tiny f-Net (and AE) trained here, plus its Streamlit-free helpers.

AppTest does not run fragment timers: tests join the background job through the registry and rerun.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.config import TrainConfig
from core.detectors import registry as detectors
from core.services import anounet_job
from core.training.loop import fit
from views import anounet
from views.components import ui

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PAGE = "views/anounet.py"


@pytest.fixture(scope="module")
def runs() -> tuple[Path, Path]:
    """An f-Net and an AE on built-in bottle at 32 px, in the test workspace (so the page lists them)."""
    fnet = fit(TrainConfig(data="builtin:synthetic", category="bottle", model="fnet", size=32, base_channels=4, fnet_stages=3,
                           fnet_embed_dim=8, fnet_references="paste", epochs=1, batch_size=32, device="cpu"))
    ae = fit(TrainConfig(data="builtin:synthetic", category="bottle", model="ae", size=32, base_channels=4, depth=3, epochs=1,
                         device="cpu"))
    return fnet, ae


def _open(category: str, run_id: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    at.selectbox(key=ui.KEY_SOURCE).set_value("builtin:synthetic").run()
    at.selectbox(key=ui.KEY_CATEGORY).set_value(category).run()
    if run_id is not None:
        at.selectbox(key=ui.KEY_RUN).set_value(run_id).run()
    assert not at.exception, at.exception
    return at


def _finish(at: AppTest, key: str = anounet.KEY_JOB, status: str = "finished") -> str:
    job_id = at.session_state[key]
    job = ui.job_registry().get(job_id)
    assert job is not None and job.join(180)
    snap = job.snapshot()
    assert snap.status == status, snap.error
    at.run()
    assert not at.exception, at.exception
    return job_id


def _jobs() -> int:
    return len(ui.job_registry().snapshots(anounet_job.JOB_KIND))


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_page_runs_a_job_shows_maps_beside_the_ae_and_reuses_cached_results(runs: tuple[Path, Path]) -> None:
    fnet, ae = runs
    at = _open("bottle", ae.name)
    assert at.title[0].value == "Ano-Unet"
    assert at.selectbox(key=anounet.KEY_FNET).value == fnet.name
    picked = at.multiselect(key=anounet.KEY_IMAGES).value
    assert len(picked) == 4 and sum(p.startswith("good/") for p in picked) == 1
    assert len({p.split("/")[0] for p in picked}) == 4, "defaults: different defect types plus one good image"
    assert any("Run Ano-Unet" in i.value for i in at.info)

    before = _jobs()
    at.number_input(key=anounet.KEY_EPOCHS).set_value(4)
    at.number_input(key=anounet.KEY_BATCH).set_value(3)
    at.button(key=anounet.KEY_RUN_BUTTON).click().run()
    assert not at.exception, at.exception
    job_id = _finish(at)
    assert _jobs() == before + 1
    snap = ui.job_registry().get(job_id).snapshot()
    results = snap.result["results"]
    assert len(results) == 4 and all(r is not None and not r.cached for r in results)
    assert all(r.epochs <= 4 and r.anomaly_map.shape == (32, 32) for r in results)
    assert all(len(c["loss_r"]) >= 2 for c in snap.state["curves"].values()), "the loss terms were published per epoch"
    labels = {m.label for m in at.metric}
    assert {"Pixel AUROC · Ano-Unet", "Pixel AUROC · AE/VAE", "Seconds per image"} <= labels
    heads = [m.value for m in at.markdown]
    assert "**Ano-Unet |x − G(x)|**" in heads and "**AE/VAE |x − f(x)|**" in heads
    assert len(at.get("plotly_chart")) == 4, "one loss chart per image"
    assert any(f"AE run `{ae.name}`" in c.value for c in at.caption)

    # Same request: the finished job is reused, nothing new starts.
    started = snap.started
    at.button(key=anounet.KEY_RUN_BUTTON).click().run()
    assert at.session_state[anounet.KEY_JOB] == job_id and _jobs() == before + 1
    assert ui.job_registry().get(job_id).snapshot().started == started

    # K does not change results, so it is not part of the request; after the in-memory result is gone,
    # the same request is answered from the disk cache.
    job = ui.job_registry().get(job_id)
    with job.lock:
        job.result = None
    at.number_input(key=anounet.KEY_BATCH).set_value(2)
    at.button(key=anounet.KEY_RUN_BUTTON).click().run()
    assert _finish(at) == job_id
    again = ui.job_registry().get(job_id).snapshot().result["results"]
    assert all(r.cached for r in again)
    for a, b in zip(results, again):
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
    assert any("4 from the result cache" in c.value for c in at.caption)
    assert any(":blue-badge[cached]" in m.value for m in at.markdown)


def test_page_stop_keeps_finished_images_and_says_so(runs: tuple[Path, Path]) -> None:
    fnet, _ = runs
    at = _open("bottle")
    at.number_input(key=anounet.KEY_EPOCHS).set_value(400)
    at.number_input(key=anounet.KEY_BETA).set_value(777.0)  # not cached by another test
    at.toggle(key=anounet.KEY_EARLY).set_value(False)
    at.number_input(key=anounet.KEY_BATCH).set_value(2)
    at.button(key=anounet.KEY_RUN_BUTTON).click().run()
    job = ui.job_registry().get(at.session_state[anounet.KEY_JOB])
    for _ in range(600):  # wait until the first images are in flight
        if job.snapshot().state.get("curves"):
            break
        job.join(0.05)
    job.request_stop()
    _finish(at, status="stopped")
    results = job.snapshot().result["results"]
    assert any(r is not None and r.stop_reason == "stopped" for r in results)
    assert any(r is None for r in results), "images not started yet are skipped"
    assert any("Stopped:" in i.value for i in at.info)


def test_page_uploads_and_bad_files(runs: tuple[Path, Path]) -> None:
    at = _open("bottle")
    at.segmented_control(key=anounet.KEY_SOURCE).set_value(ui.SOURCE_UPLOAD).run()
    at.button(key=anounet.KEY_RUN_BUTTON).click().run()
    assert not at.exception and any("Upload at least one image" in w.value for w in at.warning)
    gray16 = (np.random.default_rng(1).integers(0, 65535, (40, 48))).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(gray16).save(buf, format="PNG")
    at.file_uploader(key=anounet.KEY_UPLOADS).set_value(
        [("part.png", buf.getvalue(), "image/png"), ("broken.png", b"\x89PNG not really", "image/png")])
    at.number_input(key=anounet.KEY_EPOCHS).set_value(2)
    at.button(key=anounet.KEY_RUN_BUTTON).click().run()
    assert not at.exception, at.exception
    assert len(at.error) == 1 and "broken.png" in at.error[0].value
    job_id = _finish(at)
    results = ui.job_registry().get(job_id).snapshot().result["results"]
    assert len(results) == 1 and results[0].reconstruction.shape == (3, 32, 32)
    assert any("upload" in m.value for m in at.markdown)


def test_page_without_fnet_offers_training_and_then_lists_it(runs: tuple[Path, Path]) -> None:
    at = _open("mesh")
    assert anounet.KEY_FNET not in [s.key for s in at.selectbox]
    assert any("No f-Net for this data yet" in e.label for e in at.expander)
    at.selectbox(key=anounet.KEY_TRAIN_SIZE).set_value(32)
    at.number_input(key=anounet.KEY_TRAIN_EPOCHS).set_value(1)
    at.button(key=anounet.KEY_TRAIN_BUTTON).click().run()
    assert not at.exception, at.exception
    _finish(at, ui.KEY_TRAIN_JOB)
    at.run()
    assert not at.exception, at.exception
    assert "-fnet-synthetic-mesh" in at.selectbox(key=anounet.KEY_FNET).value
    assert at.multiselect(key=anounet.KEY_IMAGES).value, "the image picker appears once an f-Net exists"


# --------------------------------------------------------------------------- helpers without Streamlit
def test_comparison_maps_convert_channels_and_size(runs: tuple[Path, Path]) -> None:
    from core.runs import load_run

    _, ae = runs
    run = load_run(ae)
    gray = np.random.default_rng(0).integers(0, 255, (2, 1, 48, 48), dtype=np.uint8)
    from core.services.predict import maps_for

    maps, scores = maps_for(run, gray)
    assert maps.shape == (2, 48, 48) and scores.shape == (2,) and np.isfinite(maps).all()


def test_decode_upload_reports_bad_bytes() -> None:
    img, err = ui.decode_upload(32, 3, "x.png", b"nope")
    assert img is None and "x.png" in err
    img, err = ui.decode_upload(32, 1, "ok.png", _png(np.zeros((10, 20, 3), np.uint8)))
    assert err is None and img.shape == (32, 32, 1)


def test_fnet_run_detector_is_the_distance_to_c(runs: tuple[Path, Path]) -> None:
    from core.detectors.fnet_distance import FNetDetector
    from core.runs import load_run

    fnet, _ = runs
    det = detectors.build(load_run(fnet))
    assert isinstance(det, FNetDetector)
    out = det.predict(torch.rand(2, 3, 32, 32))
    assert out.score.shape == (2,) and out.reconstruction is None
