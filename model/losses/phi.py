"""φ across meta-training: its steps inside a task, its meta-update, and its record.

`PhiLearner` is a thin holder: the maths are the pure functions of `proxies.py`; this class
binds them to a Config and keeps what must be checkpointed (φ, the meta-optimizer state,
the per-epoch history).

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
    def __init__(self, cfg, loss: TaskLoss, generator: torch.Generator | None = None):
        if not loss.learned:
            raise ValueError("PhiLearner needs a learned loss (loss=fnn or lstm)")
        self.cfg, self.loss = cfg, loss
        self.mode = cfg.phi_update
        self.phi: Params = loss.init_phi(generator)
        inner_kind = "adam" if cfg.task_optimizer == "adam" else "sgd"
        self.inner_opt = _optimizer(inner_kind, cfg.lr_phi, 0.0, cfg.adam_beta2)
        self.meta_opt = _optimizer("adam", cfg.lr_phi, 0.9, 0.999)
        self.meta_state = self.meta_opt.init(self.phi) if self.mode == "meta_gradient" else {}
        self.meta_t = 0
        self.history: list[dict] = []

    @property
    def learns_in_task(self) -> bool:
        return self.mode in ("mse", "inner_product")

    # ---- inside a task (pure; φ_i may carry a leading task dimension) -----------------
    def init_task_state(self, phi: Params) -> dict:
        return self.inner_opt.init(phi)

    def task_objective_grad(self, phi: Params, *, logits: Tensor, labels: Tensor, loss_state=None,
                            logits_fn=None, params=None, support=None, query=None) -> tuple[Params, Tensor]:
        """(∇_φ, value) of this run's per-task φ objective for one task (vmap it over tasks).
        `mse` needs the step's logits/labels; `inner_product` the network function, its
        parameters, the step's support batch and the query set (`ip_ce_on`)."""
        if self.mode == "mse":
            return mse_phi_grad(self.loss, phi, logits, labels, loss_state)
        if self.mode == "inner_product":
            ce_set = query if self.cfg.ip_ce_on == "query" else support
            return inner_product_phi_grad(self.loss, phi, logits_fn, params, support, ce_set,
                                          lam=self.cfg.ip_lambda, xi=self.cfg.ip_xi,
                                          normalize=self.cfg.ip_normalize, state=loss_state)
        raise ValueError(f"phi_update={self.mode!r} does not step φ inside tasks")

    def task_step(self, phi: Params, grads: Params, opt_state: dict, t: int) -> tuple[Params, dict]:
        """One inner φ step (t = 1-based step index within the task)."""
        return self.inner_opt.step(phi, grads, opt_state, t)

    # ---- the meta-update --------------------------------------------------------------
    @torch.no_grad()
    def meta_update(self, adapted_phi: Params | None = None, meta_grads: Params | None = None) -> dict:
        """Reptile toward the task-adapted φ_i (leading task dim), or an Adam step on the
        task-averaged meta-gradient. Returns phi_norm and phi_step_norm."""
        old = self.phi
        if self.mode == "meta_gradient":
            mean_grad = {k: g.mean(0) if g.dim() > old[k].dim() else g for k, g in meta_grads.items()}
            self.meta_t += 1
            self.phi, self.meta_state = self.meta_opt.step(old, mean_grad, self.meta_state, self.meta_t)
        else:
            from ..reptile import reptile_update
            lr = self.cfg.lr_phi_meta
            self.phi = reptile_update(old, adapted_phi, lr, lr)
        return {"phi_norm": tree_norm(self.phi),
                "phi_step_norm": tree_norm({k: self.phi[k] - old[k] for k in old})}

    def diagnostics(self, logits: Tensor, labels: Tensor) -> dict:
        """loss_ce_pearson and grad_cosine of the current φ on some logits (e.g. the
        adapted models' query logits of the epoch)."""
        with torch.enable_grad():
            return {"loss_ce_pearson": loss_ce_pearson(self.loss, self.phi, logits, labels),
                    "grad_cosine": grad_cosine(self.loss, self.phi, logits, labels)}

    def record(self, epoch: int, row: dict) -> None:
        self.history.append({"epoch": epoch, **{k: row[k] for k in
                             ("phi_norm", "phi_step_norm", "loss_ce_pearson", "grad_cosine") if k in row}})

    # ---- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"phi": {k: v.detach().clone() for k, v in self.phi.items()}, "meta_state": self.meta_state,
                "meta_t": self.meta_t, "history": list(self.history), "mode": self.mode, "loss": repr(self.loss)}

    def load_state_dict(self, state: dict) -> None:
        self.loss.check_phi(state["phi"])
        if state.get("mode", self.mode) != self.mode:
            raise ValueError(f"checkpoint φ was learned with phi_update={state['mode']!r}, this run uses {self.mode!r}")
        self.phi = {k: v.clone() for k, v in state["phi"].items()}
        self.meta_state, self.meta_t = state["meta_state"], state["meta_t"]
        self.history = list(state["history"])
