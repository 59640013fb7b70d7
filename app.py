"""AnomalyLab: the Streamlit entry point. Routes pages; all work happens in ``core``."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="AnomalyLab", page_icon=":material/biotech:", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
]
st.navigation(pages).run()
