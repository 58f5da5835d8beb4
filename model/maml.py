"""MAML (Finn et al. 2017) for θ and α, the paper's Algorithm 1: adapt each task with K SGD
steps on its support set (Φ_K, Eq. 2), score the adapted model on the task's query set
(Eq. 3), and move the meta-parameters along the task-averaged gradient of that score
(Eq. 4), with Adam as the meta-optimizer (separate rates for θ and α).

Second order: the K inner steps stay in the autograd graph, so ∇_{θ,α} CE_query includes
Φ_K's Jacobian (the inner steps' Hessian-vector products). The inner steps are
`TaskLearner.adapt`'s own (torch.func.grad per step, vmapped over tasks or looped, inner
batches and drop-path masks keyed on (seed, epoch, task, step)); `differentiable=True`
only records the SGD updates, and the outer torch.autograd.grad differentiates through
each step's torch.func.grad. Φ_K must then be SGD: Adam with β1 = 0 takes sign-like
steps whose derivative is ≈ 0 (the config refuses that combination).

Memory: second order keeps every inner step's graph, ∝ tasks x K x activations (the paper
supernet: ~10 GB per task). engine=vmap adapts the meta-batch together (fast on a GPU,
memory x meta_batch); engine=loop, with cross-entropy, does one task at a time and sums
the meta-gradients, so only one task's graph is alive.

First order (FOMAML): the gradient of the query loss at the adapted parameters, applied
to the meta-parameters (Φ_K's Jacobian taken as the identity); any task optimizer works.

Learned losses: φ goes into Φ_K as in Reptile. With `phi_update=meta_gradient` φ's
meta-gradient is the same query loss differentiated w.r.t. φ through the inner loop
(`TaskLearner.phi_meta_update`); mse/inner_product step φ inside tasks and meta-update it
by Reptile.
"""
from __future__ import annotations

import math
import types

import torch

from .supernet import is_arch
from .task_learner import TaskOptimizer, expand, query_metrics

# Adam's usual moments for the meta-optimizer (its rates come from lr_*_meta).
META_BETAS = (0.9, 0.999)
BATCH_FIELDS = ("support_x", "support_y", "query_x", "query_y")


def differentiable_adapt(learner, params: dict, phi: dict, support_x, support_y, *, key: tuple, task_id: int,
                         steps: int, batch: int, drop_p: float, create_graph: bool = True) -> tuple[dict, dict]:
    """Φ_K on one task (tensors without a task dimension). With `create_graph` the adapted
    parameters stay differentiable functions of `params` and `phi` (whichever require
    grad), so a loss on them can be differentiated through the inner loop, e.g. w.r.t. φ
    for phi_update=meta_gradient. Same steps and random draws as `learner.adapt` (it *is*
    learner.adapt on a task dimension of one). Returns (adapted params, step statistics)."""
    one = lambda d: {k: v.unsqueeze(0) for k, v in d.items()}  # noqa: E731
    adapted, stats = learner.adapt(one(params), one(phi), support_x.unsqueeze(0), support_y.unsqueeze(0),
                                   key=key, task_ids=[task_id], steps=steps, batch=batch, drop_p=drop_p,
                                   differentiable=create_graph)
    return {k: v[0] for k, v in adapted.items()}, stats


def maml_gradients(learner, meta: dict, phi: dict, batch, cfg, epoch: int, *, second_order: bool,
                   task_ids: list[int] | None = None):
    """The MAML meta-gradient of mean_i CE_query,i(Φ_K(θ, α; support_i)) w.r.t. the
    meta-parameters, for the tasks of `batch` (their ids key the random draws; default
    0..T-1).

    Returns (grads {name: tensor like meta}, per-task query CE (T,), per-task query accuracy
    (T,), detached query logits (T, Q, n), adapted params (T, ...), step statistics,
    task_phi). The adapted params keep their graph when the meta-gradient went through
    the inner loop, so `learner.phi_meta_update` can still differentiate w.r.t. task_phi."""
    T = batch.support_x.shape[0]
    task_ids = list(range(T)) if task_ids is None else list(task_ids)
    phi_learner = learner.phi_learner  # None for cross-entropy
    by_meta_gradient = phi_learner is not None and phi_learner.mode == "meta_gradient"
    task_phi = expand(phi, T)
    if by_meta_gradient:  # φ's own meta-gradient also goes through the inner loop
        task_phi = {k: v.requires_grad_() for k, v in task_phi.items()}
    if second_order:
        # every task starts from the same leaves: one autograd.grad gives the sum over tasks
        leaves = {k: v.detach().requires_grad_() for k, v in meta.items()}
        start = {k: v.unsqueeze(0).expand(T, *v.shape) for k, v in leaves.items()}
    else:
        start = expand(meta, T)
    adapted, stats = learner.adapt(
        start, task_phi, batch.support_x, batch.support_y,
        key=(cfg.seed, epoch), task_ids=task_ids, steps=cfg.inner_steps,
        batch=cfg.inner_batch, drop_p=cfg.drop_path,
        learn_phi=True, query_x=batch.query_x, query_y=batch.query_y,
        differentiable=second_order or by_meta_gradient,
    )
    if not second_order:  # first order: differentiate at the adapted point only
        adapted = {k: v.detach().requires_grad_() for k, v in adapted.items()}
    logits = learner.query_logits(adapted, batch.support_x, batch.query_x, cfg.temp_end)
    ce, acc = query_metrics(logits, batch.query_y)
    wrt = leaves if second_order else adapted
    names = list(wrt)
    # retain the inner-loop graph when φ's meta-update differentiates it once more
    g = torch.autograd.grad(ce.mean(), [wrt[k] for k in names], retain_graph=by_meta_gradient,
                            materialize_grads=True)
    # first order: ∂ mean_i CE_i / ∂ θ_i = ∇CE_i / T per task, so the sum over tasks is the mean
    grads = {k: gk if second_order else gk.sum(0) for k, gk in zip(names, g)}
    return grads, ce.detach(), acc, logits.detach(), adapted, stats, task_phi


