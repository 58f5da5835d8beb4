"""The MetaNAS core against independent computations: plain nn.Module + torch.optim loops,
finite differences, hand-built genotypes. No data needed: random images stand in."""
import json

import pytest
import torch
import torch.nn.functional as F

from model import genotypes
from model.config import build_config
from model.reference import adapt_task as reference_adapt  # Φ_K with torch.optim on a deep-copied nn.Module
from model.reptile import reptile_update
from model.supernet import SuperNet, alpha_summary, count_params, is_arch
from model.task_learner import TaskLearner, expand, temperatures


def tiny_cfg(**kw):
    base = dict(n_way=3, channels=4, layers=2, reductions=[1], nodes=2, stem_multiplier=2, drop_path=0.0,
                prune_threshold=0.0, inner_steps=3, lr_theta_task=0.01, lr_alpha_task=0.02, alpha_weight_decay=1e-3)
    base.update(kw)
    return build_config("smoke", base)


def tasks(T=2, S=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(T, S, 1, 28, 28, generator=g)
    y = torch.arange(3).repeat_interleave(S // 3).expand(T, S).contiguous()
    return x, y


@pytest.mark.parametrize("engine", ["vmap", "loop"])
def test_reptile_update_matches_independent_computation(engine):
    torch.manual_seed(0)
    cfg = tiny_cfg(engine=engine)
    # float64: Adam with beta1=0 divides tiny gradients by their own magnitude, which
    # magnifies float32 summation-order noise; the comparison is about the algorithm.
    net = SuperNet(cfg, 3).double()
    meta = {k: v.detach().clone() for k, v in net.named_parameters()}
    x, y = tasks()
    x = x.double()
    learner = TaskLearner(net, cfg)
    adapted, _ = learner.adapt(expand(meta, 2), expand({}, 2), x, y, key=(0, 1), task_ids=[0, 1],
                               steps=cfg.inner_steps, batch=0, drop_p=0.0)
    new_meta = reptile_update(meta, adapted, lr_theta=0.7, lr_alpha=0.3)

    refs = [reference_adapt(net, cfg, x[i], y[i], cfg.inner_steps) for i in range(2)]
    for k, p in meta.items():
        for i in range(2):
            assert not torch.equal(refs[i][k], p), f"task {i} did not change {k}"
            torch.testing.assert_close(adapted[k][i], refs[i][k], rtol=1e-7, atol=1e-9)
        lr = 0.3 if is_arch(k) else 0.7
        expected = p + lr * ((refs[0][k] + refs[1][k]) / 2 - p)
        torch.testing.assert_close(new_meta[k], expected, rtol=1e-7, atol=1e-9)
    # θ_i differ between tasks: each task was adapted to its own data
    assert not torch.allclose(adapted["classifier.weight"][0], adapted["classifier.weight"][1])


def test_alpha_gradient_matches_finite_differences():
    torch.manual_seed(1)
    cfg = tiny_cfg()
    net = SuperNet(cfg, 3).double()
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    x, y = tasks(T=1)
    x = x[0].double()
    learner = TaskLearner(net, cfg, engine="loop")
    grads, _ = learner._grad_fn(False)(params, {}, x, y[0], 0.5, None)
    for name in ("alpha_normal", "alpha_reduce", "alpha_normal_pairs_1"):
        g = grads[name]
        assert g.abs().sum() > 0, f"{name} receives no gradient"
        idx = tuple(torch.nonzero(g.abs() == g.abs().max())[0].tolist())
        eps = 1e-6
        plus = {**params, name: params[name].clone()}
        plus[name][idx] += eps
        minus = {**params, name: params[name].clone()}
        minus[name][idx] -= eps
        f = lambda p: F.cross_entropy(learner.logits(p, x, 0.5), y[0]).item()
        fd = (f(plus) - f(minus)) / (2 * eps)
        assert abs(fd - g[idx].item()) < 1e-6 + 1e-4 * abs(fd)


def test_adapted_alpha_moves_in_meta_training_step():
    torch.manual_seed(2)
    cfg = tiny_cfg()
    net = SuperNet(cfg, 3)
    meta = {k: v.detach().clone() for k, v in net.named_parameters()}
    x, y = tasks()
    adapted, _ = TaskLearner(net, cfg).adapt(expand(meta, 2), expand({}, 2), x, y, key=(0, 1), task_ids=[0, 1],
                                             steps=2, batch=0, drop_p=0.0)
    for k in meta:
        if is_arch(k):
            assert (adapted[k] - meta[k]).abs().max() > 1e-4, k


def test_vmap_and_loop_engines_agree_with_drop_path_and_pruning():
    """In float64: the engines differ in layout (loop runs channels-last), hence in summation
    order, and Adam turns float32 noise in near-zero gradients into lr-sized steps."""
    torch.manual_seed(3)
    cfg = tiny_cfg(drop_path=0.3, prune_threshold=0.12, inner_batch=4)
    net = SuperNet(cfg, 3).double()
    meta = {k: v.detach().clone() for k, v in net.named_parameters()}
    meta["alpha_normal"][0, 0] += 3.0  # push one edge so pruning really switches ops off
    x, y = tasks()
    x = x.double()
    out = {}
    for engine in ("vmap", "loop"):
        learner = TaskLearner(net, cfg, engine=engine)
        out[engine], _ = learner.adapt(expand(meta, 2), expand({}, 2), x, y, key=(5, 7), task_ids=[0, 1],
                                       steps=3, batch=4, drop_p=0.3)
    for k in meta:
        torch.testing.assert_close(out["vmap"][k], out["loop"][k], rtol=1e-9, atol=1e-9)


def test_paper_supernet_has_the_published_weight_count():
    net = SuperNet(build_config("paper-baseline"), 20)
    assert count_params(net)["weights"] == 462_272  # NOTES.md: the published supernet


def test_support_stats_normalise_queries_with_support_statistics():
    torch.manual_seed(4)
    cfg = tiny_cfg()
    net = SuperNet(cfg, 3)
    params = dict(net.named_parameters())
    x, _ = tasks(T=1)
    sx, qx = x[0, :4], x[0, 4:]
    learner = TaskLearner(net, cfg)
    both = learner.logits(params, torch.cat([sx, qx]), 1.0, None, stats_from=4)[4:]
    # one query at a time gives the same logits: its statistics play no part
    single = torch.cat([learner.logits(params, torch.cat([sx, qx[i:i + 1]]), 1.0, None, stats_from=4)[4:] for i in range(2)])
    torch.testing.assert_close(both, single, rtol=1e-5, atol=1e-6)
    transductive = learner.logits(params, qx, 1.0)
    assert not torch.allclose(both, transductive)


def test_genotype_derivation_round_trip_and_dot():
    cfg = tiny_cfg(pairwise_alpha=True)
    net = SuperNet(cfg, 3)
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    ops = cfg.ops
    # make node 1 choose inputs (0, 2) and ops sep_conv_3x3 / skip_connect, by hand
    params["alpha_normal_pairs_1"].zero_()[1] = 5.0  # pairs of node 1: (0,1),(0,2),(0,3)... index 1 = (0,2)
    params["alpha_normal"].zero_()
    params["alpha_normal"][2, ops.index("sep_conv_3x3")] = 5.0  # edge 2 = node 1, input 0
    params["alpha_normal"][4, ops.index("skip_connect")] = 5.0  # edge 4 = node 1, input 2
    alpha = alpha_summary(net, params)
    g = genotypes.derive(alpha, pairwise=True)
    assert g["normal"][2:] == [["sep_conv_3x3", 0], ["skip_connect", 2]]
    assert g["normal_concat"] == [2, 3]
    assert genotypes.from_json(genotypes.to_json(g)) == g
    dot = genotypes.to_dot(g, alpha, "normal")
    assert genotypes.edge_labels(dot) == [op for op, _ in g["normal"]]
    with pytest.raises(ValueError):
        genotypes.from_json(json.dumps({**g, "normal": [["conv_3x3", 7], ["conv_3x3", 0]]}))


def test_discrete_network_from_a_genotype_has_exactly_the_chosen_ops_and_learns():
    from model.discrete import DiscreteNet
    from model.ops import Identity, Pool, SepConv

    cfg = tiny_cfg()
    g = {"normal": [["sep_conv_3x3", 0], ["skip_connect", 1], ["max_pool_3x3", 2], ["conv_3x3", 0]],
         "normal_concat": [2, 3],
         "reduce": [["max_pool_3x3", 0], ["avg_pool_3x3", 1], ["skip_connect", 2], ["dil_conv_3x3", 1]],
         "reduce_concat": [2, 3]}
    torch.manual_seed(0)
    net = DiscreteNet(g, cfg, 3)
    normal = net.cells[0]
    assert [type(op) for op in normal.ops[:3]] == [SepConv, Identity, Pool]
    assert normal.sources == [0, 1, 2, 0]
    supernet_weights = count_params(SuperNet(cfg, 3))["weights"]
    assert sum(p.numel() for p in net.parameters()) < supernet_weights
    x, y = tasks(T=1)
    opt = torch.optim.Adam(net.parameters(), 0.01)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = F.cross_entropy(net(x[0]), y[0])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
