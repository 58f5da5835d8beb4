"""What a worker process knows about itself; shared by its tasks and its maintenance thread."""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from .celery_app import enqueue_run
from .limits import Limits
from .settings import Settings
from .store import RunStore


@dataclass
class WorkerContext:
    settings: Settings
    store: RunStore
    name: str
    device: str                     # "cuda" or "cpu": what this worker trains on
    queues: list[str]
    host: str = field(default_factory=socket.gethostname)
    limits: Limits = field(default_factory=Limits.from_env)
    app: object = None              # the Celery app (for re-enqueueing reaped runs)
    current: tuple[str, str] | None = None  # (run id, lease owner) of the run in progress
    stopping: bool = False          # warm shutdown asked: hand the run in progress back

    def enqueue(self, record: dict) -> None:
        """Send a run's training task again (no-op without an app, as in unit tests)."""
        if self.app is not None:
            enqueue_run(self.app, record)

    def run_dir(self, run_id: str) -> Path:
        return Path(self.settings.artifacts_dir) / run_id

    def info(self) -> dict:
        return {"name": self.name, "host": self.host, "device": self.device, "queues": self.queues,
                "pid": os.getpid(), "current_run": self.current[0] if self.current else None,
                "last_seen": time.time()}
