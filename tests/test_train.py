"""Meta-training on real Omniglot: run files, bitwise resume, CLI, bring-your-own episode."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

from model.config import build_config
from model.data import TaskSampler
from model.data.omniglot import scan
from model.evaluate import EVAL_SEED, adapt_and_predict, episode, load_run
from model.train import Cancelled, read_metrics, train

SMOKE = dict(meta_epochs=4, checkpoint_every=2, threads=1, drop_path=0.2)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_root):
    run = tmp_path_factory.mktemp("runs") / "smoke"
    events = []
    summary = train(build_config("smoke", SMOKE), run, data_root=data_root, on_event=events.append)
    return run, summary, events


def _without_time(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_run_directory_holds_every_file_with_the_schema(smoke_run):
    run, summary, events = smoke_run
    for name in ("config.json", "metrics.jsonl", "genotype.json", "summary.json", "checkpoint.pt", "run.json"):
        assert (run / name).exists(), name
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert {"epoch", "train_loss", "train_accuracy", "seconds", "alpha", "genotype"} <= set(r)
        assert 0.0 <= r["train_accuracy"] <= 1.0
    for key in ("test_accuracy", "test_ci95", "train_accuracy", "num_params", "meta_epochs", "wall_seconds"):
        assert key in summary
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["train_accuracy"] == rows[-1]["train_accuracy"]
    assert json.loads((run / "genotype.json").read_text()) == rows[-1]["genotype"]
    run_info = json.loads((run / "run.json").read_text())
    assert str(run_info["data_fingerprint"]) and "omniglot" not in json.dumps(run_info).lower()
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("epoch") == 4
    assert [e["row"]["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3, 4]


def test_checkpoint_loads_with_weights_only(smoke_run):
    run, _, _ = smoke_run
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 4 and "rng_torch" in state


def test_resume_equals_an_uninterrupted_run(tmp_path, smoke_run, data_root):
    cfg = build_config("smoke", SMOKE)
    run = tmp_path / "broken"
    # stop after epoch 3: the last checkpoint is epoch 2, epoch 3 must be redone
    with pytest.raises(Cancelled):
        train(cfg, run, data_root=data_root, should_cancel=lambda: len(read_metrics(run)) >= 3)
    assert len(read_metrics(run)) == 3
    summary = train(cfg, run, resume=True, data_root=data_root)
    ref_run, ref_summary, _ = smoke_run
    assert _without_time(read_metrics(run)) == _without_time(read_metrics(ref_run))
    a = torch.load(run / "checkpoint.pt", weights_only=True)["meta"]
    b = torch.load(ref_run / "checkpoint.pt", weights_only=True)["meta"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary["test_accuracy"] == ref_summary["test_accuracy"]


def test_cancel_stops_after_the_current_epoch(tmp_path, data_root):
    run = tmp_path / "c"
    seen = []
    with pytest.raises(Cancelled):
        train(build_config("smoke", SMOKE), run, data_root=data_root, on_event=seen.append, should_cancel=lambda: True)
    assert [e["row"]["epoch"] for e in seen if e["event"] == "epoch"] == [1]
    assert not (run / "summary.json").exists()


def test_episode_on_png_folders_equals_the_library_task(tmp_path, smoke_run, data_root, omniglot):
    run, _, _ = smoke_run
    cfg, learner, meta, phi = load_run(run)
    sampler = TaskSampler(omniglot, cfg.split, "test", cfg.n_way, cfg.k_shot, 3, False, seed=7)
    task = sampler.tasks(0, [0])
    from model.evaluate import _Batch

    batch = _Batch(task.support_x, task.support_y, task.query_x, task.query_y)
    logits = adapt_and_predict(learner, meta, phi, batch, cfg, (EVAL_SEED, 1), [0])[0]
    library_pred = logits.argmax(-1)
    library_acc = (library_pred == task.query_y[0]).float().mean().item()

    _, files, _ = scan(data_root)
    flat = [f for fs in files for f in fs]
    base = data_root / "omniglot-py"
    for part, index, labels in (("support", task.support_index[0], task.support_y[0]),
                                ("query", task.query_index[0], task.query_y[0])):
        for i, (img, label) in enumerate(zip(index, labels)):
            d = tmp_path / part / f"class{int(label):02d}"
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(base / flat[img], d / f"{i:03d}.png")
    out = episode(run, tmp_path / "support", tmp_path / "query")
    assert out["accuracy"] == pytest.approx(library_acc)
    assert [out["classes"].index(p["prediction"]) for p in out["predictions"]] == library_pred.tolist()

    # and from the command line, as JSON
    cli = subprocess.run([sys.executable, "-m", "model", "episode", str(run), "--support", str(tmp_path / "support"),
                          "--query", str(tmp_path / "query")], capture_output=True, text=True, check=True)
    assert json.loads(cli.stdout)["accuracy"] == pytest.approx(library_acc)


def test_episode_refuses_a_class_count_that_does_not_match(tmp_path, smoke_run, data_root):
    run, _, _ = smoke_run
    src = next((data_root / "omniglot-py" / "images_evaluation").glob("*/character01/*.png"))
    for c in ("a", "b"):  # smoke is 3-way
        (tmp_path / "s" / c).mkdir(parents=True)
        shutil.copy(src, tmp_path / "s" / c / "x.png")
    (tmp_path / "q").mkdir()
    shutil.copy(src, tmp_path / "q" / "x.png")
    with pytest.raises(ValueError, match="n_way=3"):
        episode(run, tmp_path / "s", tmp_path / "q")


def test_cli_refuses_a_bad_config_naming_the_field(tmp_path):
    out = subprocess.run([sys.executable, "-m", "model", "train", "--preset", "smoke", "--set", "n_way=1",
                          "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert out.returncode == 2
    assert "n_way" in out.stderr and "[2, 100]" in out.stderr
    assert not (tmp_path / "r").exists()


def test_cli_smoke_run_writes_all_files(tmp_path, data_root):
    out = subprocess.run([sys.executable, "-m", "model", "train", "--preset", "smoke", "--out", str(tmp_path / "r"),
                          "--data-root", str(data_root)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["meta_epochs"] == 4
    assert json.loads((tmp_path / "r" / "summary.json").read_text()) == summary


def test_meta_test_tasks_use_only_test_split_classes_rotations_included(omniglot):
    from model.data import TaskSampler

    cfg = build_config("demo")
    sampler = TaskSampler(omniglot, cfg.split, "test", cfg.n_way, cfg.k_shot, cfg.q_query, cfg.rotations, EVAL_SEED)
    test_ids = set(omniglot.class_ids("vinyals", "test"))
    train_ids = set(omniglot.class_ids("vinyals", "train"))
    seen = {c for t in sampler.tasks(0, range(200)).classes for c in t}
    assert {base for base, _ in seen} <= test_ids and not ({base for base, _ in seen} & train_ids)
    assert {rot for _, rot in seen} == {0, 1, 2, 3}


def test_evaluate_on_val_with_changed_test_steps_scores_val_tasks_into_its_own_file(smoke_run, data_root, omniglot):
    from model.evaluate import evaluate
    from model.task_learner import query_metrics

    run, summary, _ = smoke_run
    before = (run / "summary.json").read_text()
    out = evaluate(run, tasks=6, data_root=data_root, part="val", overrides={"test_steps": 1})
    assert out["part"] == "val" and out["tasks"] == 6
    assert json.loads((run / "evaluation-val-test_steps=1.json").read_text()) == out
    assert (run / "summary.json").read_text() == before and not (run / "evaluation.json").exists()
    # Independently: the same six val tasks, one adaptation step each.
    cfg, learner, meta, phi = load_run(run, overrides={"test_steps": 1})
    assert cfg.test_steps == 1
    batch = TaskSampler(omniglot, cfg.split, "val", cfg.n_way, cfg.k_shot, cfg.q_query, cfg.rotations,
                        EVAL_SEED).tasks(0, range(6))
    assert {b for t in batch.classes for b, _ in t} <= set(omniglot.class_ids("vinyals", "val"))
    logits = adapt_and_predict(learner, meta, phi, batch, cfg, (EVAL_SEED, 0), list(range(6)))
    assert out["test_accuracy"] == pytest.approx(query_metrics(logits, batch.query_y)[1].mean().item(), abs=1e-6)


def test_evaluate_refuses_a_field_that_would_not_match_the_checkpoint(smoke_run):
    from model.config import ConfigError

    with pytest.raises(ConfigError) as err:
        load_run(smoke_run[0], overrides={"channels": 16, "test_steps": 2})
    assert set(err.value.errors) == {"channels"} and "test_steps" in err.value.errors["channels"]
    with pytest.raises(ConfigError) as err:   # the task count keeps test_tasks' range
        load_run(smoke_run[0], tasks=0)
    assert err.value.errors == {"tasks": "must be in [1, 100000], got 0"}


def test_cli_evaluate_refuses_a_training_field_naming_it(smoke_run):
    out = subprocess.run([sys.executable, "-m", "model", "evaluate", str(smoke_run[0]), "--part", "val",
                          "--set", "inner_steps=9"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "inner_steps" in out.stderr and "test_steps" in out.stderr
