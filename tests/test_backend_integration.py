"""Integration: a real redis-server, real `python -m backend worker` processes, the real
training loop on the `smoke` preset. The tests share one Redis and run in file order; at
any time exactly one worker is alive (so a queued run really waits).

    .venv/bin/python -m pytest tests/test_backend_integration.py -m integration
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.client import StudioClient
from model.config import ConfigError
from services import start_redis, start_worker, stop_worker, wait_for

pytestmark = pytest.mark.integration
LONG = {"meta_epochs": 8, "checkpoint_every": 2}  # the kill -9 test's config, and its reference
TERMINAL = ("succeeded", "failed", "cancelled")


class Studio:
    def __init__(self, root: Path):
        self.root = root
        self.artifacts = root / "artifacts"
        self.redis = start_redis(root)
        self.client = StudioClient(self.redis.url, artifacts_dir=str(self.artifacts))
        self.workers: list[subprocess.Popen] = []
        self.runs: dict[str, str] = {}  # what earlier tests leave for later ones

    def start_worker(self, name: str) -> subprocess.Popen:
        proc = start_worker(self.redis.url, self.artifacts, name=name, log_dir=self.root)
        self.workers.append(proc)
        wait_for(lambda: any(w["name"] == name for w in self.client.workers()), 60, what=f"worker {name}")
        return proc

    def wait_status(self, run_id: str, statuses=TERMINAL, timeout: float = 120) -> dict:
        return wait_for(lambda: (r := self.client.get(run_id)) and r["status"] in statuses and r,
                        timeout, what=f"run {run_id} in {statuses}")

    def logs(self) -> str:
        return "\n".join(f"== {w.log_path}\n{Path(w.log_path).read_text()[-4000:]}" for w in self.workers)

    def close(self) -> None:
        for w in self.workers:
            stop_worker(w, timeout=5)
        self.redis.stop()


@pytest.fixture(scope="module")
def studio(tmp_path_factory, data_root):
    s = Studio(tmp_path_factory.mktemp("studio"))
    s.start_worker("w1")
    yield s
    s.close()


def epochs(client, run_id) -> list[int]:
    return [row["epoch"] for row in client.progress(run_id)]


def test_two_runs_train_with_progress_per_epoch(studio):
    c = studio.client
    ref = c.submit("smoke", LONG, name="reference")
    short = c.submit("smoke", name="short", submitter="ada")
    seen = set()  # progress lengths observed while the reference runs
    while (rec := c.get(ref))["status"] not in TERMINAL:
        if rec["status"] == "running":
            seen.add(len(c.progress(ref)))
        time.sleep(0.05)
    assert rec["status"] == "succeeded", rec.get("traceback") or studio.logs()
    assert len(seen - {0, LONG["meta_epochs"]}) >= 2, f"progress did not arrive per meta-epoch: {seen}"
    other = studio.wait_status(short)
    assert other["status"] == "succeeded", other.get("traceback")
    assert rec["attempts"] == other["attempts"] == 1 and rec["worker"] == "w1" and rec["device"] == "cpu"
    assert epochs(c, ref) == list(range(1, 9)) and epochs(c, short) == [1, 2, 3, 4]
    row = c.progress(ref)[-1]
    assert {"epoch", "train_loss", "train_accuracy", "seconds", "alpha", "genotype"} <= row.keys()
    for run_id in (ref, short):
        assert c.summary(run_id)["test_accuracy"] is not None
        assert (studio.artifacts / run_id / "checkpoint.pt").is_file()
        assert c.artifact(run_id, "genotype.svg").lstrip().startswith((b"<?xml", b"<svg"))
    assert c.artifact(ref, "config.json") != c.artifact(short, "config.json")
    assert {r["id"] for r in c.list_runs()} == {ref, short}
    studio.runs["reference"] = ref


def test_kill_9_mid_run_resumes_exactly(studio):
    c = studio.client
    run_id = c.submit("smoke", LONG, name="killed")
    wait_for(lambda: len(c.progress(run_id)) >= 3, 120, 0.05, "three progress entries")
    rec = c.get(run_id)
    assert rec["summary"] is None and rec["status"] == "running"
    victim = next(w for w in studio.workers if w.poll() is None)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    studio.workers.remove(victim)
    studio.start_worker("w2")
    done = studio.wait_status(run_id, timeout=150)
    assert done["status"] == "succeeded", done.get("traceback") or studio.logs()
    assert done["attempts"] == 2 and done["worker"] == "w2"
    assert epochs(c, run_id) == list(range(1, 9))  # no gap, no duplicate
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    ref = studio.runs["reference"]
    assert strip(c.progress(run_id)) == strip(c.progress(ref))
    for key in ("test_accuracy", "test_ci95", "train_accuracy"):
        assert done["summary"][key] == c.summary(ref)[key]


def test_cancel_running_and_queued_then_worker_takes_the_next_run(studio):
    c = studio.client
    long_id = c.submit("smoke", {"meta_epochs": 400}, name="long")
    queued_id = c.submit("smoke", name="never")
    wait_for(lambda: len(c.progress(long_id)) >= 2, 120, 0.05, "two progress entries")
    c.cancel(queued_id)
    assert c.get(queued_id)["status"] == "cancelled"  # at once
    epoch_seconds = max(r["seconds"] for r in c.progress(long_id))
    t0 = time.time()
    c.cancel(long_id)
    rec = studio.wait_status(long_id, timeout=60)
    waited = time.time() - t0
    assert rec["status"] == "cancelled", rec.get("traceback")
    assert waited < 2 * epoch_seconds + 3, (waited, epoch_seconds)  # within one meta-epoch (+ slack)
    n = len(c.progress(long_id))
    assert epochs(c, long_id) == list(range(1, n + 1))
    nxt = c.submit("smoke", name="next")
    assert studio.wait_status(nxt)["status"] == "succeeded"
    assert len(c.progress(long_id)) == n  # no entry after `cancelled`
    never = c.get(queued_id)
    assert never["started"] is None and never["attempts"] == 0 and not (studio.artifacts / queued_id).exists()
    studio.runs["next"] = nxt


def test_invalid_configs_never_reach_a_worker(studio):
    c = studio.client
    before = c.list_runs()
    cases = [("smoke", {"n_way": "x"}, "n_way"), ("smoke", {"meta_epochs": -1}, "meta_epochs"),
             ("nope", {}, "preset"), ("smoke", {"ops": ["conv_3x3", "laser"]}, "ops")]
    for preset, overrides, field in cases:
        with pytest.raises(ConfigError) as e:
            c.submit(preset, overrides)
        assert field in e.value.errors
    cli = subprocess.run([sys.executable, "-m", "backend", "submit", "--preset", "smoke", "--set", "ops=[\"laser\"]"],
                         capture_output=True, text=True, cwd=Path(__file__).parents[1],
                         env={**os.environ, "REDIS_URL": studio.redis.url})
    assert cli.returncode == 2 and "ops" in cli.stderr
    assert c.list_runs() == before
    assert sum(c.store.r.llen(f"lamanas:broker:{q}") for q in ("gpu", "cpu", "any")) == 0


def test_redis_restart_keeps_runs_and_a_running_run_finishes(studio):
    c = studio.client
    ref = studio.runs["reference"]
    rows = c.progress(ref)
    run_id = c.submit("smoke", name="through a restart")
    wait_for(lambda: len(c.progress(run_id)) >= 1, 120, 0.05, "a progress entry")
    before = [{k: v for k, v in r.items() if k not in ("epoch", "status", "checkpoint_epoch", "evaluation")}
              for r in c.list_runs()]
    studio.redis.restart()  # AOF on, `--save ''`: no RDB snapshot to fall back on
    after = [{k: v for k, v in r.items() if k not in ("epoch", "status", "checkpoint_epoch", "evaluation")}
             for r in c.list_runs()]
    assert after == before and c.progress(ref) == rows
    rec = studio.wait_status(run_id)
    assert rec["status"] == "succeeded" and rec["attempts"] == 1, rec.get("traceback")
    assert epochs(c, run_id) == [1, 2, 3, 4]
    job = c.request_evaluate(ref, tasks=4)  # jobs run on the worker too
    result = wait_for(lambda: c.job(job)["status"] in ("succeeded", "failed") and c.job(job), 90, 0.2, "evaluate job")
    assert result["status"] == "succeeded", result.get("error")
    assert result["result"]["tasks"] == 4
    job = c.request_evaluate(ref, tasks=3, part="val", overrides={"test_steps": 1})   # through Celery as JSON
    result = wait_for(lambda: c.job(job)["status"] in ("succeeded", "failed") and c.job(job), 90, 0.2, "val job")
    assert result["status"] == "succeeded", result.get("error")
    assert result["result"]["part"] == "val" and result["result"]["overrides"] == {"test_steps": 1}
    assert result["result"]["tasks"] == 3


def test_cli_status_prints_json(studio):
    ref = studio.runs["reference"]
    out = subprocess.run([sys.executable, "-m", "backend", "status", ref], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1], env={**os.environ, "REDIS_URL": studio.redis.url}, check=True)
    data = json.loads(out.stdout)
    assert data["status"] == "succeeded" and [r["epoch"] for r in data["progress"]] == list(range(1, 9))


def test_episode_job_predicts_the_users_images(studio, data_root):
    c = studio.client
    chars = sorted((Path(data_root) / "omniglot-py" / "images_evaluation" / "Angelic").iterdir())[:3]
    files = {ch.name: sorted(ch.glob("*.png"))[:2] for ch in chars}
    support = {name: [fs[0].read_bytes()] for name, fs in files.items()}
    query = [fs[1].read_bytes() for fs in files.values()]
    job = c.request_episode(studio.runs["reference"], support, query, list(files))
    result = wait_for(lambda: c.job(job)["status"] in ("succeeded", "failed") and c.job(job), 90, 0.2, "episode job")
    assert result["status"] == "succeeded", result.get("error")
    preds = result["result"]["predictions"]
    assert [p["index"] for p in preds] == [0, 1, 2] and [p["label"] for p in preds] == list(files)
    assert all(p["prediction"] in files for p in preds) and 0 <= result["result"]["accuracy"] <= 1
