"""Meta-test: adapt to unseen tasks of the test split, in chunks of tasks at once.

Test tasks come from a fixed evaluation seed, so every run (and every re-evaluation) is
scored on the same tasks. `evaluate` can also score the val split and change meta-test
settings (`model.config.EVAL_FIELDS`), so that test-time choices such as `test_steps` are made on
validation classes, never on the test score. φ is not adapted at meta-test (SAVN): the learned loss is fixed
during inference. `episode()` adapts a trained run to a user's own task.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .config import eval_config, load_config_json
from .data import TaskSampler, load_image_folder, load_omniglot, resolve_data_root
from .task_learner import TaskLearner, expand, query_metrics, temperatures
from .train import CHECKPOINT, Cancelled, _progress_bar, build, make_loss, on_device, setup_torch

EVAL_SEED = 20161


def mean_ci95(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, 1.96 * math.sqrt(var / n)


def adapt_and_predict(learner: TaskLearner, meta: dict, phi: dict, batch, cfg, key, task_ids):
    """Adapt the meta-parameters to each task of `batch`; query logits (T, Q, n)."""
    T = batch.support_x.shape[0]
    _, stats = learner.adapt(expand(meta, T), expand(phi, T), batch.support_x, batch.support_y, key=key,
                             task_ids=task_ids, steps=cfg.test_steps, batch=cfg.test_batch, drop_p=0.0,
                             query_x=batch.query_x, predict_temp=temperatures(cfg, cfg.test_steps)[-1])
    return stats["query_logits"]


def meta_test(learner, meta, phi, data, cfg, tasks: int, *, on_event=None, should_cancel=None,
              progress=False, part="test") -> dict:
    """Adapt to `tasks` tasks of `part` (test, or val for choosing meta-test settings)."""
    emit = on_event or (lambda e: None)
    sampler = TaskSampler(data, cfg.split, part, cfg.n_way, cfg.k_shot, cfg.q_query, cfg.rotations, EVAL_SEED)
    device = next(iter(meta.values())).device
    test_classes = set(data.class_ids(cfg.split, part))
    accs: list[float] = []
    bar = _progress_bar(progress, tasks, 0, f"meta-test ({part})", unit="task")
    for start in range(0, tasks, cfg.eval_chunk):
        ids = list(range(start, min(start + cfg.eval_chunk, tasks)))
        batch = on_device(sampler.tasks(0, ids), device)
        # Guard against any leak of training classes into the score.
        assert all(base in test_classes for task in batch.classes for base, _ in task), f"a meta-test class is not in the {part} split"
        logits = adapt_and_predict(learner, meta, phi, batch, cfg, (EVAL_SEED, 0), ids)
        accs += query_metrics(logits, batch.query_y)[1].tolist()
        emit({"event": "evaluation", "done": len(accs), "total": tasks})
        if bar:
            bar.update(len(ids))
            bar.set_postfix(acc=f"{sum(accs) / len(accs):.3f}")
        if should_cancel and should_cancel():
            raise Cancelled(f"cancelled during evaluation after {len(accs)} tasks")
    if bar:
        bar.close()
    mean, ci = mean_ci95(accs)
    return {"test_accuracy": mean, "test_ci95": ci, "tasks": len(accs), "accuracies": accs}


def run_config(run_dir, part: str = "test", overrides: dict | None = None, tasks: int | None = None):
    """A trained run's config.json with meta-test `overrides` and task count, validated
    (model.config.eval_config)."""
    return eval_config(load_config_json((Path(run_dir) / "config.json").read_text()), part, overrides, tasks)


def load_run(run_dir, device=None, overrides: dict | None = None, part: str = "test", tasks: int | None = None,
             cfg=None):
    """(cfg, learner, meta, phi) of a trained run, from config.json and checkpoint.pt, with
    meta-test `overrides` and task count; or with `cfg`, a `run_config` the caller changed
    further (the bench's --engine)."""
    run_dir = Path(run_dir)
    cfg = cfg or run_config(run_dir, part, overrides, tasks)
    dev = setup_torch(cfg) if device is None else torch.device(device)
    ckpt = run_dir / CHECKPOINT
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt} does not exist: the run has no checkpoint yet")
    net, _ = build(cfg, dev)
    state = torch.load(ckpt, map_location=dev, weights_only=True)
    learner = TaskLearner(net, cfg, make_loss(cfg))
    return cfg, learner, state["meta"], state["phi"]


