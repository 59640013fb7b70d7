"""Ano-Unet: where an image departs from "normal" as judged by a frozen feature extractor.

For each picked image a U-Net G is optimized so that G(x) stays close to x while a frozen f-Net F
calls it normal (``L = Σ|x − G(x)| + β·Σ|F(G(x)) − C|``); the pixels G has to change are the anomaly.
The page picks an f-Net run of the sidebar's data (or trains one), images (test set or upload) and the
settings, runs ``core.anounet`` as a background job and shows, live, G(x), the map and the two loss
terms of every image in flight; then the results beside the sidebar AE/VAE run's map of the same images.
Results are cached on disk by image content + settings + weights (``core.anounet``): a repeated request
is answered at once.

The work that needs no drawing (request identity, image picks, AE comparison maps) is in plain
functions so that tests can call them.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from core.config import AnoUnetConfig, TrainConfig
from core.data.loading import LoadedSplit, load_split
from core.detectors.fnet_distance import load_fnet
from core.evaluation import metrics
from core.runs import LoadedRun, RunError
from core.services.jobs import Job, JobRegistry, JobSnapshot
from core.services.predict import maps_for
from core.services.tasks import anounet_task
from core.viz import heatmap, mask_contour
from views import jobs_view, ui
from views.projection import display_scale, enlarge_nn, short_label
from views.results import GOOD, checkpoint_mtime, colorbar, defect_badge, fmt_score

JOB_KIND = "anounet"
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

SOURCE_TEST, SOURCE_UPLOAD, UPLOAD_TYPES = ui.SOURCE_TEST, ui.SOURCE_UPLOAD, ui.UPLOAD_TYPES
MAX_IMAGES = 16
MAX_EPOCHS = 1000
PREVIEW_EVERY = 5
MAP_QUANTILE = 0.995
WARM_LABELS = {"none": "none (as the article)", "auto": "auto: a U-Net trained once on the normal images"}
FNET_DEMO = {"epochs": 15, "max_minutes": 1.0}  # ~10 s on 2 CPU cores at 64 px, f-Net AUROC ~0.9 on built-in bottle


# --------------------------------------------------------------------------- request and job
@dataclass(frozen=True)
class Request:
    """Which images, with which f-Net and settings; the same request gets the same job id."""

    fnet_id: str
    mtime_ns: int
    keys: tuple[str, ...]  # test-set path, or content hash of an upload
    labels: tuple[str, ...]
    defects: tuple[str | None, ...]  # ground truth for test images, None for uploads
    cfg: AnoUnetConfig
    warm_start: str

    @property
    def job_id(self) -> str:
        ident = repr((self.fnet_id, self.mtime_ns, self.keys, self.cfg.result_settings(), self.warm_start))
        return f"{JOB_KIND}-{hashlib.sha1(ident.encode()).hexdigest()[:12]}"


def fnet_runs(data: str | None, category: str | None) -> list[dict]:
    """Finished f-Net runs trained on this dataset category, newest first."""
    if data is None:
        return []
    return [r for r in ui.run_summaries() if r["has_model"] and r["config"].get("model") == "fnet"
            and ui.same_data(r["config"], data, category)]


def split_names(split: LoadedSplit) -> list[str]:
    """``defect/file`` names of a split's samples (unique within an MVTec-style test folder)."""
    return [f"{s.defect}/{s.path.name}" for s in split.samples]


def start_or_reuse(registry: JobRegistry, request: Request, fnet_dir: Path, images: np.ndarray,
                   masks: list[np.ndarray | None]) -> tuple[str, bool]:
    """Start the job of ``request`` unless the same one is running or finished; (job id, reused)."""
    job = registry.get(request.job_id)
    if job is not None:
        snap = job.snapshot()
        if snap.running or (snap.status == "finished" and snap.result is not None):
            return request.job_id, True
    task = anounet_task(fnet_dir, torch.from_numpy(images), request.cfg, warm_start=request.warm_start,
                        preview_every=PREVIEW_EVERY, device="auto")
    title = f"Ano-Unet · {len(request.keys)} image(s) · β {request.cfg.beta:g} · up to {request.cfg.epochs} epochs"
    try:
        registry.start(JOB_KIND, title, task, job_id=request.job_id, fnet_id=request.fnet_id, labels=list(request.labels),
                       defects=list(request.defects), config=asdict(request.cfg), warm_start=request.warm_start,
                       images=images, masks=masks)
    except ValueError:  # started by another session a moment ago: follow that one
        return request.job_id, True
    return request.job_id, False


