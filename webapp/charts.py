"""Altair chart builders: pure functions from stored data (metrics rows, α, landscape
snapshots) to `alt.Chart`. No Streamlit here, so tests check a chart's data directly."""
from __future__ import annotations

import math

import altair as alt
import pandas as pd

from model.genotypes import node_label

# Scalar metrics of a metrics row (see docs/ARCHITECTURE.md), with display names.
METRICS = {
    "train_accuracy": "query accuracy",
    "train_loss": "query loss",
    "seconds": "seconds per meta-epoch",
    "phi_norm": "‖φ‖",
    "phi_step_norm": "‖Δφ‖ per meta-epoch",
    "loss_ce_pearson": "Pearson(learned loss, CE)",
    "grad_cosine": "cos(∇ learned loss, ∇ CE)",
}
LEARNED_LOSS_METRICS = ("phi_norm", "phi_step_norm", "loss_ce_pearson", "grad_cosine")


def metrics_frame(rows: list[dict]) -> pd.DataFrame:
    """One row per meta-epoch with the scalar metrics present in `rows` (no α/genotype)."""
    cols = ["epoch"] + [m for m in METRICS if any(m in r for r in rows)]
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)


def has_learned_loss(rows: list[dict]) -> bool:
    return any(m in r for r in rows for m in LEARNED_LOSS_METRICS)


def metric_chart(rows: list[dict], columns: list[str], title: str, y_title: str | None = None,
                 height: int = 260) -> alt.Chart:
    """Lines of `columns` over meta-epochs (long format: epoch, metric, value)."""
    df = metrics_frame(rows)
    present = [c for c in columns if c in df.columns]
    long = df.melt(id_vars="epoch", value_vars=present, var_name="metric", value_name="value")
    long["metric"] = long["metric"].map(lambda m: METRICS.get(m, m))
    long = long.dropna(subset=["value"])
    return (
        alt.Chart(long, title=title)
        .mark_line(point=len(df) <= 40)
        .encode(
            x=alt.X("epoch:Q", title="meta-epoch", axis=alt.Axis(format="d", tickMinStep=1)),
            y=alt.Y("value:Q", title=y_title or title, scale=alt.Scale(zero=False)),
            color=alt.Color("metric:N", legend=alt.Legend(orient="top", title=None) if len(present) > 1 else None),
            tooltip=["epoch:Q", "metric:N", alt.Tooltip("value:Q", format=".4g")],
        )
        .properties(height=height)
    )


def accuracy_chart(rows: list[dict]) -> alt.Chart:
    chart = metric_chart(rows, ["train_accuracy"], "Query accuracy per meta-epoch", "accuracy")
    return chart.encode(y=alt.Y("value:Q", title="accuracy", scale=alt.Scale(domain=[0, 1]),
                                axis=alt.Axis(format="%")))


def loss_chart(rows: list[dict]) -> alt.Chart:
    return metric_chart(rows, ["train_loss"], "Query loss per meta-epoch", "loss")


def seconds_chart(rows: list[dict]) -> alt.Chart:
    return metric_chart(rows, ["seconds"], "Seconds per meta-epoch", "seconds")


def correlation_chart(rows: list[dict]) -> alt.Chart:
    return metric_chart(rows, ["loss_ce_pearson", "grad_cosine"], "Learned loss vs cross-entropy", "correlation")


def phi_chart(rows: list[dict]) -> alt.Chart:
    return metric_chart(rows, ["phi_norm", "phi_step_norm"], "Loss-network parameters φ", "norm")


def run_charts(rows: list[dict]) -> list[alt.Chart]:
    """The charts of a run's page, in display order (learned-loss charts only when present)."""
    charts = [accuracy_chart(rows), loss_chart(rows)]
    if has_learned_loss(rows):
        charts += [correlation_chart(rows), phi_chart(rows)]
    return charts + [seconds_chart(rows)]


# ---------------------------------------------------------------------------------------
# architecture weights


def edge_names(n_edges: int) -> list[str]:
    """DARTS edge order: node 0 <- c_{k-2}, c_{k-1}; node 1 <- c_{k-2}, c_{k-1}, 0; ..."""
    names, node = [], 0
    while len(names) < n_edges:
        for src in range(node + 2):
            names.append(f"{node_label(src)} → {node}")
        node += 1
    return names[:n_edges]


def alpha_frame(alpha: dict, cell: str = "normal") -> pd.DataFrame:
    """Long frame (edge, op, weight) of softmax(α) of one cell."""
    ops, edges = alpha["ops"], alpha[cell]
    names = edge_names(len(edges))
    return pd.DataFrame(
        [{"edge": names[e], "edge_index": e, "op": op, "weight": float(row[o])}
         for e, row in enumerate(edges) for o, op in enumerate(ops)]
    )


