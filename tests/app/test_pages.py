"""AppTest smoke tests: every page runs without exception; training from the Train page works."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PAGES = ["views/home.py", "views/dataset.py", "views/train.py", "views/results.py", "views/explorer.py", "views/labeling.py", "views/projection.py", "views/anounet.py", "views/try_image.py"]


def _app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=120).run()


def test_home_renders_state_and_quick_start() -> None:
    at = _app()
    assert not at.exception
    assert at.title[0].value == "AnomalyLab"
    assert "Quick start" in [s.value for s in at.subheader]
    assert any(b.label == "Train the demo models" for b in at.button)
    assert at.sidebar.selectbox(key="sidebar_source").value == "builtin:synthetic"


@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs_without_exception(page: str) -> None:
    at = _app()
    at.switch_page(page).run()
    assert not at.exception, at.exception


def test_train_page_starts_a_job_and_the_run_appears() -> None:
    from views.components import ui

    at = _app()
    at.switch_page("views/train.py").run()
    at.sidebar.selectbox(key=ui.KEY_CATEGORY).set_value("fabric").run()
    at.selectbox(key="train_size").set_value(32)
    assert at.radio(key="train_model").value == "patchcore"  # the default: one pass, no epochs (the e2e test trains an AE)
    at.button[0].click()  # the form's submit button is the first button on the page
    at.run()
    assert not at.exception
    job_id = at.session_state[ui.KEY_TRAIN_JOB]
    job = ui.job_registry().get(job_id)
    assert job is not None and job.join(300)
    snap = job.snapshot()
    assert snap.status == "finished", snap.error
    at.run()  # AppTest does not run fragment timers: rerun by hand once the job ended
    assert not at.exception
    run_id = Path(snap.state["run_dir"]).name
    assert any("run" in df.value.columns and run_id in df.value["run"].tolist() for df in at.dataframe)
    assert at.sidebar.selectbox(key=ui.KEY_RUN).value == run_id
    assert "fabric" in run_id and "-patchcore-" in run_id
    at.switch_page("views/home.py").run()  # the sidebar choice survives a page switch
    assert at.sidebar.selectbox(key=ui.KEY_CATEGORY).value == "fabric"


def test_custom_folder_outside_allowed_roots_is_refused() -> None:
    from views.components import ui

    at = _app()
    at.sidebar.selectbox(key=ui.KEY_SOURCE).set_value(ui.CUSTOM_SOURCE).run()
    at.sidebar.text_input(key=ui.KEY_CUSTOM_PATH).input("/etc").run()
    assert not at.exception
    assert any("outside the folders this server may read" in e.value for e in at.sidebar.error)


def test_custom_folder_inside_allowed_roots_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    from PIL import Image

    from views.components import ui

    root = tmp_path / "parts"
    for sub, n in (("good", 6), ("scratch", 2)):
        (root / sub).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / sub / f"{i}.png")
    monkeypatch.setenv("ANOMALYLAB_ALLOWED_ROOTS", str(tmp_path))
    at = _app()
    at.sidebar.selectbox(key=ui.KEY_SOURCE).set_value(ui.CUSTOM_SOURCE).run()
    at.sidebar.text_input(key=ui.KEY_CUSTOM_PATH).input(str(root)).run()
    assert not at.exception and not at.sidebar.error
    assert at.sidebar.selectbox(key=ui.KEY_CATEGORY).value == "parts"


def test_train_page_shows_a_queued_job_with_its_place_and_cancels_it() -> None:
    """Issue 16: heavy jobs beyond the free slots wait in a queue; every page that starts one shows the place in
    line and the expected start, and Cancel takes it out (it never starts)."""
    import threading

    from views.components import ui

    registry = ui.job_registry()
    release, ran = threading.Event(), []

    def blocker(ctx) -> None:
        ctx.update(eta_seconds=600.0, epochs=5, epoch=1)
        release.wait(60)

    busy = [registry.start("train", f"blocker {i}", blocker) for i in range(registry.slots.n)]
    waiting = registry.start("train", "the queued one", lambda ctx: ran.append(1))
    try:
        at = _app()
        at.switch_page("views/train.py").run()
        assert not at.exception, at.exception
        queued = [i.value for i in at.info if "the queued one" in i.value]
        assert queued and "is queued: number 1 in line" in queued[0] and "about 10 min" in queued[0]
        at.button(key=f"train-cancel-{waiting.id}").click().run()
        assert not at.exception, at.exception
        assert waiting.join(5) and waiting.snapshot().status == "stopped" and ran == []
    finally:
        release.set()
        for job in busy:
            job.join(10)


def test_train_page_offers_the_local_gpus_and_starts_a_data_parallel_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16: with 2 or more GPUs the Train page trains data-parallel over them (a torchrun job holding as many
    slots); with fewer it does not offer it. The launch itself is tested in tests/core/test_jobs.py."""
    import core.device
    from core.services.jobs import WorkerTask
    from views.components import jobs_view, ui

    key_gpus = "train_gpus"  # views/train.py's KEY_GPUS (importing a page module would run it)
    at = _app()
    at.switch_page("views/train.py").run()
    assert not [n for n in at.number_input if n.key == key_gpus]  # no GPUs here: no such control

    launched: list[tuple[int, str]] = []

    def fake(cfg, nproc, run_dir=None, evaluate=True):
        launched.append((nproc, cfg.model))
        return WorkerTask(_noop_job)

    monkeypatch.setattr(core.device, "local_gpus", lambda: 2)
    monkeypatch.setattr(jobs_view, "distributed_training_task", fake)
    at.run()
    gpus = at.number_input(key=key_gpus)
    assert gpus.value == 1 and gpus.max == 2
    at.radio(key="train_model").set_value("ae")
    at.selectbox(key="train_size").set_value(32)
    gpus.set_value(2)
    at.button[0].click()
    at.run()
    assert not at.exception, at.exception
    assert launched == [(2, "ae")]
    job = ui.job_registry().get(at.session_state[ui.KEY_TRAIN_JOB])
    assert job.need == 2 and job.snapshot().state["nproc"] == 2 and job.title.endswith("on 2 GPUs")
    assert job.join(30)


def _noop_job(ctx) -> dict:
    return {"run_dir": None}
