"""Loss landscapes (model/landscape.py): deterministic grids, one plane per run, PNGs."""
from __future__ import annotations

import json

import pytest
import torch

from model import landscape as L
from model.losses import CrossEntropy, FNNLoss, LSTMLoss, per_sample_ce

torch.set_num_threads(1)
N_WAY = 4


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def ref_batch(seed=0):
    y = torch.arange(N_WAY).repeat(2)
    return 2 * torch.randn(len(y), N_WAY, generator=gen(seed)), y


@pytest.mark.parametrize("loss", [FNNLoss(N_WAY, 8), LSTMLoss(N_WAY, 6, 2, state="across_steps")], ids=repr)
@pytest.mark.parametrize("mode", ["svd", "coords"])
def test_grid_is_identical_for_identical_phi(loss, mode):
    phi = loss.init_phi(gen(1))
    plane = L.make_plane(loss, phi, *ref_batch(), mode=mode)
    a = L.snapshot(loss, phi, plane, 7, epoch=3)
    b = L.snapshot(loss, {k: v.clone() for k, v in phi.items()}, plane, 7, epoch=3)
    assert a == b
    assert len(a["loss"]) == 7 and len(a["loss"][0]) == 7 and a["grid_size"] == 7
    json.dumps(a)   # JSON-able
    other = loss.init_phi(gen(2))
    assert L.snapshot(loss, other, plane, 7, epoch=3)["loss"] != a["loss"]


def test_grid_values_are_the_loss_on_the_shifted_logits():
    loss = FNNLoss(N_WAY, 8)
    phi = loss.init_phi(gen(1))
    z0, y0 = ref_batch()
    plane = L.make_plane(loss, phi, z0, y0, mode="svd")
    axis, values, ce = L.landscape_grid(loss, phi, plane, 5)
    d = torch.tensor(plane["directions"], dtype=torch.float64)
    i, j = 1, 3                                   # value at (a = axis[j], b = axis[i])
    z = z0.double() + axis[j] * d[0] + axis[i] * d[1]
    phi64 = {k: v.double() for k, v in phi.items()}
    assert torch.allclose(values[i, j], loss(phi64, z, y0)[0])
    assert torch.allclose(ce[i, j], per_sample_ce(z, y0).mean())
    assert torch.allclose(ce[2, 2], per_sample_ce(z0.double(), y0).mean())   # the centre is z0


def test_svd_directions_are_the_first_layer_principal_axes():
    loss = FNNLoss(N_WAY, 8)
    phi = loss.init_phi(gen(1))
    plane = L.make_plane(loss, phi, *ref_batch(), mode="svd")
    d = torch.tensor(plane["directions"], dtype=torch.float64)
    assert torch.allclose(d @ d.T, torch.eye(2, dtype=d.dtype), atol=1e-8)
    w = phi["embed.weight"][:, :N_WAY].double()
    top = torch.linalg.svd(w, full_matrices=False).Vh[:2]
    assert torch.allclose((d * top).sum(1).abs(), torch.ones(2, dtype=d.dtype), atol=1e-8)
    for row in d:                                 # sign convention: largest entry positive
        assert row[row.abs().argmax()] > 0


def test_recorder_keeps_one_plane_and_survives_resume(tmp_path):
    loss = FNNLoss(N_WAY, 8)
    phi = loss.init_phi(gen(1))
    rec = L.LandscapeRecorder(tmp_path, loss, every=2, mode="svd", grid=5)
    assert [e for e in range(1, 7) if rec.due(e)] == [2, 4, 6]
    rec.record(2, phi, lambda: ref_batch(0))
    phi2 = {k: v + 0.1 for k, v in phi.items()}   # φ changed: the plane must not
    rec.record(4, phi2, lambda: ref_batch(1))
    snaps = L.read_snapshots(tmp_path)
    assert [s["epoch"] for s in snaps] == [2, 4] and snaps[0]["plane"] == snaps[1]["plane"]
    resumed = L.LandscapeRecorder(tmp_path, loss, every=2, mode="svd", grid=5)
    assert resumed.plane == snaps[0]["plane"]
    L.truncate_snapshots(tmp_path, 3)
    assert [s["epoch"] for s in L.read_snapshots(tmp_path)] == [2]
    assert not L.LandscapeRecorder(tmp_path, CrossEntropy(N_WAY), every=2).due(2)


def test_render_landscapes_writes_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    loss = LSTMLoss(N_WAY, 6, 2)
    rec = L.LandscapeRecorder(tmp_path / "run", loss, every=1, grid=5)
    (tmp_path / "run").mkdir()
    for epoch in (1, 2):
        rec.record(epoch, loss.init_phi(gen(epoch)), ref_batch)
    paths = L.render_landscapes(tmp_path / "run", tmp_path / "out")
    assert len(paths) == 3
    for p in paths:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileNotFoundError):
        L.render_landscapes(tmp_path / "out", tmp_path / "out2")


def test_cli_renders_a_run_directory(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from model.__main__ import main

    loss = FNNLoss(N_WAY, 8)
    rec = L.LandscapeRecorder(tmp_path, loss, every=1, grid=5)
    rec.record(1, loss.init_phi(gen(1)), ref_batch)
    assert main(["landscape", str(tmp_path), "--out", str(tmp_path / "png")]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 2 and all(p.endswith(".png") for p in printed)