def meta_adam_step(meta: dict, grads: dict, state: dict | None, lr_theta: float, lr_alpha: float):
    """One Adam step of the meta-parameters (rate lr_theta for θ, lr_alpha for α). `state`
    = {"m", "v", "t"} (None at the start) lives in meta_state, so it is checkpointed and a
    resumed run continues the same moments. Reuses the task learner's functional Adam."""
    if state is None:
        state = {"m": {k: torch.zeros_like(v) for k, v in meta.items()},
                 "v": {k: torch.zeros_like(v) for k, v in meta.items()}, "t": torch.tensor(0)}
    t = int(state["t"]) + 1
    opt = TaskOptimizer("adam", lr_theta, lr_alpha, beta1=META_BETAS[0], beta2=META_BETAS[1])
    with torch.no_grad():
        meta, moments = opt.step(meta, grads, {"m": state["m"], "v": state["v"]}, t)
    return meta, {**moments, "t": torch.tensor(t)}


def maml_epoch(learner, meta: dict, phi: dict, meta_state: dict, batch, cfg, epoch: int):
    """One meta-epoch: adapt every task (Φ_K), score its queries, take one Adam step on
    the task-averaged meta-gradient. The meta-optimizer's state is meta_state["maml"]."""
    from .train import meta_lrs

    second_order = cfg.maml_order == "second"
    if second_order and learner.engine == "loop" and learner.phi_learner is None:
        grads, ce, acc, logits, stats = _task_by_task(learner, meta, phi, batch, cfg, epoch)
        adapted = task_phi = None
    else:
        grads, ce, acc, logits, adapted, stats, task_phi = maml_gradients(
            learner, meta, phi, batch, cfg, epoch, second_order=second_order)
    if learner.phi_learner is not None:
        phi, meta_state, phi_row = learner.phi_meta_update(phi, meta_state, batch=batch, adapted=adapted, stats=stats,
                                                           task_phi=task_phi, query_logits=logits)
        stats.update(phi_row)
    lr_theta, lr_alpha = meta_lrs(cfg, epoch)
    meta, adam = meta_adam_step(meta, grads, meta_state.get("maml"), lr_theta, lr_alpha)
    meta_state = {**meta_state, "maml": adam}
    row = {"train_loss": ce.mean().item(), "train_accuracy": acc.mean().item(),
           "lr_theta_meta": lr_theta, "lr_alpha_meta": lr_alpha,
           "meta_grad_norm_theta": _norm(g for k, g in grads.items() if not is_arch(k)),
           "meta_grad_norm_alpha": _norm(g for k, g in grads.items() if is_arch(k)), **stats}
    return meta, phi, meta_state, row


def _task_by_task(learner, meta, phi, batch, cfg, epoch):
    """Second-order meta-gradient one task at a time (engine=loop, cross-entropy): each
    task's inner-loop graph is freed before the next is built, so memory is that of one
    task, not meta_batch of them (paper-maml: ~10 GB per task on a CPU). Same draws and,
    up to summation order, the same result as all tasks together."""
    T = batch.support_x.shape[0]
    grads, ce, acc, logits, inner = None, [], [], [], []
    for i in range(T):
        task = types.SimpleNamespace(**{f: getattr(batch, f)[i:i + 1] for f in BATCH_FIELDS})
        g, ce_i, acc_i, logits_i, _, stats_i, _ = maml_gradients(learner, meta, phi, task, cfg, epoch,
                                                                 second_order=True, task_ids=[i])
        grads = g if grads is None else {k: grads[k] + g[k] for k in grads}
        ce.append(ce_i), acc.append(acc_i), logits.append(logits_i), inner.append(stats_i)
    stats = {k: sum(s[k] for s in inner) / T for k in ("inner_ce_first", "inner_ce_last")}
    return {k: v / T for k, v in grads.items()}, torch.cat(ce), torch.cat(acc), torch.cat(logits), stats


def _norm(tensors) -> float:
    return math.sqrt(sum(float((t.detach().double() ** 2).sum()) for t in tensors))
