"""Home: what AnomalyLab does, the state of data and models, a quick start."""

from __future__ import annotations

import streamlit as st

from core.config import TrainConfig
from views.components import jobs_view, ui

# The demo is fixed work, never a time budget, so its quality does not depend on how busy the CPU is:
# PatchCore on EfficientNet-Lite0 features (one pass over the good images, no epochs) and, beside it for
# comparison, a small AE trained for a fixed number of epochs.
DEMO_CONFIG = TrainConfig(data="builtin:synthetic", category="bottle", model="patchcore", size=64)
DEMO_AE_CONFIG = TrainConfig(data="builtin:synthetic", category="bottle", model="ae", size=64, base_channels=8, depth=5,
                             epochs=12, patience=12, batch_size=16, lr=2e-3)


def draw_intro() -> None:
    st.title("AnomalyLab")
    st.markdown(
        "A workbench for **unsupervised visual anomaly detection**. Models learn what *normal* looks like "
        "from good images only; for a new image they show **where** it departs from normal (an anomaly "
        "map) and **how much** (a score). Use it to demo models, inspect defects and choose an operating threshold."
    )


def draw_state(sel: ui.Selection) -> None:
    index = ui.require_dataset(sel)
    runs = ui.run_summaries()
    c1, c2, c3, c4 = st.columns(4)
    if index is not None:
        counts = index.counts()
        c1.metric("Dataset", sel.category, help=f"{sel.data}")
        c2.metric("Training images (good)", sum(counts.get("train", {}).values()))
        test = counts.get("test", {})
        c3.metric("Test images", sum(test.values()), help=", ".join(f"{k}: {v}" for k, v in sorted(test.items())))
    c4.metric("Trained runs", len(runs))


def draw_quick_start(sel: ui.Selection) -> None:
    st.subheader("Quick start")
    has_runs = bool(ui.run_summaries())
    left, right = st.columns([2, 3])
    with left:
        st.markdown(
            "1. Pick data in the sidebar: built-in **synthetic** defects, real handwritten **digits**, or your own folder.\n"
            "2. **Train** a detector on the good images: PatchCore or PaDiM (ImageNet features), an autoencoder or a VAE.\n"
            "3. See **Results**: anomaly heatmaps, image and pixel AUROC; **Try your image**.\n"
            "4. Choose the operating **Threshold** with its consequences; **Label** images where you disagree.\n"
        )
    with right:
        st.markdown("**No model yet? Train the demo models** on the built-in synthetic bottles: **PatchCore**, which "
                    "compares ImageNet features with those of the good images (no training, the same result on any "
                    "CPU), and beside it a small **autoencoder** (12 epochs) that learns to reconstruct them.")
        running = any(s.state.get("config", {}).get("data") == DEMO_CONFIG.data for s in ui.job_registry().running("train"))
        if st.button("Train the demo models", type="secondary" if has_runs else "primary", icon=":material/rocket_launch:",
                     disabled=running):
            jobs_view.start_training(DEMO_AE_CONFIG, "Demo 2/2: autoencoder (for comparison), 12 epochs at 64px")
            jobs_view.start_training(DEMO_CONFIG, "Demo 1/2: PatchCore on ImageNet features (the detector to use)")
    jobs_view.live_jobs(only_session=True)


def draw_pages() -> None:
    st.subheader("Pages")
    links = [  # the sidebar's order (app.py)
        ("views/dataset.py", "Dataset", ":material/photo_library:", "Counts, thumbnails, masks, skipped files"),
        ("views/train.py", "Train", ":material/model_training:", "Background training with live curves"),
        ("views/results.py", "Results", ":material/insights:", "Heatmaps sorted by score, AUROC, AUPRO"),
        ("views/explorer.py", "Threshold", ":material/tune:",
         "Choose the operating threshold: ROC/PR, rules and costs, misses and false alarms, decision record"),
        ("views/labeling.py", "Label", ":material/label:",
         "Mark images good/defective with the keyboard, paint defect masks; metrics follow your labels"),
        ("views/projection.py", "Projection", ":material/animation:",
         "Move the image towards normal, step by step: only the defect changes"),
        ("views/anounet.py", "Ano-Unet", ":material/auto_fix_high:",
         "Per-image U-Net guided by a frozen feature extractor: what it must change is the anomaly"),
        ("views/try_image.py", "Try your image", ":material/upload:", "Score an uploaded image"),
    ]
    cols = st.columns(4)
    for k, (page, label, icon, help_text) in enumerate(links):
        cols[k % 4].page_link(page, label=label, icon=icon, help=help_text)


draw_intro()
selection = ui.selection()
draw_state(selection)
draw_quick_start(selection)
draw_pages()
