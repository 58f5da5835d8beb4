"""Times the engine that `model train` / `model evaluate` use — never a private path.

    python -m bench meta_epoch --preset paper-baseline --epochs 5
    python -m bench meta_test  --preset paper-baseline --tasks 40 [--run RUN_DIR]

meta_epoch calls, per epoch, exactly what model.train.train() calls: the TaskSampler's
batch moved to the device, then meta_learner_step(cfg.meta_learner) (Reptile: 
model.reptile.reptile_epoch), then alpha_summary/genotype derivation for the metrics row.
meta_test calls model.evaluate.meta_test (chunks of cfg.eval_chunk tasks adapted together)
and times each chunk through its `evaluation` events.

Prints a human summary and, as the very last line, the JSON result (also written to
--out, default bench/results/<kind>-<preset>-<utc>.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path


def _parser():
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="kind", required=True)
    for name in ("meta_epoch", "meta_test"):
        s = sub.add_parser(name)
        s.add_argument("--preset", default="paper-baseline")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (JSON value)")
        s.add_argument("--engine", default=None, choices=("vmap", "loop"), help="override cfg.engine")
        s.add_argument("--threads", type=int, default=None, help="torch threads (default: cfg.threads, 0 = torch default)")
        s.add_argument("--warmup", type=int, default=1, help="untimed epochs / chunks first")
        s.add_argument("--out", default=None, help="JSON result path")
        s.add_argument("--data-root", default=None)
        s.add_argument("--ops", default="fast", choices=("fast", "plain"),
                       help="plain: the original layouts (NCHW, dilated depthwise kernels) for before/after figures")
        s.add_argument("--profile", action="store_true", help="print a torch.profiler op table of one timed unit")
        if name == "meta_epoch":
            s.add_argument("--epochs", type=int, default=5, help="timed meta-epochs")
        else:
            s.add_argument("--tasks", type=int, default=40, help="timed meta-test tasks")
            s.add_argument("--run", default=None, help="a trained run directory (default: a fresh meta-model)")
    return p


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _memory(learner, cfg) -> dict:
    """Peak RSS of this process; with task workers also the largest worker's and the sum of
    every process's peak (an upper bound on their joint peak: the peaks need not coincide).
    Closes the learner's worker pool, since a worker's peak is readable once it has exited."""
    learner.close()
    out = {"peak_rss_mb": _peak_rss_mb()}
    if cfg.task_workers > 1:
        worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        out.update(peak_rss_worker_mb=worker, peak_rss_sum_mb=out["peak_rss_mb"] + (cfg.task_workers - 1) * worker)
    return out


def _stats(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times),
            "times_s": [round(t, 4) for t in times]}


def _machine() -> dict:
    import torch

    info = {"torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "platform": platform.platform()}
    try:
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
        info["avx512_bf16"] = "avx512_bf16" in flags
    except (OSError, StopIteration):
        pass
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _setup(args):
    import torch

    from model.config import build_config, config_from_dict, parse_set
    from model.evaluate import run_config
    from model.train import setup_torch

    overrides = parse_set(args.set)
    if args.threads is not None:
        overrides["threads"] = args.threads
    if getattr(args, "run", None):   # the run's config; --set may change meta-test fields only
        cfg = run_config(args.run, "test", overrides)
        if args.engine:
            cfg = config_from_dict({"engine": args.engine}, cfg)
    else:
        cfg = build_config(args.preset, {**overrides, **({"engine": args.engine} if args.engine else {})})
    if args.ops == "plain" and cfg.task_workers > 1:   # worker interpreters would run the default ops
        raise SystemExit("--ops plain needs task_workers=1 (worker processes do not see the switch)")
    device = setup_torch(cfg)
    from model import ops, supernet

    ops.DILATED_AS_DENSE = supernet.CHANNELS_LAST = args.ops == "fast"
    return cfg, device, torch


def _effective(cfg, device, dtype="float32") -> dict:
    return {"preset": None, "n_way": cfg.n_way, "train_shots": cfg.train_shots, "k_shot": cfg.k_shot,
            "inner_batch": cfg.inner_batch, "test_batch": cfg.test_batch, "meta_batch": cfg.meta_batch,
            "channels": cfg.channels, "layers": cfg.layers, "nodes": cfg.nodes, "inner_steps": cfg.inner_steps,
            "test_steps": cfg.test_steps, "eval_chunk": cfg.eval_chunk, "engine": cfg.engine,
            "task_workers": cfg.task_workers, "threads": cfg.threads, "dtype": dtype,
            "loss": cfg.loss, "phi_update": cfg.phi_update, "meta_learner": cfg.meta_learner,
            "drop_path": cfg.drop_path, "prune_threshold": cfg.prune_threshold, "device": str(device)}


def _gpu_mem(torch) -> dict:
    if not torch.cuda.is_available():
        return {}
    return {"gpu_peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20}


def _sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_meta_epoch(args) -> dict:
    cfg, device, torch = _setup(args)
    from model import genotypes
    from model.supernet import alpha_summary, count_params
    from model.train import on_device, prepare

    _, sampler, net, meta, phi, learner, step = prepare(cfg, args.data_root, device)
    meta_state: dict = {}
    times, rows = [], []

    def one(epoch):
        nonlocal meta, phi, meta_state
        _sync(torch, device)
        t0 = time.perf_counter()
        batch = on_device(sampler.tasks(epoch, range(cfg.meta_batch)), device)
        meta, phi, meta_state, row = step(learner, meta, phi, meta_state, batch, cfg, epoch)
        genotypes.derive(alpha_summary(net, meta), cfg.pairwise_alpha)
        _sync(torch, device)
        return time.perf_counter() - t0, row

    total = args.warmup + args.epochs
    for epoch in range(1, total + 1):
        if args.profile and epoch == total:
            _profile(torch, lambda: one(epoch))
            continue
        dt, row = one(epoch)
        print(f"  epoch {epoch}{' (warm-up)' if epoch <= args.warmup else ''}: {dt:.3f} s  "
              f"train_acc={row['train_accuracy']:.3f}", file=sys.stderr, flush=True)
        if epoch > args.warmup:
            times.append(dt)
            rows.append(row)
    st = _stats(times)
    per_epoch_imgs = cfg.meta_batch * cfg.inner_steps * (cfg.inner_batch or cfg.n_way * cfg.train_shots)
    res = {"kind": "meta_epoch", **st, "tasks_per_s": cfg.meta_batch / st["median_s"],
           "images_per_s": per_epoch_imgs / st["median_s"], "images_per_epoch": per_epoch_imgs,
           **_memory(learner, cfg), **_gpu_mem(torch),
           "num_params": count_params(net, meta)["weights"], "last_train_accuracy": rows[-1]["train_accuracy"] if rows else None}
    return res, cfg, device


def bench_meta_test(args) -> dict:
    cfg, device, torch = _setup(args)
    from model.data import load_omniglot, resolve_data_root
    from model.evaluate import load_run, meta_test
    from model.task_learner import TaskLearner
    from model.train import build, make_loss

    data = load_omniglot(resolve_data_root(args.data_root))
    if args.run:
        _, learner, meta, phi = load_run(args.run, device=str(device), cfg=cfg)   # cfg: _setup's, with --set/--engine
    else:
        net, meta = build(cfg, device)
        loss = make_loss(cfg)
        phi = {k: v.to(device) for k, v in loss.init_phi(torch.Generator().manual_seed(cfg.seed)).items()}
        learner = TaskLearner(net, cfg, loss)
    chunk = cfg.eval_chunk
    if args.warmup:
        meta_test(learner, meta, phi, data, cfg, min(chunk, args.tasks))
    stamps = []

    def on_event(e):
        _sync(torch, device)
        stamps.append((time.perf_counter(), e["done"]))
        print(f"  {e['done']}/{e['total']} tasks: {time.perf_counter() - t0:.2f} s", file=sys.stderr, flush=True)

    if args.profile:
        _profile(torch, lambda: meta_test(learner, meta, phi, data, cfg, min(chunk, args.tasks)))
    t0 = time.perf_counter()
    stamps.append((t0, 0))
    result = meta_test(learner, meta, phi, data, cfg, args.tasks, on_event=on_event)
    per_task = [(b[0] - a[0]) / (b[1] - a[1]) for a, b in zip(stamps, stamps[1:])]
    st = _stats(per_task)
    st["per_chunk_s"] = [round(b[0] - a[0], 3) for a, b in zip(stamps, stamps[1:])]
    imgs = cfg.test_steps * (cfg.test_batch or cfg.n_way * cfg.k_shot)
    res = {"kind": "meta_test", **st, "unit": "seconds per task (chunk time / chunk size)",
           "tasks_per_s": 1.0 / st["median_s"], "images_per_s": imgs / st["median_s"],
           "total_s": stamps[-1][0] - t0, "tasks": result["tasks"], "test_accuracy": result["test_accuracy"],
           "run": args.run, **_memory(learner, cfg), **_gpu_mem(torch)}
    return res, cfg, device


def _profile(torch, fn):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    fn = bench_meta_epoch if args.kind == "meta_epoch" else bench_meta_test
    res, cfg, device = fn(args)
    eff = _effective(cfg, device)
    eff["preset"] = None if getattr(args, "run", None) else args.preset
    label = f"run {args.run}" if eff["preset"] is None else args.preset
    res = {**res, "config": eff, **{k: eff[k] for k in ("n_way", "inner_batch", "meta_batch", "channels",
                                                      "inner_steps", "engine", "dtype")}, "ops": args.ops,
           "machine": _machine(), "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
           "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(f"{args.kind} [{label}, engine={cfg.engine}, ops={args.ops}]: median {res['median_s']:.3f} s "
          f"(min {res['min_s']:.3f}, max {res['max_s']:.3f}, n={res['n']}), {res['tasks_per_s']:.2f} tasks/s, "
          f"{res['images_per_s']:.1f} images/s, peak RSS {res['peak_rss_mb']:.0f} MB"
          + (f" (+ workers: ≤ {res['peak_rss_sum_mb']:.0f} MB in all)" if "peak_rss_sum_mb" in res else ""), file=sys.stderr)
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / (
        f"{args.kind}-{eff['preset'] or Path(args.run).name}-{cfg.engine}-{args.ops}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res))
    return 0
