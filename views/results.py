"""Results: metric tiles, score distribution, test images as [input | reconstruction | heatmap] strips,
and for small-image VAEs the latent scatter and decoded grid of the MNIST VAE article.

Everything is computed from the selected run by scoring its test split once (cached by run folder
and checkpoint time); the page only filters, sorts and draws.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core.data.images import to_uint8_hwc
from core.data.index import UNLABELED_NAMES, DatasetError
from core.data.loading import load_split
from core.detectors import registry as detectors
from core.evaluation.curves import summary
from core.evaluation.scored import ScoredSet, load_test_split, score_split
from core.runs import BEST_CKPT, LoadedRun
from core.services.latent import decoded_grid, latent_codes, project_2d, shows_latent
from core.viz import heatmap, mask_contour, strip
from views import ui

KEY_DEFECTS = "results_defects"
KEY_SORT = "results_sort"
KEY_MASKS = "results_masks"
KEY_PAGE = "results_page"  # prefix: the pager's key also names the filter it pages through
KEY_FILTER_RUN = "results_filter_run"  # the run the filter widgets were set for

PER_PAGE = 12
PANEL_PX = 184  # display side of each strip panel (small images are enlarged without smoothing)
HEATMAP_QUANTILE = 0.999
GRID_N = 12
SORT_DESC = "Highest score first"
SORT_ASC = "Lowest score first"
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
    """Score the run's test split once; numpy arrays ready for metrics and display.

    Keyed by the run folder and checkpoint time (``_run`` is not hashed). Raises DatasetError /
    ValueError when the data is gone or unreadable.
    """
    index, split = load_test_split(_run)
    if len(split) == 0:
        raise ValueError(f"the test split of {_run.config.data} has no readable image")
    scored = score_split(detectors.build(_run), split)
    maps = scored.maps.astype(np.float32, copy=False)
    recons = None
    if scored.reconstructions is not None:
        recons = np.stack([to_uint8_hwc(r) for r in scored.reconstructions])
    return {
        "names": [s.relpath(index.root) for s in split.samples],
        "defects": [s.defect for s in split.samples],
        "labels": split.labels,
        "scores": scored.scores.astype(np.float64),
        "maps": maps,
        "images": np.stack([to_uint8_hwc(x) for x in split.images.numpy() / 255.0]),
        "recons": recons,
        "masks": split.masks.numpy(),
        "has_mask": split.has_mask,
        "metrics": scored.summary(),
        "vmax": float(np.quantile(maps, HEATMAP_QUANTILE)) if maps.size else 1.0,
        "skipped": list(split.skipped),
    }


@st.cache_data(max_entries=4, show_spinner=False)
def latent_view(run_dir: str, mtime_ns: int, _run: LoadedRun) -> dict[str, Any]:
    """Latent means of the train and test images, their 2-D projection and the decoded grid."""
    cfg = _run.config
    index, test = load_test_split(_run)
    train = load_split(index, "train", cfg.size, cfg.channels)
    images = np.concatenate([train.images.numpy(), test.images.numpy()]).astype(np.float32) / 255.0
    codes = latent_codes(_run.model, images)
    coords, basis = project_2d(codes)
    classes = ["good (train)"] * len(train) + [f"{GOOD} (test)" if s.defect == GOOD else s.defect for s in test.samples]
    return {
        "coords": coords,
        "classes": classes,
        "names": [s.relpath(index.root) for s in [*train.samples, *test.samples]],
        "grid": decoded_grid(_run.model, basis, n=GRID_N),
        "extent": basis.extent,
        "explained": basis.explained,
        "identity": basis.identity,
        "z_dim": basis.z_dim,
    }


def load_test_view(run: LoadedRun) -> dict[str, Any] | None:
    """The scored test set of ``run`` (with a spinner on first use), or None after showing why not."""
    try:
        with st.spinner("Scoring the test images…"):
            return scored_test_set(str(run.path), checkpoint_mtime(run.path), run)
    except (DatasetError, ValueError, OSError) as exc:
        st.error(f"The test images of this run cannot be scored: {exc}")
        return None


# --------------------------------------------------------------------------- drawing helpers
def enlarge(img: np.ndarray, px: int = PANEL_PX) -> np.ndarray:
    """Resize a panel to ``px`` high: nearest-neighbour when enlarging (pixels stay honest)."""
    h, w = img.shape[:2]
    interp = cv2.INTER_NEAREST if px >= h else cv2.INTER_AREA
    return cv2.resize(img, (max(1, round(w * px / h)), px), interpolation=interp)


def image_strip(view: dict[str, Any], i: int, outline: bool) -> np.ndarray:
    """[input | reconstruction | heatmap] of test image ``i`` on the set's common colour scale."""
    inp = enlarge(view["images"][i])
    mask = view["masks"][i]
    if outline and mask.any():
        big = cv2.resize(mask.astype(np.uint8), inp.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        inp = mask_contour(inp, big, color=(0, 230, 64))
    panels = [inp]
    if view["recons"] is not None:
        panels.append(enlarge(view["recons"][i]))
    panels.append(enlarge(heatmap(view["maps"][i], 0.0, view["vmax"])))
    return strip(panels, gap=4)


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
    return "—" if value is None or value != value else f"{value:.4g}"


# --------------------------------------------------------------------------- sections
def draw_header(run: LoadedRun, view: dict[str, Any]) -> None:
    cfg = run.config
    n, n_def, n_unknown = len(view["scores"]), int((view["labels"] == 1).sum()), int((view["labels"] < 0).sum())
    st.caption(
        f"Run `{run.id}` · {cfg.model.upper()} · {cfg.data} / {cfg.category} · {cfg.size} px, "
        f"{cfg.channels} channel{'s' if cfg.channels != 1 else ''} · best epoch {run.epoch} · "
        f"score: {cfg.score_mode} · {n} test images ({n_def} defective"
        + (f", {n_unknown} without a label: left out of the metrics" if n_unknown else "") + ")"
        + (f" · labels: {ui.LABEL_SOURCE_NAMES[view['label_source']]}" if view.get("label_source") else "")
    )
    if view["skipped"]:
        with st.expander(f"{len(view['skipped'])} test file(s) could not be read and were skipped"):
            for path, reason in view["skipped"]:
                st.text(f"{path}: {reason}")


def draw_metrics(view: dict[str, Any]) -> None:
    m = view["metrics"]
    tiles = [
        ("Image AUROC", ui.fmt_metric(m.get("image_auroc")), "Area under the ROC curve of the image scores (1 = perfect ranking, 0.5 = chance)."),
        ("Avg precision", ui.fmt_metric(m.get("average_precision")), "Area under the precision-recall curve, defective = positive."),
        ("F1-max", ui.fmt_metric(m.get("f1_max")), "Best F1 over all thresholds."),
        ("F1 threshold", fmt_score(m.get("threshold")), "Image score at which F1-max is reached; images at or above it are flagged."),
        ("Pixel AUROC", ui.fmt_metric(m.get("pixel_auroc")), "ROC AUC of the anomaly maps against the ground-truth masks (— when the data has no masks)."),
        ("AUPRO", ui.fmt_metric(m.get("aupro")), "Per-region overlap integrated up to 30% pixel FPR (— when the data has no masks)."),
    ]
    for col, (label, value, help_text) in zip(st.columns(len(tiles)), tiles):
        col.metric(label, value, help=help_text, border=True)


def draw_distribution(view: dict[str, Any]) -> None:
    scores, labels, defects = view["scores"], view["labels"], np.array(view["defects"])
    thr = view.get("threshold", view["metrics"].get("threshold"))
    name = view.get("threshold_name", "the F1-max threshold")
    lo, hi = float(scores.min()), float(scores.max())
    size = (hi - lo) / 30 if hi > lo else 1.0
    fig = go.Figure()
    for name, sel, color in (("good", labels == 0, GOOD_COLOR), ("defective", labels == 1, DEFECT_COLOR)):
        if sel.any():
            fig.add_trace(go.Histogram(x=scores[sel], name=f"{name} ({int(sel.sum())})", marker_color=color, opacity=0.7,
                                       xbins={"start": lo, "end": hi + size, "size": size}))
    if thr is not None and thr <= hi:
        fig.add_vline(x=thr, line_dash="dash", line_color="#444", annotation_text=f"threshold {thr:.4g}",
                      annotation_position="top right", annotation_font_size=11)
    fig.update_layout(barmode="overlay", height=360, margin={"l": 10, "r": 10, "t": 40, "b": 10}, xaxis_title="anomaly score",
                      yaxis_title="test images", legend={"orientation": "h", "yanchor": "bottom", "y": 1.06, "x": 1, "xanchor": "right"})
    left, right = st.columns([1, 1], gap="medium")
    with left:
        st.plotly_chart(fig, key="results_histogram", config={"displayModeBar": False})
    with right:
        rows = []
        for defect in [GOOD, *sorted(set(defects) - {GOOD})]:
            s = scores[defects == defect]
            if s.size:
                flagged = float(np.mean(s >= thr)) * 100 if thr is not None else float("nan")
                rows.append({"type": defect, "images": int(s.size), "median score": float(np.median(s)), "flagged %": flagged})
        st.dataframe(rows, hide_index=True, width="stretch", column_config={
            "median score": st.column_config.NumberColumn(format="%.4g"),
            "flagged %": st.column_config.ProgressColumn("flagged", format="%.0f%%", min_value=0, max_value=100, width="medium"),
        })
        st.caption(f"Flagged = score at or above {name} ({fmt_score(thr)}). For good images this is the false-alarm rate; "
                   "for a defect type it is the share caught.")


def draw_strips(run_id: str, view: dict[str, Any]) -> None:
    defects = view["defects"]
    options = [GOOD, *sorted(set(defects) - {GOOD})] if GOOD in defects else sorted(set(defects))
    if st.session_state.get(KEY_FILTER_RUN) != run_id or KEY_DEFECTS not in st.session_state:
        # A newly selected run starts with every type shown, from its first page.
        st.session_state[KEY_FILTER_RUN] = run_id
        st.session_state[KEY_DEFECTS] = options
    has_masks = bool(view["masks"].any())
    c1, c2, c3 = st.columns([4, 2, 2], vertical_alignment="bottom")
    chosen = c1.multiselect("Show types", options, key=KEY_DEFECTS,
                            placeholder="Pick at least one type")
    order = c2.selectbox("Sort", [SORT_DESC, SORT_ASC], key=KEY_SORT)
    outline = c3.toggle("Outline ground-truth masks", value=True, key=KEY_MASKS, disabled=not has_masks,
                        help=None if has_masks else "This dataset has no defect masks.")
    keep = np.flatnonzero(np.isin(np.array(defects), chosen))
    if keep.size == 0:
        st.info("No test image matches the filter: pick at least one type.")
        return
    ranked = keep[np.argsort(view["scores"][keep], kind="stable")]
    if order == SORT_DESC:
        ranked = ranked[::-1]
    n_pages = max(1, math.ceil(ranked.size / PER_PAGE))
    thr = view.get("threshold", view["metrics"].get("threshold"))
    head = st.container()
    grid = st.container()
    with st.container(horizontal=True, horizontal_alignment="center"):
        # One pager per (run, filter, order): a changed filter starts again from page 1.
        pager_key = f"{KEY_PAGE}-{zlib.crc32(repr((run_id, chosen, order)).encode()):08x}"
        page = st.pagination(n_pages, key=pager_key) if n_pages > 1 else 1
    start = (page - 1) * PER_PAGE
    shown = ranked[start : start + PER_PAGE]
    with head:
        bar, text = st.columns([1, 5], vertical_alignment="center")
        bar.image(colorbar(), width=200, output_format="PNG")
        panels = "input · reconstruction · anomaly map" if view["recons"] is not None else "input · anomaly map"
        text.caption(
            f"Panels: {panels}. All heatmaps share one colour scale, 0 (blue) to {view['vmax']:.4g} (red) = the "
            f"{HEATMAP_QUANTILE:.1%} quantile of all test maps. Showing {start + 1}–{start + shown.size} of {ranked.size}."
        )
    with grid:
        for row in range(0, shown.size, 2):
            cols = st.columns(2)
            for k, (col, i) in enumerate(zip(cols, shown[row : row + 2])):
                rank = start + row + k + 1
                score = float(view["scores"][i])
                flag = " :orange-badge[:material/flag: flagged]" if thr is not None and score >= thr else ""
                with col.container(border=True):
                    st.markdown(f"**#{rank}** · score **{fmt_score(score)}** · {defect_badge(defects[i])}{flag}")
                    st.image(image_strip(view, int(i), outline and has_masks), output_format="PNG")
                    st.caption(view["names"][i])


def draw_latent(run: LoadedRun) -> None:
    try:
        with st.spinner("Encoding the images…"):
            lat = latent_view(str(run.path), checkpoint_mtime(run.path), run)
    except (DatasetError, ValueError, OSError) as exc:
        st.error(f"The latent views cannot be computed: {exc}")
        return
    if lat["identity"]:
        st.caption(f"The {lat['z_dim']}-D latent means of every train and test image, as in the MNIST VAE article. "
                   "A VAE trained on normal images maps most of the plane to normal-looking shapes.")
        xlab, ylab = "z₁", "z₂"
    else:
        ev = lat["explained"] * 100
        st.caption(f"The {lat['z_dim']}-D latent means projected on their two principal directions "
                   f"(PC1 {ev[0]:.0f}%, PC2 {ev[1]:.0f}% of the variance); the grid varies the code along them around the mean.")
        xlab, ylab = "PC1", "PC2"
    coords, classes, names = lat["coords"], np.array(lat["classes"]), np.array(lat["names"])
    order = ["good (train)", f"{GOOD} (test)", *sorted(set(classes) - {"good (train)", f"{GOOD} (test)"})]
    palette = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#d62728", "#7f7f7f", "#393b79",
               "#637939", "#8c6d31"]
    colors = {"good (train)": TRAIN_COLOR, f"{GOOD} (test)": GOOD_COLOR}
    fig = go.Figure()
    for k, cls in enumerate(c for c in order if (classes == c).any()):
        sel = classes == cls
        fig.add_trace(go.Scatter(
            x=coords[sel, 0], y=coords[sel, 1], mode="markers", name=f"{cls} ({int(sel.sum())})", text=names[sel],
            marker={"size": 6, "color": colors.get(cls, palette[k % len(palette)]), "opacity": 0.85 if cls != "good (train)" else 0.6},
            hovertemplate="%{text}<br>" + xlab + " %{x:.2f}, " + ylab + " %{y:.2f}<extra>" + cls + "</extra>",
        ))
    x0, x1, y0, y1 = lat["extent"]
    fig.add_shape(type="rect", x0=x0, x1=x1, y0=y0, y1=y1, line={"dash": "dot", "color": "#888", "width": 1})
    fig.update_layout(height=520, margin={"l": 10, "r": 10, "t": 10, "b": 10}, xaxis_title=xlab, yaxis_title=ylab,
                      legend={"title": "class", "itemsizing": "constant"})
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(fig, key="results_latent_scatter")
    with right:
        st.image(lat["grid"], width=460, output_format="PNG")
        st.caption(f"Decoded {GRID_N}×{GRID_N} grid over the dotted box of the scatter ({xlab} {x0:.2f} … {x1:.2f} left to right, "
                   f"{ylab} {y1:.2f} … {y0:.2f} top to bottom; the 1st–99th percentile of the codes).")


