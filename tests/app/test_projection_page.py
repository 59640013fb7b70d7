"""AppTest of the Projection page on a tiny VAE trained here, plus its Streamlit-free helpers.

AppTest does not run fragment timers: tests join the background job through the registry and rerun.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from app_helpers import category_without_run
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.config import ProjectionConfig, TrainConfig
from core.detectors.reconstruction import ReconstructionDetector
from core.runs import load_run
from core.services import projection_job
from core.training.loop import fit
from views import projection
from views.components import ui

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PAGE = "views/projection.py"


@pytest.fixture(scope="module")
def vae_run() -> Path:
    return fit(TrainConfig(data="builtin:synthetic", category="bottle", model="vae", size=32, z_dim=16, base_channels=8,
                           epochs=1, device="cpu"))


def _open(source: str, category: str, run_id: str | None = None) -> AppTest:
    """Open the Projection page and select data, category and (optionally) run in the sidebar."""
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    at.selectbox(key=ui.KEY_SOURCE).set_value(source).run()
    at.selectbox(key=ui.KEY_CATEGORY).set_value(category).run()
    if run_id is not None:
        at.selectbox(key=ui.KEY_RUN).set_value(run_id).run()
    assert not at.exception, at.exception
    return at


def _finish(at: AppTest) -> str:
    """Join the job the page started, then rerun by hand (as the fragment timer would)."""
    job_id = at.session_state[projection.KEY_JOB]
    job = ui.job_registry().get(job_id)
    assert job is not None and job.join(120)
    snap = job.snapshot()
    assert snap.status == "finished", snap.error
    at.run()
    assert not at.exception, at.exception
    return job_id


def _n_projection_jobs() -> int:
    return len(ui.job_registry().snapshots(projection_job.JOB_KIND))


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- the page
def test_projection_page_runs_a_job_shows_animation_comparison_gif_and_reuses_results(vae_run: Path) -> None:
    at = _open("builtin:synthetic", "bottle", vae_run.name)
    assert at.title[0].value == "Projection"
    picked = at.multiselect(key=projection.KEY_IMAGES).value
    assert len(picked) == 4 and any("/good/" in p for p in picked)
    assert len({Path(p).parent.name for p in picked}) == 4, "the defaults cover different defect types plus one good image"
    defaults = ProjectionConfig()
    assert at.number_input(key=projection.KEY_STEPS).value == defaults.steps
    assert at.number_input(key=projection.KEY_ALPHA).value == pytest.approx(defaults.alpha)
    assert at.number_input(key=projection.KEY_LAMBDA).value == pytest.approx(defaults.lam)
    assert at.selectbox(key=projection.KEY_MAP_MODE).value == defaults.map_mode
    assert any("Run projection" in i.value for i in at.info)  # nothing computed yet
    assert not at.get("plotly_chart")

    before = _n_projection_jobs()
    at.number_input(key=projection.KEY_STEPS).set_value(3)
    at.button(key=projection.KEY_RUN_BUTTON).click().run()
    assert not at.exception, at.exception
    job_id = _finish(at)
    assert _n_projection_jobs() == before + 1
    assert projection_job.stored_result_path(vae_run, job_id).is_file()  # every process (and a restart) finds it

    charts = at.get("plotly_chart")
    assert len(charts) == 1
    spec = json.loads(charts[0].proto.spec)
    assert len(spec["frames"]) == 4, "one animation frame per step 0..3"
    assert spec["layout"]["updatemenus"][0]["buttons"][0]["label"].endswith("Play")
    assert [s["label"] for s in spec["layout"]["sliders"][0]["steps"]] == ["0", "1", "2", "3"]
    heads = [m.value for m in at.markdown]
    for head in ("**Test image**", "**Plain reconstruction f(x₀)**", "**Projection result x_T**"):
        assert head in heads
    assert sum(1 for c in at.caption if c.value.startswith("Each map on its own colour scale")) == 1
    assert any("3 of 3 steps" in c.value for c in at.caption)
    downloads = at.get("download_button")
    assert len(downloads) == 1 and "GIF" in downloads[0].proto.label
    snap = ui.job_registry().get(job_id).snapshot()
    assert snap.result["x"].shape == (4, 4, 32, 32, 3) and snap.result["heat"].dtype == np.uint8
    assert len(snap.result["energy"]) == 4 and snap.result["stopped"] is False

    # The server-side step view.
    at.select_slider(key=projection.KEY_STEP).set_value(1).run()
    assert not at.exception, at.exception
    assert any("Step 1 of 3" in c.value for c in at.caption)

    # Same images and settings: the finished job is reused, nothing new starts.
    started = snap.started
    at.button(key=projection.KEY_RUN_BUTTON).click().run()
    assert not at.exception, at.exception
    assert at.session_state[projection.KEY_JOB] == job_id
    assert _n_projection_jobs() == before + 1
    assert ui.job_registry().get(job_id).snapshot().started == started
    assert len(at.get("plotly_chart")) == 1

    # Other settings: another job.
    at.number_input(key=projection.KEY_STEPS).set_value(2)
    at.button(key=projection.KEY_RUN_BUTTON).click().run()
    other = _finish(at)
    assert other != job_id and _n_projection_jobs() == before + 2
    assert json.loads(at.get("plotly_chart")[0].proto.spec)["frames"].__len__() == 3


def test_projection_page_projects_uploads_and_reports_bad_files(vae_run: Path) -> None:
    at = _open("builtin:synthetic", "bottle", vae_run.name)
    at.segmented_control(key=projection.KEY_SOURCE).set_value(ui.SOURCE_UPLOAD).run()
    assert not at.exception, at.exception
    at.button(key=projection.KEY_RUN_BUTTON).click().run()  # nothing uploaded yet
    assert not at.exception and any("Upload at least one image" in w.value for w in at.warning)
    photo = _png(np.random.default_rng(3).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    at.file_uploader(key=projection.KEY_UPLOADS).set_value(
        [("part.png", photo, "image/png"), ("broken.png", b"\x89PNG not really", "image/png")]
    )
    at.number_input(key=projection.KEY_STEPS).set_value(2)
    at.button(key=projection.KEY_RUN_BUTTON).click().run()
    assert not at.exception, at.exception
    assert len(at.error) == 1 and "broken.png" in at.error[0].value
    _finish(at)
    assert len(at.get("plotly_chart")) == 1
    assert any("upload" in m.value for m in at.markdown)  # the row is badged as an upload


def test_projection_page_warns_about_divergence(vae_run: Path) -> None:
    """A job whose second image explodes: the page names the image and the step, never a traceback."""

    class Exploding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(0.5))
            self.calls = 0

        def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.w * x)

        def recon_energy(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            e = (x - recon).pow(2).flatten(1).sum(1)
            return e if self.calls == 1 else e * torch.tensor([1.0, 1e9])

    model = Exploding()
    x0 = torch.rand(2, 3, 32, 32)
    cfg = ProjectionConfig(steps=3, monotone=False)  # the article's plain update (the guard would halve alpha)
    def task(ctx):  # an in-memory model: the job's work without loading a run
        return projection_job.run_projection(ctx, model, ReconstructionDetector(model), x0, cfg, ["calm", "wild"], [None, None])

    job = ui.job_registry().start(projection_job.JOB_KIND, "diverging", task, job_id="projection-test-divergence",
                                  run_id=vae_run.name, labels=["calm", "wild"], defects=[None, None],
                                  config={"steps": 3, "alpha": cfg.alpha, "lam": cfg.lam, "map_mode": cfg.map_mode})
    assert job.join(60) and job.snapshot().status == "finished", job.snapshot().error
    assert job.snapshot().result["diverged"] == [("wild", 1)]

    at = _open("builtin:synthetic", "bottle", vae_run.name)
    at.session_state[projection.KEY_JOB] = job.id
    at.run()
    assert not at.exception, at.exception
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1 and "**wild** at step 1" in warnings[0] and "calm" not in warnings[0]
    assert len(at.get("plotly_chart")) == 1
    assert any("Plain update (no guard)" in c.value for c in at.caption)


def test_projection_page_shows_what_the_energy_guard_did(vae_run: Path) -> None:
    """Issue 14: with the guard (the default) a step that would raise an image's energy halves its alpha;
    the page names the image and says that no energy rose."""

    class Constant(torch.nn.Module):  # f(x) = 0.5: at alpha 8 the first step of an image at 0.9 overshoots
        def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full_like(x, 0.5)

        def recon_energy(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
            return (x - recon).pow(2).flatten(1).sum(1)

    model = Constant()
    x0 = torch.cat([torch.full((1, 3, 32, 32), 0.6), torch.full((1, 3, 32, 32), 0.9)])
    cfg = ProjectionConfig(steps=3, alpha=8.0, lam=0.0)
    def task(ctx):  # an in-memory model: the job's work without loading a run
        return projection_job.run_projection(ctx, model, ReconstructionDetector(model), x0, cfg, ["calm", "wild"], [None, None])

    job = ui.job_registry().start(projection_job.JOB_KIND, "guarded", task, job_id="projection-test-guard",
                                  run_id=vae_run.name, labels=["calm", "wild"], defects=[None, None],
                                  config={"steps": 3, "alpha": cfg.alpha, "lam": cfg.lam, "map_mode": cfg.map_mode})
    assert job.join(60) and job.snapshot().status == "finished", job.snapshot().error
    result = job.snapshot().result
    assert result["energy_rises"] == 0 and [g[0] for g in result["guarded"]] == ["wild"]
    at = _open("builtin:synthetic", "bottle", vae_run.name)
    at.session_state[projection.KEY_JOB] = job.id
    at.run()
    assert not at.exception, at.exception
    caption = next(c.value for c in at.caption if "Energy guard" in c.value)
    assert "1 of 2 image(s)" in caption and "wild (α halved 1×)" in caption and "No image's energy rose" in caption
    assert not at.warning


def test_projection_page_without_a_run_shows_guidance(vae_run: Path) -> None:
    free = [category_without_run()]
    at = _open("builtin:synthetic", free[0])
    assert any("No trained model" in i.value for i in at.info)
    assert not at.get("plotly_chart") and not at.multiselect


def test_decode_upload_converts_or_explains(vae_run: Path) -> None:
    run = load_run(vae_run)
    img, err = ui.decode_upload(run.config.size, run.config.channels, "gray.png", _png(np.full((20, 30), 128, np.uint8)))
    assert err is None and img.shape == (32, 32, 3)
    img, err = ui.decode_upload(run.config.size, run.config.channels, "notes.png", b"not an image")
    assert img is None and "notes.png" in err
