"""App-side helpers shared by the pages: session-state keys, the sidebar, cached core objects.

Durable state (runs, metrics, later labels) lives on disk in the workspace; ``st.session_state``
only holds the user's current choices under the key constants below.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from core.config import DETECTOR_MODELS
from core.data.builtin import all_datasets, categories, is_builtin, open_dataset
from core.data.images import IMAGE_SUFFIXES, ImageError, read_image, resize, to_channels
from core.data.index import DatasetError, DatasetIndex
from core.evaluation.curves import curves_for
from core.evaluation.operating import operating_threshold as core_operating_threshold
from core.evaluation.scored import ScoredSet
from core.labels.effective import EffectiveLabels, effective_labels, relabel_scored
from core.labels.store import LabelStore, dataset_key
from core.runs import (
    CONFIG_FILE,
    METRICS_FILE,
    LoadedRun,
    RunError,
    list_runs,
    load_run,
    read_history,
)
from core.services.jobs import Job, JobRegistry, JobSnapshot
from core.workspace import (
    AccessError,
    check_allowed,
    default_allowed_roots,
    last_selection,
    save_last_selection,
    set_read_roots,
)

# Session-state keys (the only ones the app uses).
KEY_SOURCE = "sidebar_source"
KEY_CUSTOM_PATH = "sidebar_custom_path"
KEY_CATEGORY = "sidebar_category"
KEY_RUN = "sidebar_run"
KEY_LABEL_SOURCE = "sidebar_label_source"
KEY_THRESHOLD = "thr_threshold"  # the Threshold page's image threshold (the stored operating point is the truth)
LABEL_SOURCE_NAMES = {"dataset": "Dataset folders", "mine": "My labels", "merged": "Merged: mine override"}
KEY_TRAIN_JOB = "train_job_id"
KEY_URL_WRITTEN = "_url_written"  # the query parameters this session last wrote (a different value is the user's)
KEY_LAST_SAVED = "_last_selection_saved"
# The URL's query parameters (a contract: shared links and scripts use these names).
URL_DATA, URL_CATEGORY, URL_RUN, URL_LABELS = "data", "category", "run", "labels"
URL_DETECTOR, URL_THRESHOLD = "detector", "threshold"
PERSIST_PREFIX = "_kept_"
SOURCE_TEST = "Test images"  # image pickers of the Projection and Ano-Unet pages
SOURCE_UPLOAD = "Upload"
UPLOAD_TYPES = [suffix.lstrip(".") for suffix in IMAGE_SUFFIXES]
CUSTOM_SOURCE = "Custom folder…"


@dataclass(frozen=True)
class Selection:
    """What the sidebar selected: a dataset spec, a category and (optionally) a run folder."""

    data: str | None
    category: str | None
    run_dir: Path | None
    error: str | None = None
    label_source: str = "dataset"  # where metrics take their labels from (core.labels.LABEL_SOURCES)


def allowed_roots() -> list[Path]:
    """Folders the server may read datasets from: ``allowed_roots`` in secrets, else core's defaults."""
    try:
        configured = st.secrets.get("allowed_roots")
    except Exception:  # no secrets.toml: that is the normal case
        configured = None
    roots = [Path(str(p)).expanduser().resolve() for p in configured] if configured else default_allowed_roots()
    set_read_roots(roots)  # the server's own reads (indexes, jobs) follow links only into these folders
    return roots


def check_data_path(spec: str) -> str:
    """Return a usable dataset spec or raise AccessError/DatasetError for a path outside the roots."""
    if is_builtin(spec):
        return spec
    return str(check_allowed(spec, allowed_roots()))


@st.cache_resource
def job_registry() -> JobRegistry:
    """One job registry per server process: jobs survive reruns, page switches and reloads."""
    return JobRegistry()


@st.cache_data(ttl=60, show_spinner=False)
def dataset_list() -> list[tuple[str, list[str]]]:
    """Built-in datasets and MVTec roots found in the data folders."""
    return all_datasets()


@st.cache_resource(ttl=60, max_entries=16, show_spinner="Indexing the dataset…")
def dataset_index(spec: str, category: str) -> DatasetIndex:
    """The index of a dataset category (built-in data is generated on first use). Treat it as read-only:
    it is shared, not copied (unpickling thousands of paths on every rerun was the page's largest cost)."""
    return open_dataset(spec, category)


