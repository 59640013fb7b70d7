"""The Ano-Unet page's views: the images in flight (live), and a finished job's rows beside the sidebar
AE/VAE run's maps of the same images, with the pixel AUROCs and the speed."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core.runs import LoadedRun, RunError
from core.services.anounet_job import MAP_QUANTILE, Summary, maps_vmax, summarize
from core.services.jobs import JobSnapshot
from core.services.panels import display_rgb, display_scale, enlarge_nn
from core.services.predict import maps_for
from core.viz import heatmap
from views.components import ui
from views.components.display import checkpoint_mtime, fmt_score
from views.components.images import colorbar_caption, header_row, outlined, truth_badge

LIVE_ROWS = 8  # images in flight shown at once
LIVE_WIDTHS = [1.1, 1, 1, 1, 3]
RESULT_WIDTHS = [1.2, 1, 1, 1, 1, 2.4]


def loss_figure(curve: dict[str, list[float]], beta: float, height: int = 170) -> go.Figure:
    """The two loss terms per epoch: L_R = Σ|x − G(x)| and β·L_C = β·Σ|F(G(x)) − C|."""
    epochs = list(range(len(curve.get("loss_r", []))))
    fig = go.Figure()
    fig.add_scatter(x=epochs, y=curve.get("loss_r", []), name="L_R = Σ|x − G(x)|", mode="lines", line={"color": "#4c78a8"})
    fig.add_scatter(x=epochs, y=[beta * v for v in curve.get("loss_c", [])], name="β·L_C = β·Σ|F(G(x)) − C|", mode="lines",
                    line={"color": "#e4572e"})
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 28, "b": 10}, xaxis_title="epoch",
                      legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0, "font": {"size": 11}},
                      yaxis={"type": "log", "gridcolor": "#eee"}, plot_bgcolor="white")
    return fig


def _change(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """|x − G(x)| (channel mean) as a heatmap scaled to its own maximum."""
    diff = np.abs(g - x).mean(0)
    return heatmap(diff, 0.0, max(float(diff.max()), 1e-3))


def draw_in_flight(snap: JobSnapshot) -> None:
    """For every image being optimized: its input, the latest G(x), |x − G(x)| and the two loss terms."""
    s = snap.state
    if s.get("phase") == "warm start":
        st.caption("Training the warm-start U-Net once for this f-Net (it is kept and reused)…")
    results = s.get("results") or {}
    flying = [i for i in sorted(s.get("curves") or {}) if i not in results]
    if not flying:
        return
    images, beta = s["images"], float(s.get("config", {}).get("beta", 1.0))
    factor = display_scale(images.shape[-1], 96)
    header_row(LIVE_WIDTHS, ["Image", "x", "G(x)", "|x − G(x)|", "Loss terms"])
    for i in flying[:LIVE_ROWS]:
        curve, prev = s["curves"][i], s.get("previews", {}).get(i)
        x = images[i].astype(np.float32) / 255.0
        cols = st.columns(LIVE_WIDTHS, vertical_alignment="center")
        cols[0].markdown(f"**{s['labels'][i]}**  \nepoch {len(curve['loss_r']) - 1}")
        cols[1].image(enlarge_nn(display_rgb(x), factor), output_format="PNG")
        if prev is not None:
            cols[2].image(enlarge_nn(display_rgb(prev), factor), output_format="PNG")
            cols[3].image(enlarge_nn(_change(x, prev), factor), output_format="PNG")
        cols[4].plotly_chart(loss_figure(curve, beta, 150), key=f"anounet-live-{snap.id}-{i}", config={"displayModeBar": False})


@st.cache_data(max_entries=8, show_spinner=False)
def _cached_comparison(run_dir: str, mtime_ns: int, job_id: str, _run: LoadedRun, _images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return maps_for(_run, _images)


def comparison(snap: JobSnapshot, run_dir: str | None) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """The sidebar AE/VAE run's maps and scores of the job's images, and a note on where they come from."""
    if run_dir is None:
        return None, None, "Pick an AE or VAE run of this data in the sidebar to see its map beside."
    images = snap.state["images"]
    try:
        run = ui.loaded_run(run_dir)
        maps, scores = _cached_comparison(str(run.path), checkpoint_mtime(run.path), snap.id, run, images)
    except (RunError, OSError, RuntimeError, ValueError) as exc:
        return None, None, f"The sidebar run cannot be compared: {exc}"
    return maps, scores, f"{run.config.model.upper()} run `{run.id}` ({run.config.size} px; maps resized to {images.shape[-1]} px)"


def draw_summary(summary: Summary) -> None:
    """Pixel AUROC on the shown images with pixel ground truth (Ano-Unet vs. the comparison run), and the speed."""
    cols = st.columns(4)
    if summary.with_masks:
        cols[0].metric("Pixel AUROC · Ano-Unet", ui.fmt_metric(summary.auroc_ano),
                       help=f"Over the {summary.with_masks} shown image(s) with masks.")
        if summary.compared:
            cols[1].metric("Pixel AUROC · AE/VAE", ui.fmt_metric(summary.auroc_other), help="The sidebar run's maps of the same images.")
            if summary.auroc_ano is not None and summary.auroc_other is not None:
                cols[2].metric("Ano-Unet − AE/VAE", f"{summary.auroc_ano - summary.auroc_other:+.3f}")
    if summary.seconds_per_image is not None:
        cols[3].metric("Seconds per image", f"{summary.seconds_per_image:.2f}",
                       help=f"The job's wall time over the {summary.computed} image(s) it optimized (cached images excluded), "
                            "K at a time.")


def draw_result(snap: JobSnapshot, run_dir: str | None) -> None:
    """The settings line, the stop note, the metrics, then one row per finished image beside the comparison run."""
    s, results = snap.state, (snap.result or {}).get("results") or []
    cfg = s.get("config", {})
    labels, defects, masks, images = s["labels"], s.get("defects") or [None] * len(s["labels"]), s["masks"], s["images"]
    ae_maps, ae_scores, ae_note = comparison(snap, run_dir) if any(r is not None for r in results) else (None, None, "")
    summary = summarize(results, masks, ae_maps, snap.seconds)
    done = summary.done
    st.caption(f"f-Net `{s['fnet_id']}` · {len(done)} of {len(labels)} image(s) · β = {cfg.get('beta'):g}, up to "
               f"{cfg.get('epochs')} epochs, lr {cfg.get('lr'):.2g}, warm start: {s.get('warm_start')}, "
               f"{'residual' if cfg.get('residual') else 'plain'} G · {snap.seconds:.1f} s"
               + (f" · {summary.cached} from the result cache" if summary.cached else ""))
    if summary.stopped or len(done) < len(labels):
        st.info(f"Stopped: {summary.stopped} image(s) kept their G(x) at the stop, {len(labels) - len(done)} not started. "
                "Stopped images are not cached.", icon=":material/stop_circle:")
    if not done:
        return
    draw_summary(summary)
    vmax_ano = maps_vmax(np.stack([results[i].anomaly_map for i in done]))
    vmax_ae = maps_vmax(ae_maps[done]) if ae_maps is not None else 1.0
    factor = display_scale(images.shape[-1], 128)
    with st.container(border=True):
        header_row(RESULT_WIDTHS, ["Image", "x", "G(x)", "Ano-Unet |x − G(x)|", "AE/VAE |x − f(x)|", "Loss terms"])
        for i in done:
            r = results[i]
            cols = st.columns(RESULT_WIDTHS, vertical_alignment="center")
            badge = " :blue-badge[cached]" if r.cached else ""
            cols[0].markdown(f"**{labels[i]}**  \n{truth_badge(defects[i])}{badge}  \n{r.epochs} epochs · {r.stop_reason}  \n"
                             f"F distance {r.feature_distance_before:.3g} → {r.feature_distance_after:.3g}")
            cols[1].image(outlined(display_rgb(images[i]), masks[i], factor), output_format="PNG")
            cols[2].image(enlarge_nn(display_rgb(r.reconstruction), factor), output_format="PNG")
            cols[3].image(enlarge_nn(heatmap(r.anomaly_map, 0.0, vmax_ano), factor), caption=f"score {fmt_score(r.score)}",
                          output_format="PNG")
            if ae_maps is not None:
                cols[4].image(enlarge_nn(heatmap(ae_maps[i], 0.0, vmax_ae), factor), caption=f"score {fmt_score(float(ae_scores[i]))}",
                              output_format="PNG")
            else:
                cols[4].caption("—")
            curve = {"loss_r": list(r.loss_r), "loss_c": list(r.loss_c)}
            cols[5].plotly_chart(loss_figure(curve, float(cfg.get("beta", 1.0)), 150), key=f"anounet-loss-{snap.id}-{i}",
                                 config={"displayModeBar": False})
    colorbar_caption(f"Each method's maps share one colour scale, 0 (blue) to the {MAP_QUANTILE:.1%} quantile of its maps on these "
                     f"images (Ano-Unet {vmax_ano:.3g}, AE/VAE {vmax_ae:.3g}). Green outline: the ground-truth defect mask. "
                     f"Comparison: {ae_note}. Stop reasons: plateau (loss stopped improving), max_epochs, adversarial (the guard "
                     "rolled back to before F was fooled by invisible changes), stopped (by you).")
