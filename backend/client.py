"""StudioClient: the one API the web app and the CLI use to talk to the studio.

Everything goes through Redis (the run store and the Celery broker); nothing here imports
torch. Configs are validated with model.config before anything is enqueued.
"""
from __future__ import annotations

import hmac
import re
import shutil
import time
from pathlib import Path

import redis

from model.config import ConfigError, build_config, eval_config
from model.presets import PRESETS

from .celery_app import (EPISODE_TASK, EVALUATE_TASK, enqueue_job, enqueue_run, job_queue,
                         make_app)
from .errors import AuthError, InvalidState, LimitError, NotFound
from .jobs import check_label, encode_images
from .limits import Limits
from .settings import Settings
from .store import RunStore, new_dispatch, new_id

ARTIFACTS = ("config.json", "metrics.jsonl", "genotype.json", "genotype.svg", "genotype_reduce.svg",
             "checkpoint.pt", "summary.json", "run.json", "landscapes.jsonl", "evaluation.json")
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
RUN_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]{0,80}")


class StudioClient:
    def __init__(self, redis_url: str | None = None, prefix: str = "lamanas", artifacts_dir: str | None = None):
        self.settings = Settings.from_env(redis_url=redis_url, prefix=prefix, artifacts_dir=artifacts_dir)
        self.store = RunStore.from_settings(self.settings)
        self.limits = Limits.from_env()
        self._app = None

    @property
    def app(self):
        if self._app is None:
            self._app = make_app(self.settings)
        return self._app

    # ---- health --------------------------------------------------------------------------
    def ping(self) -> bool:
        try:
            return bool(self.store.r.ping())
        except redis.RedisError:
            return False

    def workers(self) -> list[dict]:
        """Alive workers: name, host, device, queues, current_run, last_seen."""
        return self.store.workers()

    def status(self) -> dict:
        """{"redis": bool, "workers": [...], "error": str|None}; never raises."""
        try:
            self.store.r.ping()
            return {"redis": True, "workers": self.workers(), "error": None}
        except Exception as e:
            return {"redis": False, "workers": [], "error": f"{type(e).__name__}: {e}"}

    # ---- configs -------------------------------------------------------------------------
    def presets(self) -> dict[str, dict]:
        """{name: {"description", "config"}} with each preset's full config."""
        return {name: {"description": p["description"], "config": build_config(name).to_dict()}
                for name, p in PRESETS.items()}

    def validate(self, preset: str, overrides: dict | None = None) -> dict[str, str]:
        """{} when the run could be submitted, else {field: message} (config and server limits)."""
        try:
            cfg = build_config(preset, overrides or {})
        except ConfigError as e:
            return e.errors
        return self.limits.config_errors(cfg.to_dict())

    # ---- runs ----------------------------------------------------------------------------
    def submit(self, preset: str, overrides: dict | None = None, name: str = "", submitter: str = "",
               group: str | None = None, token: str | None = None) -> str:
        """Validate and enqueue a run; its id. Raises ConfigError, LimitError or AuthError."""
        self._authorize(token)
        cfg = build_config(preset, overrides or {})
        config = cfg.to_dict()
        self.limits.check(config, self._queued_by(submitter) if self.limits.max_queued_per_submitter else 0)
        run_id = new_id()
        record = {
            "id": run_id, "name": name or run_id, "preset": preset, "overrides": overrides or {},
            "group": group, "submitter": submitter, "status": "queued", "config": config,
            "created": time.time(), "started": None, "finished": None, "worker": None, "host": None,
            "device": None, "attempts": 0, "error": None, "traceback": None, "epoch": 0,
            "meta_epochs": cfg.meta_epochs, "checkpoint_epoch": 0, "summary": None, "dispatch": new_dispatch(),
        }
        self.store.create(record)
        enqueue_run(self.app, record)
        return run_id

    def list_runs(self) -> list[dict]:
        """Run records, newest first."""
        return self.store.list()

    def get(self, run_id: str) -> dict | None:
        return self.store.get(run_id)

    def progress(self, run_id: str, after_epoch: int = 0) -> list[dict]:
        """Metrics rows (the metrics.jsonl schema) of epochs > after_epoch, in epoch order."""
        return self.store.progress(run_id, after_epoch)

    def landscapes(self, run_id: str) -> list[dict]:
        return self.store.landscapes(run_id)

    def summary(self, run_id: str) -> dict | None:
        rec = self.get(run_id)
        return rec.get("summary") if rec else None

    def cancel(self, run_id: str, token: str | None = None) -> None:
        """A queued run is cancelled at once; a running one within one meta-epoch."""
        self._authorize(token)
        self._require(run_id)
        self.store.request_cancel(run_id)  # seen by a running attempt (and by a racing claim)

        def fn(rec):
            if rec is None or rec["status"] != "queued":
                return None
            return {**rec, "status": "cancelled", "finished": time.time()}
        self.store.update(run_id, fn)

    def resume(self, run_id: str, token: str | None = None) -> None:
        """Re-enqueue a failed or cancelled run; it continues from its last checkpoint."""
        self._authorize(token)
        rec = self._require(run_id)
        if rec["status"] not in ("failed", "cancelled"):
            raise InvalidState(f"run {run_id} is {rec['status']}; only failed or cancelled runs can be resumed")

        def fn(rec):
            if rec is None or rec["status"] not in ("failed", "cancelled"):
                return None
            return {**rec, "status": "queued", "dispatch": new_dispatch(), "finished": None, "error": None,
                    "traceback": None}
        new = self.store.update(run_id, fn, also=lambda p: p.delete(self.store.k.cancel(run_id)))
        if new is None:
            raise InvalidState(f"run {run_id} changed state meanwhile")
        enqueue_run(self.app, new)

    def delete(self, run_id: str, token: str | None = None) -> None:
        """Remove the run's record, progress and artifacts (a running attempt is stopped)."""
        self._authorize(token)
        self._require(run_id)
        self.store.delete(run_id)
        shutil.rmtree(self._run_dir(run_id), ignore_errors=True)

    # ---- worker jobs ---------------------------------------------------------------------
    def request_evaluate(self, run_id: str, tasks: int | None = None, part: str = "test",
                         overrides: dict | None = None) -> str:
        """Re-run the run's meta-test on `part` (test, or val to choose meta-test settings)
        with meta-test `overrides` (model.config.EVAL_FIELDS); refused here, naming the
        field, when they are not valid for this run."""
        rec = self._require(run_id)
        eval_config(rec["config"], part, overrides, tasks)
        return self._job("evaluate", rec, EVALUATE_TASK, [run_id, tasks, part, overrides or {}])

    def request_episode(self, run_id: str, support: dict[str, list[bytes]], query: list[bytes],
                        query_labels: list[str] | None = None) -> str:
        """Adapt the run to the user's own task (PNG/JPEG bytes); the job's result holds the
        predictions in the order of `query`."""
        rec = self._require(run_id)
        if query_labels is not None and len(query_labels) != len(query):
            raise ValueError("query_labels must have one label per query image")
        encoded = {check_label(label): encode_images(images) for label, images in support.items()}
        labels = [check_label(label) for label in query_labels] if query_labels else None
        return self._job("episode", rec, EPISODE_TASK, [run_id, encoded, encode_images(query), labels])

    def job(self, job_id: str) -> dict:
        """{"status": queued|running|succeeded|failed, "result", "error", ...}."""
        job = self.store.get_job(job_id)
        return job or {"id": job_id, "status": "failed", "result": None, "error": "no such job (expired?)"}

    def _job(self, kind: str, rec: dict, task: str, args: list) -> str:
        job_id = new_id()
        self.store.put_job({"id": job_id, "kind": kind, "run_id": rec["id"], "status": "queued",
                            "result": None, "error": None, "created": time.time()})
        enqueue_job(self.app, task, [job_id, *args], job_queue(rec))
        return job_id

    # ---- artifacts -----------------------------------------------------------------------
    def artifact(self, run_id: str, name: str) -> bytes | None:
        """A file of the run directory (see ARTIFACTS), or None if it does not exist (yet)."""
        if name not in ARTIFACTS:
            raise ValueError(f"unknown artifact {name!r}; one of {', '.join(ARTIFACTS)}")
        path = self._run_dir(run_id) / name
        return path.read_bytes() if path.is_file() else None

    # ---- helpers -------------------------------------------------------------------------
    def _run_dir(self, run_id: str) -> Path:
        if not RUN_ID.fullmatch(run_id or ""):
            raise NotFound(run_id)
        return Path(self.settings.artifacts_dir) / run_id

    def _require(self, run_id: str) -> dict:
        rec = self.get(run_id) if RUN_ID.fullmatch(run_id or "") else None
        if rec is None:
            raise NotFound(run_id)
        return rec

    def _queued_by(self, submitter: str) -> int:
        return sum(1 for r in self.list_runs() if r["status"] == "queued" and r.get("submitter") == submitter)

    def _authorize(self, token: str | None) -> None:
        expected = self.settings.token
        if expected and not hmac.compare_digest((token or "").encode(), expected.encode()):
            raise AuthError("this action needs the studio's access token")


__all__ = ["StudioClient", "ConfigError", "LimitError", "AuthError", "NotFound", "InvalidState", "STATUSES"]
