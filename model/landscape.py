"""Loss landscapes of a learned loss (paper Fig. 3): stored grids and their contour plots.

A landscape is the learned loss L_φ(z0 + a·d1 + b·d2, y0) over a square grid of (a, b),
where z0 (N, n) are a fixed reference batch's logits, y0 its fixed labels, and d1, d2 two
directions in logit space added to every sample's logits:

- `svd`: the top two right-singular vectors of the loss network's first-layer columns that
  read the logits (H × n), as the paper; signs fixed (largest entry positive);
- `coords`: two logit coordinates (unit vectors).

The plane (z0, y0, d1, d2, extent) is taken at the first snapshot and reused for every
later one, so all snapshots of a run lie in one plane and differ only through φ. Nothing
is sampled: the same φ gives the same grid (the published plot drew a random label per
grid point, so its maps of one φ correlated at ≈ 0.2). Cross-entropy on the same grid is
stored as the reference.

Snapshots are JSON lines in `<run_dir>/landscapes.jsonl`; `render_landscapes` draws them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor
from torch.func import vmap

from .losses import TaskLoss, per_sample_ce

FILENAME = "landscapes.jsonl"


def make_plane(loss: TaskLoss, phi: dict, ref_logits: Tensor, ref_labels: Tensor, mode: str = "svd",
               coords: tuple[int, int] = (0, 1), extent: float | None = None) -> dict:
    """The plane of all snapshots of a run, as JSON-able lists."""
    n = loss.n_way
    loss.check_logits(ref_logits)
    weights = loss.first_layer_logit_weights(phi)
    if mode == "svd" and weights is not None and n >= 2:
        _, _, vh = torch.linalg.svd(weights.detach().cpu().double(), full_matrices=False)
        dirs = vh[:2]
        pivot = dirs.abs().argmax(1)
        dirs = dirs * torch.sign(dirs[torch.arange(2), pivot])[:, None]   # sign convention
    elif mode in ("svd", "coords"):
        mode = "coords"                      # CE has no first layer: fall back to coordinates
        dirs = torch.eye(n, dtype=torch.float64)[list(coords)]
    else:
        raise ValueError(f"landscape mode must be svd or coords, got {mode!r}")
    z0 = ref_logits.detach().cpu().double()
    if extent is None:  # wide enough to cross the reference logits' spread, at least ±3
        extent = max(3.0, 2.0 * float(z0.std()))
    return {"mode": mode, "directions": dirs.tolist(), "ref_logits": z0.tolist(),
            "labels": [int(v) for v in ref_labels], "extent": round(float(extent), 6)}


def landscape_grid(loss: TaskLoss, phi: dict, plane: dict, grid: int) -> tuple[Tensor, Tensor, Tensor]:
    """(axis (G,), learned-loss grid (G, G), CE grid (G, G)) in float64; grid[i][j] is the
    value at (a = axis[j], b = axis[i]) (matplotlib's contour convention)."""
    r = plane["extent"]
    axis = torch.linspace(-r, r, grid, dtype=torch.float64)
    d = torch.tensor(plane["directions"], dtype=torch.float64)
    z0 = torch.tensor(plane["ref_logits"], dtype=torch.float64)
    y0 = torch.tensor(plane["labels"], dtype=torch.long)
    b, a = torch.meshgrid(axis, axis, indexing="ij")
    offsets = a[..., None] * d[0] + b[..., None] * d[1]             # (G, G, n)
    logits = (z0 + offsets.reshape(-1, 1, d.shape[1]))               # (G*G, N, n)
    phi64 = {k: v.detach().cpu().double() for k, v in phi.items()}
    state = loss.init_state(phi64)
    with torch.no_grad():
        values = vmap(lambda z: loss(phi64, z, y0, state)[0])(logits)
        ce = vmap(lambda z: per_sample_ce(z, y0).mean())(logits)
    return axis, values.reshape(grid, grid), ce.reshape(grid, grid)


def snapshot(loss: TaskLoss, phi: dict, plane: dict, grid: int, epoch: int) -> dict:
    """One JSON-able snapshot (what `landscapes.jsonl` and the `landscape` event carry)."""
    axis, values, ce = landscape_grid(loss, phi, plane, grid)
    r = plane["extent"]
    return {"epoch": int(epoch), "mode": plane["mode"], "extent": [-r, r, -r, r], "grid_size": int(grid),
            "axis": axis.tolist(), "loss": values.tolist(), "ce": ce.tolist(), "plane": plane}


def read_snapshots(run_dir) -> list[dict]:
    path = Path(run_dir) / FILENAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_snapshot(run_dir, snap: dict) -> None:
    with open(Path(run_dir) / FILENAME, "a") as f:
        f.write(json.dumps(snap) + "\n")


def truncate_snapshots(run_dir, last_epoch: int) -> None:
    """On resume: drop snapshots the checkpoint has not seen (like metrics.jsonl)."""
    path = Path(run_dir) / FILENAME
    if not path.exists():
        return
    keep = [s for s in read_snapshots(run_dir) if s["epoch"] <= last_epoch]
    tmp = path.with_name(f".{FILENAME}.tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps(s) + "\n" for s in keep))
    os.replace(tmp, path)


class LandscapeRecorder:
    """Every `every` meta-epochs, one snapshot of the current φ (thin: holds the plane)."""

    def __init__(self, run_dir, loss: TaskLoss, every: int, mode: str = "svd", grid: int = 25):
        self.run_dir, self.loss, self.every, self.mode, self.grid = Path(run_dir), loss, every, mode, grid
        stored = read_snapshots(run_dir)
        self.plane = stored[0]["plane"] if stored else None   # resume: same plane

    @classmethod
    def from_config(cls, run_dir, loss: TaskLoss, cfg) -> "LandscapeRecorder":
        return cls(run_dir, loss, cfg.landscape_every, cfg.landscape_mode, cfg.landscape_grid)

    def due(self, epoch: int) -> bool:
        return self.loss.learned and self.every > 0 and epoch % self.every == 0

    def record(self, epoch: int, phi: dict, ref_batch) -> dict:
        """`ref_batch()` -> (logits (N, n), labels (N,)); called only for the first snapshot."""
        if self.plane is None:
            self.plane = make_plane(self.loss, phi, *ref_batch(), mode=self.mode)
        snap = snapshot(self.loss, phi, self.plane, self.grid, epoch)
        append_snapshot(self.run_dir, snap)
        return snap


def render_landscapes(run_dir, out_dir) -> list[str]:
    """Contour plots (PNG) of the stored snapshots: one file per snapshot (learned loss and
    CE side by side) and `landscapes.png` with every snapshot's learned loss in a row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    snaps = read_snapshots(run_dir)
    if not snaps:
        raise FileNotFoundError(f"no landscape snapshots in {Path(run_dir) / FILENAME} "
                                "(train a learned loss with landscape_every > 0)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    label = "SVD direction" if snaps[0]["mode"] == "svd" else "logit coordinate"
    paths = []

    def panel(ax, snap, key, title):
        cs = ax.contourf(snap["axis"], snap["axis"], snap[key], levels=20, cmap="viridis")
        ax.contour(snap["axis"], snap["axis"], snap[key], levels=20, colors="k", linewidths=0.3)
        ax.plot(0, 0, "r+")          # the reference batch's logits
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"{label} 1")
        ax.set_ylabel(f"{label} 2")
        ax.figure.colorbar(cs, ax=ax)

    for snap in snaps:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
        panel(axes[0], snap, "loss", f"learned loss, meta-epoch {snap['epoch']}")
        panel(axes[1], snap, "ce", "cross-entropy (reference)")
        fig.tight_layout()
        path = out / f"landscape_epoch{snap['epoch']:06d}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(str(path))

    fig, axes = plt.subplots(1, len(snaps), figsize=(3.6 * len(snaps), 3.4), squeeze=False)
    for ax, snap in zip(axes[0], snaps):
        panel(ax, snap, "loss", f"meta-epoch {snap['epoch']}")
    fig.tight_layout()
    path = out / "landscapes.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    paths.append(str(path))
    return paths
