"""Label: review test images one by one, mark them good / defective / unsure, paint where the defect is.

Labels go to the workspace's SQLite label store (``core.labels``) with their history, so every change
can be undone. Keyboard: G good, D defective, U unsure, ← / → previous / next, Z undo. Queues put the
images that need a person first: unlabeled ones, those where my label (or the dataset's) disagrees with
the model at the current threshold, those closest to the threshold, or a random order. The metrics on
the Results and Threshold pages and ``python -m core evaluate --labels`` follow the labels at once
(sidebar: "Labels for the metrics").
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import streamlit as st

from core.data.images import ImageError, read_image, to_channels
from core.data.index import DatasetError, DatasetIndex
from core.evaluation.curves import curves_for
from core.evaluation.scored import ScoredSet, scored_set
from core.labels.effective import effective_labels
from core.labels.export import export_mvtec
from core.labels.review import review_order
from core.labels.store import (
    LabelError,
    LabelImportError,
    LabelStoreError,
    dataset_key,
    file_sha1,
    read_label_file,
)
from core.runs import RunError
from core.viz import heatmap, mask_contour, overlay
from core.workspace import workspace_dir
from views import ui
from views.results import GOOD

KEY_QUEUE = "label_queue"
KEY_CURRENT = "label_current"  # relative path of the image on screen
KEY_CURRENT_FOR = "label_current_for"  # the dataset key KEY_CURRENT belongs to
KEY_TRAIL = "label_trail"  # images shown before, most recent last: Previous walks back through them
KEY_HEAT = "label_heatmap"
KEY_DEFECT = "label_defect_type"
KEY_NOTE = "label_note"
KEY_PAINT = "label_paint"
KEY_BRUSH = "label_brush"
KEY_TOOL = "label_tool"
KEY_FLASH = "label_flash"
KEY_CANVAS_VERSION = "label_canvas_version"
KEY_IMPORT = "label_import_file"

QUEUES = {  # core.labels.review_order
    "unlabeled": "Unlabeled first",
    "disagree": "Disagreeing with the model",
    "closest": "Closest to the threshold",
    "random": "Random",
}
VIEW_PX = 448  # side of the large image
PAINT = "#ff2020"
ERASE = "#2040ff"
GENERIC_DEFECT = "defective"


# --------------------------------------------------------------------------- queue
# --------------------------------------------------------------------------- images
@st.cache_data(max_entries=64, show_spinner=False)
def display_image(path: str, mtime_ns: int, px: int = VIEW_PX) -> np.ndarray | str:
    """The image as RGB uint8 fitted into ``px`` (aspect kept), or the reason it cannot be read."""
    try:
        img = to_channels(read_image(Path(path)), 3)
    except (ImageError, OSError) as exc:
        return str(exc)
    h, w = img.shape[:2]
    s = px / max(h, w)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_NEAREST
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=interp)


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0


def canvas_mask(rgba: np.ndarray, existing: np.ndarray | None) -> np.ndarray:
    """Painted strokes (red) added to ``existing``, erase strokes (blue) removed; same size as ``rgba``."""
    a = rgba[..., 3] > 0
    r, b = rgba[..., 0].astype(int), rgba[..., 2].astype(int)
    paint = a & (r > 150) & (b < 120)
    erase = a & (b > 150) & (r < 120)
    base = np.zeros(a.shape, bool) if existing is None else _resize_mask(existing, a.shape)
    return (base | paint) & ~erase


# --------------------------------------------------------------------------- actions (callbacks)
def _flash(kind: str, text: str) -> None:
    st.session_state[KEY_FLASH] = (kind, text)


def _go(rel: str | None) -> None:
    """Show ``rel`` next (None: stay); the current image goes on the trail for Previous."""
    if rel is not None:
        current = st.session_state.get(KEY_CURRENT)
        trail = st.session_state.setdefault(KEY_TRAIL, [])
        if current is not None and (not trail or trail[-1] != current):
            trail.append(current)
            del trail[:-200]
        st.session_state[KEY_CURRENT] = rel


def _back() -> None:
    """Show the image seen before this one (the queue may have reordered since, e.g. after labeling)."""
    trail = st.session_state.get(KEY_TRAIL) or []
    if trail:
        st.session_state[KEY_CURRENT] = trail.pop()


def _label(dataset: str, rel: str, path: str, label: str, next_rel: str | None) -> None:
    store = ui.label_store()
    defect = (st.session_state.get(KEY_DEFECT) or GENERIC_DEFECT) if label == "defective" else None
    note = st.session_state.get(KEY_NOTE) or ""
    try:
        kwargs: dict[str, Any] = {"note": note}
        if label == "defective":
            kwargs["defect_type"] = defect
        store.set_label(dataset, rel, label, content_hash=_hash(path), **kwargs)
    except (LabelError, LabelStoreError, OSError) as exc:
        _flash("error", f"Not saved: {exc}")
        return
    _flash("success", f"{Path(rel).parent.name}/{Path(rel).name}: **{label}**" + (f" ({defect})" if defect else ""))
    _go(next_rel)  # the next image of the queue as it was shown (labeling may reorder the queue)


def _hash(path: str) -> str | None:
    try:
        return file_sha1(path)
    except OSError:
        return None


def _undo(dataset: str, rel: str) -> None:
    store = ui.label_store()
    try:
        if not store.can_undo(dataset, rel):
            _flash("info", "Nothing to undo for this image.")
            return
        rec = store.undo(dataset, rel)
    except (LabelStoreError, OSError) as exc:
        _flash("error", f"Undo failed: {exc}")
        return
    _flash("info", f"Undone: now **{rec.label if rec else 'unlabeled'}**.")
    st.session_state[KEY_CANVAS_VERSION] = st.session_state.get(KEY_CANVAS_VERSION, 0) + 1


def _save_mask(dataset: str, rel: str, path: str, mask: np.ndarray, shape: tuple[int, int]) -> None:
    store = ui.label_store()
    full = _resize_mask(mask, shape)
    try:
        store.set_label(dataset, rel, "defective", mask=full if full.any() else None,
                        defect_type=st.session_state.get(KEY_DEFECT) or GENERIC_DEFECT, content_hash=_hash(path))
    except (LabelError, LabelStoreError, OSError) as exc:
        _flash("error", f"Mask not saved: {exc}")
        return
    _flash("success", f"Mask saved ({int(full.sum())} defect pixels); the image is labeled defective.")
    st.session_state[KEY_CANVAS_VERSION] = st.session_state.get(KEY_CANVAS_VERSION, 0) + 1


# --------------------------------------------------------------------------- drawing
def model_view(sel: ui.Selection) -> tuple[ScoredSet | None, float | None, str]:
    """The sidebar run's scores on this test set and the threshold in use (the Threshold page's, or F1-max)."""
    if sel.run_dir is None:
        return None, None, "No run selected: the model-based queues and the heatmap need one (sidebar)."
    try:
        ss = scored_set(sel.run_dir)
    except (RunError, DatasetError, ValueError, OSError) as exc:
        return None, None, f"The run cannot be scored: {exc}"
    t, source = ui.operating_threshold(ss.run_id, curves_for(ss).f1_threshold)
    hint = "" if "chosen" in source else "; choose another on the Threshold page"
    return ss, t, f"threshold {t:.4g}: {source}{hint}"


def draw_image(sample: Any, rel: str, ss: ScoredSet | None, record: Any, dataset: str) -> None:
    img = display_image(str(sample.path), sample.path.stat().st_mtime_ns if sample.path.exists() else 0)
    if isinstance(img, str):
        st.error(f"This image cannot be shown: {img}")
        return
    paint = st.toggle("Paint the defect", key=KEY_PAINT, help="Paint (red) or erase (blue) the defect region on the image, "
                                                               "then Save mask. Saving labels the image defective.")
    mine = record.mask_array(img.shape[:2]) if record is not None and record.has_mask else None
    if paint:
        draw_canvas(img, mine, rel, str(sample.path), dataset, sample)
        return
    shown = img
    if st.session_state.get(KEY_HEAT) and ss is not None and ss.maps is not None and rel in set(ss.paths):
        i = ss.index_of(rel)
        amap = cv2.resize(ss.maps[i].astype(np.float32), (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
        shown = overlay(img, heatmap(amap, 0.0, float(np.quantile(ss.maps.astype(np.float32), 0.999))))
    if mine is not None:
        shown = mask_contour(shown, mine, color=(255, 40, 40))
    if sample.mask_path is not None:
        try:
            shown = mask_contour(shown, _dataset_mask(sample.mask_path, img.shape[:2]), color=(0, 230, 64))
        except (ImageError, OSError):
            pass
    st.image(shown, output_format="PNG", width=min(VIEW_PX, shown.shape[1]))
    st.caption("Green outline: the dataset's mask; red outline: the mask you painted." if sample.mask_path or mine is not None
               else " ")


def _dataset_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    m = read_image(path)
    if m.ndim == 3:
        m = m.max(axis=-1)
    return _resize_mask(m > 127, shape)


def draw_canvas(img: np.ndarray, mine: np.ndarray | None, rel: str, path: str, dataset: str, sample: Any) -> None:
    try:
        from streamlit_drawable_canvas import st_canvas
    except Exception as exc:  # the component needs a Streamlit server that registered it
        st.warning(f"Mask painting is not available here ({type(exc).__name__}): install streamlit-drawable-canvas.")
        return
    from PIL import Image

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
    shape = _native_shape(sample.path) or img.shape[:2]
    st.button("Save mask", type="primary", icon=":material/save:", on_click=_save_mask, args=(dataset, rel, path, mask, shape),
              disabled=not mask.any() and mine is None, help="Store the painted region as this image's defect mask.")
    st.caption(f"{int(mask.sum())} pixels painted at display size. Red strokes add to the mask, blue strokes remove.")


@st.cache_data(max_entries=256, show_spinner=False)
def _native_shape(path: Path) -> tuple[int, int] | None:
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.height, im.width
    except Exception:  # unreadable: the caller falls back to the display size
        return None


def draw_panel(index: DatasetIndex, i: int, rel: str, record: Any, dataset: str, ss: ScoredSet | None,
               t: float | None, next_rel: str | None, eff: Any) -> None:
    sample = index.split("test")[i]
    ds_label = "unknown" if eff.dataset_labels[i] < 0 else ("defective" if eff.dataset_labels[i] == 1 else "good")
    st.markdown(f"**{rel}**")
    st.markdown(f"Dataset: :{'red' if ds_label == 'defective' else 'green' if ds_label == 'good' else 'gray'}-badge[{ds_label}"
                f"{' · ' + sample.defect if ds_label == 'defective' else ''}]  \n"
                + (f"Mine: :blue-badge[{record.label}{' · ' + record.defect_type if record.defect_type else ''}] "
                   f"by {record.author or '?'} · {record.time[:16].replace('T', ' ')}" if record is not None else "Mine: —"))
    if ss is not None and rel in set(ss.paths):
        s = float(ss.scores[ss.index_of(rel)])
        verdict = "flagged" if t is not None and s >= t else "passed"
        st.markdown(f"Model score **{s:.4g}** → {verdict} at the threshold {t:.4g}")
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
    b[0].button("Good", shortcut="G", on_click=_label, args=(*args, "good", next_rel), width="stretch",
                icon=":material/check_circle:", key="label_good")
    b[1].button("Defective", shortcut="D", on_click=_label, args=(*args, "defective", next_rel), width="stretch",
                icon=":material/report:", type="primary", key="label_defective")
    b[2].button("Unsure", shortcut="U", on_click=_label, args=(*args, "unsure", next_rel), width="stretch",
                icon=":material/help:", key="label_unsure")
    b = st.columns(3)
    b[0].button("Previous", shortcut="Left", on_click=_back, width="stretch", disabled=not st.session_state.get(KEY_TRAIL),
                icon=":material/arrow_back:", key="label_prev", help="The image shown before this one.")
    b[1].button("Next", shortcut="Right", on_click=_go, args=(next_rel,), width="stretch", disabled=next_rel is None,
                icon=":material/arrow_forward:", key="label_next")
    b[2].button("Undo", shortcut="Z", on_click=_undo, args=(dataset, rel), width="stretch", icon=":material/undo:",
                key="label_undo", help="Restore this image's previous label (repeat to go further back).")
    history = ui.label_store().history(dataset, rel)
    if history:
        with st.expander(f"History ({len(history)})"):
            for h in reversed(history[-20:]):
                after = h.after.label if h.after is not None else "unlabeled"
                st.caption(f"{h.time[:19].replace('T', ' ')} · {h.author} · {h.action} → {after}"
                           + (" (undone)" if h.undone else ""))


def _import_upload() -> None:
    """on_change of the import uploader: all rows or none, with a message naming bad rows."""
    f = st.session_state.get(KEY_IMPORT)
    if f is None:
        return
    import tempfile

    suffix = ".csv" if f.name.lower().endswith(".csv") else ".json"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(f.getvalue())
        try:
            result = ui.label_store().import_rows(read_label_file(path))
        except (LabelImportError, LabelError, LabelStoreError, UnicodeDecodeError, OSError) as exc:
            _flash("error", f"{f.name}: {exc}")
            return
    _flash("success", f"{f.name}: {result.rows} row(s) imported, {result.changed} changed, {result.unchanged} unchanged.")


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
                         on_change=_import_upload, help="All rows are applied, or none: a bad row is named and nothing changes.")
        st.caption(f"Dataset key of this data in the label store: `{dataset}` (the `dataset` column).")


def main() -> None:
    st.title("Label")
    sel = ui.selection()
    index = ui.require_dataset(sel)
    if index is None:
        return
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
    scores = None
    if ss is not None:
        by_path = {p: k for k, p in enumerate(ss.paths)}
        if all(p in by_path for p in eff.relpaths):
            scores = np.array([ss.scores[by_path[p]] for p in eff.relpaths])
    n_mine = eff.n_mine
    top = st.columns([2, 1, 1, 1])
    top[0].progress(n_mine / len(samples), text=f"{n_mine} of {len(samples)} test images labeled by hand")
    top[1].metric("Disagree with the dataset", eff.disagreements, help="My good/defective label differs from the dataset's folder.")
    if scores is not None and t is not None:
        verdict = scores >= t
        truth = eff.labels
        top[2].metric("Disagree with the model", int(((truth >= 0) & ((truth == 1) != verdict)).sum()),
                      help="Merged label (mine, else the dataset's) differs from the model's verdict at the threshold.")
    c1, c2 = st.columns([2, 1])
    queue = c1.segmented_control("Queue", list(QUEUES), format_func=QUEUES.get, key=KEY_QUEUE, default="unlabeled",
                                 on_change=lambda: st.session_state.pop(KEY_CURRENT, None)) or "unlabeled"
    c2.toggle("Heatmap", key=KEY_HEAT, disabled=ss is None or ss.maps is None, help="Overlay the model's anomaly map.")
    st.caption(model_note)
    order = review_order(queue, eff.mine, eff.dataset_labels, scores, t)
    paths = [eff.relpaths[k] for k in order]
    if st.session_state.get(KEY_CURRENT_FOR) != dataset:  # another dataset: same relative paths mean other images
        st.session_state[KEY_CURRENT_FOR] = dataset
        st.session_state.pop(KEY_CURRENT, None)
        st.session_state[KEY_TRAIL] = []
    if st.session_state.get(KEY_CURRENT) not in paths:
        st.session_state[KEY_CURRENT] = paths[0]
    pos = paths.index(st.session_state[KEY_CURRENT])
    i = order[pos]
    rel = paths[pos]
    next_rel = paths[pos + 1] if pos + 1 < len(paths) else None
    flash = st.session_state.pop(KEY_FLASH, None)
    if flash and flash[0] == "error":
        st.error(flash[1], icon=":material/error:")
    elif flash:  # a toast outlives the extra rerun the canvas component may trigger
        st.toast(flash[1], icon=":material/check_circle:" if flash[0] == "success" else ":material/info:")
    left, right = st.columns([1.15, 1], gap="large")
    with left:
        st.caption(f"Image {pos + 1} of {len(order)} in the queue · G good · D defective · U unsure · ← → move · Z undo")
        draw_image(samples[i], rel, ss, eff.mine[i], dataset)
    with right:
        draw_panel(index, i, rel, eff.mine[i], dataset, ss, t, next_rel, eff)
    draw_export(index, dataset, sel.category)


if __name__ == "__main__":
    from views import labeling as _page

    _page.main()
