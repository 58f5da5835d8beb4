"""Classroom: a guided tour that works on a fresh install (the shipped demo run is read
from disk), a one-click demo run, and "try it": adapt a trained run to your own images."""
from __future__ import annotations

import random

import streamlit as st

from webapp import ui
from webapp.charts import accuracy_chart, alpha_heatmap
from webapp.data import demo_run, omniglot_root, sample_task
from webapp.graphs import cell_dot

try:  # optional: drawing in the browser
    from streamlit_drawable_canvas import st_canvas
except Exception:  # not installed, or not compatible with this Streamlit
    st_canvas = None

MAKE_DEMO = "python -m model train --preset demo --out webapp/demo_run"


def show_task(task: dict, key: str) -> None:
    """Support images in a row (one column per class), then the query images."""
    st.markdown("**Support set** — one labelled example per class (that is all the model gets):")
    cols = st.columns(len(task["classes"]))
    for col, label in zip(cols, task["classes"]):
        col.image([str(p) for p in task["support"][label]], caption=label, width=84)
    st.markdown("**Query set** — which class is each of these?")
    qcols = st.columns(len(task["query"]))
    for col, (path, _label) in zip(qcols, task["query"]):
        col.image(str(path), width=84)
    with st.expander("Show the answers"):
        st.write(", ".join(f"{i + 1}: {label}" for i, (_p, label) in enumerate(task["query"])))


def few_shot_tab() -> None:
    st.markdown(
        "A **few-shot task** gives a model *N* new classes with only *K* examples each (the *support set*) and "
        "asks it to classify new images of those classes (the *query set*): *N-way K-shot*. The classes are "
        "never seen in training — the model must **learn to learn**. Omniglot holds 1,623 handwritten "
        "characters from 50 alphabets, 20 drawings each: the classic benchmark.")
    images, why = omniglot_root()
    if images is None:
        st.warning(f"The Omniglot images are not on this machine, so no sample task can be shown.\n\n{why}",
                   icon=":material/folder_off:")
        return
    seed = st.session_state.setdefault("class_task_seed", 0)
    if st.button("Another task", icon=":material/casino:", key="class_new_task"):
        st.session_state["class_task_seed"] = seed = random.randrange(1 << 30)
    show_task(sample_task(images, n_way=5, k_shot=1, n_query=1, seed=seed), key="intro")


def demo_tab() -> None:
    st.markdown(
        "**DARTS** searches an architecture by putting *every* candidate operation (convolutions, pooling, "
        "skip connections, …) on every edge of a small graph, a **cell**, and mixing them with softmax weights "
        "α. Training α by gradient descent shows which operations matter; the **genotype** keeps the strongest "
        "two incoming edges per node.\n\n"
        "**MetaNAS** meta-learns α *together with* the weights (with Reptile or MAML): after a few gradient "
        "steps on a new task's support set, both the weights and the architecture adapt to that task.")
    demo = demo_run()
    if demo is None:
        st.info("The pre-trained demo run is not here yet. Make it (a few minutes on a CPU) with\n\n"
                f"```\n{MAKE_DEMO}\n```\n\nthen reload this page.", icon=":material/inventory_2:")
        return
    rows, summary, genotype = demo.rows(), demo.summary() or {}, demo.genotype()
    st.markdown("**The shipped demo run** (preset `demo`, trained with this project):")
    m = st.columns(3)
    if summary.get("test_accuracy") is not None:
        m[0].metric("Meta-test accuracy", f"{summary['test_accuracy']:.1%}",
                    delta=f"± {summary.get('test_ci95', 0):.1%}", delta_color="off")
    m[1].metric("Meta-epochs", summary.get("meta_epochs", len(rows)))
    if summary.get("num_params"):
        m[2].metric("Parameters", f"{summary['num_params']:,}")
    if rows:
        st.altair_chart(accuracy_chart(rows), width="stretch")
    if genotype:
        alpha = rows[-1].get("alpha") if rows else None
        c1, c2 = st.columns(2)
        for col, cell in zip((c1, c2), ("normal", "reduce")):
            col.markdown(f"**{cell} cell**")
            col.graphviz_chart(cell_dot(genotype, alpha, cell), width="stretch")
            if alpha:
                col.altair_chart(alpha_heatmap(alpha, cell), width="content")
    st.page_link("views/genotype.py", label="Explore it in the Genotype explorer", icon=":material/account_tree:",
                 query_params={"run": "demo:shipped"})


