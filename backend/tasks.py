"""The Celery tasks, registered on a worker's app with that worker's context."""
from __future__ import annotations

from celery import Celery

from . import jobs, runner
from .celery_app import EPISODE_TASK, EVALUATE_TASK, TRAIN_TASK
from .context import WorkerContext


def register(app: Celery, ctx: WorkerContext) -> None:
    @app.task(name=TRAIN_TASK)
    def train_run(run_id: str, dispatch: str) -> str:
        return runner.execute(ctx, run_id, dispatch)

    @app.task(name=EVALUATE_TASK)
    def evaluate(job_id: str, run_id: str, tasks: int | None = None, part: str = "test",
                 overrides: dict | None = None) -> str:
        return jobs.evaluate_job(ctx, job_id, run_id, tasks, part, overrides)

    @app.task(name=EPISODE_TASK)
    def episode(job_id: str, run_id: str, support: dict, query: list, labels: list | None = None) -> str:
        return jobs.episode_job(ctx, job_id, run_id, support, query, labels)