def _runs_signature() -> tuple:
    """Cheap fingerprint of every run folder's state files: cached summaries refresh when it changes."""
    sig = []
    for run_dir in list_runs():
        for name in (CONFIG_FILE, METRICS_FILE, "history.json", "model.pt"):
            try:
                sig.append((run_dir.name, name, (run_dir / name).stat().st_mtime_ns))
            except OSError:
                sig.append((run_dir.name, name, 0))
    return tuple(sig)


def run_summaries() -> list[dict]:
    """One dict per run folder: id, path, config, status, metrics, has_model (newest first). A "running" run
    is checked again each time (its process may have died without a file changing: then "interrupted")."""
    return [dict(r, status=read_history(Path(r["path"])).get("status")) if r["status"] == "running" else r
            for r in _run_summaries(_runs_signature())]


@st.cache_data(max_entries=4, show_spinner=False)
def _run_summaries(signature: tuple) -> list[dict]:
    out = []
    for run_dir in list_runs():
        try:
            cfg = json.loads((run_dir / CONFIG_FILE).read_text())["config"]
        except (OSError, ValueError, KeyError):
            continue
        metrics_path = run_dir / METRICS_FILE
        try:
            metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        except (OSError, ValueError):
            metrics = {}
        out.append({"id": run_dir.name, "path": str(run_dir), "config": cfg, "status": read_history(run_dir).get("status"),
                    "metrics": metrics, "has_model": (run_dir / "model.pt").exists()})
    return out


@st.cache_resource(max_entries=8, show_spinner="Loading the model…")
def _loaded_run(run_dir: str, mtime_ns: int) -> LoadedRun:
    return load_run(run_dir)


def loaded_run(run_dir: Path | str) -> LoadedRun:
    """A run's frozen model on the CPU, cached until its checkpoint changes."""
    path = Path(run_dir) / "model.pt"
    return _loaded_run(str(run_dir), path.stat().st_mtime_ns if path.exists() else 0)


def _source_options() -> list[str]:
    return [spec for spec, _ in dataset_list()] + [CUSTOM_SOURCE]


def _label(spec: str) -> str:
    if spec == CUSTOM_SOURCE or is_builtin(spec):
        return spec
    return f"{Path(spec).name} ({spec})"


def _restore(widget_key: str) -> None:
    # Widgets belong to the page that draws them: on a page switch Streamlit would reset the sidebar.
    # The user's choice lives under a plain key (written by on_change) and is put back before drawing.
    if PERSIST_PREFIX + widget_key in st.session_state:
        st.session_state[widget_key] = st.session_state[PERSIST_PREFIX + widget_key]


def _remember(widget_key: str) -> None:
    st.session_state[PERSIST_PREFIX + widget_key] = st.session_state.get(widget_key)


def sidebar() -> Selection:
    """Draw the data source, category and run pickers; return the selection.

    Every page calls this once, first (via :func:`selection`).
    """
    _selection_from_url()
    for key in (KEY_SOURCE, KEY_CUSTOM_PATH, KEY_CATEGORY, KEY_RUN, KEY_LABEL_SOURCE):
        _restore(key)
    sel = _sidebar()
    if sel.data is None:
        return sel
    from dataclasses import replace

    sel = replace(sel, label_source=_label_source_picker(sel.data, sel.category))
    _selection_to_url(sel)
    return sel


# ------------------------------------------------------------------ the URL and the last selection
def url_param(name: str) -> str | None:
    """The query parameter ``name`` when the user gave it (opened or edited the URL): None when absent or
    equal to what this session wrote there itself."""
    value = st.query_params.get(name)
    if value is None or value == st.session_state.get(KEY_URL_WRITTEN, {}).get(name):
        return None
    return value


def url_write(**values: str | None) -> None:
    """Put ``values`` in the URL (None removes a name), so that it can be shared and survives a reload."""
    written = dict(st.session_state.get(KEY_URL_WRITTEN, {}))
    for name, value in values.items():
        if value is None:
            if name in st.query_params:
                del st.query_params[name]
            written.pop(name, None)
        else:
            if st.query_params.get(name) != value:
                st.query_params[name] = value
            written[name] = value
    st.session_state[KEY_URL_WRITTEN] = written


