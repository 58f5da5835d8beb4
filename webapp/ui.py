"""Streamlit helpers shared by the pages: the client, the system status, run pickers and
the run data a page shows (from Redis through the client, or the shipped demo run)."""
from __future__ import annotations

import json
import os

import streamlit as st

from webapp.data import DEMO_ID, demo_run

PAGES = {  # page file (relative to webapp/app.py) -> title; app.py builds st.navigation from it
    "views/launch.py": "Launch",
    "views/runs.py": "Runs",
    "views/genotype.py": "Genotype explorer",
    "views/compare.py": "Compare",
    "views/landscape.py": "Loss landscape",
    "views/classroom.py": "Classroom",
}
ACTIVE = ("queued", "running")


@st.cache_resource(show_spinner=False)
def _studio_client(redis_url: str | None, artifacts_dir: str | None):
    from backend.client import StudioClient

    return StudioClient(redis_url=redis_url, artifacts_dir=artifacts_dir)


def client():
    """The StudioClient of this app (tests may put their own in st.session_state.client)."""
    if "client" in st.session_state:
        return st.session_state["client"]
    return _studio_client(os.environ.get("REDIS_URL"), os.environ.get("LAMANAS_ARTIFACTS"))


def token() -> str | None:
    return st.session_state.get("token") or None


def system_status() -> dict:
    """The status that the sidebar panel read in this script run (read it if none yet)."""
    if st.session_state.get("_status") is None:
        return refresh_status()
    return st.session_state["_status"]


def refresh_status() -> dict:
    st.session_state["_status"] = client().status()
    return st.session_state["_status"]


def status_panel() -> dict:
    """The system status, in the sidebar of every page."""
    status = refresh_status()
    with st.sidebar:
        st.markdown("### LAMANAS Studio")
        st.caption("Meta-learned architectures with learned losses, on Omniglot few-shot tasks.")
        st.caption("System status")
        if not status.get("redis"):
            st.error(
                "**Redis is not reachable**, so runs cannot be listed or launched. Start the studio with "
                "`scripts/run` (it starts Redis, a worker and this app), or set `REDIS_URL`.",
                icon=":material/power_off:",
            )
            if status.get("error"):
                st.caption(f"Details: {status['error']}")
        else:
            workers = status.get("workers") or []
            if workers:
                devices = sorted({w.get("device") or "?" for w in workers})
                st.success(f"Redis ✓ · {len(workers)} worker{'s' * (len(workers) != 1)} alive "
                           f"({', '.join(devices)})", icon=":material/check_circle:")
                with st.expander("Workers"):
                    for w in workers:
                        busy = f"running `{w['current_run']}`" if w.get("current_run") else "idle"
                        st.markdown(f"**{w.get('name')}** on {w.get('host')} · {w.get('device')} · {busy}")
            else:
                st.warning("Redis ✓ · **no worker alive**: runs will wait in the queue. Start one with "
                           "`python -m backend worker`.", icon=":material/warning:")
        with st.expander("Access token"):
            st.text_input("Token", type="password", key="token",
                          help="Only needed when the studio was started with LAMANAS_TOKEN.")
    return status


def redis_ok() -> bool:
    return bool(system_status().get("redis"))


def require_redis() -> None:
    """Stop the page with a clear message when Redis is down."""
    if not redis_ok():
        st.info("This page needs the run store (Redis), which is not reachable — see the status in the sidebar. "
                "The **Classroom** page works without it.", icon=":material/power_off:")
        st.stop()


def safe(fn, *args, default=None, **kwargs):
    """A client call; a lost connection shows a message instead of a stack trace."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # redis.ConnectionError, TimeoutError, ...
        if type(e).__module__.startswith(("redis", "socket")) or isinstance(e, (ConnectionError, TimeoutError)):
            st.error(f"Lost the connection to Redis: {type(e).__name__}: {e}", icon=":material/power_off:")
            return default
        raise


# ---------------------------------------------------------------------------------------
# runs


def run_label(rec: dict) -> str:
    name = rec.get("name") or rec["id"]
    extra = f" · group {rec['group']}" if rec.get("group") else ""
    ident = f" · {rec['id']}" if name != rec["id"] else ""
    return f"{name} ({rec.get('preset')}{extra}) · {rec.get('status')}{ident}"


def list_runs(include_demo: bool = False) -> list[dict]:
    records = safe(client().list_runs, default=[]) if redis_ok() else []
    demo = demo_run() if include_demo else None
    return records + ([demo.record()] if demo else [])


def pick_run(records: list[dict], key: str, label: str = "Run", predicate=None) -> dict | None:
    """A run selectbox that follows (and sets) the `run` query parameter."""
    options = [r for r in records if predicate is None or predicate(r)]
    if not options:
        return None
    ids = [r["id"] for r in options]
    wanted = st.query_params.get("run")
    index = ids.index(wanted) if wanted in ids else 0
    by_id = {r["id"]: r for r in options}
    chosen = st.selectbox(label, ids, index=index, format_func=lambda i: run_label(by_id[i]), key=key)
    if chosen and st.query_params.get("run") != chosen:
        st.query_params["run"] = chosen
    return by_id.get(chosen)


def record(run_id: str) -> dict | None:
    if run_id == DEMO_ID:
        demo = demo_run()
        return demo.record() if demo else None
    return safe(client().get, run_id)


def rows(run_id: str, known_epoch: int | None = None) -> list[dict]:
    """All metrics rows of a run; Redis rows are cached per session and fetched incrementally.
    `known_epoch` (the record's epoch) skips the fetch when the cache already has it."""
    if run_id == DEMO_ID:
        demo = demo_run()
        return demo.rows() if demo else []
    cache = st.session_state.setdefault("_rows", {})
    have = cache.get(run_id, [])
    after = have[-1]["epoch"] if have else 0
    if known_epoch is not None and known_epoch < after:  # resumed from an earlier checkpoint: start over
        have, after = [], 0
    if known_epoch is not None and after >= known_epoch:
        return have
    new = safe(client().progress, run_id, after_epoch=after, default=[]) or []
    if new and have and new[0]["epoch"] <= after:  # the run was resumed and truncated: start over
        have = []
    if new:
        have = have + new
        cache[run_id] = have
    return have


def forget_rows(run_id: str) -> None:
    st.session_state.setdefault("_rows", {}).pop(run_id, None)


def artifact(run_id: str, name: str) -> bytes | None:
    if run_id == DEMO_ID:
        demo = demo_run()
        return demo.artifact(name) if demo else None
    return safe(client().artifact, run_id, name)


def genotype(run_id: str, run_rows: list[dict] | None = None) -> dict | None:
    """The final genotype.json, else the last metrics row's genotype."""
    raw = artifact(run_id, "genotype.json")
    if raw:
        return json.loads(raw)
    run_rows = rows(run_id) if run_rows is None else run_rows
    return run_rows[-1].get("genotype") if run_rows else None


def landscapes(run_id: str) -> list[dict]:
    if run_id == DEMO_ID:
        demo = demo_run()
        return demo.landscapes() if demo else []
    return safe(client().landscapes, run_id, default=[]) or []


def go_to_run(run_id: str, page: str = "views/runs.py") -> None:
    st.switch_page(page, query_params={"run": run_id})
