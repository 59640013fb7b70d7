"""Ano-Unet: where an image departs from "normal" as judged by a frozen feature extractor.

For each picked image a U-Net G is optimized so that G(x) stays close to x while a frozen f-Net F calls it
normal (``L = Σ|x − G(x)| + β·Σ|F(G(x)) − C|``); the pixels G has to change are the anomaly. The page picks
an f-Net run of the sidebar's data (or trains one), images and settings, runs ``anounet_task`` in the
background and shows the images in flight, then the results beside the sidebar AE/VAE run's maps
(``views.components.anounet_views``). Results are cached on disk: a repeated request is answered at once.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from core.config import AnoUnetConfig
from core.data.loading import LoadedSplit, load_split
from core.detectors.fnet_distance import load_fnet
from core.runs import LoadedRun, RunError
from core.services.anounet_job import AnoUnetRequest, split_names
from core.services.estimate import anounet_estimate
from core.services.jobs import JobSnapshot
from core.services.panels import default_picks
from core.services.tasks import anounet_task
from views.components import image_picker, job_panel, ui
from views.components.anounet_views import draw_in_flight, draw_result
from views.components.display import checkpoint_mtime
from views.components.fnet_picker import FnetKeys, draw_fnet_picker

KEY_FNET = "anounet_fnet_run"
KEY_SOURCE = "anounet_source"
KEY_IMAGES = "anounet_images"
KEY_IMAGES_FOR = "anounet_images_for"  # the f-Net run the image picker was filled for
KEY_UPLOADS = "anounet_uploads"
KEY_BETA = "anounet_beta"
KEY_EPOCHS = "anounet_epochs"
KEY_BATCH = "anounet_batch"
KEY_WARM = "anounet_warm"
KEY_LR = "anounet_lr"
KEY_RESIDUAL = "anounet_residual"
KEY_GUARD = "anounet_guard"
KEY_EARLY = "anounet_early_stop"
KEY_RUN_BUTTON = "anounet_run"
KEY_JOB = "anounet_job_id"
KEY_TRAIN_SIZE = "anounet_train_size"
KEY_TRAIN_EPOCHS = "anounet_train_epochs"
KEY_TRAIN_BUTTON = "anounet_train_submit"

PICKER = image_picker.PickerKeys(KEY_SOURCE, KEY_IMAGES, KEY_IMAGES_FOR, KEY_UPLOADS)
FNET = FnetKeys(KEY_FNET, KEY_TRAIN_SIZE, KEY_TRAIN_EPOCHS, KEY_TRAIN_BUTTON)
PAGE = job_panel.JobPage(
    key_job=KEY_JOB, owner=AnoUnetRequest.OWNER, what="Ano-Unet", again="**Run Ano-Unet** again (cached images come back at once).",
    idle="Pick images and settings, then **Run Ano-Unet**. It runs in the background (the expected time, measured on "
         "this machine, is under the form); results are cached, so a repeated request is instant.",
    other="The last Ano-Unet job used another f-Net: **Run Ano-Unet** for this one.", icon=":material/auto_fix_high:",
)
MAX_IMAGES = 16
MAX_EPOCHS = 1000
PREVIEW_EVERY = 5
WARM_LABELS = {"none": "none (as the article)", "auto": "auto: a U-Net trained once on the normal images"}


@st.cache_resource(max_entries=4, show_spinner="Loading the test images…")
def test_split(data: str, category: str, size: int, channels: int) -> LoadedSplit:
    """The test split at the f-Net's size and channels (shared, read-only)."""
    return load_split(ui.dataset_index(data, category), "test", size, channels)


def draw_controls(fnet: LoadedRun, split: LoadedSplit) -> tuple[AnoUnetRequest, np.ndarray, list] | None:
    """Images and settings in one form; the request, its uint8 images ``[N, C, H, W]`` and masks on submit."""
    defaults = AnoUnetConfig()
    size, channels = fnet.config.size, fnet.model.cfg.in_channels
    source = image_picker.source_control(PICKER, f"Test images of this data, or your own (converted to {size} px, "
                                                 f"{channels} channel(s)).")
    names, defects = split_names(split), [s.defect for s in split.samples]
    image_picker.keep_picks(PICKER, fnet.id, names, lambda: default_picks(names, defects))
    with st.form("anounet_form", border=True):
        choice = image_picker.pick_field(source, PICKER, names, MAX_IMAGES, format_func=lambda n: n.rsplit(".", 1)[0],
                                         help="Default: one image of each of the first defect types and one good image.")
        c1, c2, c3, c4, c5 = st.columns(image_picker.SETTINGS_ROW, vertical_alignment="bottom")
        beta = c1.number_input("β (weight of F's term)", 0.0, 1e6, defaults.beta, step=100.0, format="%g", key=KEY_BETA,
                               help="L = Σ|x − G(x)| + β·Σ|F(G(x)) − C|. Larger: G changes more to please F. The article: 50 "
                                    "(CIFAR-10) and 80 (DAGM) with its plain G; the residual G here needs ~1000.")
        epochs = c2.number_input("Max epochs", 1, MAX_EPOCHS, defaults.epochs, step=10, key=KEY_EPOCHS,
                                 help="Adam steps per image (the article: 150 and 200). Images stop earlier on a plateau, or "
                                      "when the guard sees F fooled by invisible changes.")
        batch = c3.number_input("Images at once (K)", 1, 16, defaults.batch, key=KEY_BATCH,
                                help="Optimized together, each with its own U-Net; changes speed and memory, not results.")
        warm = c4.selectbox("Warm start", list(WARM_LABELS), format_func=WARM_LABELS.get, key=KEY_WARM,
                            help="auto: every G starts from a U-Net trained once (about a minute, kept in the f-Net run) to "
                                 "reproduce normal images, with the article's plain G. none: the residual G starts as the identity.")
        submitted = image_picker.run_button(c5, "Run Ano-Unet", KEY_RUN_BUTTON)
        with st.expander("Advanced"):
            a1, a2, a3, a4 = st.columns(4)
            lr = a1.number_input("Learning rate", 1e-6, 1.0, defaults.lr, format="%.2g", key=KEY_LR)
            residual = a2.toggle("Residual G", defaults.residual, key=KEY_RESIDUAL,
                                 help="G(x) = sigmoid(logit(x) + U-Net(x)): starts as the identity. Off = the article's plain G.")
            guard = a3.toggle("Adversarial guard", defaults.guard, key=KEY_GUARD,
                              help="Stop an image when F's distance drops while no pixel visibly moves (F is being fooled).")
            early = a4.toggle("Stop on plateau", defaults.early_stop, key=KEY_EARLY)
    if not submitted:
        return None
    cfg = AnoUnetConfig(beta=float(beta), epochs=int(epochs), batch=int(batch), lr=float(lr),
                        residual=bool(residual) and warm == "none", guard=bool(guard), early_stop=bool(early))
    if not image_picker.valid_settings(cfg):
        return None
    test = image_picker.PickerImages(names, defects, lambda i: split.images[i].numpy().transpose(1, 2, 0),
                                   lambda i: split.masks[i].numpy() if split.has_mask[i] else None)
    if (picked := image_picker.collect(choice, test, size, channels, MAX_IMAGES)) is None:
        return None
    request = AnoUnetRequest(fnet.id, checkpoint_mtime(fnet.path), picked.keys, picked.labels, picked.defects, cfg, warm)
    return request, np.ascontiguousarray(picked.images.transpose(0, 3, 1, 2)).astype(np.uint8), picked.masks


