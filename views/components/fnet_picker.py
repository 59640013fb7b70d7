"""The f-Net picker of the Ano-Unet page: an f-Net run of the sidebar's data (the frozen feature
extractor F), or a small form that trains one in the background."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from core.config import TrainConfig
from views.components import jobs_view, ui
from views.components.image_picker import valid_settings

FNET_DEMO = {"epochs": 15}  # f-Net AUROC 0.92 on built-in bottle at 64 px (README's detector table)


@dataclass(frozen=True)
class FnetKeys:
    """The widget keys of the picker and its training form."""

    run: str
    size: str
    epochs: str
    button: str


def draw_fnet_picker(sel: ui.Selection, keys: FnetKeys) -> Path | None:
    """Pick an f-Net run of this data (finished, newest first), or offer to train one."""
    runs = [r for r in ui.run_summaries() if r["has_model"] and r["config"].get("model") == "fnet"
            and ui.same_data(r["config"], sel.data, sel.category)]
    by_id = {r["id"]: r for r in runs}
    if runs:
        if st.session_state.get(keys.run) not in by_id:
            st.session_state[keys.run] = runs[0]["id"]

        def label(i: str) -> str:
            auroc = by_id[i]["metrics"].get("image_auroc")
            return f"{i} · {by_id[i]['config'].get('size')} px" + (f" · distance AUROC {auroc:.3f}" if isinstance(auroc, float) else "")

        chosen = st.selectbox("Feature extractor F (an f-Net run of this data)", list(by_id), key=keys.run, format_func=label,
                              help="A CNN trained to tell this category's normal images from other images, then frozen. "
                                   "Its distance to C (the mean feature of normal images) is also an image score.")
    with st.expander("Train an f-Net for this data" if runs else "No f-Net for this data yet: train one", expanded=not runs):
        draw_fnet_training(sel, keys)
    return Path(by_id[chosen]["path"]) if runs else None


def draw_fnet_training(sel: ui.Selection, keys: FnetKeys) -> None:
    """A small form that trains an f-Net of this data in the background, and its live job."""
    st.caption("The f-Net learns to separate the normal training images from other images that need no download: "
               "the other built-in categories, digits and synthetic defect pastes on the normal images. "
               "It is stored as a run (`python -m core train --model fnet`).")
    with st.form("anounet_train_fnet", border=False):
        c1, c2, c3, c4 = st.columns([1, 1, 1, 1], vertical_alignment="bottom")
        size = c1.selectbox("Image size", [32, 64, 128], index=1, key=keys.size,
                            help="Ano-Unet runs at this size: larger images cost about (side / 64)² times as much per step.")
        epochs = c2.number_input("Epochs", 1, 500, FNET_DEMO["epochs"], key=keys.epochs)
        minutes = c3.number_input("Time budget (min, 0 = none)", 0.0, 1440.0, 0.0, step=1.0, key=f"{keys.epochs}_minutes",
                                  help="Stop after this much training time even if epochs remain (the run says so).")
        go_train = c4.form_submit_button("Train f-Net", icon=":material/model_training:", type="primary", width="stretch",
                                         key=keys.button)
    if go_train:
        cfg = TrainConfig(data=sel.data, category=sel.category, model="fnet", size=int(size), epochs=int(epochs),
                          max_minutes=float(minutes))
        if valid_settings(cfg):
            jobs_view.start_training(cfg, f"f-Net · {sel.category} · {size} px")
    jobs_view.live_jobs(only_session=True)
