"""Evaluate and episode requests, run by workers (never in the web process).

A job record {id, kind, run_id, status, result, error} lives at `<prefix>:job:<id>`.
Episode images travel base64-encoded inside the (JSON) task message and are written to a
temporary folder in the layout model.evaluate.episode reads.
"""
from __future__ import annotations

import base64
import logging
import re
import tempfile
import time
from pathlib import Path

from .context import WorkerContext

log = logging.getLogger(__name__)
SAFE_LABEL = re.compile(r"[\w][\w .+-]{0,63}")


def check_label(label: str) -> str:
    if not isinstance(label, str) or not SAFE_LABEL.fullmatch(label):
        raise ValueError(f"class label {label!r}: use letters, digits, spaces, '.', '+', '-' or '_' (max 64)")
    return label


def image_ext(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    raise ValueError("images must be PNG or JPEG")


def encode_images(images: list[bytes]) -> list[str]:
    for data in images:
        image_ext(data)
    return [base64.b64encode(d).decode("ascii") for d in images]


def write_episode(root: Path, support: dict[str, list[str]], query: list[str], labels: list[str] | None):
    """support/<class>/sNNN.ext and query/qNNN.ext (or query/<label>/qNNN.ext)."""
    for label, images in support.items():
        folder = root / "support" / check_label(label)
        folder.mkdir(parents=True)
        for i, b64 in enumerate(images):
            data = base64.b64decode(b64)
            (folder / f"s{i:03d}{image_ext(data)}").write_bytes(data)
    for i, b64 in enumerate(query):
        data = base64.b64decode(b64)
        folder = root / "query" / (check_label(labels[i]) if labels else "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"q{i:03d}{image_ext(data)}").write_bytes(data)
    return root / "support", root / "query"


def _query_index(name: str) -> int:
    return int(re.search(r"q(\d+)\.\w+$", str(name)).group(1))


def run_job(ctx: WorkerContext, job_id: str, work) -> str:
    """Run `work()` and record its result or error in the job record."""
    ctx.store.update_job(job_id, status="running", started=time.time(), worker=ctx.name)
    try:
        result = work()
    except Exception as e:
        log.exception("job %s failed", job_id)
        ctx.store.update_job(job_id, status="failed", error=f"{type(e).__name__}: {e}", finished=time.time())
        return "failed"
    ctx.store.update_job(job_id, status="succeeded", result=result, finished=time.time())
    return "succeeded"


def evaluate_job(ctx: WorkerContext, job_id: str, run_id: str, tasks: int | None, part: str = "test",
                 overrides: dict | None = None, evaluate_fn=None) -> str:
    if evaluate_fn is None:
        from model.evaluate import evaluate as evaluate_fn
    return run_job(ctx, job_id, lambda: evaluate_fn(ctx.run_dir(run_id), tasks, ctx.settings.data_root,
                                                    part=part, overrides=overrides or {}))


def episode_job(ctx: WorkerContext, job_id: str, run_id: str, support: dict, query: list, labels=None,
                episode_fn=None) -> str:
    if episode_fn is None:
        from model.evaluate import episode as episode_fn

    def work():
        with tempfile.TemporaryDirectory(prefix="lamanas-episode-") as tmp:
            support_dir, query_dir = write_episode(Path(tmp), support, query, labels)
            result = episode_fn(ctx.run_dir(run_id), support_dir, query_dir)
        for p in result.get("predictions", []):  # back to the order the images were sent in
            p["index"] = _query_index(p["image"])
        result.get("predictions", []).sort(key=lambda p: p["index"])
        return result
    return run_job(ctx, job_id, work)
