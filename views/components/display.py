"""Display pieces shared by the result pages: class colours, score and defect formatting, panel
enlarging, the colour bar and the run's scored test set (cached by run folder and checkpoint time).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import streamlit as st

from core.data.index import UNLABELED_NAMES, DatasetError
from core.errors import AnomalyLabError
from core.evaluation.curves import summary
from core.runs import BEST_CKPT, LoadedRun
from core.services.results_view import latent_view
from core.services.scored_view import scored_view
from core.viz import heatmap
from views.components import ui

PANEL_PX = 184  # display side of each strip panel (small images are enlarged without smoothing)
GOOD = "good"
GOOD_COLOR = "#2e9e5b"
DEFECT_COLOR = "#d9534f"
TRAIN_COLOR = "#b8bec6"


def checkpoint_mtime(run_dir: Path | str) -> int:
    """Modification time of the run's best checkpoint: part of every cache key of a run."""
    path = Path(run_dir) / BEST_CKPT
    return path.stat().st_mtime_ns if path.exists() else 0


@st.cache_data(max_entries=4, show_spinner=False)
def scored_test_set(run_dir: str, mtime_ns: int, _run: LoadedRun) -> dict[str, Any]:
    """The run's scored test set by the one evaluation path (:func:`core.services.scored_view.scored_view`).

    Keyed by the run folder and checkpoint time (``_run`` is not hashed). Raises DatasetError /
    ValueError when the data is gone or unreadable.
    """
    view = scored_view(_run, detector="auto", settings=None)
    if len(view["names"]) == 0:
        raise ValueError(f"the test split of {_run.config.data} has no readable image")
    return view


@st.cache_data(max_entries=4, show_spinner=False)
def cached_latent_view(run_dir: str, mtime_ns: int, _run: LoadedRun, grid_n: int = 12) -> dict[str, Any]:
    """:func:`core.services.results_view.latent_view`, keyed by run folder and checkpoint time."""
    return latent_view(_run, grid_n=grid_n)


def load_test_view(run: LoadedRun) -> dict[str, Any] | None:
    """The scored test set of ``run`` (with a spinner on first use), or None after showing why not."""
    try:
        with st.spinner("Scoring the test images…"):
            return scored_test_set(str(run.path), checkpoint_mtime(run.path), run)
    except (AnomalyLabError, DatasetError, ValueError, OSError) as exc:
        st.error(f"The test images of this run cannot be scored: {exc}")
        return None


def with_label_source(view: dict[str, Any], sel: ui.Selection) -> dict[str, Any]:
    """The test view with the sidebar's label source applied: labels, defect types, masks and metrics."""
    ss = ui.relabeled(view["scored"], sel)
    masks = ss.masks if ss.masks is not None else view["masks"]
    return dict(view, labels=ss.labels, defects=list(ss.defects), masks=masks, has_mask=ss.has_mask, metrics=summary(ss),
                label_source=sel.label_source)


def enlarge(img: np.ndarray, px: int = PANEL_PX) -> np.ndarray:
    """Resize a panel to ``px`` high: nearest-neighbour when enlarging (pixels stay honest)."""
    h, w = img.shape[:2]
    interp = cv2.INTER_NEAREST if px >= h else cv2.INTER_AREA
    return cv2.resize(img, (max(1, round(w * px / h)), px), interpolation=interp)


def colorbar(width: int = 220, height: int = 10) -> np.ndarray:
    """A horizontal JET colour bar (low to high)."""
    return heatmap(np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1)), 0.0, 1.0)


def defect_badge(defect: str) -> str:
    """Markdown badge for a defect type (green for good images, gray for images without a label)."""
    if defect == GOOD:
        return f":green-badge[{GOOD}]"
    return f":gray-badge[{defect}]" if defect.lower() in (*UNLABELED_NAMES, "unknown") else f":red-badge[{defect}]"


def fmt_score(value: float | None) -> str:
    """Scores span very different ranges by score mode: four significant digits."""
    return "—" if value is None or math.isnan(value) else f"{value:.4g}"


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``1 file``, ``2,000 files`` (``nouns``: an irregular plural, e.g. ``misses``)."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"


def fmt_bytes(n: int) -> str:
    """A file size in KB below 1 MB, else in MB."""
    return f"{n / 1024:.1f} KB" if n < 1024**2 else f"{n / 1024**2:.1f} MB"
