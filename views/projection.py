"""Projection: watch the iterative energy-based projection (Dehaene et al., ICLR 2020) of a few images.

Instead of comparing an image with its blurry reconstruction, the projection moves the image itself
towards what the model finds normal, changing as few pixels as possible; what moved is the anomaly.
The page picks test images (or uploads) and the settings, runs the projection as a background job
(``core.services.projection_job``), then shows the steps as a client-side plotly animation, the
article's comparison rows, a step inspector and a GIF download (``views.components.projection_views``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st
import torch

from core.config import MAP_MODES, RECONSTRUCTION_MODELS, ProjectionConfig
from core.data.images import to_float_chw
from core.runs import LoadedRun
from core.services.estimate import projection_estimate
from core.services.jobs import JobSnapshot
from core.services.panels import default_picks, short_label
from core.services.projection_job import (
    KEEP_RESULTS,
    ProjectionRequest,
    load_result,
    projection_task,
)
from views.components import image_picker, job_panel, ui
from views.components.display import checkpoint_mtime, fmt_score, load_test_view
from views.components.projection_views import (
    MAP_MODE_LABELS,
    draw_result,
    energy_progress_figure,
)

KEY_SOURCE = "projection_source"
KEY_IMAGES = "projection_images"
KEY_IMAGES_RUN = "projection_images_run"  # the run the image picker was filled for
KEY_UPLOADS = "projection_uploads"
KEY_STEPS = "projection_steps"
KEY_ALPHA = "projection_alpha"
KEY_LAMBDA = "projection_lambda"
KEY_MAP_MODE = "projection_map_mode"
KEY_RUN_BUTTON = "projection_run"
KEY_JOB = "projection_job_id"
KEY_STEP = "projection_step"

PICKER = image_picker.PickerKeys(KEY_SOURCE, KEY_IMAGES, KEY_IMAGES_RUN, KEY_UPLOADS)
PAGE = job_panel.JobPage(
    key_job=KEY_JOB, owner=ProjectionRequest.OWNER, what="The projection", again="**Run projection** again.",
    idle="Pick images and settings, then **Run projection**. The projection runs in the background (the expected "
         "time, measured on this machine, is under the form); a repeated request with the same settings reuses the "
         "finished result.",
    other="The last projection belongs to another run: **Run projection** for this one.", icon=":material/animation:",
)
MAX_IMAGES = 8  # frames are kept only for the shown images: memory stays bounded
MAX_STEPS = 200


def offered(run: LoadedRun, view: dict[str, Any]) -> image_picker.PickerImages:
    """The run's scored test set as the picker's choices (stored as RGB; gray runs get their one channel back)."""
    gray = run.config.channels == 1
    return image_picker.PickerImages(
        view["names"], view["defects"], lambda i: view["images"][i][..., :1] if gray else view["images"][i],
        lambda i: view["masks"][i] if view["masks"][i].any() else None)


def draw_controls(run: LoadedRun, view: dict[str, Any]) -> tuple[ProjectionRequest, torch.Tensor, list] | None:
    """Image picker and settings in one form; returns the request, its input batch and masks on submit."""
    defaults = ProjectionConfig()
    source = image_picker.source_control(PICKER, "Project images of the run's test set, or your own "
                                                 "(converted to the run's size and channels).")
    names, scores = view["names"], view["scores"]
    by_name = {n: i for i, n in enumerate(names)}
    image_picker.keep_picks(PICKER, run.id, names, lambda: default_picks(names, view["defects"], scores))
    with st.form("projection_form", border=True):
        choice = image_picker.pick_field(
            source, PICKER, names, MAX_IMAGES, format_func=lambda n: f"{short_label(n)} · score {fmt_score(scores[by_name[n]])}",
            help="Default: the highest-scoring image of the top defect types and one typical good image.",
            upload_help="PNG, JPEG, BMP, TIFF or WebP; converted to the run's size and channels.")
        c1, c2, c3, c4, c5 = st.columns(image_picker.SETTINGS_ROW, vertical_alignment="bottom")
        steps = c1.number_input("Steps", 1, MAX_STEPS, defaults.steps, step=5, key=KEY_STEPS,
                                help="Number of updates x_t → x_{t+1}. The article uses 15, other settings 25–100.")
        alpha = c2.number_input("Step size α", 1e-4, 10.0, defaults.alpha, step=0.05, format="%.4g", key=KEY_ALPHA,
                                help="α in x_{t+1} = x_t − α·(∇E(x_t) ⊙ (x_t − f(x_t))²). Too large can diverge.")
        lam = c3.number_input("λ (stay close to x₀)", 0.0, 10.0, defaults.lam, step=0.05, format="%.4g", key=KEY_LAMBDA,
                              help="Weight of ‖x − x₀‖₁ in the energy: larger keeps more of the input, "
                                   "smaller lets more pixels move.")
        map_mode = c4.selectbox("Anomaly map", list(MAP_MODES), index=list(MAP_MODES).index(defaults.map_mode), key=KEY_MAP_MODE,
                                format_func=lambda m: f"{m}: {MAP_MODE_LABELS[m]}",
                                help="The projection map of the comparison rows: what moved, optionally plus what the "
                                     "model still cannot explain at x_T.")
        submitted = image_picker.run_button(c5, "Run projection", KEY_RUN_BUTTON)
        guard = st.checkbox("Energy guard", value=defaults.monotone, key="projection_guard",
                            help="Never let an image's energy rise: when a step would raise it, α is halved for that "
                                 "image and the step retried. Off = the article's plain update.")
    if not submitted:
        return None
    cfg = ProjectionConfig(steps=int(steps), alpha=float(alpha), lam=float(lam), map_mode=map_mode, monotone=bool(guard))
    if not image_picker.valid_settings(cfg):
        return None
    if (picked := image_picker.collect(choice, offered(run, view), run.config.size, run.config.channels, MAX_IMAGES)) is None:
        return None
    x0 = torch.from_numpy(np.stack([to_float_chw(im) for im in picked.images]))
    request = ProjectionRequest(run.id, checkpoint_mtime(run.path), picked.keys, picked.labels, picked.defects, cfg)
    return request, x0, picked.masks


def draw_progress(job_id: str) -> None:
    """Live progress of a running job (refreshes itself), with the mean energy so far."""

    def status(snap: JobSnapshot) -> tuple[float, str]:
        s = snap.state
        step, steps = int(s.get("step", 0) or 0), int(s.get("steps", 0) or 1)
        return step / steps, f"Projecting {len(s.get('labels', []))} image(s) · step {step}/{steps} · {snap.seconds:.0f} s"

    def energy(snap: JobSnapshot) -> None:
        s = snap.state
        if len(s.get("energy") or []) > 1:
            st.plotly_chart(energy_progress_figure(s["energy"], int(s.get("steps", 0) or 1)), key=f"projection-live-{job_id}",
                            config={"displayModeBar": False})

    job_panel.live_progress(job_id, status, "Stop after the current step; the steps done so far are shown.", energy)


def draw_estimate(run: LoadedRun) -> None:
    """The expected time of the form's settings for the picked images (one projection step measured once)."""
    n = image_picker.picked_count(PICKER)
    if not n:
        return
    defaults = ProjectionConfig()
    cfg = ProjectionConfig(steps=int(st.session_state.get(KEY_STEPS, defaults.steps)))
    try:
        with st.spinner("Measuring one projection step on this machine (once)…"):
            est = projection_estimate(run.model, cfg, n, run.config.size, run.config.channels, model_id=run.id)
    except (ValueError, RuntimeError) as exc:
        st.caption(f"No time estimate: {exc}")
        return
    st.caption(f":material/timer: {n} image(s) × {cfg.steps} steps: {est.text()}.")


