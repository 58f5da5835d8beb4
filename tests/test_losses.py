"""Learned task losses and how φ learns (model/losses). CPU, seconds each."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from model.config import Config
from model.losses import (CrossEntropy, FNNLoss, LSTMLoss, PhiLearner, grad_cosine, inner_product_objective,
                          inner_product_phi_grad, loss_ce_pearson, make_task_loss, meta_gradient_phi_grad,
                          mse_objective, mse_phi_grad, pearson, per_sample_ce)
from model.losses.lstm import lstm_cell

torch.set_num_threads(1)
N_WAY = 4


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def batch(n=N_WAY, per_class=3, seed=0, scale=2.0, dtype=torch.float32):
    g = gen(seed)
    y = torch.arange(n).repeat(per_class)
    return (scale * torch.randn(len(y), n, generator=g)).to(dtype), y


def losses(dtype=torch.float32, n=N_WAY):
    """Small instances of every learned variant."""
    return [FNNLoss(n, 8, residual=True), FNNLoss(n, 8, residual=False),
            LSTMLoss(n, 6, layers=2, residual=True), LSTMLoss(n, 6, layers=2, residual=False, state="across_steps")]


def as64(phi):
    return {k: v.double() for k, v in phi.items()}


# ---- a tiny real network: conv -> softmax(alpha)-mixed ops -> pool -> linear ------------------

def tiny_params(n=N_WAY, dtype=torch.float64, seed=1):
    g = gen(seed)
    return {"conv.weight": 0.5 * torch.randn(3, 1, 3, 3, generator=g, dtype=dtype),
            "conv.bias": 0.1 * torch.randn(3, generator=g, dtype=dtype),
            "alpha_mix": 0.3 * torch.randn(2, generator=g, dtype=dtype),
            "fc.weight": 0.5 * torch.randn(n, 3, generator=g, dtype=dtype),
            "fc.bias": torch.zeros(n, dtype=dtype)}


def tiny_net(p, x):
    h = F.conv2d(x, p["conv.weight"], p["conv.bias"], padding=1)
    w = torch.softmax(p["alpha_mix"], 0)
    h = w[0] * torch.relu(h) + w[1] * torch.tanh(h)
    return h.mean((2, 3)) @ p["fc.weight"].T + p["fc.bias"]


def on_net(x, y, net=None):
    """A batch as the proxies take it: (params -> logits, labels)."""
    net = net or tiny_net
    return (lambda p: net(p, x)), y


def images(n=N_WAY, per_class=2, seed=0, dtype=torch.float64):
    g = gen(seed)
    y = torch.arange(n).repeat(per_class)
    return torch.randn(len(y), 1, 5, 5, generator=g, dtype=dtype) + 0.3 * y.view(-1, 1, 1, 1), y


# ---- the seam ------------------------------------------------------------------------------

def test_make_task_loss_follows_config():
    assert isinstance(make_task_loss(Config(), 5), CrossEntropy)
    fnn = make_task_loss(Config(loss="fnn", loss_hidden=16, loss_residual=False), 5)
    assert isinstance(fnn, FNNLoss) and fnn.hidden == 16 and not fnn.residual
    lstm = make_task_loss(Config(loss="lstm", lstm_layers=3, lstm_state="across_steps"), 7)
    assert isinstance(lstm, LSTMLoss) and lstm.layers == 3 and lstm.n_way == 7 and lstm.state_mode == "across_steps"


def test_cross_entropy_is_the_trivial_case():
    z, y = batch()
    ce = CrossEntropy(N_WAY)
    assert ce.init_phi(gen()) == {} and ce.init_state({}) is None and ce.num_params() == 0
    value, state = ce({}, z, y)
    assert state is None and torch.allclose(value, F.cross_entropy(z, y))
    assert torch.allclose(ce.per_sample({}, z, y), F.cross_entropy(z, y, reduction="none"))


def test_parameter_counts():
    n, H, L = 20, 64, 5
    assert FNNLoss(n, H).num_params() == 2 * n * H + H + H + 1
    assert LSTMLoss(n, H, L).num_params() == (2 * n * H + H) + L * (8 * H * H + 4 * H + 2 * n * H) + H + 1
    phi = LSTMLoss(n, H, L).init_phi(gen())
    assert sum(v.numel() for v in phi.values()) == LSTMLoss(n, H, L).num_params()


@pytest.mark.parametrize("loss", losses(), ids=repr)
def test_loss_is_batch_mean_of_per_sample_and_vmaps(loss):
    phi = loss.init_phi(gen())
    z, y = batch()
    value, _ = loss(phi, z, y, loss.init_state(phi))
    assert value.shape == () and torch.isfinite(value)
    assert torch.allclose(value, loss.per_sample(phi, z, y).mean())
    zs = torch.stack([batch(seed=s)[0] for s in range(3)])
    looped = torch.stack([loss(phi, zi, y, loss.init_state(phi))[0] for zi in zs])
    vmapped = vmap(lambda zi: loss(phi, zi, y, loss.init_state(phi))[0])(zs)
    assert torch.allclose(looped, vmapped, atol=1e-6)


def test_orthogonal_init_and_seeded():
    loss = LSTMLoss(N_WAY, 6, layers=2)
    a, b = loss.init_phi(gen(3)), loss.init_phi(gen(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    w = a["embed.weight"]                       # (H, 2n) with H < 2n: orthonormal rows
    assert torch.allclose(w @ w.T, torch.eye(6), atol=1e-5)
    gate = a["lstm.w_hh"][0][:6]                # each gate block is orthogonal
    assert torch.allclose(gate @ gate.T, torch.eye(6), atol=1e-5)


def test_n_way_mismatch_is_refused():
    loss = FNNLoss(5, 8)
    phi = loss.init_phi(gen())
    with pytest.raises(ValueError, match="tied to 5-way"):
        loss(phi, torch.randn(6, 3), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="tied to n-way"):
        FNNLoss(3, 8).check_phi(phi)
    with pytest.raises(ValueError, match="tied to n-way"):
        LSTMLoss(20, 8, 2).check_phi(LSTMLoss(5, 8, 2).init_phi(gen()))


def test_lstm_cell_matches_torch():
    g = gen(4)
    cell = torch.nn.LSTMCell(6, 6)
    x, h, c = (torch.randn(3, 6, generator=g) for _ in range(3))
    ours = lstm_cell(x, h, c, cell.weight_ih, cell.weight_hh, cell.bias_ih + cell.bias_hh)
    theirs = cell(x, (h, c))
    assert torch.allclose(ours[0], theirs[0], atol=1e-6) and torch.allclose(ours[1], theirs[1], atol=1e-6)


def test_lstm_state_across_steps_carries_class_memory():
    loss = LSTMLoss(N_WAY, 6, layers=2, state="across_steps")
    phi = loss.init_phi(gen())
    state0 = loss.init_state(phi)
    z = torch.randn(4, N_WAY, generator=gen(1))
    y = torch.tensor([0, 0, 1, 1])                 # classes 2 and 3 absent
    v1, state1 = loss(phi, z, y, state0)
    assert torch.equal(state1[0][:, 2:], state0[0][:, 2:]) and torch.equal(state1[1][:, 2:], state0[1][:, 2:])
    assert not torch.allclose(state1[0][:, :2], state0[0][:, :2])
    v2, _ = loss(phi, z, y, state1)                # same batch, new memory: a different loss
    assert not torch.allclose(v1, v2)
    assert LSTMLoss(N_WAY, 6, layers=2).init_state(phi) is None


# ---- the φ objectives --------------------------------------------------------------------------

def _directional_fd(f, phi, direction, eps=1e-6):  # truncation error ~eps², rounding ~1e-16/eps
    plus = {k: phi[k] + eps * direction[k] for k in phi}
    minus = {k: phi[k] - eps * direction[k] for k in phi}
    return (f(plus) - f(minus)) / (2 * eps)


@pytest.mark.parametrize("normalize", ["cosine", "none"])
@pytest.mark.parametrize("loss", losses()[::2] + losses()[3:], ids=repr)
def test_inner_product_phi_grad_matches_finite_differences(loss, normalize):
    phi = as64(loss.init_phi(gen(2)))
    params = tiny_params()
    support, query = on_net(*images(seed=0)), on_net(*images(seed=1))
    kw = dict(lam=1.0, xi=0.7, normalize=normalize, state=loss.init_state(phi))

    def objective(p):
        return inner_product_objective(loss, p, params, support, query, **kw)

    fast, value = inner_product_phi_grad(loss, phi, params, support, query, **kw)
    assert torch.allclose(value, objective(phi), rtol=1e-10, atol=1e-12)
    # the task learner hands over its step's logits and ∇_params L_φ: same result
    step = (support[0](params), grad(lambda p: loss(phi, support[0](p), support[1], kw["state"])[0])(params))
    reused, value2 = inner_product_phi_grad(loss, phi, params, support, query, step=step, **kw)
    assert torch.allclose(value2, value, rtol=1e-12) and all(torch.allclose(reused[k], fast[k], rtol=1e-10) for k in phi)
    reference = grad(objective)(phi)                 # double backward through the network
    for k in phi:
        assert torch.allclose(fast[k], reference[k], rtol=1e-7, atol=1e-10), k
    assert sum(float(v.abs().sum()) for v in fast.values()) > 0   # φ really receives a gradient
    for seed in range(3):
        g = gen(100 + seed)
        direction = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in phi.items()}
        fd = _directional_fd(objective, phi, direction)
        analytic = sum((fast[k] * direction[k]).sum() for k in phi)
        assert torch.allclose(analytic, fd, rtol=1e-4, atol=1e-9), (float(analytic), float(fd))  # ELU' has a kink at 0


def test_mse_phi_grad_matches_finite_differences():
    loss = LSTMLoss(N_WAY, 6, layers=2, residual=True)
    phi = as64(loss.init_phi(gen(2)))
    z, y = batch(dtype=torch.float64)
    g, value = mse_phi_grad(loss, phi, z, y)
    f = lambda p: mse_objective(loss, p, z, y)  # noqa: E731
    assert torch.allclose(value, f(phi))
    direction = {k: torch.randn(v.shape, generator=gen(7), dtype=torch.float64) for k, v in phi.items()}
    assert torch.allclose(sum((g[k] * direction[k]).sum() for k in phi), _directional_fd(f, phi, direction), rtol=1e-6)


def test_inner_product_vmaps_over_tasks():
    loss = FNNLoss(N_WAY, 8)
    phi = as64(loss.init_phi(gen()))
    params = tiny_params()
    tasks = [(images(seed=2 * t), images(seed=2 * t + 1)) for t in range(3)]
    looped = [inner_product_phi_grad(loss, phi, params, on_net(*s), on_net(*q), lam=1.0, xi=1.0, normalize="cosine")[0]
              for s, q in tasks]
    xs = torch.stack([s[0] for s, _ in tasks]); ys = torch.stack([s[1] for s, _ in tasks])
    xq = torch.stack([q[0] for _, q in tasks]); yq = torch.stack([q[1] for _, q in tasks])
    batched, _ = vmap(lambda a, b, c, d: inner_product_phi_grad(loss, phi, params, on_net(a, b), on_net(c, d),
                                                                lam=1.0, xi=1.0, normalize="cosine"))(xs, ys, xq, yq)
    for t in range(3):
        for k in phi:
            assert torch.allclose(batched[k][t], looped[t][k], rtol=1e-8, atol=1e-12)


# ---- every φ step lowers its own objective on its batch -----------------------------------------

def _cfg(**kw):
    return Config(**{"loss": "fnn", "task_optimizer": "adam", **kw})


def _aux(out):
    value, state = out
    return value, (() if state is None else state)


def _sgd_adapt(loss, params, support, steps=2, lr=0.3):
    """A differentiable SGD task learner (θ and α) for the meta-gradient tests."""
    def adapt(phi):
        p, state = params, loss.init_state(phi)
        for _ in range(steps):
            # torch.func aux outputs must be tensors: carry a stateless loss's None as ()
            gr, state = grad(lambda q: _aux(loss(phi, tiny_net(q, support[0]), support[1], state)), has_aux=True)(p)
            state = state or None
            p = {k: p[k] - lr * gr[k] for k in p}
        return p
    return adapt


@pytest.mark.parametrize("mode", ["mse", "inner_product", "inner_product_none", "meta_gradient"])
@pytest.mark.parametrize("net", ["fnn", "lstm"])
def test_every_phi_step_lowers_its_objective(mode, net):
    """At the config's own rates (lr_phi = 1e-3), over consecutive steps on fresh batches,
    the objective each φ step was taken on is lower after it than before: φ moves for a
    reason."""
    normalize = "none" if mode.endswith("_none") else "cosine"
    phi_update = mode.replace("_none", "")
    cfg = _cfg(loss=net, loss_hidden=8, lstm_layers=2, phi_update=phi_update, ip_normalize=normalize,
               task_optimizer="sgd" if phi_update == "meta_gradient" else "adam")
    loss = make_task_loss(cfg, N_WAY)
    learner = PhiLearner(cfg, loss)
    phi = loss.init_phi(gen(5))
    phi_state = learner.init_phi_state(phi)
    task_opt = learner.init_task_state(phi)       # carried over the steps, as inside a task
    params = tiny_params(dtype=torch.float32)
    for trial in range(4):
        (xs, ys), (xq, yq) = images(seed=10 * trial, dtype=torch.float32), images(seed=10 * trial + 1, dtype=torch.float32)
        if phi_update == "meta_gradient":
            adapt = _sgd_adapt(loss, params, (xs, ys))
            query_ce = lambda q: per_sample_ce(tiny_net(q, xq), yq).mean()  # noqa: E731
            g, before = meta_gradient_phi_grad(adapt, query_ce, phi)
            phi, phi_state, _ = learner.meta_update(phi, phi_state, meta_grads={k: v[None] for k, v in g.items()})
            after = query_ce(adapt(phi))
        else:
            kw = dict(logits=tiny_net(params, xs), labels=ys, params=params, support_fn=on_net(xs, ys)[0],
                      query_fn=on_net(xq, yq)[0], query_labels=yq)
            g, before = learner.task_objective_grad(phi, **kw)
            phi, task_opt = learner.task_step(phi, g, task_opt, trial + 1)
            after = learner.task_objective_grad(phi, **kw)[1]
        assert float(after) < float(before), (trial, float(before), float(after))


def test_phi_learner_meta_updates_and_history():
    for mode in ("mse", "inner_product", "meta_gradient"):
        cfg = _cfg(phi_update=mode, loss_hidden=8, task_optimizer="sgd" if mode == "meta_gradient" else "adam")
        loss = make_task_loss(cfg, N_WAY)
        learner = PhiLearner(cfg, loss)
        phi = loss.init_phi(gen(1))
        phi_state = learner.init_phi_state(phi)
        stacked = {k: v.unsqueeze(0).repeat(3, *[1] * v.dim()) for k, v in phi.items()}
        for t in range(3):                          # three "tasks" moved φ_i differently
            for k in stacked:
                stacked[k][t] += 0.01 * (t + 1) * torch.randn(stacked[k][t].shape, generator=gen(t))
        key = "meta_grads" if mode == "meta_gradient" else "adapted_phi"
        new, phi_state, row = learner.meta_update(phi, phi_state, **{key: stacked})
        assert row["phi_step_norm"] > 0 and row["phi_norm"] > 0 and phi_state["t"] == 1
        assert any(not torch.equal(new[k], phi[k]) for k in phi)
        if mode != "meta_gradient":                 # Reptile with rate 1: the mean of the φ_i
            assert all(torch.allclose(new[k], stacked[k].mean(0)) for k in phi)
        phi_state = learner.record(phi_state, 1, {**row, "grad_cosine": 0.5})
        assert phi_state["history"] == [{"epoch": 1, **row, "grad_cosine": 0.5}]
        with pytest.raises(ValueError, match="n-way"):
            make_task_loss(cfg, N_WAY + 1).check_phi(new)


def test_diagnostics():
    z, y = batch()
    ce = CrossEntropy(N_WAY)
    assert abs(grad_cosine(ce, {}, z, y) - 1) < 1e-6
    assert abs(loss_ce_pearson(ce, {}, z.unsqueeze(0), y.unsqueeze(0)) - 1) < 1e-6
    assert abs(pearson(torch.arange(5.0), -torch.arange(5.0)) + 1) < 1e-12


# ---- Pearson acceptance: an MSE-trained FNN (no residual) tracks per-sample CE ------------------

def _model_states(seed, n=5, dim=6, count=12):
    """Logit functions of a small linear classifier at `count` points of its training, from
    untrained (near-uniform logits) to confident."""
    g = gen(seed)
    means = 1.5 * torch.randn(n, dim, generator=g)
    w = 0.1 * torch.randn(n, dim, generator=g)
    states = []
    for step in range(count * 10):
        x, y = means.repeat(4, 1) + torch.randn(4 * n, dim, generator=g), torch.arange(n).repeat(4)
        if step % 10 == 0:
            states.append(w.clone())
        w = w - 0.2 * grad(lambda w_: F.cross_entropy(x @ w_.T, y))(w)
    return means, states


def _batches(means, states, count, seed, n=5, per_class=2):
    g = gen(seed)
    out = []
    for b in range(count):
        w = states[b % len(states)]
        y = torch.arange(n).repeat(per_class)
        x = means[y] + torch.randn(len(y), means.shape[1], generator=g)
        out.append((x @ w.T, y))
    return out


def test_mse_trained_fnn_tracks_cross_entropy():
    """Per-sample L_φ vs per-sample CE on 200 held-out batches from 12 states of a model
    the loss never saw (another trajectory): Pearson < 0.5 at init, >= 0.9 after training."""
    from model.task_learner import TaskOptimizer
    n = 5
    loss = FNNLoss(n, 64, residual=False)
    phi = loss.init_phi(gen(0))
    held_means, held_states = _model_states(seed=2)
    held_out = _batches(held_means, held_states, 200, seed=3)
    assert len(held_states) >= 10
    z_held, y_held = torch.stack([b[0] for b in held_out]), torch.stack([b[1] for b in held_out])
    before = loss_ce_pearson(loss, phi, z_held, y_held)

    train = []
    for trajectory in range(4):                               # 4 x 12 training states
        means, states = _model_states(seed=10 + trajectory)
        train += _batches(means, states, 600, seed=20 + trajectory, per_class=20)
    train = [train[i] for i in torch.randperm(len(train), generator=gen(0))]
    state = None
    for t, (z, y) in enumerate(train, 1):
        lr = 1e-2 if t < 0.7 * len(train) else 1e-3
        opt = TaskOptimizer("adam", lr, lr, 0.9, 0.999)
        state = state or opt.init(phi)
        g, _ = mse_phi_grad(loss, phi, z, y)
        phi, state = opt.step(phi, g, state, t)
    after = loss_ce_pearson(loss, phi, z_held, y_held)
    assert before < 0.5 and after >= 0.9, (before, after)


@pytest.mark.parametrize("path", ["eager", "torch.func"])
@pytest.mark.parametrize("normalize", ["cosine", "none"])
def test_inner_product_phi_grad_on_the_real_supernet(normalize, path):
    """The same check through the real supernet (smoke size, float64, BN in train mode), on
    both paths: plain autograd + forward-mode AD with the cells in channels-last (the loop
    engine), and torch.func (taken under vmap, or when params sit in an outer graph)."""
    from torch.func import functional_call

    from model.config import build_config
    from model.losses import proxies
    from model.supernet import SuperNet

    cfg = build_config("smoke")
    n = cfg.n_way
    torch.manual_seed(0)
    net = SuperNet(cfg, n).double()
    params = {k: v.detach() for k, v in net.named_parameters()}
    assert any(k.startswith("alpha_") for k in params)

    def logits_fn(p, x):
        return functional_call(net, p, (x,), {"temp": 1.0, "drop_mask": None, "stats_from": None})

    g = gen(3)
    y = torch.arange(n).repeat(2)
    support = (torch.rand(len(y), 1, 28, 28, generator=g, dtype=torch.float64), y)
    query = (torch.rand(len(y), 1, 28, 28, generator=g, dtype=torch.float64), y)
    loss = LSTMLoss(n, 6, layers=2, residual=True)
    phi = as64(loss.init_phi(gen(2)))
    kw = dict(lam=1.0, xi=1.0, normalize=normalize)
    support, query = on_net(*support, net=logits_fn), on_net(*query, net=logits_fn)
    objective = lambda p: inner_product_objective(loss, p, params, support, query, **kw)  # noqa: E731
    reference = grad(objective)(phi)
    if path == "torch.func":
        params = {k: v.requires_grad_() for k, v in params.items()}
    assert proxies._eager(params, phi) == (path == "eager")
    fast, value = inner_product_phi_grad(loss, phi, params, support, query, **kw)
    fast, value = {k: v.detach() for k, v in fast.items()}, value.detach()
    assert torch.allclose(value, objective(phi), rtol=1e-9)
    for k in phi:
        assert torch.allclose(fast[k], reference[k], rtol=1e-6, atol=1e-10), k
    # the task learner hands over its step's support logits and ∇_params L_φ
    step = (support[0](params), grad(lambda p: loss(phi, support[0](p), support[1])[0])(params))
    reused, _ = inner_product_phi_grad(loss, phi, params, support, query, step=step, **kw)
    for k in phi:
        assert torch.allclose(reused[k].detach(), reference[k], rtol=1e-6, atol=1e-10), k
    direction = {k: torch.randn(v.shape, generator=gen(9), dtype=torch.float64) for k, v in phi.items()}
    analytic = sum((fast[k] * direction[k]).sum() for k in phi)
    assert torch.allclose(analytic, _directional_fd(objective, phi, direction), rtol=1e-4)



# ---- integrated in the task learner -------------------------------------------------------------

@pytest.mark.parametrize("over", [
    pytest.param(dict(loss="fnn", phi_update="mse"), id="fnn-mse"),
    pytest.param(dict(loss="lstm", phi_update="inner_product", lstm_state="across_steps"), id="lstm-ip-across",
                 marks=pytest.mark.slow)])
def test_task_learner_steps_phi_alike_in_both_engines(over):
    """adapt(learn_phi=True) returns per-task φ_i that moved; vmap and loop engines agree,
    with drop-path and resampled inner batches; without learn_phi φ is left alone."""
    from model.config import build_config
    from model.supernet import SuperNet
    from model.task_learner import TaskLearner, expand

    cfg = build_config("smoke", dict(over, loss_hidden=8, lstm_layers=2, drop_path=0.3, inner_batch=4,
                                     prune_threshold=0.0, inner_steps=3))
    torch.manual_seed(3)
    # float64: Adam (beta1=0) steps ~lr*sign(g), which turns float32 summation-order noise in
    # near-zero gradients into lr-sized differences (seen on a Xeon; see test_engine_equivalence)
    net = SuperNet(cfg, cfg.n_way).double()
    meta = {k: v.detach().clone() for k, v in net.named_parameters()}
    loss = make_task_loss(cfg)
    phi = {k: v.double() for k, v in loss.init_phi(gen(0)).items()}
    g = gen(1)
    x = torch.rand(2, 6, 1, 28, 28, generator=g, dtype=torch.float64)
    xq = torch.rand(2, 3, 1, 28, 28, generator=g, dtype=torch.float64)
    y, yq = torch.arange(3).repeat(2).expand(2, 6).contiguous(), torch.arange(3).expand(2, 3).contiguous()
    out = {}
    for engine in ("vmap", "loop"):
        learner = TaskLearner(net, cfg, loss, engine=engine)
        out[engine] = learner.adapt(expand(meta, 2), expand(phi, 2), x, y, key=(5, 7), task_ids=[0, 1], steps=3,
                                    batch=4, drop_p=0.3, learn_phi=True, query_x=xq, query_y=yq)
    (p_v, s_v), (p_l, s_l) = out["vmap"], out["loop"]
    for k in meta:
        torch.testing.assert_close(p_v[k], p_l[k], rtol=1e-9, atol=1e-9)
    for k in phi:
        torch.testing.assert_close(s_v["phi"][k], s_l["phi"][k], rtol=1e-9, atol=1e-9)
        assert s_v["phi"][k].shape == (2, *phi[k].shape)
    assert any(not torch.allclose(s_v["phi"][k][t], phi[k]) for k in phi for t in range(2))
    _, fixed = TaskLearner(net, cfg, loss).adapt(expand(meta, 2), expand(phi, 2), x, y, key=(5, 7), task_ids=[0, 1],
                                                 steps=3, batch=4, drop_p=0.3)
    assert "phi" not in fixed                    # meta-test: φ is not adapted


# ---- integrated: meta-training on real Omniglot (smoke size) -----------------------------------

LEARNED_SMOKE = dict(meta_epochs=4, checkpoint_every=2, threads=1, test_tasks=4, loss_hidden=8, lstm_layers=2,
                     landscape_every=2, landscape_grid=5)
PHI_RUNS = {
    "fnn-mse": dict(loss="fnn", phi_update="mse"),
    "lstm-ip-across": dict(loss="lstm", phi_update="inner_product", lstm_state="across_steps"),
    "fnn-meta": dict(loss="fnn", phi_update="meta_gradient", task_optimizer="sgd", lr_theta_task=0.1,
                     lr_alpha_task=0.1),
}


def _phi_run_config(name):
    from model.config import build_config
    return build_config("smoke", {**LEARNED_SMOKE, **PHI_RUNS[name]})


@pytest.mark.parametrize("name", list(PHI_RUNS))
def test_phi_changes_every_meta_epoch_and_is_recorded(name, tmp_path, data_root):
    import json

    from model.landscape import read_snapshots
    from model.train import read_metrics, train

    cfg = _phi_run_config(name)
    events = []
    summary = train(cfg, tmp_path / "r", data_root=data_root, on_event=events.append)
    rows = read_metrics(tmp_path / "r")
    assert len(rows) == 4
    for row in rows:
        assert row["phi_step_norm"] > 0 and row["phi_norm"] > 0
        assert -1 <= row["loss_ce_pearson"] <= 1 and -1 <= row["grad_cosine"] <= 1
    assert summary["loss_params"] == make_task_loss(cfg).num_params()
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    phi0 = make_task_loss(cfg).init_phi(torch.Generator().manual_seed(cfg.seed))
    assert any(not torch.equal(state["phi"][k], phi0[k]) for k in phi0)
    history = state["meta_state"]["phi"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert [h["phi_step_norm"] for h in history] == [r["phi_step_norm"] for r in rows]
    snaps = read_snapshots(tmp_path / "r")
    assert [s["epoch"] for s in snaps] == [2, 4]
    assert [e["snapshot"]["epoch"] for e in events if e["event"] == "landscape"] == [2, 4]
    json.dumps(events)


@pytest.mark.slow
def test_phi_survives_checkpoint_and_resume(tmp_path, data_root):
    from model.landscape import read_snapshots
    from model.train import Cancelled, read_metrics, train

    cfg = _phi_run_config("lstm-ip-across")
    ref = tmp_path / "ref"
    train(cfg, ref, data_root=data_root)
    run = tmp_path / "broken"
    with pytest.raises(Cancelled):      # stops after epoch 3; the checkpoint is epoch 2's
        train(cfg, run, data_root=data_root, should_cancel=lambda: len(read_metrics(run)) >= 3)
    train(cfg, run, resume=True, data_root=data_root)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_metrics(run)) == strip(read_metrics(ref))
    a, b = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (run, ref))
    assert all(torch.equal(a["phi"][k], b["phi"][k]) for k in a["phi"])
    assert a["meta_state"]["phi"]["history"] == b["meta_state"]["phi"]["history"]
    assert read_snapshots(run) == read_snapshots(ref)
