"""φ across meta-training: its steps inside a task, its meta-update, and its record.

`PhiLearner` is a thin binding of the pure functions of `proxies.py` to a Config; φ and
its meta-state (meta-optimizer moments, per-epoch history) are values the training loop
holds and checkpoints.

- `mse` / `inner_product` (paper Algorithm 2): each task steps its own copy φ_i at every
  inner step (`task_step`), and the meta-update moves φ toward mean_i φ_i (Reptile, rate
  `lr_phi_meta`).
- `meta_gradient` (ML3 / SAVN): φ is fixed inside tasks; the meta-update is an Adam step
  (rate `lr_phi`) on mean_i ∇_φ CE_query(adapted with L_φ).

The inner φ optimizer is SGD, or Adam with β1 = 0 when the task optimizer is Adam: both
take a step along a positive rescaling of −∇_φ, so every step is a descent direction of
the objective on the batch it was computed on (momentum could point elsewhere).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.func import grad, vmap

from .base import TaskLoss, per_sample_ce
from .proxies import inner_product_phi_grad, mse_phi_grad

Params = dict[str, Tensor]


def _optimizer(kind: str, lr: float, beta1: float, beta2: float):
    from ..task_learner import TaskOptimizer  # lazy: task_learner imports this package
    return TaskOptimizer(kind, lr, lr, beta1, beta2)


def tree_norm(tree: Params) -> float:
    return math.sqrt(sum(float((v.detach().double() ** 2).sum()) for v in tree.values()))


def pearson(a: Tensor, b: Tensor) -> float:
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    a, b = a - a.mean(), b - b.mean()
    denom = float(a.norm() * b.norm())
    return float((a * b).sum()) / denom if denom > 0 else float("nan")


def loss_ce_pearson(loss: TaskLoss, phi: Params, logits: Tensor, labels: Tensor) -> float:
    """Pearson correlation of per-sample L_φ with per-sample CE, pooled over tasks; logits
    (T, N, n) or (N, n). Values are computed per task batch (the CE residual couples a
    batch's samples)."""
    values = _per_task(lambda z, y: loss.per_sample(phi, z, y), logits, labels)
    return pearson(values, per_sample_ce(logits.detach(), labels))


def _per_task(fn, logits, labels):
    if logits.dim() == 2:
        return fn(logits.detach(), labels)
    return torch.stack([fn(z.detach(), y) for z, y in zip(logits, labels)])


def grad_cosine(loss: TaskLoss, phi: Params, logits: Tensor, labels: Tensor) -> float:
    """Mean over tasks of cos(∇_z L_φ, ∇_z CE) on a task's logits: 1 means L_φ pushes the
    logits exactly where cross-entropy would."""
    def one(z, y):
        a = grad(lambda z_: loss(phi, z_, y)[0])(z)
        g = grad(lambda z_: per_sample_ce(z_, y).mean())(z)
        return (a * g).sum() / (a.norm() * g.norm() + 1e-12)
    return float(_per_task(one, logits, labels).mean())


class PhiLearner:
    """How φ learns under a Config. Functional: φ and its meta-state are passed in and out
    (the training loop keeps and checkpoints them); `phi_state` = {"opt": meta-optimizer
    moments, "t": meta steps taken, "history": per-epoch φ records}."""

    def __init__(self, cfg, loss: TaskLoss):
        if not loss.learned:
            raise ValueError("PhiLearner needs a learned loss (loss=fnn or lstm)")
        self.cfg, self.loss, self.mode = cfg, loss, cfg.phi_update
        inner_kind = "adam" if cfg.task_optimizer == "adam" else "sgd"
        self.inner_opt = _optimizer(inner_kind, cfg.lr_phi, 0.0, cfg.adam_beta2)
        self.meta_opt = _optimizer("adam", cfg.lr_phi, 0.9, 0.999)

    @property
    def learns_in_task(self) -> bool:
        return self.mode in ("mse", "inner_product")

    def init_phi_state(self, phi: Params) -> dict:
        return {"opt": self.meta_opt.init(phi) if self.mode == "meta_gradient" else {}, "t": 0, "history": []}

    # ---- inside a task (pure; vmap over tasks) ---------------------------------------
    def init_task_state(self, phi: Params) -> dict:
        return self.inner_opt.init(phi)

    def task_objective_grad(self, phi: Params, *, logits: Tensor, labels: Tensor, loss_state=None,
                            params: Params | None = None, support_fn=None, query_fn=None,
                            query_labels: Tensor | None = None, loss_grads: Params | None = None
                            ) -> tuple[Params, Tensor]:
        """(∇_φ, value) of this run's per-task φ objective on one inner step of one task.
        `mse` needs the step's support logits/labels; `inner_product` also the network on
        the support batch and on the query set as functions of `params` (`ip_ce_on`), and
        reuses the step's ∇_params L_φ (`loss_grads`) when given."""
        if self.mode == "mse":
            return mse_phi_grad(self.loss, phi, logits, labels, loss_state)
        if self.mode == "inner_product":
            support = (support_fn, labels)
            ce_batch = (query_fn, query_labels) if self.cfg.ip_ce_on == "query" else support
            return inner_product_phi_grad(self.loss, phi, params, support, ce_batch, lam=self.cfg.ip_lambda,
                                          xi=self.cfg.ip_xi, normalize=self.cfg.ip_normalize, state=loss_state,
                                          step=None if loss_grads is None else (logits, loss_grads))
        raise ValueError(f"phi_update={self.mode!r} does not step φ inside tasks")

    def task_step(self, phi: Params, grads: Params, opt_state: dict, t: int) -> tuple[Params, dict]:
        """One inner φ step (t = 1-based step index within the task)."""
        return self.inner_opt.step(phi, grads, opt_state, t)

    # ---- the meta-update --------------------------------------------------------------
    @torch.no_grad()
    def meta_update(self, phi: Params, phi_state: dict, *, adapted_phi: Params | None = None,
                    meta_grads: Params | None = None) -> tuple[Params, dict, dict]:
        """Reptile toward the task-adapted φ_i (leading task dim), or an Adam step on the
        task-averaged meta-gradient (leading task dim). Returns (φ, phi_state, row) with
        row = {phi_norm, phi_step_norm}."""
        if self.mode == "meta_gradient":
            t = phi_state["t"] + 1
            mean_grad = {k: g.mean(0) for k, g in meta_grads.items()}
            new, opt = self.meta_opt.step(phi, mean_grad, phi_state["opt"], t)
            phi_state = {**phi_state, "opt": opt, "t": t}
        else:
            from ..reptile import reptile_update
            lr = self.cfg.lr_phi_meta
            new = reptile_update(phi, adapted_phi, lr, lr)
            phi_state = {**phi_state, "t": phi_state["t"] + 1}
        row = {"phi_norm": tree_norm(new), "phi_step_norm": tree_norm({k: new[k] - phi[k] for k in phi})}
        return new, phi_state, row

    def diagnostics(self, phi: Params, logits: Tensor, labels: Tensor) -> dict:
        """loss_ce_pearson and grad_cosine of φ on some logits (the epoch's query logits)."""
        with torch.enable_grad():
            return {"loss_ce_pearson": loss_ce_pearson(self.loss, phi, logits, labels),
                    "grad_cosine": grad_cosine(self.loss, phi, logits, labels)}

    @staticmethod
    def record(phi_state: dict, epoch: int, row: dict) -> dict:
        """phi_state with this epoch's φ record appended to its history."""
        keys = ("phi_norm", "phi_step_norm", "loss_ce_pearson", "grad_cosine")
        return {**phi_state, "history": phi_state["history"] + [{"epoch": epoch, **{k: row[k] for k in keys if k in row}}]}