def draw_progress(job_id: str) -> None:
    """Live: progress, and for every image in flight its input, G(x), |x − G(x)| and the loss terms."""

    def status(snap: JobSnapshot) -> tuple[float, str]:
        s = snap.state
        done, total = int(s.get("done", 0) or 0), int(s.get("total", 0) or len(s.get("labels", [])) or 1)
        cached = int(s.get("cached", 0) or 0)
        return done / total, (f"{s.get('phase', 'starting')} · {done}/{total} image(s) done"
                              + (f" ({cached} from cache)" if cached else "") + f" · {snap.seconds:.0f} s")

    job_panel.live_progress(job_id, status, "Images in flight stop now and keep their current G(x); images not started "
                                            "are skipped.", draw_in_flight)


def draw_estimate(fnet: LoadedRun) -> None:
    """The longest the form's settings can take for the picked images (an Adam step measured once)."""
    n = image_picker.picked_count(PICKER)
    if not n:
        return
    d = AnoUnetConfig()
    cfg = AnoUnetConfig(epochs=int(st.session_state.get(KEY_EPOCHS, d.epochs)), batch=int(st.session_state.get(KEY_BATCH, d.batch)),
                        early_stop=bool(st.session_state.get(KEY_EARLY, d.early_stop)))
    try:
        with st.spinner("Measuring Ano-Unet's speed on this machine (a few steps, once)…"):
            est = anounet_estimate(fnet.model, cfg, n, fnet.config.size, model_id=fnet.id)
    except (ValueError, RuntimeError) as exc:
        st.caption(f"No time estimate: {exc}")
        return
    tail = " Images stop earlier on a plateau; cached images come back at once." if cfg.early_stop else ""
    st.caption(f":material/timer: {n} image(s) × up to {cfg.epochs} steps: {est.text()}.{tail}")


def main() -> None:
    st.title("Ano-Unet")
    sel = ui.selection()
    if ui.require_dataset(sel) is None:
        return
    st.caption("A frozen feature extractor F knows what normal images of this category look like. For each image, a U-Net G "
               "is optimized to change the image as little as possible (Σ|x − G(x)|) until F calls it normal "
               "(β·Σ|F(G(x)) − C|, C = the mean feature of normal images). The pixels G has to change are the anomaly.")
    if (fnet_dir := draw_fnet_picker(sel, FNET)) is None:
        return
    try:
        fnet = _fnet(str(fnet_dir), checkpoint_mtime(fnet_dir))
    except (RunError, OSError) as exc:
        st.error(f"This f-Net run cannot be loaded: {exc}")
        return
    split = test_split(sel.data, sel.category, fnet.config.size, fnet.model.cfg.in_channels)
    if len(split) == 0 and st.session_state.get(KEY_SOURCE, image_picker.SOURCE_TEST) == image_picker.SOURCE_TEST:
        st.warning("This dataset has no readable test image: upload images instead.")
    submitted = draw_controls(fnet, split)
    draw_estimate(fnet)
    if submitted is not None:
        request, images, masks = submitted
        task = anounet_task(fnet_dir, images, request.cfg, warm_start=request.warm_start,
                            preview_every=PREVIEW_EVERY, device="auto")
        job_panel.submit(PAGE, request, task, images=images, masks=masks)
    job_panel.show(PAGE, fnet.id, draw_progress, lambda snap: draw_result(snap, sel.run_dir and str(sel.run_dir)))


@st.cache_resource(max_entries=4, show_spinner="Loading the f-Net…")
def _fnet(run_dir: str, mtime_ns: int) -> LoadedRun:
    return load_fnet(run_dir)


if __name__ == "__main__":
    from views import anounet as _page

    _page.main()
