"""Φ_K, the task learner: K steps on a task's support set updating θ and α together.

Each step is one forward and one backward of the task loss through the supernet
(first-order DARTS, Eq. 2): the gradient w.r.t. the whole parameter dict gives ∇θ and ∇α
at once. Parameters are plain tensors passed through `torch.func.functional_call`, never
copied modules, and the task optimizer's state is created per task (it cannot leak).

Two engines run the same functions: `vmap` adapts all tasks of a meta-batch together
(parameters carry a leading task dimension), `loop` one task at a time (and really skips
soft-pruned ops). Randomness (inner batches, drop-path masks) comes from generators keyed
on (seed, epoch, task, step), so both engines, and a resumed run, see the same draws.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from .supernet import SuperNet, is_arch

# purposes of keyed random streams
_BATCH, _DROP = 1, 2


def keyed_generator(*key: int, device="cpu") -> torch.Generator:
    seed = int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(seed)


def temperatures(cfg, steps: int) -> list[float]:
    """softmax temperature per inner step, annealed linearly temp_start -> temp_end."""
    if steps <= 1:
        return [cfg.temp_start] * max(steps, 1)
    return [cfg.temp_start + (cfg.temp_end - cfg.temp_start) * s / (steps - 1) for s in range(steps)]


class CrossEntropy:
    """The plain task loss; learned losses (model.losses) follow the same interface."""

    n_way = None

    def init_phi(self, generator=None) -> dict:
        return {}

    def init_state(self, phi):
        return None

    def __call__(self, phi, logits, labels, state=None):
        return F.cross_entropy(logits, labels), state


@dataclass
class TaskOptimizer:
    """Functional SGD/Adam with separate learning rates for θ and α (state is per task)."""

    kind: str
    lr_theta: float
    lr_alpha: float
    beta1: float = 0.0
    beta2: float = 0.999
    eps: float = 1e-8
    alpha_weight_decay: float = 0.0

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.task_optimizer, cfg.lr_theta_task, cfg.lr_alpha_task, cfg.adam_beta1, cfg.adam_beta2,
                   alpha_weight_decay=cfg.alpha_weight_decay)

    def init(self, params: dict) -> dict:
        if self.kind == "sgd":
            return {}
        return {"m": {k: torch.zeros_like(v) for k, v in params.items()},
                "v": {k: torch.zeros_like(v) for k, v in params.items()}}

    def step(self, params: dict, grads: dict, state: dict, t: int) -> tuple[dict, dict]:
        """Returns new (params, state); pure, so it can stay inside an autograd graph."""
        new_p, new_m, new_v = {}, {}, {}
        for k, p in params.items():
            g = grads[k]
            arch = is_arch(k)
            if arch and self.alpha_weight_decay:
                g = g + self.alpha_weight_decay * p
            lr = self.lr_alpha if arch else self.lr_theta
            if self.kind == "sgd":
                new_p[k] = p - lr * g
                continue
            m = self.beta1 * state["m"][k] + (1 - self.beta1) * g
            v = self.beta2 * state["v"][k] + (1 - self.beta2) * g * g
            m_hat = m / (1 - self.beta1**t)
            v_hat = v / (1 - self.beta2**t)
            new_p[k] = p - lr * m_hat / (v_hat.sqrt() + self.eps)
            new_m[k], new_v[k] = m, v
        return new_p, ({} if self.kind == "sgd" else {"m": new_m, "v": new_v})


class TaskLearner:
    """Adapts (θ, α) to tasks and predicts their queries, vmapped or looped."""

    def __init__(self, net: SuperNet, cfg, loss=None, engine: str | None = None):
        self.net, self.cfg = net, cfg
        self.loss = loss or CrossEntropy()
        self.engine = engine or cfg.engine
        self.opt = TaskOptimizer.from_config(cfg)

    # ---- pure per-task functions ------------------------------------------------------
    def logits(self, params, x, temp, drop_mask=None, stats_from=None):
        return functional_call(self.net, params, (x,), {"temp": temp, "drop_mask": drop_mask, "stats_from": stats_from})

    def _step_loss(self, params, phi, x, y, temp, drop_mask):
        logits = self.logits(params, x, temp, drop_mask)
        loss, _ = self.loss(phi, logits, y, None)
        return loss, logits

    def _grad_fn(self, has_mask: bool):
        g = grad(self._step_loss, has_aux=True)
        if self.engine != "vmap":
            return g
        return vmap(g, in_dims=(0, 0, 0, 0, None, 0 if has_mask else None))

    # ---- randomness -------------------------------------------------------------------
    def draw(self, key: tuple, task_ids, step: int, support_size: int, batch: int, drop_p: float, device):
        """Inner-batch indices (T, B) and drop-path masks (T, ...) for one step."""
        idx, masks = [], []
        for t in task_ids:
            if 0 < batch < support_size:
                g = keyed_generator(*key, t, step, _BATCH)
                idx.append(torch.randperm(support_size, generator=g)[:batch])
            else:
                idx.append(torch.arange(support_size))
            if drop_p > 0:
                g = keyed_generator(*key, t, step, _DROP)
                shape = self.net.drop_mask_shape(len(idx[-1]))
                masks.append(torch.bernoulli(torch.full(shape, 1 - drop_p), generator=g) / (1 - drop_p))
        idx = torch.stack(idx).to(device)
        mask = torch.stack(masks).to(device) if masks else None
        return idx, mask

    # ---- adaptation -------------------------------------------------------------------
    def adapt(self, params: dict, phi: dict, support_x, support_y, *, key: tuple, task_ids, steps: int,
              batch: int, drop_p: float) -> tuple[dict, dict]:
        """K task-learner steps. `params`/`phi` have a leading task dimension; so do the
        support tensors (T, S, ...). Returns adapted params (T, ...) and step statistics."""
        temps = temperatures(self.cfg, steps)
        S = support_x.shape[1]
        state = self.opt.init(params)
        grad_fn = self._grad_fn(drop_p > 0)
        losses = []
        for s in range(steps):
            idx, mask = self.draw(key, task_ids, s, S, batch, drop_p, support_x.device)
            x = torch.gather(support_x, 1, idx.view(*idx.shape, 1, 1, 1).expand(-1, -1, *support_x.shape[2:]))
            y = torch.gather(support_y, 1, idx)
            if self.engine == "vmap":
                grads, logits = grad_fn(params, phi, x, y, temps[s], mask)
            else:
                outs = [grad_fn(_at(params, i), _at(phi, i), x[i], y[i], temps[s], None if mask is None else mask[i])
                        for i in range(len(task_ids))]
                grads = _stack([o[0] for o in outs])
                logits = torch.stack([o[1] for o in outs])
            with torch.no_grad():
                losses.append(F.cross_entropy(logits.flatten(0, 1), y.flatten()).item())
                params, state = self.opt.step(params, grads, state, s + 1)
        return params, {"inner_ce_first": losses[0] if losses else None, "inner_ce_last": losses[-1] if losses else None}

    @torch.no_grad()
    def predict(self, params: dict, support_x, query_x, temp: float):
        """Query logits (T, Q, n) after adaptation, BN statistics per `bn_mode`."""
        def one(p, sx, qx):
            if self.cfg.bn_mode == "support_stats":
                return self.logits(p, torch.cat([sx, qx]), temp, None, sx.shape[0])[sx.shape[0]:]
            return self.logits(p, qx, temp)

        if self.engine == "vmap":
            return vmap(one)(params, support_x, query_x)
        return torch.stack([one(_at(params, i), support_x[i], query_x[i]) for i in range(query_x.shape[0])])

    def set_engine_flags(self):
        self.net.skip_zero = self.engine == "loop"


def _at(d: dict, i: int) -> dict:
    return {k: v[i] for k, v in d.items()}


def _stack(ds: list[dict]) -> dict:
    return {k: torch.stack([d[k] for d in ds]) for k in ds[0]} if ds else {}


def expand(params: dict, n: int) -> dict:
    """n per-task copies of the meta-parameters (a leading task dimension)."""
    return {k: v.detach().unsqueeze(0).expand(n, *v.shape).clone() for k, v in params.items()}


def query_metrics(logits, query_y) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task query cross-entropy and accuracy, each (T,)."""
    T, Q, n = logits.shape
    ce = F.cross_entropy(logits.reshape(T * Q, n), query_y.reshape(-1), reduction="none").view(T, Q).mean(1)
    acc = (logits.argmax(-1) == query_y).float().mean(1)
    return ce, acc