@st.cache_data(max_entries=8, show_spinner=False)
def _cached_comparison(run_dir: str, mtime_ns: int, job_id: str, _run: LoadedRun, _images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return maps_for(_run, _images)


# --------------------------------------------------------------------------- figures
def loss_figure(curve: dict[str, list[float]], beta: float, height: int = 170) -> go.Figure:
    """The two loss terms per epoch: L_R = Σ|x − G(x)| and β·L_C = β·Σ|F(G(x)) − C|."""
    epochs = list(range(len(curve.get("loss_r", []))))
    fig = go.Figure()
    fig.add_scatter(x=epochs, y=curve.get("loss_r", []), name="L_R = Σ|x − G(x)|", mode="lines", line={"color": "#4c78a8"})
    fig.add_scatter(x=epochs, y=[beta * v for v in curve.get("loss_c", [])], name="β·L_C = β·Σ|F(G(x)) − C|", mode="lines",
                    line={"color": "#e4572e"})
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 28, "b": 10}, xaxis_title="epoch",
                      legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0, "font": {"size": 11}},
                      yaxis={"type": "log", "gridcolor": "#eee"}, plot_bgcolor="white")
    return fig


def _rgb(img_chw: np.ndarray) -> np.ndarray:
    """float CHW in [0, 1] or uint8 CHW -> uint8 HWC RGB."""
    arr = img_chw.astype(np.float32) / 255.0 if img_chw.dtype == np.uint8 else img_chw
    out = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    return np.repeat(out, 3, axis=2) if out.shape[2] == 1 else np.ascontiguousarray(out)


# --------------------------------------------------------------------------- controls
def draw_fnet_picker(sel: ui.Selection) -> Path | None:
    """Pick an f-Net run of this data, or offer to train one."""
    runs = fnet_runs(sel.data, sel.category)
    train_open = not runs
    if runs:
        ids = [r["id"] for r in runs]
        if st.session_state.get(KEY_FNET) not in ids:
            st.session_state[KEY_FNET] = ids[0]
        by_id = {r["id"]: r for r in runs}

        def label(i: str) -> str:
            r = by_id[i]
            auroc = r["metrics"].get("image_auroc")
            tail = f" · distance AUROC {auroc:.3f}" if isinstance(auroc, float) else ""
            return f"{i} · {r['config'].get('size')} px{tail}"

        chosen = st.selectbox("Feature extractor F (an f-Net run of this data)", ids, key=KEY_FNET, format_func=label,
                              help="A CNN trained to tell this category's normal images from other images, then frozen. "
                                   "Its distance to C (the mean feature of normal images) is also an image score.")
    with st.expander("Train an f-Net for this data" if runs else "No f-Net for this data yet: train one", expanded=train_open):
        draw_fnet_training(sel)
    return Path(by_id[chosen]["path"]) if runs else None


