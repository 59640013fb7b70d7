"""Train: pick settings, start a background training job, watch it live, manage finished runs."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.config import AE_LOSSES, AEConfig, TrainConfig
from core.data.index import DatasetIndex
from core.data.loading import detect_channels
from core.device import available_devices, local_gpus
from core.runs import RunError, delete_run
from core.services.estimate import train_estimate
from views.components import jobs_view, ui

KEY_CONFIRM_DELETE = "train_confirm_delete"
KEY_DELETE_ERROR = "train_delete_error"
KEY_GPUS = "train_gpus"
SIZES = (32, 64, 128, 256)
AE_LOSS_DEFAULT = TrainConfig().ae_loss
AE_LOSS_LABELS = {"mse": "MSE (pixel error)", "ssim": "SSIM (structure; textures)", "ssim_l1": "SSIM + L1"}
AE_LOSS_HELP = ("The AE's training loss; with SSIM the anomaly map is (1 − SSIM) / 2 (Bergmann et al. 2019). SSIM is "
                "the default: measured (README, detector table) it lifts the image AUROC of the shared MVTec bottle from "
                "0.89 to 0.95 and of the grid texture from 0.73 to 1.00, and the bottle's pixel AUROC from 0.80 to 0.95.")
MODEL_LABELS = {"patchcore": "PatchCore (features)", "padim": "PaDiM (features)", "ae": "Autoencoder (AE)",
                "vae": "Variational AE (VAE)"}


def settings_ui(sel: ui.Selection) -> tuple[TrainConfig | None, str | None]:
    """The training form; returns the config and the button pressed (``start`` or ``estimate``), or (None, None)."""
    digits = sel.data == "builtin:digits"
    with st.form("train_form", border=True):
        st.markdown(f"**Data:** `{sel.data}` · category **{sel.category}** (change it in the sidebar)")
        c1, c2, c3, c4 = st.columns(4)
        model = c1.radio("Model", list(MODEL_LABELS), index=3 if digits else 0, key="train_model",
                         format_func=MODEL_LABELS.get,
                         help="PatchCore and PaDiM compare ImageNet features (EfficientNet-Lite0, shipped with the app) "
                              "with those of the good images: one pass, no epochs, the same result on a busy CPU. "
                              "The AE and VAE learn to reconstruct the good images.")
        size = c2.selectbox("Image size (px)", SIZES, index=0 if digits else 2, key="train_size")
        epochs = c3.number_input("Epochs (max; AE, VAE)", 1, 5000, 30 if digits else 40, key="train_epochs")
        patience = c4.number_input("Early-stopping patience", 1, 1000, 20, key="train_patience",
                                   help="Stop after this many epochs without a better validation loss.")
        c1, c2, c3, c4 = st.columns(4)
        batch = c1.selectbox("Batch size", (8, 16, 32, 64, 128), index=2, key="train_batch")
        lr = c2.number_input("Learning rate", 1e-6, 1.0, 1e-3, format="%.5f", step=1e-4, key="train_lr")
        z_dim = c3.number_input("Latent size (VAE)", 1, 1024, 2 if digits else 128, key="train_z_dim",
                                help="2 gives the latent-plane views on the Results page.")
        seed = c4.number_input("Seed", 0, 2**31 - 1, 0, key="train_seed")
        c1, c2, c3, c4 = st.columns(4)
        devices = available_devices()
        device = c1.selectbox("Device", ["auto", *devices], key="train_device",
                              format_func=lambda d: f"auto ({devices[0]})" if d == "auto" else d)
        precision = c2.selectbox("Precision", ("auto", "fp32", "bf16", "fp16"), key="train_precision",
                                 help="auto: fp16/bf16 mixed precision on a GPU, bf16 on CPUs with native bf16, else fp32.")
        minutes = c3.number_input("Time budget (min, 0 = none)", 0.0, 1440.0, 0.0, step=1.0, key="train_minutes",
                                  help="Stop after this much training time even if epochs remain (the run says so).")
        augment = c4.toggle("Augment (crops, flips)", value=False, key="train_augment")
        c1, c2, c3, _ = st.columns(4)
        ratio = c1.number_input("Coreset share (PatchCore)", 0.001, 1.0, 0.01, step=0.005, format="%.3f",
                                key="train_coreset", help="Share of the good images' patches kept in the memory bank.")
        ae_loss = c2.selectbox("AE loss", AE_LOSSES, index=AE_LOSSES.index(AE_LOSS_DEFAULT), key="train_ae_loss",
                               format_func=AE_LOSS_LABELS.get, help=AE_LOSS_HELP)
        if (gpus := local_gpus()) >= 2:  # data-parallel over this machine's GPUs (torchrun, NCCL)
            c3.number_input("GPUs (data-parallel; AE, VAE)", 1, gpus, 1, key=KEY_GPUS,
                            help=f"Train on up to {gpus} GPUs of this machine at once (one process each, the same global "
                                 "batch and run folder as one GPU). It holds that many job slots.")
        st.caption("PatchCore / PaDiM: epochs, patience, batch, learning rate, precision, time budget and augmentation "
                   "do not apply (no training, one pass over the good images).")
        b1, b2, _ = st.columns([1, 1, 3])
        start = b1.form_submit_button("Start training", type="primary", icon=":material/play_arrow:", width="stretch")
        estimate = b2.form_submit_button("Estimate time", icon=":material/timer:", width="stretch",
                                         help="Measure this machine's speed for these settings (a few steps, once; "
                                              "kept in the workspace) and say how long the run would take.")
    if not (start or estimate):
        return None, None
    cfg = TrainConfig(data=sel.data, category=sel.category, model=model, size=int(size), epochs=int(epochs),
                      patience=int(patience), batch_size=int(batch), lr=float(lr), z_dim=int(z_dim), seed=int(seed),
                      device=device, precision=precision, max_minutes=float(minutes), augment=augment,
                      crop_scale=1.15 if augment else 1.0, coreset_ratio=float(ratio), ae_loss=ae_loss)
    try:
        cfg.validate()
        if model == "ae":
            AEConfig(depth=cfg.depth).validate(cfg.size)
    except ValueError as exc:
        st.error(f"These settings cannot train: {exc}")
        return None, None
    return cfg, "start" if start else "estimate"


def draw_estimate(cfg: TrainConfig, index: DatasetIndex | None, measure: bool = True) -> str | None:
    """The expected time of ``cfg`` (measuring this machine once where needed and ``measure``); the text, or None.
    Start passes ``measure=False``: the training is not held up, and its job says its ETA after the first epoch."""
    if index is None:
        return None
    n_train = len(index.split("train"))
    try:
        with st.spinner("Measuring this machine's speed for these settings (a few steps, once)…"):
            est = train_estimate(cfg, n_train, cfg.channels or detect_channels(index), calibrate_missing=measure)
    except (ValueError, RuntimeError, OSError) as exc:
        st.warning(f"No estimate for these settings: {exc}")
        return None
    if est is None:
        return None
    text = f"Expected time: {est.text()}."
    if est.upper_bound:
        text += " Early stopping may end it sooner."
    st.info(text, icon=":material/timer:")
    return text


def draw_runs() -> None:
    """Finished runs with their metrics; delete with confirmation."""
    runs = ui.run_summaries()
    st.subheader("Runs")
    if not runs:
        st.caption("No runs yet.")
        return
    rows = [{
        "run": r["id"], "model": r["config"]["model"].upper(), "data": r["config"]["data"], "category": r["config"]["category"],
        "size": r["config"]["size"], "status": r["status"], "image AUROC": r["metrics"].get("image_auroc"),
        "pixel AUROC": r["metrics"].get("pixel_auroc"), "AUPRO": r["metrics"].get("aupro"),
    } for r in runs]
    st.dataframe(rows, hide_index=True, width="stretch", column_config={
        "run": st.column_config.TextColumn(width="medium"), "data": st.column_config.TextColumn(width="small"),
        "model": st.column_config.TextColumn(width="small"), "size": st.column_config.NumberColumn(width="small"),
        "status": st.column_config.TextColumn(width="small", help="interrupted: the training process ended without "
                                                                   "finishing (killed, or its server stopped)"),
        **{k: st.column_config.NumberColumn(format="%.3f", width="small") for k in ("image AUROC", "pixel AUROC", "AUPRO")}})
    if any(r["status"] == "interrupted" for r in runs):
        st.caption("Interrupted runs keep their best checkpoint: resume with `python -m core train --out RUN --resume`.")
    with st.expander("Delete a run"):
        target = st.selectbox("Run to delete", [r["id"] for r in runs], key="train_delete_target")
        confirm = st.checkbox("Yes, delete this run and its files", key=KEY_CONFIRM_DELETE)
        path = next(Path(r["path"]) for r in runs if r["id"] == target)
        st.button("Delete", disabled=not confirm, icon=":material/delete:", on_click=_delete, args=(path,))
        if st.session_state.get(KEY_DELETE_ERROR):
            st.error(st.session_state.pop(KEY_DELETE_ERROR))


def _delete(path: Path) -> None:
    """Button callback: delete a run unless it is training; reset the confirmation."""
    st.session_state[KEY_CONFIRM_DELETE] = False
    if str(path) in {s.state.get("run_dir") for s in ui.job_registry().running("train")}:
        st.session_state[KEY_DELETE_ERROR] = "This run is still training: stop it first."
        return
    try:
        delete_run(path)
    except (RunError, OSError) as exc:
        st.session_state[KEY_DELETE_ERROR] = f"Could not delete: {exc}"


st.title("Train")
st.caption("Models learn from the normal (good) training images only (the AE and VAE hold 20% of them out for "
           "validation and early stopping). Training runs in the background: switch pages or reload, it goes on.")
selection = ui.selection()
dataset = ui.require_dataset(selection)
if dataset is not None:
    config, action = settings_ui(selection)
    if config is not None:
        draw_estimate(config, dataset, measure=action == "estimate")
        if action == "start":
            nproc = int(st.session_state.get(KEY_GPUS, 1)) if config.model in ("ae", "vae") and local_gpus() >= 2 else 1
            where = f" on {nproc} GPUs" if nproc > 1 else ""
            jobs_view.start_training(config, f"{config.model.upper()} on {config.data} / {config.category} at "
                                             f"{config.size}px{where}", nproc=nproc)
jobs_view.live_jobs()
draw_runs()
