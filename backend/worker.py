"""`python -m backend worker`: a Celery worker (solo pool) plus a maintenance thread.

The maintenance thread beats every `heartbeat_seconds` (at most a third of the lease):
it publishes the worker's heartbeat, renews the lease of the run in progress, and reaps
runs whose lease expired. A solo worker runs one task at a time in its main thread; we do
not use prefork because a forked child hangs once its parent has run torch ops.
"""
from __future__ import annotations

import logging
import os
import socket
import threading

from celery import signals

from .celery_app import make_app, worker_queues
from .context import WorkerContext
from .reaper import reap
from .settings import Settings
from .store import RunStore
from .tasks import register

log = logging.getLogger(__name__)


def detect_device(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def maintenance(ctx: WorkerContext, stop: threading.Event) -> None:
    s = ctx.settings
    period = min(s.heartbeat_seconds, s.lease_seconds / 3)
    while not stop.is_set():
        try:
            ctx.store.heartbeat(ctx.info(), ttl=3 * period)
            if ctx.current:
                ctx.store.renew_lease(*ctx.current, s.lease_seconds)
            reap(ctx.store, ctx.enqueue)
        except Exception as e:  # Redis restarting: keep beating once it is back
            log.warning("maintenance: %s: %s", type(e).__name__, e)
        stop.wait(period)


def main(device: str = "auto", queues: list[str] | None = None, name: str | None = None,
         loglevel: str = "INFO") -> None:
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    device = detect_device(device)
    host = socket.gethostname()
    name = name or f"{device}-{os.getpid()}@{host}"
    app = make_app(settings)
    ctx = WorkerContext(settings=settings, store=RunStore.from_settings(settings, retries=30), name=name, device=device,
                        queues=queues or worker_queues(device), host=host, app=app)
    register(app, ctx)

    def on_shutdown(sig=None, how=None, **_):  # warm shutdown (SIGTERM/Ctrl-C): hand the run back
        ctx.stopping = True
    signals.worker_shutting_down.connect(on_shutdown, weak=False)
    stop = threading.Event()
    thread = threading.Thread(target=maintenance, args=(ctx, stop), name="lamanas-maintenance", daemon=True)
    thread.start()
    try:
        app.worker_main(["worker", "--pool=solo", "--concurrency=1", f"--queues={','.join(ctx.queues)}",
                         f"--hostname={name if '@' in name else name + '@' + host}", f"--loglevel={loglevel}",
                         "--without-gossip", "--without-mingle"])
    finally:
        stop.set()
        ctx.store.forget_worker(ctx.name)
