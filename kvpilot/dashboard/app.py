"""kvpilot dashboard entry point: `kvpilot dashboard` runs `streamlit run` on this file.

It draws the sidebar scope (deployment, instance, time window, refresh) once per run, then the page chosen
in the navigation; each page is a script in `views/`.
"""

from __future__ import annotations

import streamlit as st
from sqlalchemy.exc import DBAPIError

from kvpilot.dashboard import context
from kvpilot.storage import StoreError

st.set_page_config(page_title="kvpilot", page_icon=":material/memory:", layout="wide")

PAGES = {
    "Observe": [
        st.Page("views/overview.py", title="Overview", icon=":material/monitoring:", default=True),
        st.Page("views/runs.py", title="Runs", icon=":material/history:"),
        st.Page("views/layers.py", title="Layers", icon=":material/grid_on:"),
        st.Page("views/sessions.py", title="Sessions", icon=":material/timer:"),
        st.Page("views/events.py", title="Events", icon=":material/list_alt:"),
        st.Page("views/quality.py", title="Quality", icon=":material/verified:"),
    ],
    "Control": [
        st.Page("views/tuning.py", title="Tuning", icon=":material/tune:"),
        st.Page("views/configs.py", title="Configs", icon=":material/settings:"),
    ],
}

nav = st.navigation(PAGES)
st.sidebar.title("kvpilot")
try:
    context.sidebar()
except (StoreError, DBAPIError) as exc:
    st.error(f"Cannot open the store: {exc}")
    st.stop()
nav.run()