def main() -> None:
    st.title("Projection")
    run = ui.require_run(ui.selection())
    if run is None:
        return
    if run.config.model not in RECONSTRUCTION_MODELS:
        st.info(f"The projection moves an image towards what a **reconstruction** model finds normal: it needs an AE or "
                f"VAE run. The selected run is {run.config.model.upper()}; choose an AE or VAE run in the sidebar, or "
                "train one on the Train page.")
        st.page_link("views/train.py", label="Go to Train", icon=":material/model_training:")
        return
    st.caption("Iterative energy-based projection (Dehaene et al., ICLR 2020): instead of comparing an image with its blurry "
               "reconstruction, move the image towards what the model finds normal while changing as few pixels as possible. "
               "Only the defect fades, so what moved marks it sharply.")
    view = load_test_view(run)
    if view is None:
        return
    submitted = draw_controls(run, view)
    draw_estimate(run)
    if submitted is not None:
        request, x0, masks = submitted
        task = projection_task(run.path, x0, request.cfg, list(request.labels), masks, job_id=request.job_id)
        job_panel.submit(PAGE, request, task, keep_results=KEEP_RESULTS,
                         stored=lambda: load_result(run.path, request.job_id))
    job_panel.show(PAGE, run.id, draw_progress, lambda snap: draw_result(snap, run, KEY_STEP))


if __name__ == "__main__":
    # Streamlit runs a page as "__main__"; drawing through the importable module keeps one set of cache entries.
    from views import projection as _page

    _page.main()
