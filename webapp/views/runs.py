"""Runs: the table of runs with filters, and one run's page (live charts, actions,
errors, downloads). The open run is the `run` query parameter."""
from __future__ import annotations

import json

import streamlit as st

from backend.errors import AuthError, InvalidState, NotFound
from model.config import ConfigError
from webapp import ui
from webapp.charts import run_charts
from webapp.data import DEMO_ID, accuracy_stats, duration, fmt_seconds, fmt_time, filter_runs, runs_frame

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
REFRESH_SECONDS = 2.0


def stats_of(records: list[dict]) -> dict[str, tuple]:
    return {r["id"]: accuracy_stats(ui.rows(r["id"], known_epoch=r.get("epoch") or 0)) for r in records}


def runs_table(records: list[dict]) -> str | None:
    """Filters and the table; the id of a clicked row, if any."""
    c1, c2, c3 = st.columns([2, 2, 3])
    statuses = c1.multiselect("Status", STATUSES, key="runs_status")
    presets = c2.multiselect("Preset", sorted({r.get("preset") for r in records if r.get("preset")}), key="runs_preset")
    text = c3.text_input("Search name, group, id", key="runs_text")
    shown = filter_runs(records, statuses, presets, text)
    df = runs_frame(shown, stats_of(shown))
    event = st.dataframe(
        df, hide_index=True, on_select="rerun", selection_mode="single-row", key="runs_table",
        column_config={
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
            "best acc": st.column_config.NumberColumn(format="percent"),
            "last acc": st.column_config.NumberColumn(format="percent"),
            "test acc": st.column_config.NumberColumn(format="percent"),
        },
    )
    st.caption(f"{len(shown)} of {len(records)} runs · accuracies are query accuracy on meta-training tasks "
               "(best / last meta-epoch) and the final meta-test accuracy.")
    picked = event.selection.rows if event and hasattr(event, "selection") else []
    return df.iloc[picked[0]]["id"] if picked else None


def actions(rec: dict) -> None:
    """Cancel, resume and delete (delete asks for confirmation)."""
    if rec["id"] == DEMO_ID:
        return
    c = ui.client()
    run_id, status = rec["id"], rec["status"]
    cols = st.columns([1, 1, 1, 4])

    def do(fn, done: str):
        try:
            fn(run_id, token=ui.token())
            st.toast(done)
            ui.forget_rows(run_id)
            return True
        except AuthError as e:
            st.error(f"{e}: enter it under 'Access token' in the sidebar.", icon=":material/lock:")
        except (InvalidState, NotFound) as e:
            st.warning(str(e))
        return False

    if cols[0].button("Cancel", icon=":material/cancel:", key="run_cancel", disabled=status not in ui.ACTIVE,
                      help="A queued run stops at once, a running one after its current meta-epoch."):
        if do(c.cancel, "Cancel requested"):
            st.rerun()
    if cols[1].button("Resume", icon=":material/play_arrow:", key="run_resume", disabled=status not in ("failed", "cancelled"),
                      help="Continue from the last checkpoint."):
        if do(c.resume, "Resumed"):
            st.rerun()
    with cols[2].popover("Delete", icon=":material/delete:"):
        st.write(f"Delete **{rec.get('name')}** with its metrics and files? This cannot be undone.")
        sure = st.checkbox("Yes, delete this run", key="run_delete_sure")
        if st.button("Delete for good", key="run_delete", type="primary", disabled=not sure):
            if do(c.delete, "Deleted"):
                st.query_params.pop("run", None)
                st.rerun()


def headline(rec: dict, rows: list[dict]) -> None:
    best, last = accuracy_stats(rows)
    summary = rec.get("summary") or {}
    total = rec.get("meta_epochs") or 0
    m = st.columns(5)
    m[0].metric("Status", f"{rec['status']}")
    m[1].metric("Meta-epoch", f"{rec.get('epoch') or 0} / {total}")
    m[2].metric("Query accuracy (last)", f"{last:.1%}" if last is not None else "–",
                delta=f"best {best:.1%}" if best is not None else None, delta_color="off")
    test = summary.get("test_accuracy")
    m[3].metric("Meta-test accuracy", f"{test:.2%}" if test is not None else "–",
                delta=f"± {summary['test_ci95']:.2%} (95% CI)" if summary.get("test_ci95") is not None else None,
                delta_color="off")
    m[4].metric("Duration", fmt_seconds(duration(rec)) or "–")
    if total and rec["status"] in ui.ACTIVE:
        st.progress(min(1.0, (rec.get("epoch") or 0) / total), text=f"{rec['status']} · meta-epoch {rec.get('epoch')}")
    st.caption(f"id `{rec['id']}` · preset `{rec.get('preset')}` · group `{rec.get('group') or '–'}` · "
               f"worker `{rec.get('worker') or '–'}` on `{rec.get('device') or '–'}` · "
               f"created {fmt_time(rec.get('created')) or '–'} · started {fmt_time(rec.get('started')) or '–'} · "
               f"attempts {rec.get('attempts', 0)}")


