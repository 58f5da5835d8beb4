"""MAML (model/maml.py) against independent computations: the query loss after K plain
torch.optim.SGD steps on a deep-copied nn.Module, differentiated by central finite
differences (float64, drop-path 0, pruning 0), torch.optim.Adam for the meta-optimizer,
and a bitwise resume of a smoke run from the CLI."""
import copy
import json
import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from model.config import build_config
from model.maml import maml_epoch, maml_gradients, meta_adam_step
from model.supernet import SuperNet, is_arch
from model.task_learner import TaskLearner, temperatures

torch.set_num_threads(1)  # the test machine is shared

# θ tensors (stem, stem BN, a cell conv, classifier) and α tensors (ops, input pairs)
CHECKED = ("stem_conv.weight", "stem_bn.weight", "cells.0.edges.0.ops.3.convs.0.weight", "classifier.weight",
           "alpha_normal", "alpha_reduce", "alpha_normal_pairs_1")


def maml_cfg(**kw):
    base = dict(n_way=3, channels=4, layers=2, reductions=[1], nodes=2, stem_multiplier=2, drop_path=0.0,
                prune_threshold=0.0, inner_steps=2, inner_batch=0, lr_theta_task=0.1, lr_alpha_task=0.2,
                alpha_weight_decay=1e-3, meta_learner="maml", maml_order="second", task_optimizer="sgd")
    base.update(kw)
    return build_config("smoke", base)