def draw_fnet_training(sel: ui.Selection) -> None:
    st.caption("The f-Net learns to separate the normal training images from other images that need no download: "
               "the other built-in categories, digits and synthetic defect pastes on the normal images. "
               "It is stored as a run (`python -m core train --model fnet`).")
    with st.form("anounet_train_fnet", border=False):
        c1, c2, c3 = st.columns([1, 1, 1], vertical_alignment="bottom")
        size = c1.selectbox("Image size", [32, 64, 128], index=1, key=KEY_TRAIN_SIZE,
                            help="Ano-Unet runs at this size. 64 px: ~0.3 s per image on 2 CPU cores; 128 px: ~1 s.")
        epochs = c2.number_input("Epochs", 1, 500, FNET_DEMO["epochs"], key=KEY_TRAIN_EPOCHS)
        go_train = c3.form_submit_button("Train f-Net", icon=":material/model_training:", type="primary", width="stretch",
                                         key=KEY_TRAIN_BUTTON)
    if go_train:
        cfg = TrainConfig(data=sel.data, category=sel.category, model="fnet", size=int(size), epochs=int(epochs),
                          max_minutes=FNET_DEMO["max_minutes"] * max(1, int(size) // 64) ** 2)
        try:
            cfg.validate()
        except ValueError as exc:
            st.error(f"These settings cannot be used: {exc}")
            return
        jobs_view.start_training(cfg, f"f-Net · {sel.category} · {size} px")
    jobs_view.live_jobs(only_session=True)


def _reset_picks(fnet_id: str, split: LoadedSplit) -> None:
    names = split_names(split)
    if st.session_state.get(KEY_IMAGES_FOR) != fnet_id or not isinstance(st.session_state.get(KEY_IMAGES), list):
        st.session_state[KEY_IMAGES_FOR] = fnet_id
        first = {}
        for i, s in enumerate(split.samples):
            first.setdefault(s.defect, i)
        picks = [i for d, i in first.items() if d != GOOD][:3]
        goods = [i for i, s in enumerate(split.samples) if s.defect == GOOD]
        if goods:
            picks.append(goods[len(goods) // 2])
        st.session_state[KEY_IMAGES] = [names[i] for i in picks]
    else:
        known = set(names)
        st.session_state[KEY_IMAGES] = [n for n in st.session_state[KEY_IMAGES] if n in known]


@st.cache_resource(max_entries=4, show_spinner="Loading the test images…")
def test_split(data: str, category: str, size: int, channels: int) -> LoadedSplit:
    """The test split at the f-Net's size and channels (shared, read-only)."""
    return load_split(ui.dataset_index(data, category), "test", size, channels)


def draw_controls(fnet: LoadedRun, split: LoadedSplit) -> tuple[Request, np.ndarray, list[np.ndarray | None]] | None:
    """Images and settings in one form; the request, its uint8 images and masks on submit."""
    defaults = AnoUnetConfig()
    size, channels = fnet.config.size, fnet.model.cfg.in_channels
    source = st.segmented_control("Images", [SOURCE_TEST, SOURCE_UPLOAD], key=KEY_SOURCE, default=SOURCE_TEST,
                                  help=f"Test images of this data, or your own (converted to {size} px, {channels} channel(s)).")
    source = source or SOURCE_TEST
    names = split_names(split)
    by_name = {n: i for i, n in enumerate(names)}
    _reset_picks(fnet.id, split)
    with st.form("anounet_form", border=True):
        if source == SOURCE_TEST:
            picked = st.multiselect(f"Test images (up to {MAX_IMAGES})", names, key=KEY_IMAGES, max_selections=MAX_IMAGES,
                                    format_func=lambda n: n.rsplit(".", 1)[0], placeholder="Pick test images",
                                    help="Default: one image of each of the first defect types and one good image.")
            files = []
        else:
            files = st.file_uploader(f"Upload images (up to {MAX_IMAGES})", type=UPLOAD_TYPES, accept_multiple_files=True,
                                     key=KEY_UPLOADS)
            picked = []
        c1, c2, c3, c4, c5 = st.columns([1, 1, 1, 1.6, 1.3], vertical_alignment="bottom")
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
        submitted = c5.form_submit_button("Run Ano-Unet", type="primary", icon=":material/play_arrow:", key=KEY_RUN_BUTTON,
                                          width="stretch")
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
    try:
        cfg.validate()
    except ValueError as exc:
        st.error(f"These settings cannot be used: {exc}")
        return None
    images, keys, labels, truth, masks = [], [], [], [], []
    if source == SOURCE_TEST:
        if not picked:
            st.warning("Pick at least one test image.")
            return None
        for n in picked[:MAX_IMAGES]:
            i = by_name[n]
            images.append(split.images[i].numpy())
            keys.append(n)
            labels.append(short_label(n))
            truth.append(split.samples[i].defect)
            masks.append(split.masks[i].numpy() if split.has_mask[i] else None)
    else:
        if not files:
            st.warning("Upload at least one image.")
            return None
        for up in ui.decode_uploads(files, size, channels, MAX_IMAGES):
            images.append(np.ascontiguousarray(up.image.transpose(2, 0, 1)))
            keys.append(up.key)
            labels.append(up.label)
            truth.append(None)
            masks.append(None)
        if not images:
            return None
    request = Request(fnet.id, checkpoint_mtime(fnet.path), tuple(keys), tuple(labels), tuple(truth), cfg, warm)
    return request, np.stack(images).astype(np.uint8), masks


# --------------------------------------------------------------------------- drawing
def draw_progress(job_id: str) -> None:
    """Live: progress, and for every image in flight its input, G(x), |x − G(x)| and the loss terms."""

    def _live(job: Job, snap: JobSnapshot) -> None:
        s = snap.state
        done, total = int(s.get("done", 0) or 0), int(s.get("total", 0) or len(s.get("labels", [])) or 1)
        beta = float(s.get("config", {}).get("beta", 1.0))
        with st.container(border=True):
            head, action = st.columns([5, 1], vertical_alignment="center")
            phase = s.get("phase", "starting")
            cached = int(s.get("cached", 0) or 0)
            head.progress(min(1.0, done / total), text=f"{phase} · {done}/{total} image(s) done"
                          + (f" ({cached} from cache)" if cached else "") + f" · {snap.seconds:.0f} s")
            if action.button("Stop", key=f"stop-{job_id}", icon=":material/stop_circle:", width="stretch",
                             help="Images in flight stop now and keep their current G(x); images not started are skipped."):
                job.request_stop()
            if phase == "warm start":
                st.caption("Training the warm-start U-Net once for this f-Net (it is kept and reused)…")
            results = s.get("results") or {}
            flying = [i for i in sorted(s.get("curves") or {}) if i not in results]
            if not flying:
                return
            images = s["images"]
            factor = display_scale(images.shape[-1], 96)
            cols = st.columns([1.1, 1, 1, 1, 3])
            for col, head_text in zip(cols, ["Image", "x", "G(x)", "|x − G(x)|", "Loss terms"]):
                col.markdown(f"**{head_text}**")
            for i in flying[:8]:
                curve = s["curves"][i]
                prev = s.get("previews", {}).get(i)
                x = images[i].astype(np.float32) / 255.0
                cols = st.columns([1.1, 1, 1, 1, 3], vertical_alignment="center")
                cols[0].markdown(f"**{s['labels'][i]}**  \nepoch {len(curve['loss_r']) - 1}")
                cols[1].image(enlarge_nn(_rgb(x), factor), output_format="PNG")
                if prev is not None:
                    cols[2].image(enlarge_nn(_rgb(prev), factor), output_format="PNG")
                    diff = np.abs(prev - x).mean(0)
                    cols[3].image(enlarge_nn(heatmap(diff, 0.0, max(float(diff.max()), 1e-3)), factor), output_format="PNG")
                cols[4].plotly_chart(loss_figure(curve, beta, 150), key=f"anounet-live-{job_id}-{i}",
                                     config={"displayModeBar": False})

    ui.live_job(job_id, _live)


def draw_result(snap: JobSnapshot, sel: ui.Selection) -> None:
    s, results = snap.state, (snap.result or {}).get("results") or []
    cfg = s.get("config", {})
    labels, defects, masks, images = s["labels"], s.get("defects") or [None] * len(s["labels"]), s["masks"], s["images"]
    done = [i for i, r in enumerate(results) if r is not None]
    n_cached = sum(1 for i in done if results[i].cached)
    stopped = [i for i in done if results[i].stop_reason == "stopped"]
    st.caption(f"f-Net `{s['fnet_id']}` · {len(done)} of {len(labels)} image(s) · β = {cfg.get('beta'):g}, up to "
               f"{cfg.get('epochs')} epochs, lr {cfg.get('lr'):.2g}, warm start: {s.get('warm_start')}, "
               f"{'residual' if cfg.get('residual') else 'plain'} G · {snap.seconds:.1f} s"
               + (f" · {n_cached} from the result cache" if n_cached else ""))
    if stopped or len(done) < len(labels):
        st.info(f"Stopped: {len(stopped)} image(s) kept their G(x) at the stop, {len(labels) - len(done)} not started. "
                "Stopped images are not cached.", icon=":material/stop_circle:")
    if not done:
        return
    # The sidebar's AE/VAE run on the same images, for comparison.
    ae_maps = ae_scores = None
    ae_note = "Pick an AE or VAE run of this data in the sidebar to see its map beside."
    if sel.run_dir is not None:
        try:
            run = ui.loaded_run(sel.run_dir)
            ae_maps, ae_scores = _cached_comparison(str(run.path), checkpoint_mtime(run.path), snap.id, run, images)
            ae_note = f"{run.config.model.upper()} run `{run.id}` ({run.config.size} px; maps resized to {images.shape[-1]} px)"
        except (RunError, OSError, RuntimeError, ValueError) as exc:
            ae_note = f"The sidebar run cannot be compared: {exc}"
    draw_pixel_summary(results, done, masks, ae_maps, snap.seconds)
    ano_maps = np.stack([results[i].anomaly_map for i in done])
    vmax_ano = max(float(np.quantile(ano_maps, MAP_QUANTILE)), 1e-6)
    vmax_ae = max(float(np.quantile(ae_maps[done], MAP_QUANTILE)), 1e-6) if ae_maps is not None else 1.0
    factor = display_scale(images.shape[-1], 128)
    heads = ["Image", "x", "G(x)", "Ano-Unet |x − G(x)|", "AE/VAE |x − f(x)|", "Loss terms"]
    widths = [1.2, 1, 1, 1, 1, 2.4]
    with st.container(border=True):
        for col, head in zip(st.columns(widths), heads):
            col.markdown(f"**{head}**")
        for i in done:
            r = results[i]
            cols = st.columns(widths, vertical_alignment="center")
            truth = defect_badge(defects[i]) if defects[i] else ":gray-badge[upload]"
            badge = " :blue-badge[cached]" if r.cached else ""
            cols[0].markdown(f"**{labels[i]}**  \n{truth}{badge}  \n{r.epochs} epochs · {r.stop_reason}  \n"
                             f"F distance {r.feature_distance_before:.3g} → {r.feature_distance_after:.3g}")
            x = enlarge_nn(_rgb(images[i]), factor)
            if masks[i] is not None and masks[i].any():
                x = mask_contour(x, enlarge_nn(masks[i].astype(np.uint8), factor), color=(0, 230, 64))
            cols[1].image(x, output_format="PNG")
            cols[2].image(enlarge_nn(_rgb(r.reconstruction), factor), output_format="PNG")
            cols[3].image(enlarge_nn(heatmap(r.anomaly_map, 0.0, vmax_ano), factor), caption=f"score {fmt_score(r.score)}",
                          output_format="PNG")
            if ae_maps is not None:
                cols[4].image(enlarge_nn(heatmap(ae_maps[i], 0.0, vmax_ae), factor), caption=f"score {fmt_score(float(ae_scores[i]))}",
                              output_format="PNG")
            else:
                cols[4].caption("—")
            curve = {"loss_r": list(r.loss_r), "loss_c": list(r.loss_c)}
            cols[5].plotly_chart(loss_figure(curve, float(cfg.get("beta", 1.0)), 150), key=f"anounet-loss-{snap.id}-{i}",
                                 config={"displayModeBar": False})
    bar, text = st.columns([1, 5], vertical_alignment="center")
    bar.image(colorbar(), width=200, output_format="PNG")
    text.caption(f"Each method's maps share one colour scale, 0 (blue) to the {MAP_QUANTILE:.1%} quantile of its maps on these "
                 f"images (Ano-Unet {vmax_ano:.3g}, AE/VAE {vmax_ae:.3g}). Green outline: the ground-truth defect mask. "
                 f"Comparison: {ae_note}. Stop reasons: plateau (loss stopped improving), max_epochs, adversarial (the guard "
                 "rolled back to before F was fooled by invisible changes), stopped (by you).")


def draw_pixel_summary(results: list, done: list[int], masks: list, ae_maps: np.ndarray | None, seconds: float) -> None:
    """Pixel AUROC on the shown images with pixel ground truth (Ano-Unet vs. the comparison run), and the speed."""
    cols = st.columns(4)
    known = [i for i in done if masks[i] is not None]
    if known and any(masks[i].any() for i in known):
        gt = np.stack([masks[i] for i in known]).astype(bool)
        ano = metrics.pixel_auroc(np.stack([results[i].anomaly_map for i in known]), gt)
        cols[0].metric("Pixel AUROC · Ano-Unet", ui.fmt_metric(ano), help=f"Over the {len(known)} shown image(s) with masks.")
        if ae_maps is not None:
            ae = metrics.pixel_auroc(ae_maps[known], gt)
            cols[1].metric("Pixel AUROC · AE/VAE", ui.fmt_metric(ae), help="The sidebar run's maps of the same images.")
            if ano is not None and ae is not None:
                cols[2].metric("Ano-Unet − AE/VAE", f"{ano - ae:+.3f}")
    computed = sum(1 for r in results if r is not None and not r.cached)
    if computed:
        cols[3].metric("Seconds per image", f"{seconds / computed:.2f}",
                       help=f"The job's wall time over the {computed} image(s) it optimized (cached images excluded), "
                            "K at a time.")


def main() -> None:
    st.title("Ano-Unet")
    sel = ui.selection()
    if ui.require_dataset(sel) is None:
        return
    st.caption("A frozen feature extractor F knows what normal images of this category look like. For each image, a U-Net G "
               "is optimized to change the image as little as possible (Σ|x − G(x)|) until F calls it normal "
               "(β·Σ|F(G(x)) − C|, C = the mean feature of normal images). The pixels G has to change are the anomaly.")
    fnet_dir = draw_fnet_picker(sel)
    if fnet_dir is None:
        return
    try:
        fnet = _fnet(str(fnet_dir), checkpoint_mtime(fnet_dir))
    except (RunError, OSError) as exc:
        st.error(f"This f-Net run cannot be loaded: {exc}")
        return
    split = test_split(sel.data, sel.category, fnet.config.size, fnet.model.cfg.in_channels)
    if len(split) == 0 and st.session_state.get(KEY_SOURCE, SOURCE_TEST) == SOURCE_TEST:
        st.warning("This dataset has no readable test image: upload images instead.")
    registry = ui.job_registry()
    submitted = draw_controls(fnet, split)
    if submitted is not None:
        request, images, masks = submitted
        job_id, reused = start_or_reuse(registry, request, fnet_dir, images, masks)
        st.session_state[KEY_JOB] = job_id
        if reused and not registry.get(job_id).snapshot().running:
            st.toast("Same images and settings as before: showing the finished result.", icon=":material/cached:")
    job = registry.get(st.session_state.get(KEY_JOB))
    if job is None:
        st.info("Pick images and settings, then **Run Ano-Unet**. It runs in the background (about 0.3 s per image at 64 px "
                "and 1 s at 128 px on 2 CPU cores); results are cached, so a repeated request is instant.",
                icon=":material/auto_fix_high:")
        return
    snap = job.snapshot()
    if snap.state.get("fnet_id") != fnet.id:
        st.info("The last Ano-Unet job used another f-Net: **Run Ano-Unet** for this one.", icon=":material/auto_fix_high:")
        return
    ui.draw_job_state(snap, "Ano-Unet", "**Run Ano-Unet** again (cached images come back at once).", draw_progress,
                      lambda sn: draw_result(sn, sel))


@st.cache_resource(max_entries=4, show_spinner="Loading the f-Net…")
def _fnet(run_dir: str, mtime_ns: int) -> LoadedRun:
    return load_fnet(run_dir)


if __name__ == "__main__":
    from views import anounet as _page

    _page.main()