def alpha_heatmap(alpha: dict, cell: str = "normal") -> alt.Chart:
    df = alpha_frame(alpha, cell)
    base = alt.Chart(df).encode(
        x=alt.X("op:N", sort=list(alpha["ops"]), title=None, axis=alt.Axis(labelAngle=-40, orient="top")),
        y=alt.Y("edge:N", sort=edge_names(len(alpha[cell])), title="edge (input → node)"),
    )
    rect = base.mark_rect().encode(
        color=alt.Color("weight:Q", scale=alt.Scale(scheme="blues", domain=[0, 1]), title="weight",
                        legend=alt.Legend(orient="bottom", gradientLength=160)),
        tooltip=["edge:N", "op:N", alt.Tooltip("weight:Q", format=".3f")],
    )
    text = base.mark_text(fontSize=10).encode(
        text=alt.Text("weight:Q", format=".2f"),
        color=alt.condition(alt.datum.weight > 0.5, alt.value("white"), alt.value("black")),
    )
    return alt.layer(rect, text, title=f"softmax(α), {cell} cell").properties(width=alt.Step(48), height=alt.Step(24))


# ---------------------------------------------------------------------------------------
# comparison across runs and seeds


def band_frame(series: dict[str, list[list[dict]]], metric: str) -> pd.DataFrame:
    """Mean and mean ± std across the seeds of each label, per meta-epoch.

    `series` maps a label (a run or a seed group) to the metrics rows of each of its runs."""
    out = []
    for label, runs in series.items():
        per_epoch: dict[int, list[float]] = {}
        for rows in runs:
            for r in rows:
                v = r.get(metric)
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    per_epoch.setdefault(int(r["epoch"]), []).append(float(v))
        for epoch in sorted(per_epoch):
            vals = per_epoch[epoch]
            mean = sum(vals) / len(vals)
            std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
            out.append({"label": label, "epoch": epoch, "mean": mean, "lo": mean - std, "hi": mean + std,
                        "n": len(vals)})
    return pd.DataFrame(out, columns=["label", "epoch", "mean", "lo", "hi", "n"])


def compare_chart(series: dict[str, list[list[dict]]], metric: str = "train_accuracy") -> alt.Chart:
    """Overlaid curves: the mean across seeds as a line, ± one std as a band."""
    df = band_frame(series, metric)
    color = alt.Color("label:N", scale=alt.Scale(scheme="tableau10"), legend=alt.Legend(orient="bottom", title=None))
    base = alt.Chart(df).encode(x=alt.X("epoch:Q", title="meta-epoch", axis=alt.Axis(format="d", tickMinStep=1)))
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("lo:Q", title=METRICS.get(metric, metric)), y2="hi:Q",
                                              color=color)
    line = base.mark_line(point=df["epoch"].nunique() <= 40 if len(df) else False).encode(
        color=color,
        y="mean:Q", tooltip=["label:N", "epoch:Q", alt.Tooltip("mean:Q", format=".4g"), "n:Q"]
    )
    return alt.layer(band, line, title=f"{METRICS.get(metric, metric)} (mean ± std across seeds)").properties(height=300)


# ---------------------------------------------------------------------------------------
# loss landscapes


def landscape_frame(snapshot: dict, key: str = "loss") -> pd.DataFrame:
    """(a, b, value) of a snapshot's grid; grid[i][j] is the value at a=axis[j], b=axis[i]."""
    axis, grid = snapshot["axis"], snapshot[key]
    return pd.DataFrame(
        [{"a": axis[j], "b": axis[i], "value": float(grid[i][j])} for i in range(len(axis)) for j in range(len(axis))]
    )


def landscape_chart(snapshot: dict, key: str = "loss", title: str | None = None, size: int = 300) -> alt.Chart:
    """Heatmap of a landscape grid with the reference logits (origin) marked."""
    df = landscape_frame(snapshot, key)
    label = "SVD direction" if snapshot.get("mode") == "svd" else "logit coordinate"
    heat = alt.Chart(df).mark_rect().encode(
        x=alt.X("a:O", title=f"{label} 1", axis=alt.Axis(format=".1f", labelOverlap=True)),
        y=alt.Y("b:O", title=f"{label} 2", sort="descending", axis=alt.Axis(format=".1f", labelOverlap=True)),
        color=alt.Color("value:Q", scale=alt.Scale(scheme="viridis"), title=None),
        tooltip=[alt.Tooltip("a:Q", format=".2f"), alt.Tooltip("b:Q", format=".2f"),
                 alt.Tooltip("value:Q", format=".4g")],
    )
    axis = snapshot["axis"]
    mid = min(axis, key=abs)  # the reference batch's logits lie at the origin of the plane
    origin = alt.Chart(pd.DataFrame({"a": [mid], "b": [mid]})).mark_text(text="+", color="red", fontSize=22).encode(
        x="a:O", y=alt.Y("b:O", sort="descending"))
    return alt.layer(heat, origin, title=title or key).properties(width=size, height=size)
