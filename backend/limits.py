"""Caps for shared deployments, checked at submit and again by the worker.

Every cap is an environment variable; 0 (the default) means no cap:
LAMANAS_MAX_META_EPOCHS, LAMANAS_MAX_CHANNELS, LAMANAS_MAX_LAYERS, LAMANAS_MAX_NODES,
LAMANAS_MAX_TEST_TASKS, LAMANAS_MAX_QUEUED_PER_SUBMITTER.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

from .errors import LimitError

# config field -> Limits attribute capping it (supernet size = channels, layers, nodes)
CAPPED_FIELDS = {
    "meta_epochs": "max_meta_epochs",
    "channels": "max_channels",
    "layers": "max_layers",
    "nodes": "max_nodes",
    "test_tasks": "max_test_tasks",
}


@dataclass(frozen=True)
class Limits:
    max_meta_epochs: int = 0
    max_channels: int = 0
    max_layers: int = 0
    max_nodes: int = 0
    max_test_tasks: int = 0
    max_queued_per_submitter: int = 0

    @classmethod
    def from_env(cls) -> "Limits":
        return cls(**{f.name: int(os.environ.get(f"LAMANAS_{f.name.upper()}", 0) or 0) for f in fields(cls)})

    def config_errors(self, config: dict) -> dict[str, str]:
        """{field: message} for every config field over its cap."""
        errors = {}
        for name, attr in CAPPED_FIELDS.items():
            cap = getattr(self, attr)
            if cap and config.get(name, 0) > cap:
                errors[name] = f"this server allows at most {cap} (limit {attr}), got {config[name]}"
        return errors

    def check(self, config: dict, queued_by_submitter: int = 0) -> None:
        """Raise LimitError when the config or the submitter's queue is over a cap."""
        errors = self.config_errors(config)
        cap = self.max_queued_per_submitter
        if cap and queued_by_submitter >= cap:
            errors["submitter"] = f"already {queued_by_submitter} queued runs; this server allows {cap} per submitter"
        if errors:
            raise LimitError(errors)
