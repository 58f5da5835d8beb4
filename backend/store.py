"""The run store: every key the studio keeps in Redis, behind small methods.

Keys, all under `<prefix>:` (values are JSON with `schema_version`; nothing is pickled):
  run:<id>         the run record
  runs             ZSET run id -> created time (the run list)
  progress:<id>    STREAM of metrics rows, entry id "<epoch>-0" (a re-sent epoch is rejected), MAXLEN-capped
  landscape:<id>   STREAM of loss-landscape snapshots, MAXLEN-capped
  cancel:<id>      cooperative cancel flag
  lease:<id>       owner token of the attempt running the run; expires unless renewed
  leased           SET of run ids whose lease the reaper watches
  job:<id>         evaluate/episode job record (expires)
  worker:<name>    worker heartbeat (expires)
  workers          ZSET worker name -> last heartbeat
Celery's own broker keys live under `<prefix>:broker:` (see celery_app.py).
"""
from __future__ import annotations

import json
import secrets
import time
from typing import Callable

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

SCHEMA_VERSION = 1

# Fenced writes: only the attempt that holds the lease may add progress or trim it.
_XADD_FENCED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], ARGV[3], ARGV[4], ARGV[5])
return 1
"""
_TRIM_FENCED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local extra = redis.call('XRANGE', KEYS[2], ARGV[2] .. '-0', '+')
for _, e in ipairs(extra) do redis.call('XDEL', KEYS[2], e[1]) end
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #top == 0 then redis.call('DEL', KEYS[2]) else redis.call('XSETID', KEYS[2], top[1][1]) end
return #extra
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


def dumps(value: dict) -> str:
    return json.dumps({"schema_version": SCHEMA_VERSION, **value}, sort_keys=True)


def loads(raw: str | None) -> dict | None:
    return None if raw is None else json.loads(raw)


def new_id() -> str:
    """Sortable and readable: 20261128-021530-3fa9c2."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def new_dispatch() -> str:
    """Token of one enqueueing of a run: only the message carrying it may start the run."""
    return secrets.token_hex(8)


class Keys:
    def __init__(self, prefix: str):
        self.p = prefix

    def run(self, i): return f"{self.p}:run:{i}"
    def progress(self, i): return f"{self.p}:progress:{i}"
    def landscape(self, i): return f"{self.p}:landscape:{i}"
    def cancel(self, i): return f"{self.p}:cancel:{i}"
    def lease(self, i): return f"{self.p}:lease:{i}"
    def job(self, i): return f"{self.p}:job:{i}"
    def worker(self, name): return f"{self.p}:worker:{name}"

    @property
    def runs(self): return f"{self.p}:runs"

    @property
    def leased(self): return f"{self.p}:leased"

    @property
    def workers(self): return f"{self.p}:workers"

    @property
    def broker(self): return f"{self.p}:broker:"


def connect(url: str, retries: int = 2) -> redis.Redis:
    """Workers pass more retries (~1 s apart) to ride out a Redis restart mid-run."""
    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=2, socket_timeout=10,
                                health_check_interval=30, retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
                                retry_on_error=[redis.ConnectionError, redis.TimeoutError])


