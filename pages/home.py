"""Home: what AnomalyLab does, the data it sees and the runs it has."""

from __future__ import annotations

import json

import streamlit as st

from core.data.builtin import all_datasets
from core.runs import METRICS_FILE, list_runs, read_history


@st.cache_data(ttl=30, show_spinner=False)
def _datasets() -> list[tuple[str, list[str]]]:
    return all_datasets()


def draw_intro() -> None:
    st.title("AnomalyLab")
    st.markdown(
        "An open workbench for **unsupervised visual anomaly detection**: models learn from normal images "
        "only, then show where a new image departs from normal (anomaly maps), score it, and help you "
        "choose an operating threshold."
    )


def draw_datasets() -> None:
    st.subheader("Data")
    rows = [{"dataset": spec, "categories": ", ".join(cats)} for spec, cats in _datasets()]
    st.dataframe(rows, hide_index=True, width="stretch")


def draw_runs() -> None:
    st.subheader("Runs")
    rows = []
    for run_dir in list_runs():
        cfg = json.loads((run_dir / "config.json").read_text())["config"]
        metrics_path = run_dir / METRICS_FILE
        m = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        rows.append({
            "run": run_dir.name, "model": cfg["model"], "data": cfg["data"], "category": cfg["category"],
            "status": read_history(run_dir).get("status"), "image AUROC": m.get("image_auroc"),
            "pixel AUROC": m.get("pixel_auroc"), "AUPRO": m.get("aupro"),
        })
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch")
    else:
        st.info("No trained model yet. Train one from a terminal: "
                "`python -m core train --data builtin:synthetic --epochs 20`")


draw_intro()
draw_datasets()
draw_runs()
