"""Label: review test images one by one, mark them good / defective / unsure, paint where the defect is.

Labels go to the workspace's SQLite label store (``core.labels``) with their history, so every change
can be undone. Keyboard: G good, D defective, U unsure, ← / → previous / next, Z undo, Y redo. Queues put the
images that need a person first: unlabeled ones, those where my label (or the dataset's) disagrees with
the model at the current threshold, those closest to the threshold, or a random order. The metrics on
the Results and Threshold pages and ``python -m core evaluate --labels`` follow the labels at once
(sidebar: "Labels for the metrics"). The callbacks live in ``views.components.label_actions``, the
sections in ``views.components.label_panels``.
"""

from __future__ import annotations

import streamlit as st

from core.data.index import DatasetError
from core.evaluation.operating import pixel_operating_threshold
from core.evaluation.scored import ScoredSet, scored_set
from core.labels.effective import effective_labels
from core.labels.review import review_order
from core.labels.store import LabelStoreError, dataset_key
from core.runs import RunError
from core.services.label_review import model_disagreements, scores_in_order
from views.components import ui
from views.components.label_actions import (  # noqa: F401  (the keys are this page's API: tests use them)
    KEY_CURRENT,
    KEY_CURRENT_FOR,
    KEY_DEFECT,
    KEY_HEAT,
    KEY_HEAT_ALPHA,
    KEY_HEAT_ANCHOR,
    KEY_IMPORT,
    KEY_NOTE,
    KEY_PAINT,
    KEY_QUEUE,
    KEY_TRAIL,
    show_flash,
)
from views.components.label_panels import draw_export, draw_image, draw_panel

QUEUES = {  # core.labels.review_order
    "unlabeled": "Unlabeled first",
    "disagree": "Disagreeing with the model",
    "closest": "Closest to the threshold",
    "random": "Random",
}


def model_view(sel: ui.Selection) -> tuple[ScoredSet | None, float | None, str]:
    """The sidebar run's scores on this test set and the threshold in use (the Threshold page's, or F1-max)."""
    if sel.run_dir is None:
        return None, None, "No run selected: the model-based queues and the heatmap need one (sidebar)."
    try:
        ss = scored_set(sel.run_dir)
    except (RunError, DatasetError, ValueError, OSError) as exc:
        return None, None, f"The run cannot be scored: {exc}"
    t, source = ui.operating_threshold(sel.run_dir, ui.relabeled(ss, sel))
    hint = "; choose another on the Threshold page" if "default" in source else ""
    return ss, t, f"threshold {t:.4g}: {source}{hint}"


def current_position(paths: list[str], dataset: str) -> int:
    """Where the image on screen stands in the queue (the first one for a new dataset or a gone image)."""
    if st.session_state.get(KEY_CURRENT_FOR) != dataset:  # another dataset: same relative paths mean other images
        st.session_state[KEY_CURRENT_FOR] = dataset
        st.session_state.pop(KEY_CURRENT, None)
        st.session_state[KEY_TRAIL] = []
    if st.session_state.get(KEY_CURRENT) not in paths:
        st.session_state[KEY_CURRENT] = paths[0]
    return paths.index(st.session_state[KEY_CURRENT])


def main() -> None:
    opened = ui.open_page("Label", "dataset")
    if opened is None:
        return
    sel, index = opened
    samples = index.split("test")
    if not samples:
        st.info("This dataset has no test images to label.")
        return
    dataset = dataset_key(sel.data, sel.category)
    try:
        eff = effective_labels(index, "test", "merged", ui.label_store(), dataset=dataset, with_masks=True)
    except (LabelStoreError, OSError) as exc:
        st.error(f"The label database cannot be read: {exc}")
        return
    ss, t, model_note = model_view(sel)
    scores = scores_in_order(ss, eff.relpaths)
    top = st.columns([2, 1, 1, 1])
    top[0].progress(eff.n_mine / len(samples), text=f"{eff.n_mine} of {len(samples)} test images labeled by hand")
    top[1].metric("Disagree with the dataset", eff.disagreements, help="My good/defective label differs from the dataset's folder.")
    if scores is not None and t is not None:
        top[2].metric("Disagree with the model", model_disagreements(eff.labels, scores, t),
                      help="Merged label (mine, else the dataset's) differs from the model's verdict at the threshold.")
    queue = st.segmented_control("Queue", list(QUEUES), format_func=QUEUES.get, key=KEY_QUEUE, default="unlabeled",
                                 on_change=lambda: st.session_state.pop(KEY_CURRENT, None)) or "unlabeled"
    h1, h2, h3, _ = st.columns([1, 1.4, 1.4, 3], vertical_alignment="center")
    h1.toggle("Heatmap", key=KEY_HEAT, disabled=ss is None or ss.maps is None, help="Overlay the model's anomaly map.")
    h2.toggle("Threshold colours", key=KEY_HEAT_ANCHOR, disabled=not st.session_state.get(KEY_HEAT),
              help="Red = at or above the pixel threshold. Colour the heatmap relative to the operating point's pixel "
                   "threshold: blue below it, yellow to red "
                   "at or above it (as on Results and Threshold).")
    h3.slider("Heatmap opacity", 0.1, 0.9, 0.45, 0.05, key=KEY_HEAT_ALPHA, disabled=not st.session_state.get(KEY_HEAT),
              help="How much of the heatmap covers the image.")
    st.caption(model_note)
    order = review_order(queue, eff.mine, eff.dataset_labels, scores, t)
    paths = [eff.relpaths[k] for k in order]
    pos = current_position(paths, dataset)
    i, rel = order[pos], paths[pos]
    next_rel = paths[pos + 1] if pos + 1 < len(paths) else None
    show_flash()
    left, right = st.columns([1.15, 1], gap="large")
    with left:
        st.caption(f"Image {pos + 1} of {len(order)} in the queue · G good · D defective · U unsure · ← → move · Z undo · Y redo")
        pixel_t = pixel_operating_threshold(sel.run_dir, ss) if ss is not None and ss.maps is not None else None
        draw_image(samples[i], rel, ss, eff.mine[i], dataset, pixel_t)
    with right:
        draw_panel(index, i, rel, eff.mine[i], dataset, ss, t, next_rel, eff)
    draw_export(index, dataset, sel.category)


if __name__ == "__main__":
    main()
