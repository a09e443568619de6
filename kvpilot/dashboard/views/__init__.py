"""Page scripts of the dashboard, run by `st.navigation` (each calls its `render()` when run as a page)."""
