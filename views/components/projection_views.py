"""The Projection page's result views: the client-side animation (plotly frames with a slider and a
play button), the article's comparison rows, the step inspector and the GIF; and the live energy chart."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from core.runs import LoadedRun
from core.services.jobs import JobSnapshot
from core.services.panels import display_scale, enlarge_nn
from core.services.projection_job import (
    DIFF_QUANTILE,
    MAP_QUANTILE,
    animation_frames,
    frame_gap,
    gif_frames,
)
from core.viz import gif_bytes, heatmap
from views.components.display import fmt_score
from views.components.images import colorbar_caption, header_row, outlined, truth_badge

ANIM_IMAGE_PX = 440  # aimed width of the animated composite in the chart
MAP_MODE_LABELS = {"projection": "|x_T − x₀|", "combined": "|x_T − x₀| + |x_T − f(x_T)|"}
PANEL_TITLES = ("x_t (projected image)", "f(x_t) (reconstruction)", "|x_t − x₀| (change)")
ENERGY_LINE = {"color": "#4c78a8"}


@st.cache_data(max_entries=4, show_spinner=False)
def animation_figure(job_id: str, started: float, _result: dict[str, Any]) -> go.Figure:
    """Client-side animation: the composites with a slider and a play button, and the energy curve
    with a marker that follows the step. Keyed by job id and start time (the result is not hashed):
    a stopped job restarted under the same id gets a new figure."""
    r = _result
    frames = animation_frames(r)
    steps, energy = r["frame_steps"], r["energy"]
    n_img, h, w = r["x"].shape[1], r["x"].shape[2], r["x"].shape[3]
    gap = frame_gap(r)
    fig = px.imshow(frames, animation_frame=0, binary_string=True, labels={"animation_frame": "step"})
    hc, wc = frames.shape[1:3]
    plot_h = int(np.clip(ANIM_IMAGE_PX * hc / wc, 280, 1100))
    # Panel titles above the columns, image names on the left (data coordinates of the composite).
    for j, title in enumerate(PANEL_TITLES):
        fig.add_annotation(x=j * (w + gap) + w / 2 - 0.5, y=-0.5, xref="x", yref="y", yanchor="bottom", text=f"<b>{title}</b>",
                           showarrow=False, font={"size": 12})
    fig.update_yaxes(tickvals=[i * (h + gap) + h / 2 - 0.5 for i in range(n_img)], ticktext=r["labels"], showticklabels=True,
                     ticks="", title=None)
    fig.update_xaxes(showticklabels=False, ticks="", title=None)
    fig.update_yaxes(constrain="domain", constraintoward="top", selector={"anchor": "x"})
    fig.update_traces(hoverinfo="skip", hovertemplate=None)
    # The energy curve on the right: all steps, a marker on the shown one.
    fig.add_trace(go.Scatter(x=np.arange(len(energy)), y=energy, mode="lines", line={**ENERGY_LINE, "width": 2}, xaxis="x2",
                             yaxis="y2", name="mean energy", hovertemplate="step %{x}<br>E = %{y:.4g}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[steps[0]], y=[energy[steps[0]]], mode="markers", xaxis="x2", yaxis="y2", name="shown step",
                             marker={"size": 11, "color": "#e4572e", "line": {"color": "white", "width": 1.5}}, hoverinfo="skip"))
    for frame, step in zip(fig.frames, steps):
        frame.data = (frame.data[0].update(hoverinfo="skip", hovertemplate=None),
                      go.Scatter(x=[step], y=[energy[step]], mode="markers", xaxis="x2", yaxis="y2"))
        frame.traces = (0, 2)
    energy_frac = min(1.0, 300 / plot_h)
    fig.update_layout(
        height=plot_h + 160, margin={"l": 10, "r": 20, "t": 50, "b": 110}, showlegend=False, plot_bgcolor="white",
        xaxis={"domain": [0.0, 0.56]},
        xaxis2={"domain": [0.68, 1.0], "anchor": "y2", "title": "step", "gridcolor": "#eee", "zeroline": False,
                "range": [-0.5, max(1, r["steps_done"]) + 0.5]},
        yaxis2={"domain": [1.0 - energy_frac, 1.0], "anchor": "x2", "title": "mean energy E(x_t)", "gridcolor": "#eee"},
    )
    fig.add_annotation(x=0.84, y=1.0, xref="paper", yref="paper", yanchor="bottom", showarrow=False,
                       text="<b>Energy E = L_rec(x_t) + λ·‖x_t − x₀‖₁</b>", font={"size": 12})
    # Player: faster frames, step numbers as slider labels.
    menu = fig.layout.updatemenus[0]
    play = menu.buttons[0]
    play.args[1]["frame"]["duration"] = 180
    play.args[1]["transition"]["duration"] = 0
    play.label = "▶ Play"
    menu.buttons[1].label = "❚❚ Pause"
    menu.update(direction="left", x=0.0, xanchor="left", y=-0.02, yanchor="top", pad={"t": 40, "r": 10}, showactive=False)
    slider = fig.layout.sliders[0]
    for s, step in zip(slider.steps, steps):
        s.label = str(step)
    slider.update(currentvalue={"prefix": "step ", "font": {"size": 13}}, x=0.2, len=0.8, y=-0.02, pad={"t": 40, "b": 10})
    return fig


def energy_progress_figure(energy: list[float], steps: int) -> go.Figure:
    """The mean energy so far, for the live progress view."""
    fig = go.Figure(go.Scatter(x=list(range(len(energy))), y=energy, mode="lines+markers", line=ENERGY_LINE, marker={"size": 4}))
    fig.update_layout(height=200, margin={"l": 10, "r": 10, "t": 10, "b": 10}, yaxis={"title": "mean energy"},
                      xaxis={"title": "step", "range": [-0.5, steps + 0.5]})
    return fig


@st.cache_data(max_entries=4, show_spinner=False)
def gif_for(job_id: str, started: float, _result: dict[str, Any]) -> bytes:
    """The animated GIF of a result (one frame per stored step)."""
    return gif_bytes(gif_frames(_result), duration_ms=180, last_hold_ms=1500)


def draw_summary(snap: JobSnapshot, run: LoadedRun) -> None:
    r, cfg = snap.result, snap.state.get("config", {})
    st.caption(
        f"Run `{run.id}` ({run.config.model.upper()}, {run.config.data} / {run.config.category}, {run.config.size} px) · "
        f"{len(r['labels'])} image(s) · {r['steps_done']} of {r['steps']} steps · α = {cfg.get('alpha'):.4g}, "
        f"λ = {cfg.get('lam'):.4g}, map: {cfg.get('map_mode')} · computed in {r['seconds']:.1f} s"
    )
    if r["stopped"]:
        st.info(f"Stopped at step {r['steps_done']} of {r['steps']}: showing the steps done so far.", icon=":material/stop_circle:")
    if r["diverged"]:
        which = ", ".join(f"**{label}** at step {step}" for label, step in r["diverged"])
        st.warning(f"The projection diverged for {which}; those images keep their last finite iterate. "
                   "Try a smaller step size α.", icon=":material/warning:")
    st.caption(guard_caption(r, cfg.get("alpha")))


def draw_animation(snap: JobSnapshot) -> None:
    st.subheader("Projection, step by step")
    st.plotly_chart(animation_figure(snap.id, snap.started, snap.result), key=f"projection-animation-{snap.id}",
                    config={"displayModeBar": False, "scrollZoom": False})
    colorbar_caption(f"Play, or drag the slider: the animation runs in your browser. The change |x_t − x₀| uses one colour "
                     f"scale for all steps, 0 (blue) to {snap.result['diff_vmax']:.3g} (red) = the {DIFF_QUANTILE:.1%} quantile "
                     "of the last step. The energy curve is the mean over the shown images; the dot follows the step.")


def draw_comparison(snap: JobSnapshot) -> None:
    """The article's rows: test image, plain reconstruction, projection result, and the two maps (each on its own
    colour scale, stated below)."""
    r = snap.result
    defects = snap.state.get("defects") or [None] * len(r["labels"])
    map_mode = snap.state.get("config", {}).get("map_mode", "projection")
    st.subheader("Plain reconstruction vs. projection")
    factor = display_scale(r["x0"].shape[1])
    v_proj, v_recon = r["proj_vmax"], r["recon_vmax"]
    heads = ["Test image", "Plain reconstruction f(x₀)", "Projection result x_T", f"Projection map {MAP_MODE_LABELS[map_mode]}",
             "Reconstruction error |x₀ − f(x₀)|"]
    if r["plain_recon"] is None:
        heads.remove("Plain reconstruction f(x₀)")
    widths = [1.2] + [1] * len(heads)
    with st.container(border=True):
        header_row(widths, ["", *heads])
        for i, label in enumerate(r["labels"]):
            cols = st.columns(widths, vertical_alignment="center")
            panels = [outlined(r["x0"][i], r["masks"][i], factor)]
            if r["plain_recon"] is not None:
                panels.append(r["plain_recon"][i])
            panels += [r["x_final"][i], heatmap(r["proj_map"][i], 0.0, v_proj), heatmap(r["recon_map"][i], 0.0, v_recon)]
            cols[0].markdown(f"**{label}**  \n{truth_badge(defects[i])}")
            captions = [None] * (len(panels) - 2) + [f"score {fmt_score(float(r['proj_scores'][i]))}",
                                                     f"score {fmt_score(float(r['recon_scores'][i]))}"]
            for k, (col, img, cap) in enumerate(zip(cols[1:], panels, captions)):
                col.image(img if k == 0 else enlarge_nn(img, factor), caption=cap, output_format="PNG")
    outline = " Green outline: the ground-truth defect mask." if any(m is not None for m in r["masks"]) else ""
    colorbar_caption(f"Each map on its own colour scale, 0 (blue) to the {MAP_QUANTILE:.1%} quantile of its rows (red): "
                     f"projection map {v_proj:.3g}, reconstruction error {v_recon:.3g}; smoothed and scored like the run's "
                     f"test scores (compare the scores, not the colours, across the two).{outline} A plain reconstruction "
                     "removes the defect but "
                     "blurs the whole image; the projection should keep the image sharp and move only the defect.")


def draw_inspector(snap: JobSnapshot, key: str) -> None:
    """A crisp server-side view of one step (a fragment: moving the slider redraws only this part); ``key``: the slider's."""
    r, steps = snap.result, snap.result["frame_steps"]

    @st.fragment
    def _inspect() -> None:
        if st.session_state.get(key) not in steps:
            st.session_state[key] = steps[-1]
        step = st.select_slider("Step", steps, key=key, help="Server-side view of one step at full resolution.")
        k = steps.index(step)
        factor = display_scale(r["x"].shape[2])
        per_image = r["energy_per_image"][step]
        widths = [1.3, 1, 1, 1]
        header_row(widths, ["Image · energy", "x_t", "f(x_t)", "|x_t − x₀|"])
        for i, label in enumerate(r["labels"]):
            cols = st.columns(widths, vertical_alignment="center")
            cols[0].markdown(f"**{label}**  \nE = {float(per_image[i]):.5g}")
            for col, arr in zip(cols[1:], (r["x"], r["recon"], r["heat"])):
                col.image(enlarge_nn(arr[k, i], factor), output_format="PNG")
        enlarged = f" Panels enlarged {factor}× without smoothing." if factor > 1 else ""
        st.caption(f"Step {step} of {r['steps_done']}: mean energy {r['energy'][step]:.5g} (step 0: {r['energy'][0]:.5g})."
                   + enlarged)

    _inspect()


