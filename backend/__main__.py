"""CLI over StudioClient: submit, status, cancel, resume, delete, evaluate, job, presets,
worker, up. JSON out; exit 2 on a refused config (the message names the field)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from model.config import ConfigError, parse_set

from .errors import AuthError, InvalidState, LimitError, NotFound


def _client():
    from .client import StudioClient

    return StudioClient()


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def cmd_submit(a):
    token = a.token or os.environ.get("LAMANAS_TOKEN")
    print(_client().submit(a.preset, parse_set(a.set), name=a.name, submitter=a.submitter, group=a.group, token=token))


def cmd_status(a):
    c = _client()
    if a.run_id:
        rec = c.get(a.run_id)
        if rec is None:
            raise NotFound(a.run_id)
        _print({**rec, "progress": c.progress(a.run_id)})
    else:
        _print({"runs": c.list_runs(), **c.status()})


def _action(name):
    def run(a):
        getattr(_client(), name)(a.run_id, token=a.token or os.environ.get("LAMANAS_TOKEN"))
        print(f"{name}: {a.run_id}")
    return run


def cmd_evaluate(a):
    print(_client().request_evaluate(a.run_id, a.tasks, a.part, parse_set(a.set)))


def cmd_job(a):
    _print(_client().job(a.job_id))


def cmd_presets(a):
    _print({k: v["description"] for k, v in _client().presets().items()})


def cmd_worker(a):
    from .worker import main

    main(device=a.device, queues=a.queues.split(",") if a.queues else None, name=a.name, loglevel=a.loglevel)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m backend", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("submit", help="validate and enqueue a run; prints its id")
    p.add_argument("--preset", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (JSON value)")
    p.add_argument("--name", default="")
    p.add_argument("--submitter", default=os.environ.get("USER", ""))
    p.add_argument("--group", default=None)
    p.add_argument("--token", default=None)
    p.set_defaults(fn=cmd_submit)
    p = sub.add_parser("status", help="JSON: one run with its progress, or all runs")
    p.add_argument("run_id", nargs="?")
    p.set_defaults(fn=cmd_status)
    for name in ("cancel", "resume", "delete"):
        p = sub.add_parser(name, help=f"{name} a run")
        p.add_argument("run_id")
        p.add_argument("--token", default=None)
        p.set_defaults(fn=_action(name))
    p = sub.add_parser("evaluate", help="re-run a run's meta-test on a worker; prints the job id")
    p.add_argument("run_id")
    p.add_argument("--tasks", type=int, default=None)
    p.add_argument("--part", default="test", help="test, or val to choose meta-test settings")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="meta-test field (e.g. test_steps=12)")
    p.set_defaults(fn=cmd_evaluate)
    p = sub.add_parser("job", help="JSON: an evaluate/episode job")
    p.add_argument("job_id")
    p.set_defaults(fn=cmd_job)
    sub.add_parser("presets", help="preset names and descriptions").set_defaults(fn=cmd_presets)
    p = sub.add_parser("worker", help="a Celery worker (solo pool) with heartbeat and lease reaper")
    p.add_argument("--device", default=os.environ.get("LAMANAS_DEVICE", "auto"), choices=("auto", "cpu", "cuda"))
    p.add_argument("--queues", default=None, help="comma-separated (default: gpu,any or cpu,any)")
    p.add_argument("--name", default=None)
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(fn=cmd_worker)
    sub.add_parser("up", add_help=False, help="redis (if needed) + worker + web app").set_defaults(fn=None)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["up"]:
        from .up import main as up

        return up(argv[1:])
    args = parser().parse_args(argv)
    try:
        args.fn(args)
    except (ConfigError, LimitError) as e:
        for field, msg in e.errors.items():
            print(f"error: {field}: {msg}", file=sys.stderr)
        return 2
    except AuthError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except NotFound as e:
        print(f"error: no run {e}", file=sys.stderr)
        return 4
    except InvalidState as e:
        print(f"error: {e}", file=sys.stderr)
        return 5
    return 0


if __name__ == "__main__":
    sys.exit(main())