def one_task_batch(T=1, S=6, Q=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return types.SimpleNamespace(
        support_x=torch.rand(T, S, 1, 28, 28, generator=g, dtype=dtype),
        support_y=torch.arange(3).repeat(S // 3).expand(T, S).contiguous(),
        query_x=torch.rand(T, Q, 1, 28, 28, generator=g, dtype=dtype),
        query_y=torch.arange(3).repeat(Q // 3).expand(T, Q).contiguous())


def reference_adapted_net(net, cfg, meta, sx, sy):
    """Φ_K the textbook way: K torch.optim.SGD steps on an nn.Module copy holding `meta`."""
    net = copy.deepcopy(net)
    with torch.no_grad():
        for k, p in net.named_parameters():
            p.copy_(meta[k])
    theta = [p for k, p in net.named_parameters() if not is_arch(k)]
    alpha = [p for k, p in net.named_parameters() if is_arch(k)]
    opt = torch.optim.SGD([{"params": theta, "lr": cfg.lr_theta_task},
                           {"params": alpha, "lr": cfg.lr_alpha_task, "weight_decay": cfg.alpha_weight_decay}])
    for temp in temperatures(cfg, cfg.inner_steps):
        opt.zero_grad()
        F.cross_entropy(net(sx, temp=temp), sy).backward()
        opt.step()
    return net


def reference_query_ce(net, cfg, sx, qx, qy):
    if cfg.bn_mode == "support_stats":
        logits = net(torch.cat([sx, qx]), temp=cfg.temp_end, stats_from=sx.shape[0])[sx.shape[0]:]
    else:
        logits = net(qx, temp=cfg.temp_end)
    return F.cross_entropy(logits, qy)


def query_loss_after_adaptation(net, cfg, meta, b):
    with torch.enable_grad():
        adapted = reference_adapted_net(net, cfg, meta, b.support_x[0], b.support_y[0])
    with torch.no_grad():
        return reference_query_ce(adapted, cfg, b.support_x[0], b.query_x[0], b.query_y[0]).item()


@pytest.fixture(scope="module", params=[("vmap", "transductive"), ("loop", "support_stats")], ids=lambda p: "-".join(p))
def one_task(request):
    engine, bn_mode = request.param
    cfg = maml_cfg(engine=engine, bn_mode=bn_mode)
    torch.manual_seed(0)
    net = SuperNet(cfg, 3).double()
    meta = {k: v.detach().clone() for k, v in net.named_parameters()}
    b = one_task_batch()
    learner = TaskLearner(net, cfg)
    second = maml_gradients(learner, meta, {}, b, cfg, 1, second_order=True)[0]
    first = maml_gradients(learner, meta, {}, b, cfg, 1, second_order=False)[0]
    return cfg, net, meta, b, second, first


def test_second_order_meta_gradient_matches_finite_differences(one_task):
    cfg, net, meta, b, second, _ = one_task
    # The inner loop's gradient jumps where a ReLU/max-pool switches, so the query loss
    # after K steps has small jumps every ~1e-5 in some directions: a tiny eps in float64,
    # and one-sided differences that agree, keep the check on a smooth piece.
    eps = 1e-7
    f = lambda m: query_loss_after_adaptation(net, cfg, m, b)  # noqa: E731
    f0 = f(meta)
    for name in CHECKED:
        g = second[name]
        assert g.abs().max() > 0, f"{name} receives no meta-gradient"
        idx = tuple(torch.nonzero(g.abs() == g.abs().max())[0].tolist())
        plus = {**meta, name: meta[name].clone()}
        plus[name][idx] += eps
        minus = {**meta, name: meta[name].clone()}
        minus[name][idx] -= eps
        fp, fm = f(plus), f(minus)
        fwd, bwd, central = (fp - f0) / eps, (f0 - fm) / eps, (fp - fm) / (2 * eps)
        assert abs(fwd - bwd) < 1e-2 * abs(central) + 1e-5, f"{name}{idx}: not smooth at this eps"
        assert abs(central - g[idx].item()) < 1e-4 * abs(central) + 1e-7, (name, idx, central, g[idx].item())


def test_first_order_is_the_query_gradient_at_the_adapted_point_and_differs(one_task):
    cfg, net, meta, b, second, first = one_task
    adapted = reference_adapted_net(net, cfg, meta, b.support_x[0], b.support_y[0])
    adapted.zero_grad()
    reference_query_ce(adapted, cfg, b.support_x[0], b.query_x[0], b.query_y[0]).backward()
    for k, p in adapted.named_parameters():
        torch.testing.assert_close(first[k], p.grad, rtol=1e-7, atol=1e-10)
    # dropping Φ_K's Jacobian changes the meta-gradient, in θ and in α
    for name in ("stem_conv.weight", "alpha_normal"):
        assert (first[name] - second[name]).abs().max() > 1e-2 * second[name].abs().max(), name


def test_differentiable_adapt_differentiates_the_query_loss_wrt_phi():
    """What phi_update=meta_gradient needs: ∇_φ CE_query through K inner SGD steps with a
    learned loss (FNN), checked by central differences of the same non-differentiable Φ_K."""
    from model.maml import differentiable_adapt
    from model.train import make_loss

    cfg = maml_cfg(loss="fnn", phi_update="meta_gradient", engine="loop")
    torch.manual_seed(0)
    net = SuperNet(cfg, 3).double()
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    loss = make_loss(cfg)
    phi = {k: v.double() for k, v in loss.init_phi(torch.Generator().manual_seed(0)).items()}
    learner = TaskLearner(net, cfg, loss)
    b = one_task_batch()
    sx, sy, qx, qy = b.support_x[0], b.support_y[0], b.query_x[0], b.query_y[0]

    def query_ce(phi_, create_graph):
        adapted, _ = differentiable_adapt(learner, params, phi_, sx, sy, key=(0, 1), task_id=0, steps=cfg.inner_steps,
                                          batch=0, drop_p=0.0, create_graph=create_graph)
        return F.cross_entropy(learner.logits(adapted, qx, cfg.temp_end), qy)

    leaves = {k: v.clone().requires_grad_() for k, v in phi.items()}
    grads = dict(zip(leaves, torch.autograd.grad(query_ce(leaves, True), list(leaves.values()), materialize_grads=True)))
    # (biases may get none: e.g. the output bias only shifts the loss, not its gradient;
    # the finite differences below check that zero too)
    assert all(grads[k].abs().max() > 0 for k in grads if k.endswith("weight")), "no ∇_φ through the inner loop"
    eps = 1e-7
    for name, g in grads.items():
        idx = tuple(torch.nonzero(g.abs() == g.abs().max())[0].tolist())
        plus, minus = {**phi, name: phi[name].clone()}, {**phi, name: phi[name].clone()}
        plus[name][idx] += eps
        minus[name][idx] -= eps
        with torch.no_grad():
            fd = (query_ce(plus, False).item() - query_ce(minus, False).item()) / (2 * eps)
        assert abs(fd - g[idx].item()) < 1e-4 * abs(fd) + 1e-7, (name, idx, fd, g[idx].item())


def test_task_by_task_and_batched_second_order_epochs_agree():
    """engine=loop runs second order one task at a time (memory of one task), vmap all
    tasks together: the same meta-update, with inner batches drawn per task."""
    out = {}
    for engine in ("vmap", "loop"):
        cfg = maml_cfg(engine=engine, inner_batch=4, lr_theta_meta=1e-3, lr_alpha_meta=1e-3)
        torch.manual_seed(0)
        net = SuperNet(cfg, 3).double()
        meta = {k: v.detach().clone() for k, v in net.named_parameters()}
        learner = TaskLearner(net, cfg)
        out[engine] = maml_epoch(learner, meta, {}, {}, one_task_batch(T=2), cfg, 1)
    (m_v, _, s_v, row_v), (m_l, _, s_l, row_l) = out["vmap"], out["loop"]
    for k in m_v:
        torch.testing.assert_close(m_l[k], m_v[k], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(s_l["maml"]["m"][k], s_v["maml"]["m"][k], rtol=1e-9, atol=1e-14)
    for key in ("train_loss", "train_accuracy", "inner_ce_first", "inner_ce_last", "meta_grad_norm_theta"):
        assert row_l[key] == pytest.approx(row_v[key], rel=1e-9), key


def test_meta_adam_step_matches_torch_optim_adam():
    torch.manual_seed(0)
    meta = {"w": torch.randn(3, 2, dtype=torch.float64), "alpha_normal": torch.randn(4, dtype=torch.float64)}
    grads = [{k: torch.randn_like(v) for k, v in meta.items()} for _ in range(3)]
    ref = {k: v.clone().requires_grad_() for k, v in meta.items()}
    opt = torch.optim.Adam([{"params": [ref["w"]], "lr": 0.01}, {"params": [ref["alpha_normal"]], "lr": 0.003}],
                           betas=(0.9, 0.999), eps=1e-8)
    state = None
    for g in grads:
        meta, state = meta_adam_step(meta, g, state, lr_theta=0.01, lr_alpha=0.003)
        for k in ref:
            ref[k].grad = g[k].clone()
        opt.step()
    assert int(state["t"]) == 3
    for k in meta:
        torch.testing.assert_close(meta[k], ref[k].detach(), rtol=1e-12, atol=1e-14)


def test_maml_epoch_updates_theta_alpha_and_learns_phi_by_meta_gradient():
    """A learned loss with phi_update=meta_gradient under second-order MAML: one epoch
    moves θ, α and φ (φ's meta-gradient goes through the same inner loop)."""
    from model.train import make_loss

    cfg = maml_cfg(loss="fnn", phi_update="meta_gradient", lr_theta_meta=1e-3, lr_alpha_meta=1e-3, lr_phi=1e-3)
    torch.manual_seed(0)
    net = SuperNet(cfg, 3)
    meta = {k: v.detach().clone() for k, v in net.named_parameters()}
    loss = make_loss(cfg)
    phi = loss.init_phi(torch.Generator().manual_seed(0))
    learner = TaskLearner(net, cfg, loss)
    b = one_task_batch(T=2, dtype=torch.float32)
    new_meta, new_phi, state, row = maml_epoch(learner, meta, phi, {}, b, cfg, 1)
    for k in meta:  # (node 0 has a single input pair: softmax of one α, no gradient)
        assert torch.equal(new_meta[k], meta[k]) == (k == "alpha_normal_pairs_0" or k == "alpha_reduce_pairs_0"), k
    assert any(not torch.equal(new_phi[k], phi[k]) for k in phi)
    assert int(state["maml"]["t"]) == 1 and "phi" in state
    for key in ("train_loss", "train_accuracy", "lr_theta_meta", "lr_alpha_meta", "inner_ce_first", "inner_ce_last"):
        assert key in row
    json.dumps(row)  # a metrics row must serialise


def _without_time(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


MAML_SMOKE = {"meta_learner": "maml", "task_optimizer": "sgd", "lr_theta_task": 0.1, "lr_alpha_task": 0.1,
              "lr_theta_meta": 0.001, "lr_alpha_meta": 0.001, "meta_epochs": 4, "checkpoint_every": 2,
              "test_tasks": 2, "test_steps": 2, "threads": 1}


@pytest.mark.slow  # 8 second-order meta-epochs + 2 small evaluations: ~30 s on 2 idle cores
def test_cli_smoke_run_completes_and_resumes_bitwise(tmp_path, data_root):
    from model.train import Cancelled, read_metrics, train

    whole = tmp_path / "whole"
    sets = [a for k, v in MAML_SMOKE.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    proc = subprocess.run([sys.executable, "-m", "model", "train", "--preset", "smoke", *sets, "--out", str(whole),
                           "--data-root", str(data_root)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((whole / "summary.json").read_text())["meta_epochs"] == 4

    cfg = build_config("smoke", MAML_SMOKE)
    run = tmp_path / "resumed"
    with pytest.raises(Cancelled):  # stop at the epoch-2 checkpoint
        train(cfg, run, data_root=data_root, should_cancel=lambda: len(read_metrics(run)) >= 2)
    train(cfg, run, resume=True, data_root=data_root)
    assert _without_time(read_metrics(run)) == _without_time(read_metrics(whole))
    a = torch.load(run / "checkpoint.pt", weights_only=True)
    b = torch.load(whole / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["meta"][k], b["meta"][k]) for k in b["meta"])
    for part in ("m", "v"):  # the meta-optimizer's moments were checkpointed and carried on
        assert all(torch.equal(a["meta_state"]["maml"][part][k], b["meta_state"]["maml"][part][k]) for k in b["meta"])
    assert int(a["meta_state"]["maml"]["t"]) == 4
