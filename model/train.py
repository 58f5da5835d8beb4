"""Meta-training: the loop, the run directory, checkpoints and events.

`train()` is what the CLI and the Celery worker call. It reports through `on_event`
(JSON-serialisable dicts) and checks `should_cancel()` after every meta-epoch, so a
worker can stream progress and stop cooperatively. Every random draw is keyed on
(seed, epoch, task), so `resume=True` from a checkpoint reproduces an unbroken run
bit for bit on the CPU with the same thread count.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Callable

import torch

from . import genotypes
from .config import SCHEMA_VERSION, Config, load_config_json
from .data import TaskSampler, load_omniglot, resolve_data_root
from .supernet import SuperNet, alpha_summary, count_params
from .task_learner import TaskLearner

CHECKPOINT = "checkpoint.pt"


class Cancelled(Exception):
    """Raised by train()/evaluate() when should_cancel() returned True."""


# ---- small file helpers ---------------------------------------------------------------

def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, last_epoch: int) -> None:
    """Keep the rows of epochs <= last_epoch (what the checkpoint has seen)."""
    rows = [r for r in read_metrics(run_dir) if r["epoch"] <= last_epoch]
    atomic_write_text(Path(run_dir) / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


# ---- torch setup ----------------------------------------------------------------------

def resolve_device(cfg: Config) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device: cuda was asked for, but torch sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


def setup_torch(cfg: Config) -> torch.device:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also NaN-fills every new tensor (to expose reads of uninitialised
    # memory); that fill was 12% of a demo meta-epoch (BENCHMARKS.md) and buys nothing
    # for results, which no kernel here computes from uninitialised memory.
    torch.utils.deterministic.fill_uninitialized_memory = False
    return resolve_device(cfg)


def on_device(batch, device):
    """A TaskBatch with its tensors moved to `device`."""
    return dataclasses.replace(batch, **{f: getattr(batch, f).to(device) for f in ("support_x", "support_y", "query_x", "query_y")})


def meta_lrs(cfg: Config, epoch: int) -> tuple[float, float]:
    """Meta learning rates at `epoch` (1-based); `linear` decays them to 0 at the end."""
    scale = 1.0 if cfg.meta_lr_schedule == "constant" else 1.0 - (epoch - 1) / cfg.meta_epochs
    return cfg.lr_theta_meta * scale, cfg.lr_alpha_meta * scale


def build(cfg: Config, device) -> tuple[SuperNet, dict]:
    """The supernet and its initial meta-parameters, seeded by cfg.seed."""
    torch.manual_seed(cfg.seed)
    net = SuperNet(cfg, cfg.n_way).to(device)
    meta = {k: v.detach().clone() for k, v in net.named_parameters()}
    return net, meta


def make_loss(cfg: Config):
    """The task loss object; learned losses come from model.losses when configured."""
    if cfg.loss == "ce":
        from .task_learner import CrossEntropy

        return CrossEntropy()
    from .losses import make_task_loss

    return make_task_loss(cfg, cfg.n_way)


# ---- one meta-epoch ---------------------------------------------------------------------
# A meta-learner is a function (learner, meta, phi, meta_state, batch, cfg, epoch) ->
# (meta, phi, meta_state, metrics row). meta_state holds what it carries across epochs
# (e.g. a meta-optimizer's moments) as a dict of tensors; it is checkpointed.

def meta_learner_step(name: str):
    if name == "reptile":
        from .reptile import reptile_epoch

        return reptile_epoch
    from .maml import maml_epoch

    return maml_epoch


def prepare(cfg: Config, data_root, device):
    """Everything a meta-training loop needs, fresh from cfg.seed: (data, train sampler,
    supernet, meta-parameters, φ, task learner, meta-learner step). The bench uses it too."""
    data = load_omniglot(resolve_data_root(data_root))
    sampler = TaskSampler(data, cfg.split, "train", cfg.n_way, cfg.train_shots, cfg.q_query, cfg.rotations, cfg.seed)
    net, meta = build(cfg, device)
    loss = make_loss(cfg)
    phi = {k: v.to(device) for k, v in loss.init_phi(torch.Generator().manual_seed(cfg.seed)).items()}
    learner = TaskLearner(net, cfg, loss)
    return data, sampler, net, meta, phi, learner, meta_learner_step(cfg.meta_learner)


# ---- the loop ---------------------------------------------------------------------------

def train(cfg: Config, run_dir, *, resume: bool = False, data_root=None,
          on_event: Callable[[dict], None] | None = None,
          should_cancel: Callable[[], bool] | None = None, progress: bool = False) -> dict:
    emit = on_event or (lambda e: None)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / CHECKPOINT
    if resume and (run_dir / "config.json").exists():
        stored = load_config_json((run_dir / "config.json").read_text())
        if stored.to_dict() != cfg.to_dict():
            raise ValueError(f"--resume: the config differs from the one stored in {run_dir / 'config.json'}")
    device = setup_torch(cfg)
    t_start = time.time()
    data, sampler, net, meta, phi, learner, meta_step = prepare(cfg, data_root, device)
    start_epoch, wall_before, meta_state = 1, 0.0, {}
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        meta, phi, meta_state = ck["meta"], ck["phi"], ck["meta_state"]
        start_epoch, wall_before = ck["epoch"] + 1, ck["wall_seconds"]
        torch.set_rng_state(ck["rng_torch"])
        truncate_metrics(run_dir, ck["epoch"])
    else:
        atomic_write_text(run_dir / "config.json", json.dumps({"schema_version": SCHEMA_VERSION, **cfg.to_dict()}, indent=2))
        atomic_write_text(run_dir / "metrics.jsonl", "")
        run_info = {"schema_version": SCHEMA_VERSION, "data_fingerprint": data.fingerprint, "device": str(device),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "warnings": list(net.warnings)}
        atomic_write_text(run_dir / "run.json", json.dumps(run_info, indent=2))
    landscapes = _landscape_recorder(run_dir, learner.loss, cfg, start_epoch - 1)
    emit({"event": "start", "start_epoch": start_epoch, "device": str(device), "num_params": count_params(net, meta)["weights"]})

    bar = _progress_bar(progress, cfg.meta_epochs, start_epoch - 1, "meta-train")
    wall0 = time.time()
    with open(run_dir / "metrics.jsonl", "a") as metrics_file:
        for epoch in range(start_epoch, cfg.meta_epochs + 1):
            t0 = time.time()
            batch = on_device(sampler.tasks(epoch, range(cfg.meta_batch)), device)
            meta, phi, meta_state, row = meta_step(learner, meta, phi, meta_state, batch, cfg, epoch)
            alpha = alpha_summary(net, meta)
            row = {"epoch": epoch, **row, "seconds": time.time() - t0, "alpha": alpha,
                   "genotype": genotypes.derive(alpha, cfg.pairwise_alpha)}
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            emit({"event": "epoch", "row": row})
            if landscapes and landscapes.due(epoch):
                emit({"event": "landscape", "snapshot": landscapes.record(epoch, phi, _reference_batch(learner, meta, batch, cfg))})
            if epoch % cfg.checkpoint_every == 0 or epoch == cfg.meta_epochs:
                save_checkpoint(ckpt_path, epoch, meta, phi, meta_state, wall_before + time.time() - wall0)
                emit({"event": "checkpoint", "epoch": epoch})
            if bar:
                bar.update(1)
                bar.set_postfix(acc=f"{row['train_accuracy']:.3f}", loss=f"{row['train_loss']:.3f}")
            if should_cancel and should_cancel():
                raise Cancelled(f"cancelled after meta-epoch {epoch}")
    if bar:
        bar.close()
    train_wall = wall_before + time.time() - wall0

    from .evaluate import meta_test

    genotype = genotypes.derive(alpha_summary(net, meta), cfg.pairwise_alpha)
    atomic_write_text(run_dir / "genotype.json", genotypes.to_json(genotype))
    t_eval = time.time()
    result = meta_test(learner, meta, phi, data, cfg, cfg.test_tasks, on_event=emit,
                       should_cancel=should_cancel, progress=progress)
    learner.close()   # task workers (an exception leaves it to the learner's finalizer)
    rows = read_metrics(run_dir)
    counts = count_params(net, meta, cfg.temp_end)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "test_accuracy": result["test_accuracy"], "test_ci95": result["test_ci95"], "test_tasks": result["tasks"],
        "train_accuracy": rows[-1]["train_accuracy"] if rows else None,
        "num_params": counts["weights"], "active_params": counts["active_weights"],
        "loss_params": sum(v.numel() for v in phi.values()),
        "meta_epochs": cfg.meta_epochs, "wall_seconds": train_wall, "eval_seconds": time.time() - t_eval,
        "total_seconds": time.time() - t_start,
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    emit({"event": "done", "summary": summary})
    return summary


def _landscape_recorder(run_dir: Path, loss, cfg: Config, last_epoch: int):
    """Loss-landscape snapshots for learned losses with landscape_every > 0, else None.
    Snapshots after `last_epoch` (the checkpoint's; 0 for a fresh run) are dropped; the
    recorder re-reads the stored plane, so a resumed run stays in it."""
    if not getattr(loss, "learned", False) or cfg.landscape_every <= 0:
        return None
    from .landscape import LandscapeRecorder, truncate_snapshots

    truncate_snapshots(run_dir, last_epoch)
    return LandscapeRecorder.from_config(run_dir, loss, cfg)


def _reference_batch(learner: TaskLearner, meta: dict, batch, cfg: Config):
    """The landscapes' fixed reference batch, taken once (first snapshot): the meta-model's
    logits on the first task's support set of that epoch, and its labels."""
    def ref():
        with torch.no_grad():
            return learner.logits(meta, batch.support_x[0], cfg.temp_end).cpu(), batch.support_y[0].cpu()
    return ref


def save_checkpoint(path: Path, epoch: int, meta: dict, phi: dict, meta_state: dict, wall_seconds: float) -> None:
    """θ, α, φ, the meta-learner's state and the RNG state, written atomically."""
    state = {"epoch": epoch, "meta": _cpu(meta), "phi": _cpu(phi), "meta_state": _cpu(meta_state),
             "wall_seconds": float(wall_seconds), "rng_torch": torch.get_rng_state()}
    atomic_torch_save(state, path)


def _cpu(tree):
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _cpu(v) for k, v in tree.items()}
    return tree


def _progress_bar(enabled: bool, total: int, initial: int, desc: str, unit: str = "epoch"):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
