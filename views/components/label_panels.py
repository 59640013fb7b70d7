"""Sections of the Label page: the large image (heatmap, masks, the paint canvas), the label panel with
its buttons and history, and the export / import of labels."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import cv2
import numpy as np
import streamlit as st
from PIL import Image

from core.data.images import ImageError, read_mask
from core.data.index import DatasetIndex
from core.evaluation.scored import ScoredSet
from core.labels.export import export_mvtec
from core.services import label_review
from core.services.label_review import LABEL_NAMES, canvas_mask, resize_mask
from core.viz import heatmap, heatmap_anchored, heatmap_vmax, mask_contour, overlay
from core.workspace import workspace_dir
from views.components import ui
from views.components.display import GOOD
from views.components.label_actions import (
    GENERIC_DEFECT,
    KEY_BRUSH,
    KEY_CANVAS_VERSION,
    KEY_DEFECT,
    KEY_HEAT,
    KEY_HEAT_ALPHA,
    KEY_HEAT_ANCHOR,
    KEY_IMPORT,
    KEY_NOTE,
    KEY_PAINT,
    KEY_TOOL,
    KEY_TRAIL,
    KEY_UNDONE,
    back,
    go,
    import_upload,
    label,
    redo,
    save_mask,
    undo,
)

VIEW_PX = 448  # side of the large image
PAINT = "#ff2020"
ERASE = "#2040ff"
BADGE = {"defective": "red", "good": "green", "unknown": "gray"}


@st.cache_data(max_entries=64, show_spinner=False)
def display_image(path: str, mtime_ns: int, px: int = VIEW_PX) -> np.ndarray | str:
    """:func:`core.services.label_review.display_image`, keyed by path and modification time."""
    return label_review.display_image(path, px)


@st.cache_data(max_entries=256, show_spinner=False)
def native_shape(path: str) -> tuple[int, int] | None:
    return label_review.native_shape(path)


def draw_image(sample: Any, rel: str, ss: ScoredSet | None, record: Any, dataset: str,
               pixel_threshold: float | None = None) -> None:
    """The image (with the heatmap, masks, or the mask painter); ``pixel_threshold``: colour the heatmap
    relative to it when the user asks."""
    img = display_image(str(sample.path), sample.path.stat().st_mtime_ns if sample.path.exists() else 0)
    if isinstance(img, str):
        st.error(f"This image cannot be shown: {img}")
        return
    paint = st.toggle("Paint the defect", key=KEY_PAINT, help="Paint (red) or erase (blue) the defect region on the image, "
                                                               "then Save mask. Saving labels the image defective.")
    mine = record.mask_array(img.shape[:2]) if record is not None and record.has_mask else None
    if paint:
        draw_canvas(img, mine, rel, str(sample.path), dataset)
        return
    shown = img
    if st.session_state.get(KEY_HEAT) and ss is not None and ss.maps is not None and rel in set(ss.paths):
        amap = cv2.resize(ss.maps[ss.index_of(rel)].astype(np.float32), (img.shape[1], img.shape[0]),
                          interpolation=cv2.INTER_LINEAR)
        anchor = pixel_threshold if st.session_state.get(KEY_HEAT_ANCHOR) else None
        heat = heatmap_anchored(amap, anchor) if anchor is not None else heatmap(amap, 0.0, heatmap_vmax(ss.maps))
        shown = overlay(img, heat, float(st.session_state.get(KEY_HEAT_ALPHA, 0.45)))
    if mine is not None:
        shown = mask_contour(shown, mine, color=(255, 40, 40))
    if sample.mask_path is not None:
        try:
            shown = mask_contour(shown, read_mask(sample.mask_path, img.shape[:2]), color=(0, 230, 64))
        except (ImageError, OSError):
            pass
    st.image(shown, output_format="PNG", width=min(VIEW_PX, shown.shape[1]))
    st.caption("Green outline: the dataset's mask; red outline: the mask you painted." if sample.mask_path or mine is not None
               else " ")


def draw_canvas(img: np.ndarray, mine: np.ndarray | None, rel: str, path: str, dataset: str) -> None:
    try:
        from streamlit_drawable_canvas import st_canvas
    except Exception as exc:  # noqa: BLE001  (the component needs a Streamlit server that registered it)
        st.warning(f"Mask painting is not available here ({type(exc).__name__}): install streamlit-drawable-canvas.")
        return
    c1, c2 = st.columns(2)
    tool = c1.segmented_control("Tool", ["Paint", "Erase"], key=KEY_TOOL, default="Paint") or "Paint"
    brush = c2.slider("Brush", 2, 60, 18, key=KEY_BRUSH)
    bg = img if mine is None else mask_contour(overlay(img, np.where(mine[..., None], [255, 40, 40], img).astype(np.uint8), 0.35),
                                                 mine, color=(255, 40, 40))
    version = st.session_state.get(KEY_CANVAS_VERSION, 0)
    key = "canvas-" + hashlib.sha1(f"{rel}|{version}".encode()).hexdigest()[:10]
    result = st_canvas(stroke_width=int(brush), stroke_color=PAINT if tool == "Paint" else ERASE, background_image=Image.fromarray(bg),
                       height=img.shape[0], width=img.shape[1], drawing_mode="freedraw", return_image_data=True, key=key)
    data = result.image_data
    mask = canvas_mask(np.asarray(data), mine) if data is not None else (mine if mine is not None else np.zeros(img.shape[:2], bool))
    shape = native_shape(path) or img.shape[:2]
    st.button("Save mask", type="primary", icon=":material/save:", on_click=save_mask, args=(dataset, rel, path, mask, shape),
              disabled=not mask.any() and mine is None, help="Store the painted region as this image's defect mask.")
    st.caption(f"{int(resize_mask(mask, shape).sum()):,} defect pixels at the image's {shape[1]}×{shape[0]} px (what Save "
               "mask stores). Red strokes add to the mask, blue strokes remove.")


def draw_panel(index: DatasetIndex, i: int, rel: str, record: Any, dataset: str, ss: ScoredSet | None,
               t: float | None, next_rel: str | None, eff: Any) -> None:
    sample = index.split("test")[i]
    ds_label = LABEL_NAMES[int(np.sign(eff.dataset_labels[i]))]
    st.markdown(f"**{rel}**")
    st.markdown(f"Dataset: :{BADGE[ds_label]}-badge[{ds_label}{' · ' + sample.defect if ds_label == 'defective' else ''}]  \n"
                + (f"Mine: :blue-badge[{record.label}{' · ' + record.defect_type if record.defect_type else ''}] "
                   f"by {record.author or '?'} · {record.time[:16].replace('T', ' ')}" if record is not None else "Mine: —"))
    if ss is not None and rel in set(ss.paths):
        s = float(ss.scores[ss.index_of(rel)])
        st.markdown(f"Model score **{s:.4g}** → {'flagged' if t is not None and s >= t else 'passed'} at the threshold {t:.4g}")
    defects = sorted({s.defect for s in index.split("test") if s.defect != GOOD} | {GENERIC_DEFECT}
                     | ({record.defect_type} if record is not None and record.defect_type else set()))
    default = record.defect_type if record is not None and record.defect_type else (sample.defect if sample.defect != GOOD else GENERIC_DEFECT)
    if st.session_state.get(KEY_DEFECT) not in defects or st.session_state.get("_label_defect_for") != rel:
        st.session_state[KEY_DEFECT] = default if default in defects else GENERIC_DEFECT
        st.session_state["_label_defect_for"] = rel
        st.session_state[KEY_NOTE] = record.note if record is not None else ""
    st.selectbox("Defect type (for Defective)", defects, key=KEY_DEFECT, accept_new_options=True,
                 help="Pick a type or type a new one.")
    st.text_input("Note", key=KEY_NOTE, placeholder="optional")
    b = st.columns(3)
    args = (dataset, rel, str(sample.path))
    current = record.label if record is not None else None  # the stored label's button is highlighted
    kind = lambda value: "primary" if current == value else "secondary"  # noqa: E731
    b[0].button("Good", shortcut="G", on_click=label, args=(*args, "good", next_rel), width="stretch",
                icon=":material/check_circle:", key="label_good", type=kind("good"))
    b[1].button("Defective", shortcut="D", on_click=label, args=(*args, "defective", next_rel), width="stretch",
                icon=":material/report:", type=kind("defective"), key="label_defective")
    b[2].button("Unsure", shortcut="U", on_click=label, args=(*args, "unsure", next_rel), width="stretch",
                icon=":material/help:", key="label_unsure", type=kind("unsure"))
    b = st.columns(2)
    b[0].button("Previous", shortcut="Left", on_click=back, width="stretch", disabled=not st.session_state.get(KEY_TRAIL),
                icon=":material/arrow_back:", key="label_prev", help="The image shown before this one.")
    b[1].button("Next", shortcut="Right", on_click=go, args=(next_rel,), width="stretch", disabled=next_rel is None,
                icon=":material/arrow_forward:", key="label_next")
    b = st.columns(2)
    b[0].button("Undo", shortcut="Z", on_click=undo, args=(dataset, rel), width="stretch", icon=":material/undo:",
                key="label_undo", help="Undo your last labeling action, on whichever image it was (that image is shown; "
                                       "repeat to go further back).")
    b[1].button("Redo", shortcut="Y", on_click=redo, args=(dataset,), width="stretch", icon=":material/redo:",
                key="label_redo", disabled=not st.session_state.get(KEY_UNDONE), help="Put back what Undo took away.")
    history = ui.label_store().history(dataset, rel)
    if history:
        with st.expander(f"History ({len(history)})"):
            for h in reversed(history[-20:]):
                after = h.after.label if h.after is not None else "unlabeled"
                st.caption(f"{h.time[:19].replace('T', ' ')} · {h.author} · {h.action} → {after}" + (" (undone)" if h.undone else ""))


def draw_export(index: DatasetIndex, dataset: str, category: str | None) -> None:
    store = ui.label_store()
    with st.expander("Export and import labels"):
        c1, c2, c3 = st.columns(3)
        c1.download_button("Labels as CSV", store.export_csv(dataset=dataset), file_name=f"labels-{category}.csv",
                           mime="text/csv", icon=":material/download:", width="stretch")
        c2.download_button("Labels as JSON", store.export_json(dataset=dataset), file_name=f"labels-{category}.json",
                           mime="application/json", icon=":material/download:", width="stretch")
        if c3.button("Export as MVTec folder", icon=":material/folder_zip:", width="stretch",
                     help="The dataset with the merged labels, in the MVTec AD layout (train/good, test/<type>, "
                          "ground_truth/<type>/*_mask.png), in the workspace: train on it as a custom folder."):
            out = workspace_dir() / "exports" / f"{category or 'data'}-{time.strftime('%Y%m%d-%H%M%S')}"
            try:
                with st.spinner("Writing the MVTec folder…"):
                    summary = export_mvtec(index, out, store=store, dataset=dataset)
                n_test = sum(summary.get("test", {}).values())
                st.success(f"Written to `{out}` ({summary.get('train_good', 0)} train, {n_test} test images, "
                           f"{summary.get('masks', 0)} masks). "
                           "Pick it as a custom folder in the sidebar to train on it.")
            except (ValueError, OSError) as exc:
                st.error(f"Export failed: {exc}")
        st.file_uploader("Import labels (CSV with at least dataset,path,label; or JSON)", type=["csv", "json"], key=KEY_IMPORT,
                         on_change=import_upload, help="All rows are applied, or none: a bad row is named and nothing changes.")
        st.caption(f"Dataset key of this data in the label store: `{dataset}` (the `dataset` column).")