def _choose(widget_key: str, value: Any) -> None:
    st.session_state[widget_key] = value
    st.session_state[PERSIST_PREFIX + widget_key] = value


def _selection_from_url() -> None:
    """Apply ``data``, ``category``, ``run`` and ``labels`` of the URL to the sidebar; a fresh session without
    them starts from the last selection saved in the workspace (so a reload or a new tab finds the same run)."""
    fresh = PERSIST_PREFIX + KEY_SOURCE not in st.session_state and KEY_SOURCE not in st.session_state
    given = {k: url_param(k) for k in (URL_DATA, URL_CATEGORY, URL_RUN, URL_LABELS)}
    if fresh and not any(given.values()):
        given = {k: v for k, v in last_selection().items() if k in given and isinstance(v, str)}
        if given.get(URL_DATA) and given[URL_DATA] not in _source_options() and not _usable_folder(given[URL_DATA]):
            given = {}  # the remembered folder is gone or no longer allowed: start from the defaults
    data = given.get(URL_DATA)
    if data:
        if data in _source_options():
            _choose(KEY_SOURCE, data)
        else:
            _choose(KEY_SOURCE, CUSTOM_SOURCE)
            _choose(KEY_CUSTOM_PATH, data)
    if given.get(URL_CATEGORY):
        _choose(KEY_CATEGORY, given[URL_CATEGORY])
    if given.get(URL_RUN):
        _choose(KEY_RUN, given[URL_RUN])
    if given.get(URL_LABELS) in LABEL_SOURCE_NAMES:
        _choose(KEY_LABEL_SOURCE, given[URL_LABELS])


def _usable_folder(spec: str) -> bool:
    try:
        check_data_path(spec)
        return Path(spec).is_dir()
    except (AccessError, DatasetError, OSError, ValueError):
        return False


def _selection_to_url(sel: Selection) -> None:
    values = {URL_DATA: sel.data, URL_CATEGORY: sel.category, URL_RUN: sel.run_dir.name if sel.run_dir else None,
              URL_LABELS: sel.label_source}
    url_write(**values)
    if st.session_state.get(KEY_LAST_SAVED) != values:
        save_last_selection(values)
        st.session_state[KEY_LAST_SAVED] = values


def _label_source_picker(data: str, category: str | None) -> str:
    """Which labels the metrics use, with the count of my labels that disagree with the dataset's."""
    with st.sidebar:
        if st.session_state.get(KEY_LABEL_SOURCE) not in LABEL_SOURCE_NAMES:
            st.session_state[KEY_LABEL_SOURCE] = "dataset"
        source = st.selectbox("Labels for the metrics", list(LABEL_SOURCE_NAMES), key=KEY_LABEL_SOURCE,
                              format_func=LABEL_SOURCE_NAMES.get, on_change=_remember, args=(KEY_LABEL_SOURCE,),
                              help="Dataset folders: the ground truth of the folder layout. My labels: only images labeled on "
                                   "the Label page (unlabeled and unsure images are left out). Merged: my label where I gave one, "
                                   "else the dataset's. Results, Threshold and `python -m core evaluate --labels` follow it.")
        try:
            eff = effective_labels_for(data, category, "merged")
        except (DatasetError, OSError, ValueError):
            return source
        if eff.n_mine:
            st.caption(f"{eff.n_mine} image(s) labeled by hand · **{eff.disagreements}** disagree with the dataset's folders")
    return source


