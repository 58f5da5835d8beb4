"""LAMANAS Studio: the Streamlit app (`python -m streamlit run webapp/app.py`).

A multipage app (st.navigation); every page shows the system status in the sidebar and
talks to Redis only through backend.client.StudioClient (see webapp/ui.py)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run webapp/app.py` from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from webapp.ui import PAGES, status_panel  # noqa: E402

st.set_page_config(page_title="LAMANAS Studio", page_icon="🧬", layout="wide")

ICONS = {"Launch": "🚀", "Runs": "📈", "Genotype explorer": "🧬", "Compare": "⚖️", "Loss landscape": "🗺️",
         "Classroom": "🎓"}
page = st.navigation([st.Page(path, title=title, icon=ICONS[title], default=path == "pages/launch.py")
                      for path, title in PAGES.items()])
st.sidebar.markdown("### 🧬 LAMANAS Studio")
st.sidebar.caption("Meta-learned architectures with learned losses, on Omniglot few-shot tasks.")
status_panel()
page.run()