def learned_loss_tab() -> None:
    st.markdown(
        "The model adapts to a task by a few gradient steps on a **loss**. Usually that is cross-entropy (CE). "
        "**LAMANAS** *learns* the loss instead: a small network φ (an **FNN** or an **LSTM**) reads the logits "
        "and labels and outputs the loss the task learner descends. φ is meta-learned so that descending it "
        "lowers the query loss (via an MSE or inner-product proxy, or a meta-gradient); the *residual* option "
        "adds CE to its input so it starts from something sensible.\n\n"
        "While such a run trains, watch on its page: the **correlation of the learned loss with CE** (does φ "
        "still measure error?), **‖φ‖** (is φ still moving?), and on the **Loss landscape** page how φ reshapes "
        "the loss surface over meta-epochs, beside CE for reference.")


def watch_run(run_id: str) -> None:
    rec = ui.record(run_id)
    if rec is None:
        st.warning("The demo run is gone (deleted?).")
        return
    total = rec.get("meta_epochs") or 1
    st.progress(min(1.0, (rec.get("epoch") or 0) / total),
                text=f"{rec['status']} · meta-epoch {rec.get('epoch')}/{total}")
    rows = ui.rows(run_id)
    if rows:
        st.altair_chart(accuracy_chart(rows), width="stretch")


def train_tab() -> None:
    st.markdown(
        "Train your own demo run: preset `demo` (5-way 1-shot, a small supernet) meta-trains in minutes on a "
        "CPU worker.\n\n**What to look at while it trains**\n"
        "- *Query accuracy* climbs from chance (20% for 5 ways) as the meta-learned start point gets better at "
        "adapting in 5 steps;\n"
        "- in the **Genotype explorer**, move the meta-epoch slider: early cells are a mix of everything, later "
        "ones settle on a few operations;\n"
        "- at the end the run is meta-tested on unseen characters: that is its real accuracy.")
    if not ui.redis_ok():
        st.info("Training needs the studio's Redis and a worker (see the sidebar): start them with `scripts/run`.",
                icon=":material/power_off:")
        return
    run_id = st.session_state.get("class_run")
    if st.button("Train the demo run", icon=":material/rocket_launch:", key="class_train", type="primary"):
        try:
            run_id = ui.client().submit("demo", {}, name="classroom demo", token=ui.token())
            st.session_state["class_run"] = run_id
        except Exception as e:  # AuthError, LimitError, connection lost
            st.error(f"Could not launch: {e}")
    if run_id:
        active = (ui.record(run_id) or {}).get("status") in ui.ACTIVE
        st.fragment(watch_run, run_every=2 if active else None)(run_id)
        st.page_link("views/runs.py", label="Open the run's page", icon=":material/monitoring:", query_params={"run": run_id})


def canvas_drawings(key: str) -> list[bytes]:
    """A drawing canvas with an 'add' button; the drawings added so far (PNG bytes)."""
    store = st.session_state.setdefault(f"drawings_{key}", [])
    if st_canvas is None:
        return store
    result = st_canvas(stroke_width=8, stroke_color="#000000", background_color="#ffffff", height=140, width=140,
                       return_image_data=True, key=f"canvas_{key}")
    c1, c2 = st.columns(2)
    if c1.button("Add drawing", icon=":material/add:", key=f"add_{key}"):
        try:
            if result is not None and result.image_bytes:
                store.append(result.image_bytes)
        except Exception:
            st.warning("Draw something first.")
    if c2.button("Clear", key=f"clear_{key}"):
        store.clear()
    if store:
        st.caption(f"{len(store)} drawing{'s' * (len(store) != 1)} added")
        st.image(store, width=36)
    return store


def own_task(n_way: int) -> tuple[dict[str, list[bytes]], list[bytes], list[str] | None]:
    st.markdown(f"Give **{n_way} classes** (this run was trained {n_way}-way), a few images each"
                + (", uploaded or drawn:" if st_canvas else " (PNG/JPEG):"))
    support: dict[str, list[bytes]] = {}
    cols = st.columns(n_way)
    for i, col in enumerate(cols):
        with col:
            label = st.text_input("Class name", value=f"class {i + 1}", key=f"try_label_{i}")
            files = st.file_uploader("Images", type=["png", "jpg", "jpeg"], accept_multiple_files=True,
                                     key=f"try_files_{i}")
            images = [f.getvalue() for f in files or []] + canvas_drawings(f"s{i}")
            support[label.strip()] = images
    st.markdown("**Query images** to classify:")
    q1, q2 = st.columns(2)
    with q1:
        files = st.file_uploader("Query images", type=["png", "jpg", "jpeg"], accept_multiple_files=True,
                                 key="try_query")
    with q2:
        drawn = canvas_drawings("query")
    return support, [f.getvalue() for f in files or []] + drawn, None