def charts(rows: list[dict]) -> None:
    if not rows:
        st.info("No meta-epoch finished yet: the charts appear after the first one.", icon=":material/hourglass_empty:")
        return
    cs = run_charts(rows)
    for i in range(0, len(cs), 2):
        cols = st.columns(2)
        for col, chart in zip(cols, cs[i:i + 2]):
            col.altair_chart(chart, width="stretch")


def live(run_id: str, status_at_render: str) -> None:
    """The live part of a run's page: re-read every REFRESH_SECONDS while the run is active."""
    rec = ui.record(run_id)
    if rec is None:
        st.warning("This run no longer exists.")
        return
    if rec["status"] != status_at_render:  # finished/started meanwhile: redraw buttons too
        st.rerun(scope="app")
    rows = ui.rows(run_id)
    headline(rec, rows)
    charts(rows)


def reevaluate(rec: dict) -> None:
    """Re-run a finished run's meta-test on a worker: val or test classes, other step counts."""
    if rec["id"] == DEMO_ID or rec["status"] != "succeeded":
        return
    run_id, cfg = rec["id"], rec.get("config") or {}
    jobs = st.session_state.setdefault(f"eval_jobs_{run_id}", [])
    with st.expander("Re-evaluate on a worker", icon=":material/science:", expanded=bool(jobs)):
        st.caption("Choose meta-test settings on **val** classes (never trained on, never in the test score), "
                   "then score **test** once with the setting you chose.")
        c = st.columns([2, 2, 2, 1])
        part = c[0].radio("Classes", ("val", "test"), horizontal=True, key="eval_part",
                          disabled=cfg.get("split") == "lake", help="The lake split has no val classes.")
        steps = c[1].number_input("Adaptation steps", 0, 1000, int(cfg.get("test_steps", 50)), key="eval_steps")
        tasks = c[2].number_input("Tasks", 1, 100000, int(cfg.get("test_tasks", 600)), key="eval_tasks")
        if c[3].button("Evaluate", key="eval_go", type="primary"):
            overrides = {"test_steps": int(steps)}
            try:
                job = ui.client().request_evaluate(run_id, int(tasks), part, overrides)
                jobs.append({"job": job, "part": part, "steps": int(steps), "tasks": int(tasks)})
            except ConfigError as e:
                for field, msg in e.errors.items():
                    st.error(f"{field}: {msg}")
        if jobs:
            pending = any(ui.client().job(j["job"])["status"] in ("queued", "running") for j in jobs)
            st.fragment(evaluation_table, run_every=REFRESH_SECONDS if pending else None)(jobs)


def evaluation_table(jobs: list[dict]) -> None:
    rows = []
    for j in jobs:
        job = ui.client().job(j["job"])
        result = job.get("result") or {}
        rows.append({"classes": j["part"], "steps": j["steps"], "tasks": j["tasks"], "status": job["status"],
                     "accuracy": result.get("test_accuracy"), "± 95% CI": result.get("test_ci95"),
                     "error": job.get("error") or ""})
    st.dataframe(rows, hide_index=True, column_config={
        "accuracy": st.column_config.NumberColumn(format="percent"),
        "± 95% CI": st.column_config.NumberColumn(format="percent")})


