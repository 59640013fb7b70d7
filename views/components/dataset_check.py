"""The Dataset page's "Skipped and unreadable files" section: files the index skipped, files of the page
that do not decode, and the on-demand check of every file (a background job shared by all sessions)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.data.index import DatasetIndex
from core.services.dataset_browse import check_files_task, check_job_id, rel
from core.services.jobs import FAILED, FINISHED
from views.components import ui
from views.components.display import plural

CHECK_CHUNK = 64  # files per step of the background check (progress and stop granularity)


def _start_check(job_id: str, paths: list[str], size: int, index: DatasetIndex) -> None:
    try:
        ui.job_registry().start("dataset-check", f"Check {len(paths)} files",
                                check_files_task(paths, size, CHECK_CHUNK, index), job_id=job_id)
    except ValueError:
        pass  # the same check is already running (another session or a double click)


def _stop_check(job_id: str) -> None:
    job = ui.job_registry().get(job_id)
    if job is not None:
        job.request_stop()


def failure_table(rows: list[tuple[str, str]], root: Path) -> None:
    st.dataframe([{"file": rel(p, root), "reason": r} for p, r in rows], hide_index=True, width="stretch",
                 column_config={"file": st.column_config.TextColumn("File", width="medium"),
                                "reason": st.column_config.TextColumn("Reason", width="large")})


def draw_check(index: DatasetIndex, job_id: str, size: int) -> None:
    """The state of the full check, polled while it runs (fragment); one full rerun when it ends."""
    job = ui.job_registry().get(job_id)
    snap = job.snapshot() if job is not None else None
    paths = [str(s.path) for s in index.samples]
    if snap is None:
        st.button(f"Check all files ({len(paths):,})", icon=":material/fact_check:", key="dataset_check_all",
                  on_click=_start_check, args=(job_id, paths, size, index),
                  help="Decode every image once in the background (this also makes every thumbnail). "
                       "Unchanged files are only decoded once, so checking again is quick.")
        return

    @st.fragment(run_every=0.5 if snap.running else None)
    def progress() -> None:
        now = ui.job_registry().get(job_id)
        s = now.snapshot() if now is not None else snap
        if s.running:
            done, total = s.state.get("done", 0), s.state.get("total", len(paths)) or 1
            c_bar, c_stop = st.columns([5, 1], vertical_alignment="center")
            c_bar.progress(done / total, text=f"Checking files… {done:,} / {total:,}")
            c_stop.button("Stop", icon=":material/stop:", key="dataset_check_stop", on_click=_stop_check,
                          args=(job_id,), width="stretch")
        elif snap.running:  # it ended since the page was drawn: redraw everything once
            st.rerun()

    if snap.running:
        progress()
        return
    again = {"on_click": _start_check, "args": (job_id, paths, size, index), "key": "dataset_check_again", "icon": ":material/refresh:"}
    if snap.status == FAILED:
        st.warning(f"The check could not finish: {snap.error}")
        st.button("Check again", **again)
        return
    failures = snap.result if snap.status == FINISHED else snap.state.get("failures", [])
    done = len(paths) if snap.status == FINISHED else snap.state.get("done", 0)
    if snap.status != FINISHED:
        st.info(f"Check stopped after {done:,} of {len(paths):,} files.", icon=":material/pause_circle:")
    if failures:
        st.markdown(f"**Do not decode** — {len(failures)} of {plural(done, 'checked file')}")
        failure_table(failures, index.root)
    elif snap.status == FINISHED:
        st.success(f"All {len(paths):,} images decode.", icon=":material/check_circle:")
    if snap.state.get("report"):
        draw_report(snap.state["report"])
    st.button("Check again", **again)


def draw_report(report: dict) -> None:
    """The data report's channels and masks (``core.data.report.data_report``), with its warnings."""
    ch, masks = report["channels"], report["masks"]
    for warning in report["warnings"]:
        st.warning(warning[0].upper() + warning[1:] + ".", icon=":material/warning:")
    st.markdown(f"**Channels** — training images: {ch['train_color']:,} colour, {ch['train_gray']:,} gray; test images: "
                f"{ch['test_color']:,} colour, {ch['test_gray']:,} gray. A run trains in "
                f"**{'RGB' if ch['run_channels'] == 3 else 'gray'}**.")
    if ch["mixed"] and ch["gray_files"]:
        st.caption("Gray images: " + ", ".join(f"`{f}`" for f in ch["gray_files"][:10])
                   + (" …" if len(ch["gray_files"]) > 10 else ""))
    n_masks = masks["binary"] + masks["non_binary"]
    if n_masks:
        st.markdown(f"**Masks** — {masks['binary']:,} binary, {masks['non_binary']:,} with values between their two levels"
                    + (f", {masks['unreadable']:,} unreadable" if masks["unreadable"] else ""))
        if masks["non_binary_files"]:
            st.dataframe([{"mask": m["file"], "pixels in between": f"{m['share_between']:.1%}"}
                          for m in masks["non_binary_files"]], hide_index=True, width="stretch")


def draw_problems(index: DatasetIndex, page_errors: list[tuple[str, str]], size: int) -> None:
    """Files the index skipped, files of this page that do not decode (``page_errors``), and the on-demand
    full check (decoding at thumbnail ``size``). Drawn after the grid into a slot placed above it."""
    job_id = check_job_id(index)
    job = ui.job_registry().get(job_id)
    snap = job.snapshot() if job is not None else None
    checked = snap is not None and snap.status == FINISHED
    unreadable = snap.result if checked else page_errors
    parts = [plural(len(index.skipped), "skipped file") if index.skipped else "no skipped file"]
    if checked:
        parts.append(f"{len(unreadable):,} unreadable")
    elif page_errors:
        parts.append(f"{len(page_errors):,} unreadable on this page")
    warnings = len(snap.state.get("report", {}).get("warnings", [])) if checked else 0
    if warnings:
        parts.append(plural(warnings, "data warning"))
    label = "Skipped and unreadable files: " + ", ".join(parts)
    with st.expander(label, icon=":material/report:", expanded=bool(unreadable) or snap is not None):
        if index.skipped:
            st.markdown(f"**Skipped by the index** — {plural(len(index.skipped), 'file')}")
            failure_table(index.skipped, index.root)
        else:
            st.caption("The index skipped no file.")
        if page_errors and not checked:
            st.markdown(f"**Unreadable on this page** — {plural(len(page_errors), 'file')}")
            failure_table(page_errors, index.root)
        draw_check(index, job_id, size)
