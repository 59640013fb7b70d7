"""AnomalyLab: the Streamlit entry point. Routes pages; work happens in ``core``."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="AnomalyLab", page_icon=":material/biotech:", layout="wide")

PAGES = [
    st.Page("views/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("views/dataset.py", title="Dataset", icon=":material/photo_library:"),
    st.Page("views/train.py", title="Train", icon=":material/model_training:"),
    st.Page("views/results.py", title="Results", icon=":material/insights:"),
    st.Page("views/explorer.py", title="Threshold", icon=":material/tune:", url_path="threshold"),
    st.Page("views/labeling.py", title="Label", icon=":material/label:", url_path="label"),
    st.Page("views/projection.py", title="Projection", icon=":material/animation:"),
    st.Page("views/anounet.py", title="Ano-Unet", icon=":material/auto_fix_high:"),
    st.Page("views/try_image.py", title="Try your image", icon=":material/upload:"),
]

st.navigation(PAGES).run()  # each page draws the shared sidebar first (views/components/ui.py: selection())
