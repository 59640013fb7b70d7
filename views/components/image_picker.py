"""The image picker of the Projection and Ano-Unet pages: test images of the data, or uploads.

A page draws :func:`source_control` above its settings form, :func:`pick_field` first inside it and
:func:`run_button` in its settings row; on submit, :func:`collect` turns the choice into a
:class:`Picked` batch (or None after saying why not).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from core.services.panels import short_label
from views.components import ui

SOURCE_TEST, SOURCE_UPLOAD = ui.SOURCE_TEST, ui.SOURCE_UPLOAD
SETTINGS_ROW = [1, 1, 1, 1.6, 1.3]  # the settings form's row: three numbers, a choice, the run button


@dataclass(frozen=True)
class PickerKeys:
    """The session-state keys of one page's picker."""

    source: str  # test images or upload
    images: str  # the picked test-image names
    images_for: str  # the model the picks were filled for (new model -> new default picks)
    uploads: str


@dataclass(frozen=True)
class PickerImages:
    """The test images a picker offers: names, ground truth, and the image and mask of the i-th."""

    names: Sequence[str]
    defects: Sequence[str]
    image: Callable[[int], np.ndarray]  # uint8 HWC at the model's channels
    mask: Callable[[int], np.ndarray | None]


@dataclass(frozen=True)
class Choice:
    """What the form held when it was submitted."""

    source: str
    names: list[str]
    files: list


@dataclass(frozen=True)
class Picked:
    """The images to run: uint8 ``[N, H, W, C]`` with their identities, labels, ground truth and masks."""

    images: np.ndarray
    keys: tuple[str, ...]
    labels: tuple[str, ...]
    defects: tuple[str | None, ...]
    masks: list[np.ndarray | None]


def source_control(keys: PickerKeys, help: str) -> str:
    """Test images or upload (a segmented control above the form)."""
    source = st.segmented_control("Images", [SOURCE_TEST, SOURCE_UPLOAD], key=keys.source, default=SOURCE_TEST, help=help)
    return source or SOURCE_TEST


def keep_picks(keys: PickerKeys, model_id: str, names: Sequence[str], defaults: Callable[[], list[str]]) -> None:
    """Fill the picks with ``defaults()`` for a new model; else keep only names that still exist."""
    if st.session_state.get(keys.images_for) != model_id or not isinstance(st.session_state.get(keys.images), list):
        st.session_state[keys.images_for] = model_id
        st.session_state[keys.images] = defaults()
    else:  # the test set can change
        known = set(names)
        st.session_state[keys.images] = [n for n in st.session_state[keys.images] if n in known]


def pick_field(source: str, keys: PickerKeys, names: Sequence[str], limit: int, *, format_func: Callable[[str], str],
               help: str, upload_help: str | None = None) -> Choice:
    """The test-image multiselect or the file uploader (inside the page's form)."""
    if source == SOURCE_TEST:
        picked = st.multiselect(f"Test images (up to {limit})", list(names), key=keys.images, max_selections=limit,
                                format_func=format_func, help=help, placeholder="Pick test images")
        return Choice(source, list(picked), [])
    files = st.file_uploader(f"Upload images (up to {limit})", type=ui.UPLOAD_TYPES, accept_multiple_files=True,
                             key=keys.uploads, help=upload_help)
    return Choice(source, [], list(files or []))


def picked_count(keys: PickerKeys) -> int:
    """How many images the picker holds now (test picks or uploads, as last submitted)."""
    if (st.session_state.get(keys.source) or SOURCE_TEST) == SOURCE_TEST:
        return len(st.session_state.get(keys.images) or [])
    return len(st.session_state.get(keys.uploads) or [])


def run_button(col: DeltaGenerator, label: str, key: str) -> bool:
    """The form's primary submit button."""
    return col.form_submit_button(label, type="primary", icon=":material/play_arrow:", key=key, width="stretch")


def valid_settings(cfg: Any) -> bool:
    """True when ``cfg.validate()`` passes; else False after showing why."""
    try:
        cfg.validate()
    except ValueError as exc:
        st.error(f"These settings cannot be used: {exc}")
        return False
    return True


def collect(choice: Choice, test: PickerImages, size: int, channels: int, limit: int) -> Picked | None:
    """The chosen images at the model's size and channels, or None after a warning (nothing chosen or usable)."""
    rows: list[tuple[np.ndarray, str, str, str | None, np.ndarray | None]] = []
    if choice.source == SOURCE_TEST:
        if not choice.names:
            st.warning("Pick at least one test image.")
            return None
        by_name = {n: i for i, n in enumerate(test.names)}
        for n in choice.names[:limit]:
            i = by_name[n]
            rows.append((test.image(i), n, short_label(n), test.defects[i], test.mask(i)))
    else:
        if not choice.files:
            st.warning("Upload at least one image.")
            return None
        rows = [(up.image, up.key, up.label, None, None) for up in ui.decode_uploads(choice.files, size, channels, limit)]
        if not rows:
            return None
    images, keys, labels, defects, masks = zip(*rows)
    return Picked(np.stack(images), keys, labels, defects, list(masks))
