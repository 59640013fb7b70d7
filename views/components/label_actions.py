"""The Label page's session state and button callbacks: store a label, undo it, save a painted mask,
walk the queue and import a label file. Every change goes to the workspace's label store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from core.labels.store import (
    LabelError,
    LabelImportError,
    LabelStoreError,
    file_sha1,
    read_label_file,
)
from core.services.label_review import resize_mask
from core.workspace import workspace_temp_dir
from views.components import ui

KEY_QUEUE = "label_queue"
KEY_CURRENT = "label_current"  # relative path of the image on screen
KEY_CURRENT_FOR = "label_current_for"  # the dataset key KEY_CURRENT belongs to
KEY_TRAIL = "label_trail"  # images shown before, most recent last: Previous walks back through them
KEY_HEAT = "label_heatmap"
KEY_HEAT_ALPHA = "label_heatmap_opacity"
KEY_HEAT_ANCHOR = "label_heatmap_anchored"
KEY_DEFECT = "label_defect_type"
KEY_NOTE = "label_note"
KEY_PAINT = "label_paint"
KEY_BRUSH = "label_brush"
KEY_TOOL = "label_tool"
KEY_FLASH = "label_flash"
KEY_CANVAS_VERSION = "label_canvas_version"
KEY_IMPORT = "label_import_file"
KEY_DONE = "label_done"  # this session's labeling actions [(dataset, path)], most recent last: Undo takes the last
KEY_UNDONE = "label_undone"  # undone actions [(dataset, path, the record before the undo)]: Redo puts them back
HISTORY_MAX = 500
GENERIC_DEFECT = "defective"


def flash(kind: str, text: str) -> None:
    st.session_state[KEY_FLASH] = (kind, text)


def go(rel: str | None) -> None:
    """Show ``rel`` next (None: stay); the current image goes on the trail for Previous."""
    if rel is not None:
        current = st.session_state.get(KEY_CURRENT)
        trail = st.session_state.setdefault(KEY_TRAIL, [])
        if current is not None and (not trail or trail[-1] != current):
            trail.append(current)
            del trail[:-200]
        st.session_state[KEY_CURRENT] = rel


def back() -> None:
    """Show the image seen before this one (the queue may have reordered since, e.g. after labeling)."""
    trail = st.session_state.get(KEY_TRAIL) or []
    if trail:
        st.session_state[KEY_CURRENT] = trail.pop()


def _hash(path: str) -> str | None:
    try:
        return file_sha1(path)
    except OSError:
        return None


def _new_canvas() -> None:
    st.session_state[KEY_CANVAS_VERSION] = st.session_state.get(KEY_CANVAS_VERSION, 0) + 1


def _short(rel: str) -> str:
    return f"{Path(rel).parent.name}/{Path(rel).name}"


def _did(dataset: str, rel: str) -> None:
    """Remember a labeling action for Undo; a new action clears what Redo could put back."""
    done = st.session_state.setdefault(KEY_DONE, [])
    done.append((dataset, rel))
    del done[:-HISTORY_MAX]
    st.session_state[KEY_UNDONE] = []


def label(dataset: str, rel: str, path: str, value: str, next_rel: str | None) -> None:
    defect = (st.session_state.get(KEY_DEFECT) or GENERIC_DEFECT) if value == "defective" else None
    try:
        kwargs: dict[str, Any] = {"note": st.session_state.get(KEY_NOTE) or ""}
        if value == "defective":
            kwargs["defect_type"] = defect
        before = ui.label_store().get(dataset, rel)
        after = ui.label_store().set_label(dataset, rel, value, content_hash=_hash(path), **kwargs)
    except (LabelError, LabelStoreError, OSError) as exc:
        flash("error", f"Not saved: {exc}")
        return
    if before != after:
        _did(dataset, rel)
    flash("success", f"{_short(rel)}: **{value}**" + (f" ({defect})" if defect else ""))
    go(next_rel)  # the next image of the queue as it was shown (labeling may reorder the queue)


def undo(dataset: str, rel: str) -> None:
    """Undo this session's last labeling action, on whichever image it was (then show that image); with
    none in this session, this image's last change (the label history survives sessions)."""
    done = st.session_state.get(KEY_DONE) or []
    target = done[-1] if done else (dataset, rel)
    store = ui.label_store()
    try:
        if not store.can_undo(*target):
            flash("info", f"Nothing to undo for {_short(target[1])}.")
            if done:
                done.pop()
            return
        before = store.get(*target)
        rec = store.undo(*target)
    except (LabelStoreError, OSError) as exc:
        flash("error", f"Undo failed: {exc}")
        return
    if done:
        done.pop()
    st.session_state.setdefault(KEY_UNDONE, []).append((*target, before))
    flash("info", f"Undone on {_short(target[1])}: now **{rec.label if rec else 'unlabeled'}**.")
    if target[0] == dataset and target[1] != rel:
        go(target[1])
    _new_canvas()


