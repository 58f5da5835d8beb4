"""Every page of the web app (AppTest) against a real redis-server, a real Celery worker
and real `smoke` runs: the pages read them through the real StudioClient, found from
REDIS_URL / LAMANAS_ARTIFACTS exactly as in production.

    .venv/bin/python -m pytest tests/test_webapp_integration.py -m integration
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from services import start_redis, start_worker, stop_worker, wait_for  # noqa: E402
from test_webapp_pages import APP, graphviz_dots, no_exceptions, vega_specs  # noqa: E402

from model.genotypes import edge_labels  # noqa: E402

pytestmark = pytest.mark.integration
TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def studio(data_root):
    from backend.client import StudioClient

    # a private folder: pytest's shared basetemp is pruned by other sessions' pytest runs
    root = Path(tempfile.mkdtemp(prefix="lamanas-webapp-"))
    redis = start_redis(root)
    artifacts = root / "artifacts"
    old = {k: os.environ.get(k) for k in ("REDIS_URL", "LAMANAS_ARTIFACTS")}
    os.environ.update(REDIS_URL=redis.url, LAMANAS_ARTIFACTS=str(artifacts))
    # the worker also takes the gpu queue: a `device: cuda` run then fails for real on this CPU machine
    worker = start_worker(redis.url, artifacts, queues=("cpu", "any", "gpu"), name="w1", log_dir=root)
    client = StudioClient(redis.url, artifacts_dir=str(artifacts))
    try:
        wait_for(lambda: client.workers(), 60, what="worker")
        runs = {
            "ce1": client.submit("smoke", {"seed": 1}, name="ce · seed 1", group="ce ×2"),
            "ce2": client.submit("smoke", {"seed": 2}, name="ce · seed 2", group="ce ×2"),
            "fnn": client.submit("smoke", {"loss": "fnn", "landscape_every": 2, "landscape_grid": 5}, name="fnn"),
            "bad": client.submit("smoke", {"device": "cuda"}, name="broken"),
        }
        for run_id in runs.values():
            wait_for(lambda: client.get(run_id)["status"] in TERMINAL, 240, interval=0.5, what=f"run {run_id}")
        for key in ("ce1", "ce2", "fnn"):
            rec = client.get(runs[key])
            assert rec["status"] == "succeeded", (rec.get("traceback"), Path(worker.log_path).read_text()[-3000:])
        yield client, runs
    finally:
        stop_worker(worker, timeout=5)
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def page(name: str, **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    for k, v in query.items():
        at.query_params[k] = v
    at.switch_page(f"views/{name}.py")
    at.run()
    no_exceptions(at)
    return at


def test_status_shows_redis_and_the_worker(studio):
    at = page("launch")
    assert any("1 worker alive (cpu)" in s.value for s in at.sidebar.success)


def test_launch_validates_then_enqueues(studio):
    client, _ = studio
    before = {r["id"] for r in client.list_runs()}
    at = page("launch")
    assert at.number_input(key="cfg_smoke_n_way").value == 3
    at.number_input(key="cfg_smoke_n_way").set_value(500)
    at.text_input(key="launch_name").set_value("from the ui")
    at.button[-1].click()
    at.run()
    assert any("must be in [2, 100], got 500" in e.value for e in at.error)
    assert {r["id"] for r in client.list_runs()} == before  # nothing enqueued
    at.number_input(key="cfg_smoke_n_way").set_value(2)
    at.button[-1].click()
    at.run()
    new = [r for r in client.list_runs() if r["id"] not in before]
    assert [(r["name"], r["config"]["n_way"]) for r in new] == [("from the ui", 2)]
    client.cancel(new[0]["id"])  # keep the worker free for the other tests


def test_runs_table_lists_the_stored_runs(studio):
    client, runs = studio
    at = page("runs")
    df = at.dataframe[0].value
    stored = {r["id"]: r for r in client.list_runs()}
    assert set(stored) <= set(df["id"])
    row = df[df["id"] == runs["ce1"]].iloc[0]
    accs = [r["train_accuracy"] for r in client.progress(runs["ce1"])]
    assert row["status"] == "succeeded" and row["last acc"] == pytest.approx(accs[-1])
    assert row["best acc"] == pytest.approx(max(accs))
    assert row["test acc"] == pytest.approx(client.summary(runs["ce1"])["test_accuracy"])


def test_run_page_charts_equal_the_stored_metrics(studio):
    client, runs = studio
    at = page("runs", run=runs["fnn"])
    rows = client.progress(runs["fnn"])
    specs = {s["spec"]["title"]: s for s in vega_specs(at)}
    acc = next(iter(specs["Query accuracy per meta-epoch"]["data"].values()))
    assert list(acc["epoch"]) == [r["epoch"] for r in rows]
    assert list(acc["value"]) == pytest.approx([r["train_accuracy"] for r in rows])
    corr = next(iter(specs["Learned loss vs cross-entropy"]["data"].values()))
    pearson = corr[corr["metric"] == "Pearson(learned loss, CE)"]
    assert list(pearson["value"]) == pytest.approx([r["loss_ce_pearson"] for r in rows])
    labels = [b.label for b in at.get("download_button")]
    assert {"config.json", "metrics.jsonl", "genotype.json", "genotype.svg", "checkpoint.pt"} <= set(labels)


def test_failed_run_shows_error_and_traceback(studio):
    client, runs = studio
    rec = client.get(runs["bad"])
    assert rec["status"] == "failed"
    at = page("runs", run=runs["bad"])
    assert any("This run failed" in e.value for e in at.error)
    assert any("Traceback" in c.value for c in at.code)
    assert at.button(key="run_resume").disabled is False


def test_genotype_graph_edges_equal_genotype_json(studio):
    client, runs = studio
    at = page("genotype", run=runs["ce1"])
    genotype = json.loads(client.artifact(runs["ce1"], "genotype.json"))
    normal, reduce = graphviz_dots(at)
    assert edge_labels(normal) == [op for op, _ in genotype["normal"]]
    assert edge_labels(reduce) == [op for op, _ in genotype["reduce"]]
    alpha = client.progress(runs["ce1"])[-1]["alpha"]
    heat = [s for s in vega_specs(at) if "softmax" in json.dumps(s["spec"].get("title"))]
    df = next(iter(heat[0]["data"].values()))
    assert sorted(df["weight"]) == pytest.approx(sorted(w for row in alpha["normal"] for w in row))


def test_compare_groups_and_runs(studio):
    client, runs = studio
    at = page("compare")
    at.multiselect(key="cmp_groups").set_value(["group ce ×2", "fnn"])
    at.run()
    no_exceptions(at)
    table = at.dataframe[0].value
    ce = table[table["runs"] == "group ce ×2"].iloc[0]
    accs = [client.summary(runs[k])["test_accuracy"] for k in ("ce1", "ce2")]
    assert ce["seeds"] == 2 and ce["test accuracy (%)"] == pytest.approx(round(50 * sum(accs), 2))
    diff = at.dataframe[1].value
    assert {"loss", "landscape_every"} <= set(diff["field"])
    assert len(graphviz_dots(at)) == 2


def test_landscape_page_equals_the_snapshots(studio):
    client, runs = studio
    snaps = client.landscapes(runs["fnn"])
    assert [s["epoch"] for s in snaps] == [2, 4]
    at = page("landscape", run=runs["fnn"])
    specs = vega_specs(at)
    heat = max(specs[0]["data"].values(), key=len)
    last = snaps[-1]
    assert len(heat) == 25
    assert sorted(heat["value"]) == pytest.approx(sorted(v for row in last["loss"] for v in row))
    ce = max(specs[1]["data"].values(), key=len)
    assert sorted(ce["value"]) == pytest.approx(sorted(v for row in last["ce"] for v in row))


def test_classroom_try_it_adapts_on_the_worker(studio):
    client, runs = studio
    at = page("classroom")
    at.selectbox(key="try_run").set_value(runs["ce1"])
    at.run()
    at.button(key="try_go").click()
    at.run()
    no_exceptions(at)
    job_id = at.session_state["try_job"][0]
    job = wait_for(lambda: (j := client.job(job_id))["status"] in ("succeeded", "failed") and j, 120, interval=0.5,
                   what="episode job")
    assert job["status"] == "succeeded", job.get("error")
    at.run()
    shown = " ".join(m.value for m in at.markdown)
    assert all(f"→ **{p['prediction']}**" in shown for p in job["result"]["predictions"])
    assert any("Accuracy on your query images" in s.value for s in at.success)
