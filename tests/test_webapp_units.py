"""Pure helpers of the web app: chart builders, tables, form parsing, graphs, sample tasks."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_webapp_pages import make_alpha, make_landscape, make_rows  # noqa: E402

from model.config import FIELDS  # noqa: E402
from model.genotypes import edge_labels  # noqa: E402
from webapp import charts, data, forms, graphs  # noqa: E402


def chart_data(chart) -> "list[dict]":
    spec = chart.to_dict()
    return [row for rows in spec.get("datasets", {}).values() for row in rows]


def test_web_modules_do_not_import_torch():
    import subprocess

    code = ("import sys; import webapp.charts, webapp.data, webapp.forms, webapp.graphs, webapp.ui; "
            "import backend.client; webapp.data.omniglot_root(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


def test_metric_chart_holds_the_rows():
    rows = make_rows(5, learned=True)
    chart = charts.accuracy_chart(rows)
    got = chart_data(chart)
    assert [(d["epoch"], d["value"]) for d in got] == [(r["epoch"], r["train_accuracy"]) for r in rows]
    titles = [c.to_dict()["title"] for c in charts.run_charts(rows)]
    assert "Learned loss vs cross-entropy" in titles and "Loss-network parameters φ" in titles
    assert len(charts.run_charts(make_rows(3))) == 3  # no learned-loss charts for CE runs


def test_alpha_frame_in_darts_edge_order():
    alpha = make_alpha(3, nodes=3)
    df = charts.alpha_frame(alpha, "normal")
    assert len(df) == (2 + 3 + 4) * len(alpha["ops"])
    assert charts.edge_names(5) == ["c_{k-2} → 0", "c_{k-1} → 0", "c_{k-2} → 1", "c_{k-1} → 1", "0 → 1"]
    first = df[df.edge_index == 4]
    assert list(first.weight) == pytest.approx(alpha["normal"][4])


def test_band_frame_mean_and_std_across_seeds():
    a = [{"epoch": 1, "train_accuracy": 0.2}, {"epoch": 2, "train_accuracy": 0.4}]
    b = [{"epoch": 1, "train_accuracy": 0.4}, {"epoch": 2, "train_accuracy": 0.8}]
    df = charts.band_frame({"g": [a, b]}, "train_accuracy")
    assert list(df["mean"]) == pytest.approx([0.3, 0.6])
    assert df.iloc[1]["hi"] - df.iloc[1]["mean"] == pytest.approx(0.2828427, rel=1e-5)
    assert set(df["n"]) == {2}


def test_landscape_frame_orientation():
    snap = make_landscape(1, g=3)
    df = charts.landscape_frame(snap, "ce")
    row = df[(df.a == 3.0) & (df.b == -3.0)].iloc[0]
    assert row.value == pytest.approx(6.0)  # grid[i][j] is at a=axis[j], b=axis[i]


def test_table1_across_seeds_and_single_run():
    s = [{"test_accuracy": 0.8, "test_ci95": 0.01, "train_accuracy": 0.9, "num_params": 100, "meta_epochs": 4,
          "wall_seconds": 61, "test_tasks": 8},
         {"test_accuracy": 0.9, "test_ci95": 0.01, "train_accuracy": 0.95, "num_params": 100, "meta_epochs": 4,
          "wall_seconds": 59}]
    row = data.table1_row("g", s)
    assert row["test accuracy (%)"] == pytest.approx(85.0)
    assert row["± 95% CI"] == pytest.approx(round(100 * 1.96 * 0.0707107 / 2 ** 0.5, 2))
    assert row["CI over"] == "2 seeds" and row["wall time"] == "1m00s"
    one = data.table1_row("r", s[:1])
    assert one["± 95% CI"] == 1.0 and one["CI over"] == "8 tasks"


def test_config_diff_and_seed_groups():
    diff = data.config_diff({"a": {"loss": "fnn", "seed": 1, "n_way": 5}, "b": {"loss": "lstm", "seed": 1, "n_way": 5}})
    assert list(diff["field"]) == ["loss"] and list(diff["a"]) == ['"fnn"']
    recs = [{"id": "1", "group": "g"}, {"id": "2", "group": "g"}, {"id": "3", "name": "x"}]
    assert {k: [r["id"] for r in v] for k, v in data.seed_groups(recs).items()} == {"group g": ["1", "2"], "x": ["3"]}


def test_runs_frame_and_filters():
    recs = [{"id": "a", "name": "fnn", "preset": "smoke", "status": "running", "epoch": 2, "meta_epochs": 4,
             "started": 100.0, "finished": None, "config": {"loss": "fnn"}},
            {"id": "b", "name": "ce", "preset": "demo", "status": "failed", "epoch": 0, "meta_epochs": 4}]
    df = data.runs_frame(recs, {"a": (0.9, 0.8)}, now=165.0)
    assert list(df.loc[0, ["progress", "best acc", "last acc", "duration"]]) == [0.5, 0.9, 0.8, "1m05s"]
    assert [r["id"] for r in data.filter_runs(recs, statuses=["failed"])] == ["b"]
    assert [r["id"] for r in data.filter_runs(recs, text="FNN")] == ["a"]
    assert data.accuracy_stats([{"train_accuracy": 0.5}, {"train_accuracy": 0.9}, {"train_accuracy": 0.7}]) == (0.9, 0.7)


def test_form_parsing():
    assert forms.parse_seeds("2") == [2]
    assert forms.parse_seeds("1, 2,3") == [1, 2, 3]
    assert forms.parse_seeds("1-4") == [1, 2, 3, 4]
    assert "integers" in forms.parse_seeds("a")
    assert "repeat" in forms.parse_seeds("1,1")
    assert forms.parse_int_list("[1, 3]") == [1, 3] and forms.parse_int_list("") == []
    assert forms.parse_int_list("1, x") == "1, x"  # left for the config to refuse
    assert forms.overrides({"a": 1, "b": 2}, {"a": 1, "b": 3}) == {"b": 2}
    grouped = forms.fields_by_group()
    assert list(grouped)[:4] == ["task", "search space", "meta-learning", "loss"]
    assert sorted(n for names in grouped.values() for n in names) == sorted(set(FIELDS) - set(forms.TOP_FIELDS))


def test_graphs_render_svg_with_edge_labels():
    rows = make_rows(2)
    g, alpha = graphs.alpha_at(rows, 2)
    dot = graphs.cell_dot(g, alpha, "reduce")
    assert edge_labels(dot) == graphs.genotype_ops(g, "reduce")
    assert "penwidth" in dot
    svg = graphs.render(dot).decode()
    assert svg.lstrip().startswith("<?xml") and all(op in svg for op in graphs.genotype_ops(g, "reduce"))
    assert graphs.render(dot, "png")[:4] == b"\x89PNG"


def test_demo_run_dir(tmp_path):
    rows = make_rows(3)
    (tmp_path / "config.json").write_text(json.dumps({"meta_epochs": 3, "loss": "ce"}))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "genotype.json").write_text(json.dumps(rows[-1]["genotype"]))
    d = data.RunDir(tmp_path)
    assert d.exists() and d.rows() == rows and d.record()["epoch"] == 3 and d.landscapes() == []


def test_sample_task_from_omniglot(data_root):
    task = data.sample_task(Path(data_root) / "omniglot-py", n_way=4, k_shot=2, n_query=1, seed=3)
    assert len(task["classes"]) == 4 and all(len(v) == 2 for v in task["support"].values())
    assert sorted(label for _, label in task["query"]) == sorted(task["classes"])
    assert task == data.sample_task(Path(data_root) / "omniglot-py", n_way=4, k_shot=2, n_query=1, seed=3)
    from backend.jobs import check_label

    assert all(check_label(c) for c in task["classes"])
