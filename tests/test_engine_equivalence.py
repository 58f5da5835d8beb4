"""The fast engine (model.reptile.reptile_epoch through TaskLearner, vmap and loop) against
the reference path (model.reference: a plain per-task nn.Module + torch.optim loop), on
the same seed, tasks, inner batches and drop-path masks: same Reptile updates within 1e-5
in float32 with
the SGD task optimizer. With Adam (beta1=0, the paper's) a step is ~lr*sign(g), which turns
float32 summation-order noise in near-zero gradients into lr-sized differences, so Adam is
compared in float64 (where the engines must agree to 1e-9)."""
from dataclasses import dataclass

import pytest
import torch

from model import reference
from model.config import build_config
from model.reptile import reptile_epoch
from model.supernet import SuperNet
from model.task_learner import TaskLearner


@dataclass
class Batch:
    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor


def small_cfg(**kw):
    base = dict(n_way=3, train_shots=4, channels=4, layers=2, reductions=[1], nodes=2, stem_multiplier=2,
                drop_path=0.2, prune_threshold=0.01, inner_steps=3, inner_batch=8, meta_batch=2,
                lr_theta_task=5e-3, lr_alpha_task=5e-3, alpha_weight_decay=1e-3, adam_beta1=0.0,
                temp_start=1.0, temp_end=0.05, seed=11)
    base.update(kw)
    return build_config("smoke", base)


def make_batch(cfg, seed=0, dtype=torch.float32, size=16):
    g = torch.Generator().manual_seed(seed)
    T, n, S = cfg.meta_batch, cfg.n_way, cfg.n_way * cfg.train_shots
    sx = torch.rand(T, S, 1, size, size, generator=g, dtype=dtype)
    sy = torch.arange(n).repeat_interleave(cfg.train_shots).expand(T, S).contiguous()
    qx = torch.rand(T, n, 1, size, size, generator=g, dtype=dtype)
    qy = torch.arange(n).expand(T, n).contiguous()
    return Batch(sx, sy, qx, qy)


CASES = {  # name: (config overrides, dtype, tolerance)
    "sgd-fp32": (dict(task_optimizer="sgd", lr_theta_task=0.1, lr_alpha_task=0.1), torch.float32, 1e-5),
    "adam-fp64": (dict(task_optimizer="adam"), torch.float64, 1e-9),
}


@pytest.mark.parametrize("engine", ["vmap", "loop"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("sharp_alpha", [False, True])
def test_fast_engine_matches_reference_reptile_epoch(engine, case, sharp_alpha):
    torch.manual_seed(0)
    overrides, dtype, tol = CASES[case]
    cfg = small_cfg(engine=engine, **overrides)
    net = SuperNet(cfg, cfg.n_way).to(dtype)
    meta = {k: v.detach().clone() for k, v in net.named_parameters()}
    if sharp_alpha:   # soft pruning switches ops off at the low temperatures of the last steps
        meta["alpha_normal"][:, 0] += 0.3
        meta["alpha_reduce"][:, 4] += 0.3
    batch = make_batch(cfg, dtype=dtype)
    epoch = 3
    ref_meta, ref_adapted, ref_row = reference.reptile_epoch(net, meta, batch, cfg, epoch)

    learner = TaskLearner(net, cfg)
    new_meta, _, _, row = reptile_epoch(learner, meta, {}, {}, batch, cfg, epoch)
    for k, p in meta.items():
        assert not torch.equal(ref_meta[k], p) or k.startswith("stem_bn"), f"reference did not change {k}"
        torch.testing.assert_close(new_meta[k], ref_meta[k], rtol=tol, atol=tol, msg=lambda m: f"{k}: {m}")
    assert row["train_accuracy"] == pytest.approx(ref_row["train_accuracy"])
    assert row["train_loss"] == pytest.approx(ref_row["train_loss"], rel=1e-4, abs=1e-5)


def test_reference_uses_the_keyed_draws():
    """Different epochs draw different batches/masks; the same epoch the same ones."""
    torch.manual_seed(1)
    cfg = small_cfg(meta_batch=1)
    net = SuperNet(cfg, cfg.n_way)
    meta = {k: v.detach().clone() for k, v in net.named_parameters()}
    batch = make_batch(cfg)
    a, _, _ = reference.reptile_epoch(net, meta, batch, cfg, 1)
    b, _, _ = reference.reptile_epoch(net, meta, batch, cfg, 1)
    c, _, _ = reference.reptile_epoch(net, meta, batch, cfg, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.allclose(a["classifier.weight"], c["classifier.weight"])


def test_vmap_skips_exactly_the_ops_pruned_in_every_task():
    """active_ops is the union over tasks of the unpruned ops, and running only those
    gives bitwise the logits of running every op (a pruned op adds an exact zero)."""
    from torch.func import vmap

    from model.task_learner import expand

    torch.manual_seed(0)
    cfg = small_cfg(drop_path=0.0)
    net = SuperNet(cfg, cfg.n_way).double()
    params = expand({k: v.detach() for k, v in net.named_parameters()}, 2)
    params["alpha_normal"][0, :, 0] += 0.3   # task 0 keeps op 0 at T=0.05, task 1 keeps op 1
    params["alpha_normal"][1, :, 1] += 0.3
    active = net.active_ops(params, 0.05)
    assert active["normal"] == tuple((0, 1) for _ in range(net.num_edges))
    assert all(len(edge) == len(cfg.ops) for edge in active["reduce"])   # nothing pruned there
    assert all(len(edge) == len(cfg.ops) for edge in net.active_ops(params, 1.0)["normal"])
    learner = TaskLearner(net, cfg)
    x = make_batch(cfg, dtype=torch.float64).support_x
    full = vmap(lambda p, xi: learner.logits(p, xi, 0.05))(params, x)
    skipped = vmap(lambda p, xi: learner.logits(p, xi, 0.05, active=active))(params, x)
    assert torch.equal(full, skipped)
