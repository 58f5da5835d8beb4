"""Deployment settings, read once from the environment (one place for every variable)."""
from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass(frozen=True)
class Settings:
    redis_url: str = DEFAULT_REDIS_URL
    prefix: str = "lamanas"
    artifacts_dir: str = "artifacts"
    data_root: str | None = None          # None: the model's own search (LAMANAS_DATA, shared/...)
    token: str | None = None              # when set, submit/cancel/resume/delete need it
    lease_seconds: float = 60.0           # a running run's lease; renewed each meta-epoch and heartbeat
    heartbeat_seconds: float = 5.0        # worker heartbeat, lease renewal and reaper period
    stream_maxlen: int = 100_000          # cap of each run's progress stream (>= max meta_epochs)
    landscape_maxlen: int = 500           # cap of each run's landscape stream
    job_ttl_seconds: int = 7 * 24 * 3600  # evaluate/episode job records expire

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        env = dict(
            redis_url=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
            artifacts_dir=os.environ.get("LAMANAS_ARTIFACTS", "artifacts"),
            data_root=os.environ.get("LAMANAS_DATA") or None,
            token=os.environ.get("LAMANAS_TOKEN") or None,
            lease_seconds=_float("LAMANAS_LEASE_SECONDS", 60.0),
            heartbeat_seconds=_float("LAMANAS_HEARTBEAT_SECONDS", 5.0),
            stream_maxlen=_int("LAMANAS_STREAM_MAXLEN", 100_000),
            landscape_maxlen=_int("LAMANAS_LANDSCAPE_MAXLEN", 500),
        )
        env.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**env)