def draw_gif(snap: JobSnapshot) -> None:
    data = gif_for(snap.id, snap.started, snap.result)
    left, right = st.columns([2, 3], vertical_alignment="top")
    with left:
        st.download_button("Download GIF", data, file_name=f"{snap.id}.gif", mime="image/gif", icon=":material/download:",
                           key=f"gif-{snap.id}", type="primary")
        st.caption(f"{len(snap.result['frame_steps'])} frames, {len(data) / 1024:.0f} KB; each frame is captioned "
                   "with its step and mean energy, the last one is held longer.")
    with right:
        st.image(data, width="content")


def draw_result(snap: JobSnapshot, run: LoadedRun, step_key: str) -> None:
    """Summary, animation, comparison rows, then the step inspector (slider ``step_key``) and the GIF in tabs."""
    draw_summary(snap, run)
    draw_animation(snap)
    draw_comparison(snap)
    inspect_tab, gif_tab = st.tabs(["Inspect a step", "GIF"])
    with inspect_tab:
        draw_inspector(snap, step_key)
    with gif_tab:
        draw_gif(snap)


def guard_caption(r: dict[str, Any], alpha: float | None) -> str:
    """What the monotone guard did: which images needed a smaller α, and whether any energy rose."""
    if not r.get("monotone", True):
        rises = r.get("energy_rises", 0)
        return (f"Plain update (no guard): an image's energy rose {rises} time{'s' if rises != 1 else ''} from one step "
                "to the next.")
    guarded = r.get("guarded") or []
    if not guarded:
        return f"Energy guard: no image's energy rose; every step used α = {alpha:.4g}."
    names = ", ".join(f"{label} (α halved {h}×{', stalled' if stalled else ''})" for label, h, _, stalled in guarded[:6])
    more = f" and {len(guarded) - 6} more" if len(guarded) > 6 else ""
    return (f"Energy guard: a step would have raised the energy of {len(guarded)} of {len(r['labels'])} image(s), so α "
            f"was halved for them: {names}{more}. No image's energy rose. Stalled = no step, even at α / 1024, lowered it.")
