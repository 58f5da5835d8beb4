"""One attempt of a run on a worker: claim it, train with events streamed to Redis, finish.

The claim takes a lease (renewed every meta-epoch, every evaluation chunk and by the
worker's heartbeat); the progress writes are fenced by it, so an attempt whose lease was
reaped can no longer touch the run. Every attempt after the first resumes from the
checkpoint, and the progress stream is first trimmed to the checkpoint's epoch.
"""
from __future__ import annotations

import logging
import shutil
import time
import traceback

import redis

from model.config import build_config

from .context import WorkerContext
from .reaper import requeue_expired
from .svg import render_genotype_svg

log = logging.getLogger(__name__)


def _owner_guard(owner: str, changes: dict):
    """An update applied only while `owner` still holds the run."""
    def fn(rec):
        if rec is None or rec.get("owner") != owner or rec["status"] != "running":
            return None
        return {**rec, **changes}
    return fn


class EventSink:
    """`on_event` for model.train: progress, landscapes and record fields into Redis."""

    def __init__(self, ctx: WorkerContext, run_id: str, owner: str):
        self.ctx, self.run_id, self.owner = ctx, run_id, owner
        self.store = ctx.store

    def _set(self, **changes):
        self.store.update(self.run_id, _owner_guard(self.owner, changes))

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "start":
            self.store.trim_progress(self.run_id, self.owner, event["start_epoch"] - 1)
            self._set(device=event.get("device", "").split(":")[0] or None, num_params=event.get("num_params"),
                      epoch=event["start_epoch"] - 1)
        elif kind == "epoch":
            row = event["row"]
            try:
                self.store.add_progress(self.run_id, self.owner, row)
            except redis.ResponseError as e:  # epoch already in the stream: never duplicate it
                log.warning("run %s: epoch %s rejected by the stream: %s", self.run_id, row.get("epoch"), e)
            self.store.renew_lease(self.run_id, self.owner, self.ctx.settings.lease_seconds)
            self._set(epoch=row["epoch"])
        elif kind == "checkpoint":
            self._set(checkpoint_epoch=event["epoch"])
        elif kind == "landscape":
            self.store.add_landscape(self.run_id, self.owner, event["snapshot"])
        elif kind == "evaluation":
            self._set(evaluation={"done": event["done"], "total": event["total"]})
        elif kind == "done":
            self._set(summary=event["summary"])


def claim(ctx: WorkerContext, run_id: str, dispatch: str) -> dict | None:
    """queued -> running for this dispatch, with a lease; None when the message is stale
    (cancelled, deleted, already claimed or superseded by a re-enqueue)."""
    owner = f"{ctx.name}/{dispatch}"
    now = time.time()

    def fn(rec):
        if rec is None or rec["status"] != "queued" or rec.get("dispatch") != dispatch:
            return None
        device = rec["config"]["device"] if rec["config"]["device"] != "auto" else (rec.get("device") or ctx.device)
        return {**rec, "status": "running", "owner": owner, "worker": ctx.name, "host": ctx.host, "device": device,
                "attempts": rec.get("attempts", 0) + 1, "started": rec.get("started") or now,
                "attempt_started": now, "finished": None, "error": None, "traceback": None}

    def also(p):
        p.set(ctx.store.k.lease(run_id), owner, px=int(ctx.settings.lease_seconds * 1000))
        p.sadd(ctx.store.k.leased, run_id)
    return ctx.store.update(run_id, fn, also)


def finish(ctx: WorkerContext, run_id: str, owner: str, status: str, **fields) -> bool:
    """running -> a final status, releasing the lease; False when the run was lost meanwhile."""
    store = ctx.store

    def also(p):
        p.delete(store.k.lease(run_id), store.k.cancel(run_id))
        p.srem(store.k.leased, run_id)
    changes = {"status": status, "finished": time.time(), "owner": None, **fields}
    done = store.update(run_id, _owner_guard(owner, changes), also) is not None
    if not done and store.get(run_id) is None and store.lease_owner(run_id) == owner:
        # deleted while running: remove what this attempt wrote after the delete
        with store.r.pipeline() as p:
            also(p)
            p.delete(store.k.progress(run_id), store.k.landscape(run_id))
            p.execute()
        shutil.rmtree(ctx.run_dir(run_id), ignore_errors=True)
    return done


def hand_back(ctx: WorkerContext, run_id: str, owner: str) -> str:
    """Warm shutdown: give up the lease and re-enqueue now, instead of after it expires."""
    if ctx.store.release_lease(run_id, owner):
        rec = requeue_expired(ctx.store, run_id)
        if rec is not None:
            ctx.enqueue(rec)
            return "handed back"
    return "lost"


def execute(ctx: WorkerContext, run_id: str, dispatch: str, train_fn=None, cancelled=None) -> str:
    """The training task's body. Returns the outcome (for logs and tests)."""
    if train_fn is None:
        from model.train import Cancelled, train
        train_fn, cancelled = train, Cancelled
    rec = claim(ctx, run_id, dispatch)
    if rec is None:
        return "skipped"
    owner = rec["owner"]
    ctx.current = (run_id, owner)
    store, lease = ctx.store, ctx.settings.lease_seconds
    try:
        config = {**rec["config"], "device": rec["device"]}
        cfg = build_config(None, config)
        ctx.limits.check(config)  # again on the worker: the caps may have changed since submit
        run_dir = ctx.run_dir(run_id)

        def should_cancel() -> bool:
            return ctx.stopping or store.cancel_requested(run_id) or not store.renew_lease(run_id, owner, lease)
        summary = train_fn(cfg, run_dir, resume=rec["attempts"] > 1, data_root=ctx.settings.data_root,
                           on_event=EventSink(ctx, run_id, owner), should_cancel=should_cancel)
        render_genotype_svg(run_dir)
        return "succeeded" if finish(ctx, run_id, owner, "succeeded", summary=summary) else "lost"
    except Exception as e:
        if cancelled is not None and isinstance(e, cancelled):
            if store.cancel_requested(run_id):
                return "cancelled" if finish(ctx, run_id, owner, "cancelled") else "lost"
            if ctx.stopping:
                return hand_back(ctx, run_id, owner)
            return "lost"  # the lease was reaped: another attempt owns the run now
        log.exception("run %s failed", run_id)
        finish(ctx, run_id, owner, "failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        return "failed"
    finally:
        ctx.current = None
