"""LAMANAS Studio: the Streamlit app (`python -m streamlit run webapp/app.py`).

A multipage app (st.navigation); every page starts with `ui.status_panel()` (the system
status in the sidebar, also when a test runs a page alone) and
talks to Redis only through backend.client.StudioClient (see webapp/ui.py)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run webapp/app.py` from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from webapp.ui import PAGES  # noqa: E402

st.set_page_config(page_title="LAMANAS Studio", page_icon=":material/account_tree:", layout="wide")

ICONS = {"Launch": "rocket_launch", "Runs": "monitoring", "Genotype explorer": "account_tree",
         "Compare": "compare_arrows", "Loss landscape": "landscape", "Classroom": "school"}
page = st.navigation([st.Page(path, title=title, icon=f":material/{ICONS[title]}:", default=path == "views/launch.py")
                      for path, title in PAGES.items()])
page.run()