def _sidebar() -> Selection:
    with st.sidebar:
        st.markdown("### Data")
        options = _source_options()
        if st.session_state.get(KEY_SOURCE) not in options:
            st.session_state[KEY_SOURCE] = options[0]
        source = st.selectbox("Data source", options, key=KEY_SOURCE, format_func=_label, on_change=_remember, args=(KEY_SOURCE,),
                              help="Built-in data needs no download. Folders must be in the MVTec AD layout or good/ + one folder per defect.")
        spec = source
        if source == CUSTOM_SOURCE:
            path = st.text_input("Folder path", key=KEY_CUSTOM_PATH, on_change=_remember, args=(KEY_CUSTOM_PATH,), placeholder="/data/mvtec/bottle")
            if not path.strip():
                return Selection(None, None, None, "Enter a dataset folder path.")
            try:
                spec = check_data_path(path.strip())
                cats = categories(spec)
            except (AccessError, DatasetError, OSError) as exc:
                st.error(str(exc))
                return Selection(None, None, None, str(exc))
        else:
            cats = dict(dataset_list()).get(source) or categories(source)
        if st.session_state.get(KEY_CATEGORY) not in cats:
            st.session_state[KEY_CATEGORY] = cats[0]
        category = st.selectbox("Category", cats, key=KEY_CATEGORY, on_change=_remember, args=(KEY_CATEGORY,))
        st.markdown("### Model")
        runs = [r for r in run_summaries() if r["has_model"] and r["config"].get("model") in DETECTOR_MODELS
                and same_data(r["config"], spec, category)]  # f-Net/U-Net runs are not detectors for these pages
        ids = [r["id"] for r in runs]
        if not ids:
            st.caption("No trained run for this data yet: train one on the Train page.")
            return Selection(spec, category, None)
        if st.session_state.get(KEY_RUN) not in ids:
            st.session_state[KEY_RUN] = ids[0]
        by_id = {r["id"]: r for r in runs}
        run_id = st.selectbox("Run", ids, key=KEY_RUN, on_change=_remember, args=(KEY_RUN,), format_func=lambda i: _run_label(by_id[i]))
        return Selection(spec, category, Path(by_id[run_id]["path"]))


def same_data(cfg: dict, spec: str, category: str | None) -> bool:
    """True when a run's config was trained on dataset ``spec`` / ``category`` (folders compared resolved)."""
    data = cfg.get("data", "")
    same = data == spec or (not is_builtin(data) and not is_builtin(spec) and os.path.realpath(data) == os.path.realpath(spec))
    return same and cfg.get("category") == category


def _run_label(run: dict) -> str:
    auroc = run["metrics"].get("image_auroc")
    tail = f" · AUROC {auroc:.3f}" if isinstance(auroc, float) else ""
    return f"{run['config']['model'].upper()} · {run['id']}{tail}"


def selection() -> Selection:
    """Draw the shared sidebar and return its selection. Call once per page run, at the top."""
    return sidebar()


def open_page(title: str, need: str = "run") -> tuple[Selection, Any] | None:
    """A page's opening: its title, the shared sidebar, and what the page needs (``run``: the selected
    trained run; ``dataset``: the selected dataset's index). None after saying why it is missing."""
    st.title(title)
    sel = selection()
    got = require_run(sel) if need == "run" else require_dataset(sel)
    return None if got is None else (sel, got)


def require_dataset(sel: Selection) -> DatasetIndex | None:
    """The selected dataset's index, or None after showing why there is none."""
    if sel.data is None:
        st.info(sel.error or "Pick a dataset in the sidebar.")
        return None
    try:
        return dataset_index(sel.data, sel.category)
    except (DatasetError, OSError) as exc:
        st.error(f"This dataset cannot be used: {exc}")
        return None


def require_run(sel: Selection) -> LoadedRun | None:
    """The selected run's model, or None after saying why there is none."""
    if sel.run_dir is None:
        st.info("No trained model for this dataset yet. Train one on the **Train** page.")
        st.page_link("views/train.py", label="Go to Train", icon=":material/model_training:")
        return None
    try:
        return loaded_run(sel.run_dir)
    except (RunError, OSError) as exc:
        st.error(f"This run cannot be loaded: {exc}")
        return None


def fmt_metric(value: object) -> str:
    """A metric for display: three decimals, or an em dash when missing."""
    return f"{value:.3f}" if isinstance(value, (int, float)) and value == value else "—"


def decode_upload(size: int, channels: int, name: str, data: bytes) -> tuple[np.ndarray | None, str | None]:
    """An uploaded file as uint8 HWC at ``size`` px and ``channels``, or (None, a message naming the file)."""
    try:
        img = read_image(data, name=name)
        return to_channels(resize(to_channels(img, channels), size), channels), None
    except ImageError as exc:
        return None, str(exc)
    except Exception as exc:  # hostile input can raise more than ImageError: say so, never a traceback
        return None, f"{name}: not a usable image ({type(exc).__name__})"


@dataclass(frozen=True)
class Upload:
    """A decoded upload: the image, its content key and a short display name."""

    image: np.ndarray  # uint8 HWC
    key: str  # "upload:<sha1 of the file bytes>"
    label: str