def evaluate(run_dir, tasks: int | None = None, data_root=None, on_event=None, should_cancel=None,
             progress=False, part: str = "test", overrides: dict | None = None) -> dict:
    """Re-run the meta-test of a trained run on `part` with meta-test `overrides`.

    Writes evaluation.json beside the run (evaluation-<part>[-key=value...].json when the
    part or settings differ, so one re-evaluation never overwrites another's)."""
    overrides = overrides or {}
    cfg, learner, meta, phi = load_run(run_dir, overrides=overrides, part=part, tasks=tasks)
    data = load_omniglot(resolve_data_root(data_root))
    try:
        result = meta_test(learner, meta, phi, data, cfg, cfg.test_tasks, on_event=on_event,
                           should_cancel=should_cancel, progress=progress, part=part)
    finally:
        learner.close()
    out = {"part": part, "overrides": overrides, **{k: v for k, v in result.items() if k != "accuracies"}}
    (Path(run_dir) / evaluation_file(part, overrides)).write_text(json.dumps(out, indent=2))
    return out


def evaluation_file(part: str, overrides: dict) -> str:
    if part == "test" and not overrides:
        return "evaluation.json"
    tags = "".join(f"-{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in sorted(overrides.items()))
    return f"evaluation-{part}{tags}.json"


def episode(run_dir, support_dir, query_dir) -> dict:
    """Adapt a trained run to a user's task: `support_dir/<class>/*` and `query_dir`
    (flat, or in class sub-folders when labels are known). Returns JSON-ready predictions."""
    cfg, learner, meta, phi = load_run(run_dir)
    classes, s_imgs, s_labels = load_image_folder(support_dir)
    if len(classes) != cfg.n_way:
        raise ValueError(f"the support folder has {len(classes)} classes ({', '.join(classes)}), "
                         f"but this run was trained for n_way={cfg.n_way}")
    q_classes, q_imgs, q_labels, q_names = _query_images(query_dir, classes)
    device = next(iter(meta.values())).device
    sx = torch.stack([torch.as_tensor(i).float() for i in s_imgs]).unsqueeze(0).to(device)
    sy = torch.as_tensor(s_labels).long().unsqueeze(0).to(device)
    qx = torch.stack([torch.as_tensor(i).float() for i in q_imgs]).unsqueeze(0).to(device)
    qy = torch.as_tensor(q_labels if q_labels is not None else [0] * len(q_imgs)).long().unsqueeze(0).to(device)
    batch = _Batch(sx, sy, qx, qy)
    logits = adapt_and_predict(learner, meta, phi, batch, cfg, (EVAL_SEED, 1), [0])[0]
    probs = torch.softmax(logits, -1)
    preds = []
    for j, name in enumerate(q_names):
        p = int(probs[j].argmax())
        preds.append({"image": name, "prediction": classes[p], "probability": float(probs[j, p]),
                      **({"label": classes[q_labels[j]]} if q_labels is not None else {})})
    out = {"classes": classes, "predictions": preds}
    if q_labels is not None:
        out["accuracy"] = sum(p["prediction"] == p["label"] for p in preds) / len(preds)
    return out


class _Batch:
    def __init__(self, support_x, support_y, query_x, query_y):
        self.support_x, self.support_y, self.query_x, self.query_y = support_x, support_y, query_x, query_y


def _query_images(query_dir, classes):
    """Query images, their names, and labels when the folder has class sub-folders."""
    q_classes, imgs, labels, paths = load_image_folder(query_dir, return_paths=True)
    names = [str(Path(p).relative_to(query_dir)) for p in paths]
    if labels is None:
        return None, imgs, None, names
    unknown = [c for c in q_classes if c not in classes]
    if unknown:
        raise ValueError(f"query classes {unknown} are not among the support classes {classes}")
    return q_classes, imgs, [classes.index(q_classes[i]) for i in labels], names