def with_label_source(view: dict[str, Any], run: LoadedRun, sel: ui.Selection) -> dict[str, Any]:
    """The test view with the sidebar's label source applied: labels, defect types, masks and metrics."""

    ss = ScoredSet(run.id, "reconstruction", tuple(view["names"]), tuple(view["defects"]), view["labels"], view["scores"],
                   view["maps"], view["masks"], view["has_mask"], data=run.config.data, category=run.config.category or "",
                   meta={"data_seed": run.config.data_seed})
    ss = ui.relabeled(ss, sel)
    return dict(view, labels=ss.labels, defects=list(ss.defects), masks=ss.masks, has_mask=ss.has_mask, metrics=summary(ss),
                label_source=sel.label_source)


def main() -> None:
    st.title("Results")
    sel = ui.selection()
    run = ui.require_run(sel)
    if run is None:
        return
    view = load_test_view(run)
    if view is None:
        return
    if sel.label_source != "dataset":
        view = with_label_source(view, run, sel)
    t, name = ui.operating_threshold(run.id, view["metrics"].get("threshold"))
    view = dict(view, threshold=t, threshold_name=name)
    draw_header(run, view)
    draw_metrics(view)
    names = ["Test images", "Score distribution"]
    latent = shows_latent(run.model, run.config.size)
    if latent:
        names.append("Latent space")
    tabs = st.tabs(names)
    with tabs[0]:
        draw_strips(run.id, view)
    with tabs[1]:
        draw_distribution(view)
    if latent:
        with tabs[2]:
            draw_latent(run)


if __name__ == "__main__":
    # Streamlit runs a page as "__main__". Drawing through the importable module keeps one set of
    # st.cache_data entries, shared with the Try-your-image page (it imports load_test_view).
    from views import results as _page

    _page.main()
