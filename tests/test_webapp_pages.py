"""AppTest unit tests of every page against an in-memory fake StudioClient (no Redis).

The integration tests (tests/test_webapp_integration.py) run the same pages against a real
Redis with real smoke runs; here the fake makes failures, learned-loss metrics and
landscapes cheap to set up."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from model.config import FEW_SHOT_OPS, ConfigError, build_config, eval_config
from model.genotypes import derive, edge_labels
from model.presets import PRESETS

APP = str(Path(__file__).resolve().parents[1] / "webapp" / "app.py")
TIMEOUT = 30


# ---------------------------------------------------------------------------------------
# fake data


def make_alpha(epoch: int, nodes: int = 2, ops=FEW_SHOT_OPS) -> dict:
    """Softmax weights that drift with the epoch, DARTS edge order, pairwise input weights."""
    out = {"ops": list(ops)}
    for cell in ("normal", "reduce"):
        edges, pairs = [], []
        for node in range(nodes):
            for src in range(node + 2):
                logits = [math.sin(0.7 * (o + 1) * (src + 1) + 0.3 * epoch + (cell == "reduce")) for o in range(len(ops))]
                z = sum(math.exp(v) for v in logits)
                edges.append([math.exp(v) / z for v in logits])
            n_pairs = (node + 2) * (node + 1) // 2
            pw = [1.0 / n_pairs] * n_pairs
            pw[(epoch + node) % n_pairs] += 0.5
            pairs.append(pw)
        out[cell], out[f"{cell}_pairs"] = edges, pairs
    return out


def make_rows(n: int, learned: bool = False) -> list[dict]:
    rows = []
    for e in range(1, n + 1):
        alpha = make_alpha(e)
        row = {"epoch": e, "train_loss": 1.1 / e, "train_accuracy": min(1.0, 0.3 + 0.1 * e), "seconds": 0.5 + 0.01 * e,
               "alpha": alpha, "genotype": derive(alpha, pairwise=True)}
        if learned:
            row.update(phi_norm=3.0 + 0.1 * e, phi_step_norm=0.1 / e, loss_ce_pearson=0.5 + 0.05 * e, grad_cosine=0.2)
        rows.append(row)
    return rows


def make_landscape(epoch: int, g: int = 5) -> dict:
    axis = [-3 + 6 * i / (g - 1) for i in range(g)]
    return {"epoch": epoch, "mode": "svd", "extent": [-3, 3, -3, 3], "grid_size": g, "axis": axis,
            "loss": [[(a * a + b * b) * epoch for a in axis] for b in axis],
            "ce": [[abs(a - b) for a in axis] for b in axis]}


class FakeClient:
    """The StudioClient API over dicts (unit tests only)."""

    def __init__(self, redis: bool = True, workers=None):
        self.redis = redis
        self._workers = [{"name": "w1", "host": "h", "device": "cpu", "queues": ["cpu", "any"], "current_run": None,
                          "last_seen": time.time()}] if workers is None else workers
        self.runs: dict[str, dict] = {}
        self.metrics: dict[str, list[dict]] = {}
        self.lands: dict[str, list[dict]] = {}
        self.files: dict[tuple, bytes] = {}
        self.jobs: dict[str, dict] = {}
        self.calls: list[tuple] = []

    # helpers for tests
    def add(self, run_id, preset="smoke", status="succeeded", rows=None, group=None, overrides=None, summary=None,
            **extra):
        cfg = build_config(preset, overrides or {}).to_dict()
        rows = rows if rows is not None else make_rows(4)
        self.runs[run_id] = {
            "id": run_id, "name": extra.pop("name", run_id), "preset": preset, "group": group, "submitter": "",
            "status": status, "config": cfg, "created": time.time() - 100, "started": time.time() - 90,
            "finished": time.time() if status in ("succeeded", "failed", "cancelled") else None, "worker": "w1",
            "host": "h", "device": "cpu", "attempts": 1, "error": None, "traceback": None,
            "epoch": rows[-1]["epoch"] if rows else 0, "meta_epochs": cfg["meta_epochs"], "summary": summary, **extra}
        self.metrics[run_id] = rows
        if rows and status == "succeeded":
            self.files[(run_id, "genotype.json")] = json.dumps(rows[-1]["genotype"]).encode()
        return self.runs[run_id]

    # the API
    def ping(self):
        return self.redis

    def status(self):
        if not self.redis:
            return {"redis": False, "workers": [], "error": "ConnectionError: Connection refused"}
        return {"redis": True, "workers": self._workers, "error": None}

    def workers(self):
        return self._workers

    def presets(self):
        return {n: {"description": p["description"], "config": build_config(n).to_dict()} for n, p in PRESETS.items()}

    def validate(self, preset, overrides):
        try:
            build_config(preset, overrides)
        except ConfigError as e:
            return e.errors
        return {}

    def submit(self, preset, overrides=None, name="", submitter="", group=None, token=None):
        build_config(preset, overrides or {})
        run_id = f"run{len(self.runs) + 1}"
        self.calls.append(("submit", preset, overrides, name, group))
        self.add(run_id, preset, status="queued", rows=[], group=group, overrides=overrides, name=name or run_id)
        return run_id

    def list_runs(self):
        return sorted(self.runs.values(), key=lambda r: r["created"], reverse=True)

    def get(self, run_id):
        return self.runs.get(run_id)

    def progress(self, run_id, after_epoch=0):
        return [r for r in self.metrics.get(run_id, []) if r["epoch"] > after_epoch]

    def landscapes(self, run_id):
        return self.lands.get(run_id, [])

    def summary(self, run_id):
        return (self.runs.get(run_id) or {}).get("summary")

    def cancel(self, run_id, token=None):
        self.calls.append(("cancel", run_id))
        self.runs[run_id]["status"] = "cancelled"

    def resume(self, run_id, token=None):
        self.calls.append(("resume", run_id))
        self.runs[run_id]["status"] = "queued"

    def delete(self, run_id, token=None):
        self.calls.append(("delete", run_id))
        self.runs.pop(run_id)

    def request_evaluate(self, run_id, tasks=None, part="test", overrides=None):
        eval_config(self.runs[run_id]["config"], part, overrides)   # refuses as the real client does
        self.calls.append(("evaluate", run_id, tasks, part, overrides))
        job_id = f"job-eval{len(self.jobs)}"
        self.jobs[job_id] = {"status": "succeeded", "error": None, "result": {
            "part": part, "overrides": overrides, "test_accuracy": 0.5 + 0.01 * overrides["test_steps"],
            "test_ci95": 0.02, "tasks": tasks}}
        return job_id

    def request_episode(self, run_id, support, query, query_labels=None):
        self.calls.append(("episode", run_id, {k: len(v) for k, v in support.items()}, len(query)))
        classes = sorted(support)
        self.jobs["job1"] = {"status": "succeeded", "result": {"classes": classes, "predictions": [
            {"image": f"query_{i}", "prediction": classes[0], "probability": 0.9} for i in range(len(query))]},
            "error": None}
        return "job1"

    def job(self, job_id):
        return self.jobs.get(job_id, {"status": "failed", "result": None, "error": "no such job"})

    def artifact(self, run_id, name):
        return self.files.get((run_id, name))


# ---------------------------------------------------------------------------------------
# helpers


def app(client: FakeClient, page: str = "views/launch.py", **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["client"] = client
    for k, v in query.items():
        at.query_params[k] = v
    at.switch_page(page)
    return at.run()


def no_exceptions(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def vega_specs(at: AppTest) -> list[dict]:
    """The Vega-Lite specs (with their inline datasets as DataFrames) of every Altair chart."""
    import pyarrow as pa

    out = []
    for el in at.get("vega_lite_chart"):
        datasets = {d.name: pa.ipc.open_stream(d.data.data).read_all().to_pandas() for d in el.proto.datasets}
        if el.proto.data.data:
            datasets[""] = pa.ipc.open_stream(el.proto.data.data).read_all().to_pandas()
        out.append({"spec": json.loads(el.proto.spec), "data": datasets})
    return out


def graphviz_dots(at: AppTest) -> list[str]:
    return [el.proto.spec for el in at.get("graphviz_chart")]


# ---------------------------------------------------------------------------------------
# tests


def test_status_panel_says_when_redis_is_down():
    at = app(FakeClient(redis=False), "views/runs.py")
    no_exceptions(at)
    assert any("Redis is not reachable" in e.value for e in at.sidebar.error)
    assert any("needs the run store" in i.value for i in at.info)


def test_status_panel_lists_worker_devices():
    at = app(FakeClient(), "views/launch.py")
    assert any("1 worker alive (cpu)" in s.value for s in at.sidebar.success)
    at = app(FakeClient(workers=[]), "views/launch.py")
    assert any("no worker alive" in w.value for w in at.sidebar.warning)


def test_launch_page_lists_presets_and_groups():
    at = app(FakeClient())
    no_exceptions(at)
    assert at.selectbox(key="launch_preset").options == [f"{n} — {p['description']}" for n, p in PRESETS.items()]
    labels = [e.label for e in at.expander]
    for group in ("Task", "Search space", "Meta-learning", "Loss", "Run"):
        assert any(lbl.startswith(group) for lbl in labels), labels
    assert at.number_input(key="cfg_smoke_n_way").value == 3
    assert at.multiselect(key="cfg_smoke_ops").value == list(FEW_SHOT_OPS)


def test_launch_shows_errors_next_to_fields_and_enqueues_nothing():
    client = FakeClient()
    at = app(client)
    at.number_input(key="cfg_smoke_n_way").set_value(1)
    at.number_input(key="cfg_smoke_q_query").set_value(19)
    at.number_input(key="cfg_smoke_temp_end").set_value(5.0)
    at.text_input(key="launch_seeds_smoke").set_value("1, x")
    at.button[-1].click()  # the form's submit button is the last button
    at = at.run()
    no_exceptions(at)
    assert any("seeds must be integers" in e.value for e in at.error)
    at.text_input(key="launch_seeds_smoke").set_value("1")
    at.button[-1].click()
    at = at.run()
    errors = " | ".join(e.value for e in at.error)
    assert "must be in [2, 100], got 1" in errors and "Nothing was enqueued" in errors
    # once every field is well-typed and in range, the cross-field rules speak
    at.number_input(key="cfg_smoke_n_way").set_value(3)
    at.button[-1].click()
    at = at.run()
    errors = " | ".join(e.value for e in at.error)
    assert "must be <= temp_start" in errors and "train_shots + q_query must be <= 20" in errors
    assert "2 fields to fix" in errors
    assert not [c for c in client.calls if c[0] == "submit"]


def test_launch_submits_one_run_per_seed_as_a_group():
    client = FakeClient()
    at = app(client)
    at.text_input(key="launch_name").set_value("fnn try")
    at.text_input(key="launch_seeds_smoke").set_value("1-3")
    at.selectbox(key="cfg_smoke_loss").set_value("fnn")
    at.button[-1].click()
    at = at.run()
    no_exceptions(at)
    submits = [c for c in client.calls if c[0] == "submit"]
    assert [c[2]["seed"] for c in submits] == [1, 2, 3]
    assert all(c[2]["loss"] == "fnn" and c[4] == "fnn try ×3" for c in submits)
    assert at.query_params["run"] == ["run1"] or at.query_params.get("run") in ("run1", ["run1"])


def test_runs_table_and_filters():
    client = FakeClient()
    client.add("a", status="succeeded", summary={"test_accuracy": 0.8, "test_ci95": 0.02})
    client.add("b", status="failed", error="RuntimeError: boom", traceback="Traceback...\nRuntimeError: boom")
    at = app(client, "views/runs.py")
    no_exceptions(at)
    df = at.dataframe[0].value
    assert set(df["id"]) - {"demo:shipped"} == {"a", "b"}  # the shipped demo run is listed when present
    row = df[df["id"] == "a"].iloc[0]
    assert row["best acc"] == pytest.approx(0.7) and row["last acc"] == pytest.approx(0.7)
    assert row["test acc"] == pytest.approx(0.8)
    at.multiselect(key="runs_status").set_value(["failed"])
    at = at.run()
    assert list(at.dataframe[0].value["id"]) == ["b"]


def test_run_page_charts_hold_the_stored_metrics():
    client = FakeClient()
    rows = make_rows(6, learned=True)
    client.add("a", status="running", rows=rows)
    at = app(client, "views/runs.py", run="a")
    no_exceptions(at)
    specs = vega_specs(at)
    titles = [s["spec"].get("title") for s in specs]
    assert "Query accuracy per meta-epoch" in str(titles) and "Learned loss vs cross-entropy" in str(titles)
    acc = next(s for s in specs if "Query accuracy" in str(s["spec"].get("title")))
    data = next(iter(acc["data"].values()))
    assert list(data["epoch"]) == [r["epoch"] for r in rows]
    assert list(data["value"]) == pytest.approx([r["train_accuracy"] for r in rows])
    assert at.button(key="run_cancel").disabled is False
    assert at.button(key="run_resume").disabled is True


def test_run_page_cancel_and_failed_run():
    client = FakeClient()
    client.add("a", status="running")
    client.add("b", status="failed", error="RuntimeError: boom", traceback="Traceback (most recent call last)...")
    at = app(client, "views/runs.py", run="a")
    at.button(key="run_cancel").click()
    at = at.run()
    assert ("cancel", "a") in client.calls
    at = app(client, "views/runs.py", run="b")
    no_exceptions(at)
    assert any("boom" in e.value for e in at.error)
    assert any("Traceback" in c.value for c in at.code)
    assert at.button(key="run_resume").disabled is False


def test_run_page_delete_needs_confirmation():
    client = FakeClient()
    client.add("a")
    at = app(client, "views/runs.py", run="a")
    assert at.button(key="run_delete").disabled is True
    at.checkbox(key="run_delete_sure").check()
    at = at.run()
    at.button(key="run_delete").click()
    at = at.run()
    assert ("delete", "a") in client.calls


def test_run_page_reevaluates_on_val_with_other_steps_and_lists_results():
    client = FakeClient()
    client.add("a")
    client.add("b", status="running")
    at = app(client, "views/runs.py", run="b")
    assert "eval_go" not in [b.key for b in at.button]          # only a finished run re-evaluates
    at = app(client, "views/runs.py", run="a")
    at.number_input(key="eval_steps").set_value(12)
    at.number_input(key="eval_tasks").set_value(100)
    at = at.run()
    at.button(key="eval_go").click()
    at = at.run()
    no_exceptions(at)
    assert ("evaluate", "a", 100, "val", {"test_steps": 12}) in client.calls
    table = next(d.value for d in at.dataframe if "classes" in d.value.columns)
    assert list(table["classes"]) == ["val"] and list(table["steps"]) == [12]
    assert list(table["accuracy"]) == pytest.approx([0.62])


def test_genotype_explorer_graph_matches_genotype():
    client = FakeClient()
    rows = make_rows(5)
    client.add("a", rows=rows)
    at = app(client, "views/genotype.py", run="a")
    no_exceptions(at)
    dots = graphviz_dots(at)
    assert len(dots) == 2
    final = json.loads(client.files[("a", "genotype.json")])
    assert edge_labels(dots[0]) == [op for op, _ in final["normal"]]
    assert edge_labels(dots[1]) == [op for op, _ in final["reduce"]]
    heat = [s for s in vega_specs(at) if "softmax" in str(s["spec"].get("title"))]
    assert len(heat) == 2
    # the slider moves through meta-epochs: epoch 2's genotype is drawn
    at.select_slider(key="geno_epoch").set_value(2)
    at = at.run()
    dots = graphviz_dots(at)
    assert edge_labels(dots[0]) == [op for op, _ in rows[1]["genotype"]["normal"]]


def test_compare_table_and_diff():
    client = FakeClient()
    for i, seed in enumerate((1, 2)):
        client.add(f"f{i}", group="fnn", overrides={"loss": "fnn", "seed": seed}, rows=make_rows(4, True),
                   summary={"test_accuracy": 0.8 + 0.02 * i, "test_ci95": 0.01, "train_accuracy": 0.9,
                            "num_params": 1000, "meta_epochs": 4, "wall_seconds": 60})
        client.add(f"l{i}", group="lstm", overrides={"loss": "lstm", "seed": seed}, rows=make_rows(4, True),
                   summary={"test_accuracy": 0.7, "test_ci95": 0.01, "train_accuracy": 0.85,
                            "num_params": 1000, "meta_epochs": 4, "wall_seconds": 90})
    at = app(client, "views/compare.py")
    no_exceptions(at)
    at.multiselect(key="cmp_groups").set_value(["group fnn", "group lstm"])
    at = at.run()
    no_exceptions(at)
    table = at.dataframe[0].value
    fnn = table[table["runs"] == "group fnn"].iloc[0]
    assert fnn["seeds"] == 2 and fnn["test accuracy (%)"] == pytest.approx(81.0)
    diff = at.dataframe[1].value
    assert "loss" in list(diff["field"])
    assert len(graphviz_dots(at)) == 2


def test_landscape_page_shows_snapshots():
    client = FakeClient()
    client.add("a", overrides={"loss": "fnn", "landscape_every": 2}, rows=make_rows(4, True))
    client.lands["a"] = [make_landscape(2), make_landscape(4)]
    at = app(client, "views/landscape.py", run="a")
    no_exceptions(at)
    specs = vega_specs(at)
    assert len(specs) >= 2
    data = next(iter(specs[0]["data"].values()))
    assert len(data) == 25 and data["value"].max() == pytest.approx(18 * 4)  # the last snapshot by default


def test_classroom_works_without_redis():
    at = app(FakeClient(redis=False), "views/classroom.py")
    no_exceptions(at)
    assert "Classroom" in at.title[0].value


@pytest.fixture
def shipped_demo(tmp_path, monkeypatch):
    """A demo run directory standing in for webapp/demo_run/ (which the lead ships)."""
    import webapp.data

    rows = make_rows(6)
    (tmp_path / "config.json").write_text(json.dumps(build_config("demo").to_dict()))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "genotype.json").write_text(json.dumps(rows[-1]["genotype"]))
    (tmp_path / "summary.json").write_text(json.dumps({"test_accuracy": 0.91, "test_ci95": 0.01, "meta_epochs": 6,
                                                       "num_params": 12345, "train_accuracy": 0.9,
                                                       "wall_seconds": 100}))
    monkeypatch.setattr(webapp.data, "DEMO_DIR", tmp_path)
    return rows


def test_classroom_shows_the_shipped_demo_run(shipped_demo):
    at = app(FakeClient(redis=False), "views/classroom.py")
    no_exceptions(at)
    assert any(m.value == "91.0%" for m in at.metric)
    dots = graphviz_dots(at)
    assert edge_labels(dots[0]) == [op for op, _ in shipped_demo[-1]["genotype"]["normal"]]
    acc = next(s for s in vega_specs(at) if "Query accuracy" in str(s["spec"].get("title")))
    assert list(next(iter(acc["data"].values()))["value"]) == pytest.approx([r["train_accuracy"] for r in shipped_demo])


def test_classroom_says_how_to_make_the_demo_run(tmp_path, monkeypatch):
    import webapp.data

    monkeypatch.setattr(webapp.data, "DEMO_DIR", tmp_path / "absent")
    at = app(FakeClient(redis=False), "views/classroom.py")
    assert any("python -m model train --preset demo --out webapp/demo_run" in i.value for i in at.info)


def test_demo_run_is_explorable_without_redis(shipped_demo):
    at = app(FakeClient(redis=False), "views/genotype.py", run="demo:shipped")
    no_exceptions(at)
    assert edge_labels(graphviz_dots(at)[1]) == [op for op, _ in shipped_demo[-1]["genotype"]["reduce"]]


def test_classroom_try_it_sends_a_sample_task(data_root):
    client = FakeClient()
    client.add("a")
    at = app(client, "views/classroom.py")
    at.button(key="try_go").click()
    at = at.run()
    no_exceptions(at)
    episode = next(c for c in client.calls if c[0] == "episode")
    assert len(episode[2]) == 3 and set(episode[2].values()) == {1} and episode[3] == 3  # smoke: 3-way 1-shot
    assert any("→ **" in m.value for m in at.markdown)