def redo(dataset: str) -> None:
    """Put back the last undone action (on its image, which is then shown)."""
    undone = st.session_state.get(KEY_UNDONE) or []
    if not undone:
        flash("info", "Nothing to redo.")
        return
    ds, rel, rec = undone[-1]
    store = ui.label_store()
    try:
        if rec is None:
            store.clear(ds, rel)
        else:
            store.set_label(ds, rel, rec.label, defect_type=rec.defect_type, mask=rec.mask, note=rec.note,
                            content_hash=rec.content_hash)
    except (LabelError, LabelStoreError, OSError) as exc:
        flash("error", f"Redo failed: {exc}")
        return
    undone.pop()
    done = st.session_state.setdefault(KEY_DONE, [])
    done.append((ds, rel))
    flash("info", f"Redone on {_short(rel)}: **{rec.label if rec else 'unlabeled'}** again.")
    if ds == dataset and st.session_state.get(KEY_CURRENT) != rel:
        go(rel)
    _new_canvas()


def save_mask(dataset: str, rel: str, path: str, mask: np.ndarray, shape: tuple[int, int]) -> None:
    full = resize_mask(mask, shape)
    try:
        before = ui.label_store().get(dataset, rel)
        after = ui.label_store().set_label(dataset, rel, "defective", mask=full if full.any() else None,
                                           defect_type=st.session_state.get(KEY_DEFECT) or GENERIC_DEFECT,
                                           content_hash=_hash(path))
    except (LabelError, LabelStoreError, OSError) as exc:
        flash("error", f"Mask not saved: {exc}")
        return
    if before != after:
        _did(dataset, rel)
    flash("success", f"Mask saved ({int(full.sum())} defect pixels at the image's full size); "
                     "the image is labeled defective.")
    _new_canvas()


def import_upload() -> None:
    """on_change of the import uploader: all rows or none, with a message naming bad rows."""
    f = st.session_state.get(KEY_IMPORT)
    if f is None:
        return
    suffix = ".csv" if f.name.lower().endswith(".csv") else ".json"
    with workspace_temp_dir("label-import") as tmp:  # in the workspace, removed after (issue 14)
        path = tmp / f"upload{suffix}"
        path.write_bytes(f.getvalue())
        try:
            result = ui.label_store().import_rows(read_label_file(path), roots=ui.allowed_roots())
        except (LabelImportError, LabelError, LabelStoreError, UnicodeDecodeError, OSError) as exc:
            flash("error", f"{f.name}: {exc}")
            return
    flash("success", f"{f.name}: {result.rows} row(s) imported, {result.changed} changed, {result.unchanged} unchanged.")


def show_flash() -> None:
    """The message of the last action: an error in place, anything else as a toast."""
    message = st.session_state.pop(KEY_FLASH, None)
    if message and message[0] == "error":
        st.error(message[1], icon=":material/error:")
    elif message:  # a toast outlives the extra rerun the canvas component may trigger
        st.toast(message[1], icon=":material/check_circle:" if message[0] == "success" else ":material/info:")