def downloads(rec: dict) -> None:
    run_id = rec["id"]
    st.subheader("Downloads")
    cols = st.columns(6)
    config = ui.artifact(run_id, "config.json") or json.dumps(rec.get("config") or {}, indent=2).encode()
    cols[0].download_button("config.json", config, f"{run_id}-config.json", "application/json", key="dl_config")
    metrics = ui.artifact(run_id, "metrics.jsonl") or "".join(json.dumps(r) + "\n" for r in ui.rows(run_id)).encode()
    cols[1].download_button("metrics.jsonl", metrics, f"{run_id}-metrics.jsonl", "application/jsonl", key="dl_metrics")
    genotype = ui.genotype(run_id)
    cols[2].download_button("genotype.json", json.dumps(genotype, indent=2).encode() if genotype else b"",
                            f"{run_id}-genotype.json", "application/json", key="dl_genotype", disabled=not genotype)
    svg = ui.artifact(run_id, "genotype.svg")
    if svg is None and genotype:
        from webapp.graphs import cell_dot, render
        try:
            svg = render(cell_dot(genotype, None, "normal"))
        except Exception:  # graphviz.ExecutableNotFound: no `dot` program here
            svg = None
    cols[3].download_button("genotype.svg", svg or b"", f"{run_id}-genotype.svg", "image/svg+xml", key="dl_svg",
                            disabled=not svg)
    client, has_ckpt = (ui.client(), rec["status"] == "succeeded" or (rec.get("checkpoint_epoch") or 0) > 0)
    fetch = (lambda: client.artifact(run_id, "checkpoint.pt") or b"") if run_id != DEMO_ID else \
        (lambda: ui.artifact(run_id, "checkpoint.pt") or b"")
    cols[4].download_button("checkpoint.pt", fetch, f"{run_id}-checkpoint.pt", "application/octet-stream",
                            key="dl_ckpt", disabled=not has_ckpt)
    summary = rec.get("summary")
    cols[5].download_button("summary.json", json.dumps(summary or {}, indent=2).encode(), f"{run_id}-summary.json",
                            "application/json", key="dl_summary", disabled=not summary)


def run_page(run_id: str) -> None:
    rec = ui.record(run_id)
    if rec is None:
        st.warning(f"No run `{run_id}` (deleted?).")
        if st.button("← All runs", key="run_back_missing"):
            st.query_params.pop("run", None)
            st.rerun()
        return
    top = st.columns([6, 1])
    top[0].title(f"{rec.get('name') or run_id}")
    if top[1].button("← All runs", key="run_back"):
        st.query_params.pop("run", None)
        st.rerun()
    actions(rec)
    if rec["status"] == "failed":
        st.error(f"**This run failed:** {rec.get('error') or 'no message'}", icon=":material/error:")
        if rec.get("traceback"):
            with st.expander("Traceback", expanded=False):
                st.code(rec["traceback"], language="python")
    elif rec["status"] == "cancelled":
        st.info("This run was cancelled; **Resume** continues from its last checkpoint.", icon=":material/cancel:")
    elif rec["status"] == "queued" and not ui.system_status().get("workers"):
        st.warning("No worker is alive: this run waits in the queue until one starts.", icon=":material/warning:")
    active = rec["status"] in ui.ACTIVE
    st.fragment(live, run_every=REFRESH_SECONDS if active else None)(run_id, rec["status"])
    c1, c2 = st.columns(2)
    c1.page_link("views/genotype.py", label="Open in the Genotype explorer", icon=":material/account_tree:", query_params={"run": run_id})
    if (rec.get("config") or {}).get("loss") in ("fnn", "lstm"):
        c2.page_link("views/landscape.py", label="Open its loss landscapes", icon=":material/landscape:", query_params={"run": run_id})
    reevaluate(rec)
    downloads(rec)
    with st.expander("Config"):
        st.json(rec.get("config") or {}, expanded=False)


def list_page() -> None:
    st.title("Runs")
    ui.require_redis()
    records = ui.list_runs(include_demo=True)
    if not records:
        st.info("No runs yet: launch one on the **Launch** page (the `smoke` preset finishes in seconds).", icon=":material/rocket_launch:")
        return
    active = any(r["status"] in ui.ACTIVE for r in records)

    def table():
        clicked = runs_table(ui.list_runs(include_demo=True))
        if clicked:
            st.query_params["run"] = clicked
            st.rerun(scope="app")

    st.fragment(table, run_every=5 if active else None)()
    by_id = {r["id"]: r for r in records}
    c1, c2 = st.columns([4, 1])
    chosen = c1.selectbox("Open a run", list(by_id), format_func=lambda i: ui.run_label(by_id[i]), key="runs_open")
    if c2.button("Open", key="runs_open_btn", type="primary"):
        st.query_params["run"] = chosen
        st.rerun()


ui.status_panel()
if st.query_params.get("run"):
    run_page(st.query_params["run"])
else:
    list_page()
