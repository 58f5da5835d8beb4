"""End to end in a real browser: Redis, a Celery worker and `streamlit run webapp/app.py`,
driven by Playwright on Debian's Chromium. Screenshots of every page go to
$LAMANAS_SCREENSHOTS (default test-output/screenshots/).

    .venv/bin/python -m pytest tests/test_e2e_browser.py -m browser
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from services import start_redis, start_worker, stop_worker, wait_for, worker_env  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EPOCHS = 12  # meta-epochs of the launched smoke run
SHOTS = Path(os.environ.get("LAMANAS_SCREENSHOTS", REPO / "test-output" / "screenshots"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def stack(data_root):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed")
    from backend.client import StudioClient

    # a private folder: pytest's shared basetemp is pruned by other sessions' pytest runs
    root = Path(tempfile.mkdtemp(prefix="lamanas-e2e-"))
    redis = start_redis(root)
    artifacts = root / "artifacts"
    worker = start_worker(redis.url, artifacts, name="w1", log_dir=root)
    port = free_port()
    env = worker_env(redis.url, artifacts)
    log = open(root / "streamlit.log", "wb")
    web = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "webapp/app.py", "--server.port", str(port),
         "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    client = StudioClient(redis.url, artifacts_dir=str(artifacts))
    try:
        wait_for(lambda: healthy(url), 60, interval=0.5, what="streamlit")
        wait_for(lambda: client.workers(), 60, what="worker")
        yield url, client
    finally:
        web.terminate()
        try:
            web.wait(10)
        except subprocess.TimeoutExpired:
            web.kill()
        stop_worker(worker, timeout=5)
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    ctx.close()


def idle(page) -> None:
    """Wait until Streamlit has drawn the page and finished the current script run."""
    page.get_by_text("System status").wait_for()  # every page starts with the status panel
    for _ in range(2):  # a rerun may start right after the first one ends
        page.wait_for_timeout(300)
        page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=60_000)


def shot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.wait_for_timeout(1000)  # let Vega and Graphviz finish drawing
    page.screenshot(path=str(path), full_page=True)
    return path


def metric_text(page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]', has_text=label).first
    return box.locator('[data-testid="stMetricValue"]').inner_text()


def test_launch_watch_explore_cancel_compare(stack, page):
    url, client = stack
    # a learned-loss run with landscape snapshots, for the Loss landscape page (queued first)
    fnn_id = client.submit("smoke", {"loss": "fnn", "landscape_every": 2, "landscape_grid": 15}, name="e2e fnn")
    # 1. Launch a smoke run from the Launch page
    page.goto(url + "/")  # Launch is the default page
    idle(page)
    sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
    assert "1 worker alive (cpu)" in sidebar, sidebar
    shot(page, "launch")
    page.get_by_role("textbox", name="Run name", exact=True).fill("e2e smoke")
    page.get_by_text("Meta-learning — meta-learner").click()  # open the group's expander
    page.get_by_label("meta_epochs", exact=True).fill(str(EPOCHS))  # long enough to watch it move
    page.get_by_role("button", name="Launch").click()
    page.wait_for_url("**/runs?run=*", timeout=30_000)
    run_id = page.url.split("run=")[1].split("&")[0]
    rec = client.get(run_id)
    assert rec["name"] == "e2e smoke" and rec["config"]["meta_epochs"] == EPOCHS

    # 2. its progress chart appears and updates while it trains (st.fragment, no reload)
    def first_epoch_or_end():
        r = client.get(run_id)
        return r if r["status"] in ("failed", "succeeded", "cancelled") or client.progress(run_id) else None

    rec = wait_for(first_epoch_or_end, 240, interval=0.5, what="the first meta-epoch")
    assert rec["status"] != "failed", rec.get("traceback")
    page.locator('[data-testid="stVegaLiteChart"]').first.wait_for(timeout=30_000)
    seen = set()
    deadline = time.time() + 300
    while time.time() < deadline:
        text = metric_text(page, "Meta-epoch")
        seen.add(text)
        if client.get(run_id)["status"] == "succeeded" and text.startswith(f"{EPOCHS} "):
            break
        page.wait_for_timeout(300)
    assert f"{EPOCHS} / {EPOCHS}" in seen and len(seen) >= 3, seen  # the page moved on its own
    page.wait_for_timeout(2500)  # the fragment's rerun after the status change
    idle(page)
    shot(page, "run")

    # 3. the genotype graph renders as SVG with the run's ops as edge labels
    genotype = json.loads(client.artifact(run_id, "genotype.json"))
    page.goto(f"{url}/genotype?run={run_id}")
    idle(page)
    graphs = page.locator('[data-testid="stGraphVizChart"] svg')
    graphs.nth(1).wait_for()
    for i, cell in enumerate(("normal", "reduce")):
        labels = graphs.nth(i).locator("g.edge text").all_text_contents()
        assert sorted(labels) == sorted(op for op, _ in genotype[cell]), (cell, labels, genotype)
    shot(page, "genotype")

    # 4. cancel a second run from its page
    long_id = client.submit("smoke", {"meta_epochs": 2000}, name="e2e long")
    wait_for(lambda: client.get(long_id)["status"] == "running", 60, what="long run running")
    page.goto(f"{url}/runs?run={long_id}")
    idle(page)
    page.get_by_role("button", name="Cancel").click()
    wait_for(lambda: client.get(long_id)["status"] == "cancelled", 60, what="cancelled")
    page.get_by_text("This run was cancelled").wait_for(timeout=30_000)
    shot(page, "cancelled")

    # 5. the runs table and Compare with the two runs
    page.goto(url + "/runs")
    idle(page)
    page.locator('[data-testid="stDataFrame"]').first.wait_for()
    shot(page, "runs")
    page.goto(url + "/compare")
    idle(page)
    page.get_by_text("Results (Table 1 style)").wait_for()
    page.locator('[data-testid="stGraphVizChart"] svg').nth(1).wait_for()
    shot(page, "compare")
    chosen = page.locator('[data-testid="stMultiSelect"]').first.inner_text()
    assert "e2e smoke" in chosen and "e2e long" in chosen, chosen
    assert page.locator('[data-testid="stGraphVizChart"] svg').count() == 2

    # 6. the other pages render without an exception
    assert client.get(fnn_id)["status"] == "succeeded"
    page.goto(f"{url}/runs?run={fnn_id}")
    idle(page)
    page.get_by_text("Learned loss vs cross-entropy").wait_for()
    shot(page, "run-learned-loss")
    page.goto(f"{url}/landscape?run={fnn_id}")
    idle(page)
    assert page.locator('[data-testid="stVegaLiteChart"]').count() >= 2
    shot(page, "landscape")
    page.goto(f"{url}/classroom")
    idle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.get_by_text("Support set").count() >= 1
    shot(page, "classroom")