def sample_omniglot_task(n_way: int, k_shot: int) -> tuple[dict[str, list[bytes]], list[bytes], list[str] | None]:
    images, why = omniglot_root()
    if images is None:
        st.warning(why)
        return {}, [], None
    seed = st.session_state.setdefault("try_seed", 1)
    if st.button("Another task", icon=":material/casino:", key="try_new_task"):
        st.session_state["try_seed"] = seed = random.randrange(1 << 30)
    task = sample_task(images, n_way=n_way, k_shot=k_shot, n_query=1, seed=seed)
    show_task(task, key="try")
    support = {label: [p.read_bytes() for p in paths] for label, paths in task["support"].items()}
    return support, [p.read_bytes() for p, _ in task["query"]], [label for _, label in task["query"]]


def show_job(job_id: str, query: list[bytes]) -> None:
    job = ui.client().job(job_id)
    if job["status"] in ("queued", "running"):
        st.info(f"Adapting on a worker… ({job['status']})", icon=":material/hourglass_empty:")
        return
    if job["status"] == "failed":
        st.error(f"The adaptation failed: {job.get('error')}")
        return
    result = job.get("result") or {}
    if result.get("accuracy") is not None:
        st.success(f"Accuracy on your query images: {result['accuracy']:.0%}")
    preds = result.get("predictions") or []
    cols = st.columns(max(1, min(6, len(preds))))
    for i, p in enumerate(preds):
        with cols[i % len(cols)]:
            if i < len(query):
                st.image(query[i], width=84)
            truth = f" (true: {p['label']})" if p.get("label") else ""
            st.markdown(f"→ **{p['prediction']}** {p.get('probability', 0):.0%}{truth}")


def try_tab() -> None:
    st.markdown("Adapt a trained run to a task of **your own** and watch it predict. The adaptation (a few "
                "gradient steps of weights *and* architecture on your support images) runs on a worker.")
    if not ui.redis_ok():
        st.info("This needs the studio's Redis and a worker (see the sidebar).", icon=":material/power_off:")
        return
    trained = [r for r in ui.list_runs() if r.get("status") == "succeeded"]
    if not trained:
        st.info("No trained run yet: train the demo run in the previous tab (or any run), then come back.",
                icon=":material/school:")
        return
    by_id = {r["id"]: r for r in trained}
    run_id = st.selectbox("Trained run", list(by_id), format_func=lambda i: ui.run_label(by_id[i]), key="try_run")
    cfg = by_id[run_id].get("config") or {}
    n_way, k_shot = int(cfg.get("n_way", 5)), int(cfg.get("k_shot", 1))
    source = st.radio("Images", ["A sample Omniglot task", "My own images"], horizontal=True, key="try_source")
    support, query, labels = (sample_omniglot_task(n_way, k_shot) if source.startswith("A sample")
                              else own_task(n_way))
    missing = [c for c, imgs in support.items() if not imgs]
    problems = ([f"classes without images: {', '.join(missing)}"] if missing else []) + \
        (["no query image"] if not query else []) + \
        (["class names must differ"] if len(support) != n_way else [])
    if st.button("Adapt and predict", icon=":material/auto_awesome:", key="try_go", type="primary", disabled=bool(problems)):
        try:
            st.session_state["try_job"] = (ui.client().request_episode(run_id, support, query, labels), query)
        except ValueError as e:
            st.error(str(e))
    if problems:
        st.caption("To predict: " + "; ".join(problems) + ".")
    if st.session_state.get("try_job"):
        job_id, q = st.session_state["try_job"]
        active = ui.client().job(job_id)["status"] in ("queued", "running")
        st.fragment(show_job, run_every=1 if active else None)(job_id, q)


ui.status_panel()
st.title("Classroom")
st.caption("A guided tour of meta-learned architectures and learned losses — everything here works before "
           "anything trains.")
tabs = st.tabs(["1 · Few-shot tasks", "2 · DARTS & MetaNAS", "3 · The learned loss", "4 · Train a demo",
                "5 · Try it"])
with tabs[0]:
    few_shot_tab()
with tabs[1]:
    demo_tab()
with tabs[2]:
    learned_loss_tab()
with tabs[3]:
    train_tab()
with tabs[4]:
    try_tab()
if st_canvas is None:
    st.caption("Drawing in the browser needs the `streamlit-drawable-canvas` package; uploading works without it.")
