"""Genotype explorer: both cells drawn DARTS-style with Graphviz (edge width from
softmax(α)), a slider over meta-epochs, α heatmaps and SVG/PNG/JSON export."""
from __future__ import annotations

import json

import streamlit as st

from webapp import ui
from webapp.charts import alpha_heatmap
from webapp.graphs import CELL_KINDS, alpha_at, cell_dot, render

CELL_TITLES = {"normal": "Normal cell", "reduce": "Reduction cell"}


def epoch_slider(rows: list[dict]) -> int | None:
    """A slider over the meta-epochs that stored a genotype (the last one by default)."""
    epochs = [r["epoch"] for r in rows if r.get("genotype")]
    if not epochs:
        return None
    if len(epochs) == 1:
        st.caption(f"Meta-epoch {epochs[0]} (the only one so far).")
        return epochs[0]
    return st.select_slider("Meta-epoch", options=epochs, value=epochs[-1], key="geno_epoch",
                            help="Move to watch the architecture evolve during meta-training.")


def cell_view(run_id: str, genotype: dict, alpha: dict | None, cell: str, suffix: str) -> None:
    st.markdown(f"**{CELL_TITLES[cell]}**")
    dot = cell_dot(genotype, alpha, cell)
    st.graphviz_chart(dot, width="stretch")
    cols = st.columns(2)
    try:
        cols[0].download_button("SVG", render(dot, "svg"), f"{run_id}-{cell}{suffix}.svg", "image/svg+xml",
                                key=f"geno_svg_{cell}")
        cols[1].download_button("PNG", render(dot, "png"), f"{run_id}-{cell}{suffix}.png", "image/png",
                                key=f"geno_png_{cell}")
    except Exception as e:  # graphviz.ExecutableNotFound: no `dot` program
        cols[0].caption(f"No SVG/PNG export: {type(e).__name__} (install Graphviz).")
    if alpha and cell in alpha:
        st.altair_chart(alpha_heatmap(alpha, cell), width="content")


ui.status_panel()
st.title("Genotype explorer")
st.caption("The discrete architecture read off α, DARTS style: inputs c_{k-2} and c_{k-1} (the two previous "
           "cells), intermediate nodes 0, 1, …, output c_{k} (their concatenation). Each intermediate node keeps "
           "two edges, each labelled with its operation; an edge is wider the larger its softmax(α) weight.")

records = ui.list_runs(include_demo=True)
rec = ui.pick_run(records, key="geno_run")
if rec is None:
    st.info("No run to show yet: launch one on the **Launch** page, or see the shipped demo run in the "
            "**Classroom**.", icon=":material/account_tree:")
    st.stop()

run_id = rec["id"]
rows = ui.rows(run_id)
epoch = epoch_slider(rows)
if epoch is not None and epoch != rows[-1]["epoch"]:
    genotype, alpha = alpha_at(rows, epoch)
    suffix = f"-epoch{epoch}"
else:  # the final genotype when there is one, with the last α
    genotype, alpha, suffix = ui.genotype(run_id, rows), (rows[-1].get("alpha") if rows else None), ""
    if epoch is not None:
        suffix = f"-epoch{epoch}" if rec["status"] in ui.ACTIVE else ""
if not genotype:
    st.info("No genotype yet: it appears after the first meta-epoch.", icon=":material/hourglass_empty:")
    st.stop()

cols = st.columns(2)
for col, cell in zip(cols, CELL_KINDS):
    with col:
        cell_view(run_id, genotype, alpha, cell, suffix)

st.download_button("Genotype JSON", json.dumps(genotype, indent=2).encode(), f"{run_id}-genotype{suffix}.json",
                   "application/json", key="geno_json", icon=":material/download:")
with st.expander("Genotype JSON"):
    st.json(genotype)
