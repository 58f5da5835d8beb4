"""Command line: python -m model {train,evaluate,presets,episode,landscape,download-data}."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import ConfigError, build_config, load_config_json, parse_set
from .presets import PRESETS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model", description="LAMANAS research core")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="meta-train a run")
    t.add_argument("--preset", default="demo", help=f"one of: {', '.join(PRESETS)}")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (value parsed as JSON)")
    t.add_argument("--out", required=True, help="run directory (one per run)")
    t.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    t.add_argument("--data-root", default=None)

    e = sub.add_parser("evaluate", help="meta-test a trained run")
    e.add_argument("run_dir")
    e.add_argument("--tasks", type=int, default=None)
    e.add_argument("--part", choices=("test", "val"), default="test",
                   help="score test classes, or val classes to choose meta-test settings")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a meta-test field (test_steps, test_batch, q_query, eval_chunk, task_workers, threads, device)")
    e.add_argument("--data-root", default=None)

    sub.add_parser("presets", help="list the presets")

    ep = sub.add_parser("episode", help="adapt a trained run to your own task and predict")
    ep.add_argument("run_dir")
    ep.add_argument("--support", required=True, help="folder with one sub-folder of images per class")
    ep.add_argument("--query", required=True, help="folder of query images (in class sub-folders when labels are known)")

    ls = sub.add_parser("landscape", help="render stored loss-landscape snapshots as PNG contour plots")
    ls.add_argument("run_dir")
    ls.add_argument("--out", required=True)

    d = sub.add_parser("download-data", help="download Omniglot with torchvision (needs internet)")
    d.add_argument("--data-root", required=True)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ConfigError as err:
        print("invalid config:", file=sys.stderr)
        for field, msg in err.errors.items():
            print(f"  {field}: {msg}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.command == "presets":
        for name, p in PRESETS.items():
            print(f"{name:22s} {p['description']}")
        return 0
    if args.command == "train":
        from .train import train

        out = Path(args.out)
        if args.resume and (out / "config.json").exists():
            cfg = load_config_json((out / "config.json").read_text())
        else:
            if (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").stat().st_size:
                raise ValueError(f"{out} already holds a run; pick a new --out or pass --resume")
            cfg = build_config(args.preset, parse_set(args.set))
        summary = train(cfg, out, resume=args.resume, data_root=args.data_root, progress=True)
        print(json.dumps(summary, indent=2))
        return 0
    if args.command == "evaluate":
        from .evaluate import evaluate

        result = evaluate(args.run_dir, args.tasks, args.data_root, progress=True, part=args.part,
                          overrides=parse_set(args.set))
        print(json.dumps(result, indent=2))
        return 0
    if args.command == "episode":
        from .evaluate import episode

        print(json.dumps(episode(args.run_dir, args.support, args.query), indent=2))
        return 0
    if args.command == "landscape":
        from .landscape import render_landscapes

        for path in render_landscapes(args.run_dir, args.out):
            print(path)
        return 0
    if args.command == "download-data":
        from .data import download_omniglot

        print(download_omniglot(args.data_root))
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
