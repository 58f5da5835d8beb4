"""Backend unit tests: a real (throw-away) redis-server, a stand-in for model.train.

The stand-in is only here; the integration tests (test_backend_integration.py) run real
workers on the real training loop.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from backend import celery_app, runner
from backend.client import StudioClient
from backend.context import WorkerContext
from backend.errors import AuthError, InvalidState, LimitError, NotFound
from backend.jobs import encode_images, episode_job, evaluate_job
from backend.limits import Limits
from backend.reaper import reap
from backend.settings import Settings
from model.config import ConfigError
from services import start_redis

PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 16
JPEG = b"\xff\xd8\xff" + b"0" * 16


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_redis(tmp_path_factory.mktemp("redis-unit"), aof=False)
    yield srv
    srv.stop()


@pytest.fixture
def client(server, tmp_path, monkeypatch):
    for var in ("LAMANAS_TOKEN", "LAMANAS_MAX_META_EPOCHS", "LAMANAS_MAX_QUEUED_PER_SUBMITTER"):
        monkeypatch.delenv(var, raising=False)
    redis.Redis.from_url(server.url).flushall()
    return StudioClient(server.url, artifacts_dir=str(tmp_path / "artifacts"))


def queued_messages(c: StudioClient) -> int:
    return sum(c.store.r.llen(f"lamanas:broker:{q}") for q in ("gpu", "cpu", "any"))


def make_ctx(c: StudioClient, name="w1", device="cpu", limits=None) -> WorkerContext:
    settings = Settings.from_env(redis_url=c.settings.redis_url, artifacts_dir=c.settings.artifacts_dir,
                                 lease_seconds=30.0)
    return WorkerContext(settings=settings, store=c.store, name=name, device=device, queues=["cpu", "any"],
                         limits=limits or Limits())


class Cancelled(Exception):
    pass


def fake_train(epochs_done=None, fail=None):
    """A stand-in for model.train.train honouring the events/cancel contract."""
    calls = []

    def train(cfg, run_dir, *, resume, data_root, on_event, should_cancel):
        calls.append({"resume": resume, "device": cfg.device})
        run_dir.mkdir(parents=True, exist_ok=True)
        start = (epochs_done or 0) + 1 if resume else 1
        on_event({"event": "start", "start_epoch": start, "device": cfg.device, "num_params": 10})
        for epoch in range(start, cfg.meta_epochs + 1):
            if fail == epoch:
                raise RuntimeError("boom at %d" % epoch)
            on_event({"event": "epoch", "row": {"epoch": epoch, "train_loss": 1.0 / epoch, "train_accuracy": 0.5}})
            if epoch % cfg.checkpoint_every == 0:
                on_event({"event": "checkpoint", "epoch": epoch})
                on_event({"event": "landscape", "snapshot": {"epoch": epoch, "z": [[0.0]]}})
            if should_cancel():
                raise Cancelled()
        summary = {"test_accuracy": 0.75, "meta_epochs": cfg.meta_epochs}
        on_event({"event": "done", "summary": summary})
        return summary
    train.calls = calls
    return train


def fake_train_acting_at(epoch, action):
    """fake_train that calls action(run_dir) while meta-epoch `epoch` is being reported."""
    inner = fake_train()

    def train(cfg, run_dir, **kw):
        events = kw["on_event"]

        def on_event(e):
            events(e)
            if e["event"] == "epoch" and e["row"]["epoch"] == epoch:
                action(run_dir)
        return inner(cfg, run_dir, **{**kw, "on_event": on_event})
    return train


def last_dispatch(c, run_id):
    return c.get(run_id)["dispatch"]


# ---- submit and validation -------------------------------------------------------------

@pytest.mark.parametrize("overrides, field", [
    ({"n_way": "five"}, "n_way"),            # wrong type
    ({"meta_epochs": 0}, "meta_epochs"),     # out of range
    ({"ops": ["conv_3x3", "warp_9x9"]}, "ops"),  # unknown op
    ({"no_such_field": 1}, "no_such_field"),  # unknown field
    ({"device": "tpu"}, "device"),           # not a choice
    ({"temp_end": 5.0}, "temp_end"),         # cross-field rule
])
def test_invalid_config_is_refused_and_nothing_enqueued(client, overrides, field):
    with pytest.raises(ConfigError) as e:
        client.submit("smoke", overrides)
    assert field in e.value.errors and e.value.errors[field]
    assert client.validate("smoke", overrides).keys() == e.value.errors.keys()
    assert client.list_runs() == [] and queued_messages(client) == 0


def test_unknown_preset_is_refused(client):
    with pytest.raises(ConfigError) as e:
        client.submit("no-such-preset")
    assert "preset" in e.value.errors
    assert client.list_runs() == [] and queued_messages(client) == 0


def test_submit_creates_a_queued_record_and_one_message(client):
    run_id = client.submit("smoke", {"seed": 3}, name="first", submitter="ada", group="g1")
    rec = client.get(run_id)
    assert rec["status"] == "queued" and rec["name"] == "first" and rec["submitter"] == "ada"
    assert rec["config"]["seed"] == 3 and rec["attempts"] == 0 and rec["schema_version"] == 1
    assert client.store.r.llen("lamanas:broker:any") == 1  # device auto -> the `any` queue
    assert [r["id"] for r in client.list_runs()] == [run_id]
    assert all(k.startswith("lamanas:") for k in client.store.r.keys("*"))


def test_presets_have_descriptions_and_full_configs(client):
    presets = client.presets()
    assert presets["smoke"]["description"] and presets["smoke"]["config"]["meta_epochs"] == 4
    assert client.validate("smoke", {}) == {}


def test_limits_refuse_at_submit(client, monkeypatch):
    monkeypatch.setenv("LAMANAS_MAX_META_EPOCHS", "10")
    monkeypatch.setenv("LAMANAS_MAX_QUEUED_PER_SUBMITTER", "1")
    c = StudioClient(client.settings.redis_url, artifacts_dir=client.settings.artifacts_dir)
    with pytest.raises(LimitError) as e:
        c.submit("smoke", {"meta_epochs": 11})
    assert "meta_epochs" in e.value.errors and "at most 10" in e.value.errors["meta_epochs"]
    assert "meta_epochs" in c.validate("smoke", {"meta_epochs": 11})
    c.submit("smoke", submitter="bob")
    with pytest.raises(LimitError) as e:
        c.submit("smoke", submitter="bob")
    assert "submitter" in e.value.errors
    c.submit("smoke", submitter="eve")  # another submitter is not affected


def test_worker_checks_limits_again(client):
    run_id = client.submit("smoke", {"meta_epochs": 4})
    ctx = make_ctx(client, limits=Limits(max_meta_epochs=2))
    assert runner.execute(ctx, run_id, last_dispatch(client, run_id), fake_train(), Cancelled) == "failed"
    assert "meta_epochs" in client.get(run_id)["error"]


def test_token_gates_submit_cancel_delete(client, monkeypatch):
    monkeypatch.setenv("LAMANAS_TOKEN", "s3cret")
    c = StudioClient(client.settings.redis_url, artifacts_dir=client.settings.artifacts_dir)
    with pytest.raises(AuthError):
        c.submit("smoke")
    run_id = c.submit("smoke", token="s3cret")
    for action in (c.cancel, c.delete, c.resume):
        with pytest.raises(AuthError):
            action(run_id, token="wrong")
    c.cancel(run_id, token="s3cret")
    assert c.get(run_id)["status"] == "cancelled"


# ---- the training task with a stand-in train -----------------------------------------------

def test_run_succeeds_with_progress_summary_and_lease_released(client):
    run_id = client.submit("smoke", {"meta_epochs": 4, "checkpoint_every": 2})
    ctx = make_ctx(client)
    train = fake_train()
    assert runner.execute(ctx, run_id, last_dispatch(client, run_id), train, Cancelled) == "succeeded"
    rec = client.get(run_id)
    assert rec["status"] == "succeeded" and rec["attempts"] == 1 and rec["worker"] == "w1"
    assert rec["device"] == "cpu" and train.calls == [{"resume": False, "device": "cpu"}]
    assert rec["epoch"] == 4 and rec["checkpoint_epoch"] == 4 and client.summary(run_id)["test_accuracy"] == 0.75
    assert [r["epoch"] for r in client.progress(run_id)] == [1, 2, 3, 4]
    assert [r["epoch"] for r in client.progress(run_id, after_epoch=2)] == [3, 4]
    assert [s["epoch"] for s in client.landscapes(run_id)] == [2, 4]
    assert client.store.lease_owner(run_id) is None and client.store.leased_ids() == []
    # a redelivered (stale) message does nothing
    assert runner.execute(ctx, run_id, rec["dispatch"], train, Cancelled) == "skipped"


def test_failed_run_keeps_error_and_traceback_then_resumes(client):
    run_id = client.submit("smoke", {"meta_epochs": 4, "checkpoint_every": 2})
    ctx = make_ctx(client)
    assert runner.execute(ctx, run_id, last_dispatch(client, run_id), fake_train(fail=3), Cancelled) == "failed"
    rec = client.get(run_id)
    assert rec["status"] == "failed" and "boom at 3" in rec["error"] and "RuntimeError" in rec["traceback"]
    with pytest.raises(InvalidState):
        client.resume(client.submit("smoke"))  # queued: nothing to resume
    client.resume(run_id)
    rec = client.get(run_id)
    assert rec["status"] == "queued" and rec["error"] is None
    train = fake_train(epochs_done=2)
    assert runner.execute(ctx, run_id, rec["dispatch"], train, Cancelled) == "succeeded"
    assert train.calls[0]["resume"] is True and client.get(run_id)["attempts"] == 2
    assert [r["epoch"] for r in client.progress(run_id)] == [1, 2, 3, 4]


def test_cancel_queued_run_never_starts(client):
    run_id = client.submit("smoke")
    client.cancel(run_id)
    rec = client.get(run_id)
    assert rec["status"] == "cancelled" and rec["started"] is None
    assert runner.execute(make_ctx(client), run_id, rec["dispatch"], fake_train(), Cancelled) == "skipped"
    assert client.get(run_id)["attempts"] == 0


def test_cancel_running_run_stops_after_the_epoch(client):
    run_id = client.submit("smoke", {"meta_epochs": 10})
    ctx = make_ctx(client)
    # the cancel arrives while epoch 3 is reported
    train = fake_train_acting_at(3, lambda run_dir: client.cancel(run_id))
    assert runner.execute(ctx, run_id, last_dispatch(client, run_id), train, Cancelled) == "cancelled"
    assert client.get(run_id)["status"] == "cancelled"
    assert [r["epoch"] for r in client.progress(run_id)] == [1, 2, 3]
    assert not client.store.cancel_requested(run_id)  # the flag is cleared with the lease


def test_stream_rejects_a_resent_epoch_and_non_owners(client):
    run_id = client.submit("smoke")
    ctx = make_ctx(client)
    rec = runner.claim(ctx, run_id, last_dispatch(client, run_id))
    owner = rec["owner"]
    assert client.store.add_progress(run_id, owner, {"epoch": 1})
    with pytest.raises(redis.ResponseError):
        client.store.add_progress(run_id, owner, {"epoch": 1})
    assert not client.store.add_progress(run_id, "someone-else", {"epoch": 2})
    for e in (2, 3, 4):
        client.store.add_progress(run_id, owner, {"epoch": e})
    assert client.store.trim_progress(run_id, owner, 2) == 2
    assert client.store.add_progress(run_id, owner, {"epoch": 3})  # re-run after the trim
    assert [r["epoch"] for r in client.progress(run_id)] == [1, 2, 3]
    assert client.store.trim_progress(run_id, owner, 0) == 3 and client.progress(run_id) == []
    assert client.store.add_progress(run_id, owner, {"epoch": 1})


def test_reaper_requeues_an_expired_lease_once(client):
    run_id = client.submit("smoke", {"meta_epochs": 4, "checkpoint_every": 2})
    ctx = make_ctx(client)
    old = runner.claim(ctx, run_id, last_dispatch(client, run_id))
    for e in (1, 2, 3):
        client.store.add_progress(run_id, old["owner"], {"epoch": e})
    assert reap(client.store, lambda rec: None) == []          # lease alive: nothing to do
    client.store.r.delete(client.store.k.lease(run_id))          # the worker died: lease expired
    sent = []
    assert reap(client.store, sent.append) == [run_id]
    assert reap(client.store, sent.append) == []                 # exactly once
    rec = client.get(run_id)
    assert rec["status"] == "queued" and rec["dispatch"] != old["dispatch"] and sent == [rec]
    assert celery_app.run_queue(rec) == "cpu"                    # back to the device kind it ran on
    assert runner.execute(ctx, run_id, old["dispatch"], fake_train(), Cancelled) == "skipped"
    train = fake_train(epochs_done=2)
    assert runner.execute(make_ctx(client, "w2"), run_id, rec["dispatch"], train, Cancelled) == "succeeded"
    rec = client.get(run_id)
    assert rec["attempts"] == 2 and rec["worker"] == "w2" and train.calls[0]["resume"]
    assert [r["epoch"] for r in client.progress(run_id)] == [1, 2, 3, 4]


def test_warm_shutdown_hands_the_run_back_at_once(client):
    run_id = client.submit("smoke", {"meta_epochs": 6, "checkpoint_every": 2})
    ctx = make_ctx(client)
    inner = fake_train()

    def train(cfg, run_dir, **kw):
        events = kw["on_event"]

        def on_event(e):
            events(e)
            if e["event"] == "epoch" and e["row"]["epoch"] == 2:
                ctx.stopping = True  # SIGTERM arrived
        return inner(cfg, run_dir, **{**kw, "on_event": on_event})
    old = last_dispatch(client, run_id)
    assert runner.execute(ctx, run_id, old, train, Cancelled) == "handed back"
    rec = client.get(run_id)
    assert rec["status"] == "queued" and rec["dispatch"] != old and rec["attempts"] == 1
    assert client.store.lease_owner(run_id) is None and [r["epoch"] for r in client.progress(run_id)] == [1, 2]


def test_delete_removes_record_streams_and_artifacts(client):
    run_id = client.submit("smoke", {"meta_epochs": 2})
    ctx = make_ctx(client)
    runner.execute(ctx, run_id, last_dispatch(client, run_id), fake_train(), Cancelled)
    (ctx.run_dir(run_id) / "summary.json").write_text("{}")
    assert client.artifact(run_id, "summary.json") == b"{}"
    client.delete(run_id)
    assert client.get(run_id) is None and client.progress(run_id) == [] and client.list_runs() == []
    assert not ctx.run_dir(run_id).exists()
    with pytest.raises(NotFound):
        client.cancel(run_id)


def test_delete_while_running_stops_the_attempt_and_cleans_up(client):
    run_id = client.submit("smoke", {"meta_epochs": 6})
    ctx = make_ctx(client)

    def delete(run_dir):
        (run_dir / "checkpoint.pt").write_bytes(b"x")
        client.delete(run_id)

    train = fake_train_acting_at(2, delete)
    assert runner.execute(ctx, run_id, last_dispatch(client, run_id), train, Cancelled) == "lost"
    assert client.get(run_id) is None and client.progress(run_id) == [] and not ctx.run_dir(run_id).exists()
    assert client.store.lease_owner(run_id) is None and client.store.leased_ids() == []


def test_artifact_names_are_an_allowlist(client):
    with pytest.raises(ValueError):
        client.artifact("x", "../../etc/passwd")
    with pytest.raises(NotFound):
        client.artifact("../x", "summary.json")
    assert client.artifact("20200101-000000-abcdef", "genotype.svg") is None


# ---- routing, jobs, health, config --------------------------------------------------------

def test_queue_routing():
    assert [celery_app.queue_for(d) for d in ("cuda", "cpu", "auto")] == ["gpu", "cpu", "any"]
    rec = {"config": {"device": "auto"}, "device": None}
    assert celery_app.run_queue(rec) == "any"
    assert celery_app.run_queue({**rec, "device": "cuda"}) == "gpu"
    assert celery_app.job_queue({**rec, "device": "cpu"}) == "any"
    assert celery_app.worker_queues("cuda") == ["gpu", "any"]


def test_celery_config_is_json_only_and_crash_safe():
    conf = celery_app.make_app(Settings()).conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] >= 7 * 24 * 3600


def test_jobs_run_on_the_worker_and_keep_query_order(client):
    run_id = client.submit("smoke")
    ctx = make_ctx(client)
    job_id = client.request_episode(run_id, {"a": [PNG], "b": [JPEG]}, [JPEG, PNG], ["b", "a"])
    assert client.job(job_id)["status"] == "queued"
    seen = {}

    def episode(run_dir, support_dir, query_dir):  # answers in folder order, not request order
        seen["support"] = sorted(p.relative_to(support_dir).as_posix() for p in support_dir.rglob("*.*"))
        seen["query"] = sorted(p.relative_to(query_dir).as_posix() for p in query_dir.rglob("*.*"))
        return {"predictions": [{"image": str(query_dir / "a" / "q001.png")}, {"image": str(query_dir / "b" / "q000.jpg")}]}
    support = {"a": encode_images([PNG]), "b": encode_images([JPEG])}
    assert episode_job(ctx, job_id, run_id, support, encode_images([JPEG, PNG]), ["b", "a"], episode) == "succeeded"
    assert seen == {"support": ["a/s000.png", "b/s000.jpg"], "query": ["a/q001.png", "b/q000.jpg"]}
    job = client.job(job_id)
    assert job["status"] == "succeeded" and [p["index"] for p in job["result"]["predictions"]] == [0, 1]
    job_id = client.request_evaluate(run_id, tasks=4)
    assert evaluate_job(ctx, job_id, run_id, 4, evaluate_fn=lambda d, t, r, **kw: 1 / 0) == "failed"
    assert "ZeroDivisionError" in client.job(job_id)["error"]
    job_id = client.request_evaluate(run_id, tasks=4, part="val", overrides={"test_steps": 7})
    seen = {}
    assert evaluate_job(ctx, job_id, run_id, 4, "val", {"test_steps": 7},
                        evaluate_fn=lambda d, t, r, **kw: seen.update(kw, tasks=t) or {"ok": 1}) == "succeeded"
    assert seen == {"tasks": 4, "part": "val", "overrides": {"test_steps": 7}}
    queued = queued_messages(client)
    for kwargs, field in (({"overrides": {"channels": 4}}, "channels"), ({"part": "train"}, "part"),
                          ({"tasks": 0}, "tasks"), ({"overrides": {"test_steps": -1}}, "test_steps")):
        with pytest.raises(ConfigError) as err:   # refused before anything is enqueued
            client.request_evaluate(run_id, **kwargs)
        assert field in err.value.errors
    assert queued_messages(client) == queued
    assert client.job("nope")["status"] == "failed"
    with pytest.raises(ValueError):
        client.request_episode(run_id, {"a": [b"GIF89a"]}, [PNG])
    with pytest.raises(ValueError):
        client.request_episode(run_id, {"../a": [PNG]}, [PNG])


def test_status_never_raises_when_redis_is_down(tmp_path):
    c = StudioClient("redis://127.0.0.1:1/0", artifacts_dir=str(tmp_path))
    st = c.status()
    assert st["redis"] is False and st["workers"] == [] and st["error"]
    assert c.ping() is False


def test_heartbeats_list_alive_workers(client):
    ctx = make_ctx(client, "w9")
    client.store.heartbeat(ctx.info(), ttl=30)
    assert [w["name"] for w in client.workers()] == ["w9"]
    assert client.status()["workers"][0]["device"] == "cpu"
    client.store.r.delete(client.store.k.worker("w9"))  # expired
    assert client.workers() == []


def test_cli_submit_refuses_bad_config_with_the_field(server, tmp_path):
    env = {"REDIS_URL": server.url, "LAMANAS_ARTIFACTS": str(tmp_path), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-m", "backend", "submit", "--preset", "smoke", "--set", "n_way=abc"],
                       capture_output=True, text=True, env=env, cwd=str(Path(__file__).parents[1]))
    assert p.returncode == 2 and "n_way" in p.stderr and p.stdout == ""
