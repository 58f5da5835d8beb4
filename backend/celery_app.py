"""The Celery app: Redis as broker and result backend, JSON only, one task at a time.

Routing: a run whose config says `device: cuda` goes to the `gpu` queue, `cpu` to `cpu`,
`auto` to `any`; GPU workers consume gpu+any, CPU workers cpu+any. Once a run has started,
its record holds the device it got, so a resumed or reaped run goes back to that kind.
"""
from __future__ import annotations

from celery import Celery

from .settings import Settings
from .store import Keys

TRAIN_TASK = "lamanas.train_run"
EVALUATE_TASK = "lamanas.evaluate"
EPISODE_TASK = "lamanas.episode"

QUEUE_OF_DEVICE = {"cuda": "gpu", "cpu": "cpu", "auto": "any"}
# Longer than any run: a solo worker killed with -9 leaves its message unacknowledged; the
# lease reaper (reaper.py) re-enqueues the run long before the broker would redeliver it.
VISIBILITY_TIMEOUT = 30 * 24 * 3600


def queue_for(device: str) -> str:
    return QUEUE_OF_DEVICE[device]


def run_queue(record: dict) -> str:
    """The device a run already ran on wins over its config (a resume stays on that kind)."""
    return queue_for(record.get("device") or record["config"]["device"])


def job_queue(record: dict) -> str:
    """Evaluate/episode jobs of a CUDA run need a GPU worker; any worker serves the others."""
    return "gpu" if (record.get("device") or record["config"]["device"]) == "cuda" else "any"


def worker_queues(device: str) -> list[str]:
    return [queue_for(device), "any"]


def make_app(settings: Settings) -> Celery:
    app = Celery("lamanas", broker=settings.redis_url, backend=settings.redis_url)
    prefix = {"global_keyprefix": Keys(settings.prefix).broker}
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # runs and jobs report through the run store
        task_default_queue="any",
        task_create_missing_queues=True,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT, **prefix},
        result_backend_transport_options=prefix,
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        result_expires=24 * 3600,
    )
    return app


def enqueue_run(app: Celery, record: dict) -> None:
    app.send_task(TRAIN_TASK, args=[record["id"], record["dispatch"]], queue=run_queue(record))


def enqueue_job(app: Celery, task: str, args: list, queue: str) -> None:
    app.send_task(task, args=args, queue=queue)
