"""Tasks of a meta-batch adapted in parallel processes (`task_workers` > 1).

On a small CPU the supernet's many tiny ops leave a second torch thread idle (the demo's
meta-epoch takes as long on 2 threads as on 1, BENCHMARKS.md), while two processes of one
thread each run side by side at full speed. So `TaskLearner.adapt` may hand contiguous
shards of its tasks to worker processes and adapt the first shard itself. Each task's
randomness is keyed on its task id, so a sharded batch sees the same draws as an
unsharded one; results agree to float rounding (vmap over fewer tasks), and a given
config always shards the same way, so resumed runs stay bitwise identical.

Workers are fresh interpreters (`python -m model.task_pool`, never forked: a forked child
of a process that has run torch ops can hang, and unlike multiprocessing's spawn nothing
re-imports the caller's main script). They start on the first sharded call, talk over a
socket pair in `torch.save` frames read back with `weights_only=True` (no pickle), and
exit when the pool closes or the parent's end of the socket goes away. Adaptation that
must stay in one autograd graph (MAML, phi_update=meta_gradient) never comes here.
"""
from __future__ import annotations

import io
import socket
import subprocess
import sys
import traceback
import weakref
from multiprocessing.connection import Connection

import numpy as np
import torch


def shard_bounds(tasks: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges, sizes differing by at most one, none empty."""
    edges = np.linspace(0, tasks, min(shards, tasks) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges, edges[1:])]


def _send(conn: Connection, obj) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    conn.send_bytes(buf.getbuffer())


def _recv(conn: Connection):
    return torch.load(io.BytesIO(conn.recv_bytes()), weights_only=True)


def serve(fd: int, cfg_json: str) -> None:
    """A worker's loop: adapt each shard it is sent, answer ("ok", result) or ("error", text)."""
    from .config import load_config_json
    from .supernet import SuperNet
    from .task_learner import TaskLearner
    from .train import make_loss, setup_torch

    cfg = load_config_json(cfg_json)
    setup_torch(cfg)
    net = SuperNet(cfg, cfg.n_way)
    conn = Connection(fd)
    # the parent's buffers (e.g. a frozen ResNet stem): θ and α come with every shard,
    # buffers only here, so the worker's net computes exactly what the parent's does
    for name, value in _recv(conn).items():
        module, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(module), leaf, value)
    learner = TaskLearner(net, cfg, make_loss(cfg), task_workers=1)
    while True:
        try:
            msg = _recv(conn)
        except (EOFError, OSError):       # the parent went away
            return
        if msg is None:
            return
        args, kwargs = msg
        try:
            _send(conn, ("ok", learner.adapt(*args, **kwargs)))
        except Exception:                 # report, keep serving: the parent decides
            _send(conn, ("error", traceback.format_exc()))


class TaskPool:
    """`size - 1` worker processes; the caller's process adapts the first shard. `buffers`:
    the caller's `net.named_buffers()`."""

    def __init__(self, cfg, size: int, buffers: dict):
        self.size, self._conns, self._procs = size, [], []
        for _ in range(size - 1):
            ours, theirs = socket.socketpair()
            proc = subprocess.Popen([sys.executable, "-m", "model.task_pool", str(theirs.fileno()), cfg.to_json()],
                                    pass_fds=(theirs.fileno(),))
            theirs.close()
            self._conns.append(Connection(ours.detach()))
            _send(self._conns[-1], buffers)
            self._procs.append(proc)
        self._finalizer = weakref.finalize(self, _shutdown, self._conns, self._procs)

    def adapt(self, local_adapt, params, phi, support_x, support_y, *, task_ids, query_x=None, query_y=None,
              **kwargs):
        """`local_adapt` (TaskLearner.adapt without the pool) over shards of the tasks."""
        bounds = shard_bounds(len(task_ids), self.size)

        def shard(a, b):
            cut = (lambda t: None if t is None else t[a:b])
            return ((_slice(params, a, b), _slice(phi, a, b), support_x[a:b], support_y[a:b]),
                    dict(kwargs, task_ids=list(task_ids[a:b]), query_x=cut(query_x), query_y=cut(query_y)))

        for conn, (a, b) in zip(self._conns, bounds[1:]):
            _send(conn, shard(a, b))
        args, kw = shard(*bounds[0])
        results = [local_adapt(*args, **kw)]
        for conn in self._conns[:len(bounds) - 1]:
            status, payload = _recv(conn)
            if status != "ok":
                raise RuntimeError(f"a task worker failed:\n{payload}")
            results.append(payload)
        return _merge(results, [b - a for a, b in bounds])

    def close(self) -> None:
        self._finalizer()


def _slice(d: dict, a: int, b: int) -> dict:
    return {k: v[a:b] for k, v in d.items()}


def _merge(results: list, sizes: list[int]):
    """Concatenate adapted params, learned φ_i and query logits; task-weighted means of the scalars."""
    adapted = {k: torch.cat([r[0][k] for r in results]) for k in results[0][0]}
    stats = {}
    for k, v in results[0][1].items():
        if isinstance(v, dict):
            stats[k] = {n: torch.cat([r[1][k][n] for r in results]) for n in v}
        elif isinstance(v, torch.Tensor):
            stats[k] = torch.cat([r[1][k] for r in results])
        elif v is None:
            stats[k] = None
        else:
            stats[k] = sum(r[1][k] * s for r, s in zip(results, sizes)) / sum(sizes)
    return adapted, stats


def _shutdown(conns, procs) -> None:
    for conn in conns:
        try:
            _send(conn, None)
            conn.close()
        except OSError:
            pass
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2])
