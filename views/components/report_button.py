"""The "Download report" control of Threshold and Results: the review report of the run, detector and label
source shown (core.services.report), made in a background job into the run folder, so every session can
download it once made; it is made again when the saved operating point has changed since."""

from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st

from core.services.report import report_task, stored_report
from views.components import ui

JOB_KIND = "report"


def _job_id(run_dir: Path, detector: str, labels: str) -> str:
    return "report-" + hashlib.sha1(f"{run_dir}|{detector}|{labels}".encode()).hexdigest()[:12]


def _start(run_dir: Path, detector: str, labels: str) -> None:
    job_id = _job_id(run_dir, detector, labels)
    old = ui.job_registry().get(job_id)
    if old is not None and old.snapshot().running:
        return
    try:
        ui.job_registry().start(JOB_KIND, f"Report of {run_dir.name}", report_task(run_dir, detector, labels), job_id=job_id)
    except ValueError:
        pass  # another session started the same report a moment ago


def draw(run_dir: Path, detector: str, labels: str, key: str, heading: str | None = None) -> None:
    """"Make report" (a background job), then "Download report" with its size; polls while the job runs. With
    ``heading``: under that subheader, in a column of 2/5 of the width (else in the caller's column)."""
    run_dir = Path(run_dir)
    if heading:
        st.subheader(heading)
        with st.columns([2, 3])[0]:
            draw(run_dir, detector, labels, key)
        return
    polling = _running(run_dir, detector, labels)

    @st.fragment(run_every=1.0 if polling else None)
    def control() -> None:
        job = ui.job_registry().get(_job_id(run_dir, detector, labels))
        snap = job.snapshot() if job is not None else None
        if snap is not None and snap.running:
            if not polling:  # started by the button inside this fragment: rerun the page so that it polls
                st.rerun()
            if snap.queued:
                ui.draw_queued(snap, key)
                return
            st.button("Making the report…", disabled=True, key=f"{key}_busy", icon=":material/hourglass_top:",
                      width="stretch")
            st.caption("Scoring, bootstrap intervals and thumbnails: seconds to a minute.")
            return
        if polling:  # it ended since the page was drawn: redraw once, without polling
            st.rerun()
        if snap is not None and snap.status == "failed":
            st.error(f"The report could not be made: {snap.error}", icon=":material/error:")
        made = stored_report(run_dir, detector, labels)
        if made is None:
            st.button("Make report", key=f"{key}_make", icon=":material/summarize:", width="stretch",
                      on_click=_start, args=(run_dir, detector, labels),
                      help="One HTML file for reviewers who never open the app: the decision in plain words, data, "
                           "model, metrics with 95% intervals, curves, every false alarm and miss, and the decision "
                           "record (import it on Threshold to restore the decision). Opens offline in any browser.")
            return
        path = Path(made["path"])
        try:
            data = path.read_bytes()
        except OSError:
            st.button("Make report", key=f"{key}_make", on_click=_start, args=(run_dir, detector, labels))
            return
        st.download_button(f"Download report ({made['bytes'] / 1e6:.1f} MB)", data,
                           file_name=f"report-{run_dir.name}-{detector}.html", mime="text/html", key=f"{key}_download",
                           icon=":material/download:", width="stretch")
        if made.get("pdf"):
            st.download_button("Download as PDF", Path(made["pdf"]).read_bytes(), file_name=f"report-{run_dir.name}-"
                               f"{detector}.pdf", mime="application/pdf", key=f"{key}_pdf", icon=":material/picture_as_pdf:",
                               width="stretch")
        elif made.get("pdf_note"):
            st.caption(f"No PDF on this server: {made['pdf_note']}.")
        st.caption(f"Made {made['created_utc'].replace('T', ' ').replace('Z', ' UTC')} for the saved operating point "
                   "(`python -m core report` makes the same file).")

    control()


def _running(run_dir: Path, detector: str, labels: str) -> bool:
    job = ui.job_registry().get(_job_id(run_dir, detector, labels))
    return job is not None and job.snapshot().running
