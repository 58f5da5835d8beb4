"""Compare runs or seed groups: overlaid curves (mean ± std across seeds), a Table-1-style
summary, a diff of their configs and their genotypes side by side."""
from __future__ import annotations

import streamlit as st

from webapp import ui
from webapp.charts import METRICS, compare_chart
from webapp.data import config_diff, seed_groups, table1_frame
from webapp.graphs import cell_dot

ui.status_panel()
st.title("Compare")
st.caption("Pick runs or seed groups (runs launched together with several seeds), e.g. FNN vs LSTM loss, "
           "residual on/off, MSE vs inner-product φ update.")

groups = seed_groups(ui.list_runs(include_demo=True))
if len(groups) < 1:
    st.info("Nothing to compare yet: launch runs on the **Launch** page (several seeds make a group).", icon=":material/compare_arrows:")
    st.stop()

labels = list(groups)
chosen = st.multiselect("Runs and seed groups", labels, default=labels[:2], key="cmp_groups",
                        format_func=lambda lbl: f"{lbl} ({len(groups[lbl])} run{'s' * (len(groups[lbl]) != 1)})")
if not chosen:
    st.info("Choose at least one run or group.")
    st.stop()

series = {lbl: [ui.rows(r["id"]) for r in groups[lbl]] for lbl in chosen}
metrics = [m for m in METRICS if any(m in row for runs in series.values() for rows in runs for row in rows)]
if metrics:
    metric = st.selectbox("Curve", metrics, format_func=METRICS.get, key="cmp_metric")
    st.altair_chart(compare_chart(series, metric), width="stretch")
else:
    st.info("No meta-epoch finished yet in these runs.")

st.subheader("Results (Table 1 style)")
st.dataframe(table1_frame({lbl: [r.get("summary") for r in groups[lbl]] for lbl in chosen}), hide_index=True,
             key="cmp_table")
st.caption("Test accuracy on meta-test tasks, mean over seeds; the 95% CI is across seeds (1.96·std/√n) when a "
           "group has several finished runs, else the run's own CI across its test tasks. Unfinished runs are "
           "left out.")

st.subheader("Config differences")
diff = config_diff({lbl: groups[lbl][0].get("config") or {} for lbl in chosen})
if len(chosen) < 2:
    st.caption("Choose two or more to see their differences.")
elif diff.empty:
    st.caption("Their configs are identical.")
st.dataframe(diff, hide_index=True, key="cmp_diff")

st.subheader("Genotypes")
cell = st.radio("Cell", ["normal", "reduce"], horizontal=True, key="cmp_cell")
cols = st.columns(min(len(chosen), 4))
for i, lbl in enumerate(chosen):
    with cols[i % len(cols)]:
        run = groups[lbl][0]
        st.markdown(f"**{lbl}**" + (" (first seed)" if len(groups[lbl]) > 1 else ""))
        genotype = ui.genotype(run["id"], series[lbl][0])
        if genotype:
            st.graphviz_chart(cell_dot(genotype, None, cell), width="stretch")
        else:
            st.caption("no genotype yet")