def decode_uploads(files: list, size: int, channels: int, limit: int) -> list[Upload]:
    """Decode up to ``limit`` uploaded files; say which ones could not be used (and that extra ones were dropped)."""
    if len(files) > limit:
        st.warning(f"{len(files)} files uploaded: using the first {limit}.")
    out = []
    for f in files[:limit]:
        data = f.getvalue()
        img, error = decode_upload(size, channels, f.name, data)
        if error:
            st.error(error, icon=":material/broken_image:")
            continue
        out.append(Upload(img, "upload:" + hashlib.sha1(data).hexdigest(), Path(f.name).stem[:24]))
    return out


def draw_queued(snap: JobSnapshot, key: str) -> None:
    """A heavy job waiting for its turn: its place, what runs, the expected start, and Cancel."""
    info = job_registry().queue_info(snap.id) or {}
    when = (f" It should start in about {info['expected_start_s'] / 60:.0f} min." if info.get("expected_start_s") is not None
            else " It starts when one of them ends.")
    st.info(f"**{snap.title}** is queued: number {info.get('position', '?')} in line; {info.get('running', '?')} of "
            f"{info.get('slots', '?')} heavy job slots are busy (training, projection, Ano-Unet, scoring, reports "
            f"share them, across every session).{when}", icon=":material/hourglass_empty:")
    if st.button("Cancel", key=f"{key}-cancel-{snap.id}", icon=":material/cancel:", disabled=snap.stop_requested,
                 help="Take it out of the queue: it never starts."):
        job = job_registry().get(snap.id)
        if job is not None:
            job.request_stop()
        st.rerun(scope="app")


def live_job(job_id: str, draw: Callable[[Job, JobSnapshot], None], every: float = 1.0) -> None:
    """Redraw a background job every ``every`` seconds with ``draw(job, snapshot)`` while it runs (a
    fragment: the rest of the page stays put); one full rerun when it ends, so the page shows the result.
    Each redraw takes server CPU and the GIL from the job itself (see ``jobs_view.REFRESH_S``): keep it ≥ 1 s."""
    registry = job_registry()

    @st.fragment(run_every=every)
    def _live() -> None:
        job = registry.get(job_id)
        if job is None:
            return
        snap = job.snapshot()
        if not snap.running:
            st.rerun(scope="app")
        if snap.queued:
            draw_queued(snap, "live")
            return
        draw(job, snap)

    _live()


@st.cache_resource
def label_store() -> LabelStore:
    """The workspace's label database (SQLite; safe to share: every call opens its own connection)."""
    return LabelStore()


def effective_labels_for(data: str, category: str | None, source: str) -> EffectiveLabels:
    """The test split's labels from ``source``, read from the label store now (never cached: labels change)."""
    index = dataset_index(data, category)
    return effective_labels(index, "test", source, label_store(), dataset=dataset_key(data, category), with_masks=False)


def relabeled(ss: ScoredSet, sel: Selection) -> ScoredSet:
    """``ss`` with the labels of the sidebar's label source (unchanged for the dataset's own labels)."""
    if sel.label_source == "dataset" or sel.data is None:
        return ss
    return relabel_scored(ss, sel.label_source, label_store(), index=dataset_index(sel.data, sel.category))[0]


def operating_threshold(run_dir: Path | str, ss: ScoredSet) -> tuple[float, str]:
    """The threshold every page flags images with: the run's saved operating point for this detector (set on
    the Threshold page; the default rule when none was saved), resolved on ``ss``; and a line naming it."""
    t, _, text = core_operating_threshold(run_dir, ss.detector, curves_for(ss))
    return t, text


def draw_job_state(snap: JobSnapshot, what: str, again: str, progress: Callable[[str], None],
                   result: Callable[[JobSnapshot], None]) -> None:
    """A page's background job: live ``progress(job id)`` while it runs, the error when it failed, a hint
    (``again``) when its result was dropped from memory, else ``result(snapshot)``."""
    if snap.running:
        progress(snap.id)
    elif snap.status == "failed":
        st.error(f"{what} failed: {snap.error}", icon=":material/error:")
    elif snap.state.get("cancelled_in_queue"):
        st.info(f"{what} was cancelled while it waited in the queue: it never started.", icon=":material/cancel:")
    elif snap.result is None:
        st.info(f"This result is no longer in memory: {again}", icon=":material/history:")
    else:
        result(snap)