class RunStore:
    def __init__(self, r: redis.Redis, prefix: str = "lamanas", stream_maxlen: int = 100_000,
                 landscape_maxlen: int = 500, job_ttl: int = 7 * 24 * 3600):
        self.r, self.k = r, Keys(prefix)
        self.stream_maxlen, self.landscape_maxlen, self.job_ttl = stream_maxlen, landscape_maxlen, job_ttl
        self._xadd = r.register_script(_XADD_FENCED)
        self._trim = r.register_script(_TRIM_FENCED)
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)

    @classmethod
    def from_settings(cls, s, retries: int = 2) -> "RunStore":
        return cls(connect(s.redis_url, retries), s.prefix, s.stream_maxlen, s.landscape_maxlen, s.job_ttl_seconds)

    # ---- records ---------------------------------------------------------------------
    def create(self, record: dict) -> None:
        with self.r.pipeline() as p:
            p.set(self.k.run(record["id"]), dumps(record))
            p.zadd(self.k.runs, {record["id"]: record["created"]})
            p.execute()

    def get(self, run_id: str) -> dict | None:
        return loads(self.r.get(self.k.run(run_id)))

    def list(self) -> list[dict]:
        ids = self.r.zrevrange(self.k.runs, 0, -1)
        out = []
        for start in range(0, len(ids), 500):
            out += [loads(raw) for raw in self.r.mget([self.k.run(i) for i in ids[start:start + 500]]) if raw]
        return out

    def transact(self, watch: list[str], body: Callable):
        """Optimistic transaction: body(pipe) reads in immediate mode and returns
        (result, queue_fn) where queue_fn(pipe) queues the writes, or (result, None)."""
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(*watch)
                    result, queue = body(pipe)
                    if queue is None:
                        pipe.unwatch()
                        return result
                    pipe.multi()
                    queue(pipe)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue

    def update(self, run_id: str, fn: Callable[[dict | None], dict | None],
               also: Callable | None = None) -> dict | None:
        """Apply fn to the record atomically; fn returns the new record or None (no change).
        `also(pipe)` queues more writes in the same transaction."""
        key = self.k.run(run_id)

        def body(pipe):
            new = fn(loads(pipe.get(key)))
            if new is None:
                return None, None

            def queue(p):
                p.set(key, dumps(new))
                if also:
                    also(p)
            return new, queue
        return self.transact([key], body)

    def delete(self, run_id: str) -> dict | None:
        """Remove the record and its streams; a running attempt sees the cancel flag and stops."""
        rec = self.get(run_id)
        with self.r.pipeline() as p:
            p.delete(self.k.run(run_id), self.k.progress(run_id), self.k.landscape(run_id))
            p.zrem(self.k.runs, run_id)
            p.set(self.k.cancel(run_id), "1", ex=24 * 3600)
            p.execute()
        return rec

    # ---- progress and landscapes ---------------------------------------------------------
    def add_progress(self, run_id: str, owner: str, row: dict) -> bool:
        """Append one metrics row as entry `<epoch>-0`. False when the lease is not `owner`'s;
        redis.ResponseError when that epoch (or a later one) is already there."""
        keys = [self.k.lease(run_id), self.k.progress(run_id)]
        return bool(self._xadd(keys, [owner, self.stream_maxlen, f"{int(row['epoch'])}-0", "row", json.dumps(row)]))

    def trim_progress(self, run_id: str, owner: str, last_epoch: int) -> int:
        """Drop the rows of epochs > last_epoch (a resume re-runs them); -1 when not the owner."""
        return int(self._trim([self.k.lease(run_id), self.k.progress(run_id)], [owner, last_epoch + 1]))

    def progress(self, run_id: str, after_epoch: int = 0) -> list[dict]:
        entries = self.r.xrange(self.k.progress(run_id), f"{int(after_epoch) + 1}-0", "+")
        return [json.loads(fields["row"]) for _, fields in entries]

    def add_landscape(self, run_id: str, owner: str, snapshot: dict) -> bool:
        keys = [self.k.lease(run_id), self.k.landscape(run_id)]
        return bool(self._xadd(keys, [owner, self.landscape_maxlen, "*", "snapshot", json.dumps(snapshot)]))

    def landscapes(self, run_id: str) -> list[dict]:
        return [json.loads(f["snapshot"]) for _, f in self.r.xrange(self.k.landscape(run_id))]

    # ---- cancel flags and leases ---------------------------------------------------------
    def request_cancel(self, run_id: str) -> None:
        self.r.set(self.k.cancel(run_id), "1", ex=7 * 24 * 3600)

    def cancel_requested(self, run_id: str) -> bool:
        return bool(self.r.exists(self.k.cancel(run_id)))

    def renew_lease(self, run_id: str, owner: str, seconds: float) -> bool:
        return bool(self._renew([self.k.lease(run_id)], [owner, int(seconds * 1000)]))

    def release_lease(self, run_id: str, owner: str) -> bool:
        return bool(self._release([self.k.lease(run_id)], [owner]))

    def lease_owner(self, run_id: str) -> str | None:
        return self.r.get(self.k.lease(run_id))

    def leased_ids(self) -> list[str]:
        return sorted(self.r.smembers(self.k.leased))

    # ---- jobs ----------------------------------------------------------------------------
    def put_job(self, job: dict) -> None:
        self.r.set(self.k.job(job["id"]), dumps(job), ex=self.job_ttl)

    def get_job(self, job_id: str) -> dict | None:
        return loads(self.r.get(self.k.job(job_id)))

    def update_job(self, job_id: str, **changes) -> None:
        job = self.get_job(job_id) or {"id": job_id}
        self.put_job({**job, **changes})

    # ---- worker heartbeats ---------------------------------------------------------------
    def heartbeat(self, info: dict, ttl: float) -> None:
        with self.r.pipeline() as p:
            p.set(self.k.worker(info["name"]), dumps(info), px=int(ttl * 1000))
            p.zadd(self.k.workers, {info["name"]: info["last_seen"]})
            p.execute()

    def forget_worker(self, name: str) -> None:
        with self.r.pipeline() as p:
            p.delete(self.k.worker(name))
            p.zrem(self.k.workers, name)
            p.execute()

    def workers(self) -> list[dict]:
        names = self.r.zrange(self.k.workers, 0, -1)
        raws = self.r.mget([self.k.worker(n) for n in names]) if names else []
        stale = [n for n, raw in zip(names, raws) if raw is None]
        if stale:
            self.r.zrem(self.k.workers, *stale)
        return [loads(raw) for raw in raws if raw]
