"""Re-enqueue runs whose lease expired (their worker died, e.g. kill -9).

Every worker runs `reap` periodically. The record transition is a WATCHed transaction over
the record and the lease, so of several reapers exactly one re-enqueues a run; the new
`dispatch` token makes any later redelivery of the dead worker's message a no-op.
"""
from __future__ import annotations

import logging
import time

from .store import RunStore, dumps, loads, new_dispatch

log = logging.getLogger(__name__)


def requeue_expired(store: RunStore, run_id: str) -> dict | None:
    """running with no lease -> queued (new dispatch); the record, or None if nothing to do."""
    run_key, lease_key = store.k.run(run_id), store.k.lease(run_id)

    def body(pipe):
        if pipe.exists(lease_key):
            return None, None
        rec = loads(pipe.get(run_key))
        if rec is None or rec["status"] != "running":
            return None, lambda p: p.srem(store.k.leased, run_id)
        new = {**rec, "status": "queued", "dispatch": new_dispatch(), "owner": None, "worker": None,
               "requeued": time.time()}

        def queue(p):
            p.set(run_key, dumps(new))
            p.srem(store.k.leased, run_id)
        return new, queue
    return store.transact([run_key, lease_key], body)


def reap(store: RunStore, enqueue) -> list[str]:
    """Requeue every expired run; `enqueue(record)` sends its training task again."""
    reaped = []
    for run_id in store.leased_ids():
        if store.lease_owner(run_id) is not None:
            continue
        rec = requeue_expired(store, run_id)
        if rec is not None:
            enqueue(rec)
            log.warning("run %s: lease expired, re-enqueued (attempt %s next)", run_id, rec["attempts"] + 1)
            reaped.append(run_id)
    return reaped
