"""Reptile (Nichol et al. 2018) for θ and α: move the meta-parameters toward the mean of
the task-adapted parameters, with separate meta learning rates for weights and architecture.

    θ ← θ + ε_θ · mean_i(θ_i − θ),    α ← α + ε_α · mean_i(α_i − α)

With ε = 1 this sets θ to the mean of the θ_i (the published run's weight update).
"""
from __future__ import annotations

import torch

from .supernet import is_arch
from .task_learner import expand, query_metrics


@torch.no_grad()
def reptile_update(meta: dict, adapted: dict, lr_theta: float, lr_alpha: float) -> dict:
    """`adapted` holds per-task parameters with a leading task dimension."""
    out = {}
    for k, p in meta.items():
        lr = lr_alpha if is_arch(k) else lr_theta
        out[k] = p + lr * (adapted[k].mean(0) - p)
    return out


def reptile_epoch(learner, meta: dict, phi: dict, meta_state: dict, batch, cfg, epoch: int):
    """One meta-epoch: adapt every task of the batch (Φ_K), score its queries, update."""
    from .train import meta_lrs

    T = batch.support_x.shape[0]
    phi_learner = learner.phi_learner            # None for cross-entropy
    by_meta_gradient = phi_learner is not None and phi_learner.mode == "meta_gradient"
    task_phi = expand(phi, T)
    if by_meta_gradient:                          # ∇_φ through the inner loop
        task_phi = {k: v.requires_grad_() for k, v in task_phi.items()}
    adapted, stats = learner.adapt(
        expand(meta, T), task_phi, batch.support_x, batch.support_y,
        key=(cfg.seed, epoch), task_ids=list(range(T)), steps=cfg.inner_steps,
        batch=cfg.inner_batch, drop_p=cfg.drop_path,
        learn_phi=True, query_x=batch.query_x, query_y=batch.query_y, differentiable=by_meta_gradient,
        predict_temp=cfg.temp_end,            # each task worker scores its own shard's queries
    )
    logits = stats.pop("query_logits")
    ce, acc = query_metrics(logits, batch.query_y)
    if phi_learner is not None:
        phi, meta_state, phi_row = learner.phi_meta_update(phi, meta_state, batch=batch, adapted=adapted, stats=stats,
                                                           task_phi=task_phi, query_logits=logits)
        stats.update(phi_row)
    lr_theta, lr_alpha = meta_lrs(cfg, epoch)
    meta = reptile_update(meta, {k: v.detach() for k, v in adapted.items()}, lr_theta, lr_alpha)
    row = {"train_loss": ce.mean().item(), "train_accuracy": acc.mean().item(),
           "lr_theta_meta": lr_theta, "lr_alpha_meta": lr_alpha, **stats}
    return meta, phi, meta_state, row
