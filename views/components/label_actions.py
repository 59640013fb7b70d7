"""The Label page's session state and button callbacks: store a label, undo it, save a painted mask,
walk the queue and import a label file. Every change goes to the workspace's label store."""

from __future__ import annotations

import tempfile
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
from views.components import ui

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


def label(dataset: str, rel: str, path: str, value: str, next_rel: str | None) -> None:
    defect = (st.session_state.get(KEY_DEFECT) or GENERIC_DEFECT) if value == "defective" else None
    try:
        kwargs: dict[str, Any] = {"note": st.session_state.get(KEY_NOTE) or ""}
        if value == "defective":
            kwargs["defect_type"] = defect
        ui.label_store().set_label(dataset, rel, value, content_hash=_hash(path), **kwargs)
    except (LabelError, LabelStoreError, OSError) as exc:
        flash("error", f"Not saved: {exc}")
        return
    flash("success", f"{Path(rel).parent.name}/{Path(rel).name}: **{value}**" + (f" ({defect})" if defect else ""))
    go(next_rel)  # the next image of the queue as it was shown (labeling may reorder the queue)


def undo(dataset: str, rel: str) -> None:
    store = ui.label_store()
    try:
        if not store.can_undo(dataset, rel):
            flash("info", "Nothing to undo for this image.")
            return
        rec = store.undo(dataset, rel)
    except (LabelStoreError, OSError) as exc:
        flash("error", f"Undo failed: {exc}")
        return
    flash("info", f"Undone: now **{rec.label if rec else 'unlabeled'}**.")
    _new_canvas()


def save_mask(dataset: str, rel: str, path: str, mask: np.ndarray, shape: tuple[int, int]) -> None:
    full = resize_mask(mask, shape)
    try:
        ui.label_store().set_label(dataset, rel, "defective", mask=full if full.any() else None,
                                   defect_type=st.session_state.get(KEY_DEFECT) or GENERIC_DEFECT, content_hash=_hash(path))
    except (LabelError, LabelStoreError, OSError) as exc:
        flash("error", f"Mask not saved: {exc}")
        return
    flash("success", f"Mask saved ({int(full.sum())} defect pixels); the image is labeled defective.")
    _new_canvas()


def import_upload() -> None:
    """on_change of the import uploader: all rows or none, with a message naming bad rows."""
    f = st.session_state.get(KEY_IMPORT)
    if f is None:
        return
    suffix = ".csv" if f.name.lower().endswith(".csv") else ".json"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(f.getvalue())
        try:
            result = ui.label_store().import_rows(read_label_file(path))
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
