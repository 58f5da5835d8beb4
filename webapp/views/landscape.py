"""Loss landscape: the stored snapshots of a learned-loss run over meta-epochs (paper
Fig. 3), each beside cross-entropy on the same grid."""
from __future__ import annotations

import streamlit as st

from webapp import ui
from webapp.charts import landscape_chart

ui.status_panel()
st.title("Loss landscape")
st.caption("The learned loss L_φ over a plane of logits around a fixed reference batch (the red cross is the "
           "batch's own logits), at several meta-epochs; cross-entropy on the same plane is the reference. "
           "A run stores snapshots when its config has `landscape_every` > 0 and a learned loss (fnn or lstm).")

records = ui.list_runs(include_demo=True)
rec = ui.pick_run(records, key="land_run", label="Learned-loss run",
                  predicate=lambda r: (r.get("config") or {}).get("loss") in ("fnn", "lstm"))
if rec is None:
    st.info("No learned-loss run yet. Launch one with loss = fnn or lstm and landscape_every > 0 "
            "(e.g. the `smoke` preset with loss=fnn, landscape_every=2).", icon=":material/landscape:")
    st.stop()

snaps = ui.landscapes(rec["id"])
if not snaps:
    every = (rec.get("config") or {}).get("landscape_every", 0)
    st.info("This run has no snapshots " + ("yet." if every else "(its landscape_every is 0)."), icon=":material/hourglass_empty:")
    st.stop()

epochs = [s["epoch"] for s in snaps]
epoch = (st.select_slider("Meta-epoch", options=epochs, value=epochs[-1], key="land_epoch")
         if len(epochs) > 1 else epochs[0])
snap = snaps[epochs.index(epoch)]
c1, c2 = st.columns(2)
c1.altair_chart(landscape_chart(snap, "loss", f"learned loss, meta-epoch {epoch}"), width="content")
c2.altair_chart(landscape_chart(snap, "ce", "cross-entropy (reference)"), width="content")

st.subheader("All snapshots")
st.caption("The learned loss at every stored meta-epoch (paper Fig. 3): how φ reshapes the landscape.")
cols = st.columns(min(4, len(snaps)))
for i, s in enumerate(snaps):
    cols[i % len(cols)].altair_chart(landscape_chart(s, "loss", f"meta-epoch {s['epoch']}", size=180),
                                     width="content")
