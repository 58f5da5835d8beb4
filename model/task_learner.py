"""Φ_K, the task learner: K steps on a task's support set updating θ and α together.

Each step is one forward and one backward of the task loss through the supernet
(first-order DARTS, Eq. 2): the gradient w.r.t. the whole parameter dict gives ∇θ and ∇α
at once. Parameters are plain tensors passed through `torch.func.functional_call`, never
copied modules, and the task optimizer's state is created per task (it cannot leak).

Two engines run the same functions: `vmap` adapts all tasks of a meta-batch together
(parameters carry a leading task dimension, gradients by torch.func), `loop` one task at a
time (gradients by plain autograd, channels-last convolutions, and really skips
soft-pruned ops). Randomness (inner batches, drop-path masks) comes from generators keyed
on (seed, epoch, task, step), so both engines, and a resumed run, see the same draws.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

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

    def __init__(self, net: SuperNet, cfg, loss=None, engine: str | None = None, task_workers: int | None = None):
        self.net, self.cfg = net, cfg
        self.loss = loss or CrossEntropy()
        self.engine = engine or cfg.engine
        self.task_workers = cfg.task_workers if task_workers is None else task_workers
        self._pool = None                   # model.task_pool.TaskPool, started on first use
        self.opt = TaskOptimizer.from_config(cfg)
        self.phi_learner = None             # how φ learns, for learned losses (model.losses)
        if getattr(self.loss, "learned", False):
            from .losses import PhiLearner

            self.phi_learner = PhiLearner(cfg, self.loss)

    # ---- pure per-task functions ------------------------------------------------------
    def logits(self, params, x, temp, drop_mask=None, stats_from=None, active=None):
        return functional_call(self.net, params, (x,), {"temp": temp, "drop_mask": drop_mask, "stats_from": stats_from,
                                                         "active": active})

    def _step_loss(self, params, phi, x, y, temp, drop_mask, loss_state=(), active=None):
        logits = self.logits(params, x, temp, drop_mask, active=active)
        loss, loss_state = self.loss(phi, logits, y, loss_state or None)
        return loss, (logits, () if loss_state is None else loss_state)   # torch.func aux: no None

    def _grad_fn(self, has_mask: bool):
        if self.engine != "vmap":
            return self._autograd_step
        g = grad(self._step_loss, has_aux=True)
        return vmap(g, in_dims=(0, 0, 0, 0, None, 0 if has_mask else None, 0, None))

    def _autograd_step(self, params, phi, x, y, temp, drop_mask, loss_state=(), active=None):
        """The loop engine's step: what `grad(_step_loss, has_aux=True)` returns, by plain
        autograd, so the supernet runs on ordinary tensors (channels-last, see supernet).
        Inside an outer graph (second-order MAML, meta_gradient) the gradients stay in it."""
        in_graph = _in_graph(params, phi)
        leaves = {k: v if in_graph and v.requires_grad else v.detach().requires_grad_() for k, v in params.items()}
        with torch.enable_grad():
            loss, aux = self._step_loss(leaves, phi, x, y, temp, drop_mask, loss_state, active)
            g = torch.autograd.grad(loss, list(leaves.values()), create_graph=in_graph, materialize_grads=True)
        grads = dict(zip(leaves, g))
        return grads, (aux if in_graph else tree_map(lambda v: v.detach() if isinstance(v, torch.Tensor) else v, aux))

    def _phi_grad(self, phi, params, x, y, logits, loss_grads, loss_state, temp, drop_mask, query_x, query_y, active):
        """(∇_φ, value) of the φ objective on one task's inner step (see model.losses.phi)."""
        return self.phi_learner.task_objective_grad(
            phi, logits=logits, labels=y, loss_state=loss_state or None, params=params, loss_grads=loss_grads,
            support_fn=lambda p: self.logits(p, x, temp, drop_mask, active=active),
            query_fn=None if query_x is None else (lambda p: self.logits(p, query_x, temp, active=active)),
            query_labels=query_y)

    def _init_loss_state(self, phi: dict):
        """The task loss's state per task (() when stateless): e.g. the LSTM class table."""
        if self.loss.init_state({k: v[0] for k, v in phi.items()}) is None:
            return ()
        if self.engine == "vmap":
            return vmap(self.loss.init_state)(phi)
        return _stack_trees([self.loss.init_state(_at(phi, i)) for i in range(next(iter(phi.values())).shape[0])])

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
              batch: int, drop_p: float, learn_phi: bool = False, query_x=None, query_y=None,
              differentiable: bool = False, predict_temp: float | None = None) -> tuple[dict, dict]:
        """K task-learner steps (see `adapt_here`), the tasks shared among `task_workers`
        processes when there are several, and nothing needs to stay in this process's
        autograd graph."""
        kwargs = dict(key=key, task_ids=task_ids, steps=steps, batch=batch, drop_p=drop_p, learn_phi=learn_phi,
                      query_x=query_x, query_y=query_y, differentiable=differentiable, predict_temp=predict_temp)
        in_graph = (differentiable and torch.is_grad_enabled()) or _in_graph(params, phi)
        if self.task_workers < 2 or len(task_ids) < 2 or in_graph:
            return self.adapt_here(params, phi, support_x, support_y, **kwargs)
        if self._pool is None:
            from .task_pool import TaskPool

            self._pool = TaskPool(self.cfg, self.task_workers, dict(self.net.named_buffers()))
        return self._pool.adapt(self.adapt_here, params, phi, support_x, support_y, **kwargs)

    def close(self) -> None:
        """Stop the task worker processes, if any were started."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def adapt_here(self, params: dict, phi: dict, support_x, support_y, *, key: tuple, task_ids, steps: int,
                   batch: int, drop_p: float, learn_phi: bool = False, query_x=None, query_y=None,
                   differentiable: bool = False, predict_temp: float | None = None) -> tuple[dict, dict]:
        """K task-learner steps in this process. `params`/`phi` have a leading task dimension; so do the
        support tensors (T, S, ...). Returns adapted params (T, ...) and step statistics.

        `learn_phi` (meta-training with phi_update mse/inner_product): each task also steps
        its copy φ_i once per inner step on that step's batch (after the θ/α gradient, which
        used the φ_i before it); the adapted φ_i are returned in stats["phi"]. The query set
        is needed by the inner-product proxy. `differentiable` keeps the steps in the
        autograd graph (phi_update meta_gradient differentiates the query loss through them).
        `predict_temp`: also return the adapted tasks' query logits at that temperature in
        stats["query_logits"] (`predict`), so a task worker predicts its own shard."""
        temps = temperatures(self.cfg, steps)
        S = support_x.shape[1]
        state = self.opt.init(params)
        loss_state = self._init_loss_state(phi)
        learn_phi = learn_phi and self.phi_learner is not None and self.phi_learner.learns_in_task
        phi_opt = self.phi_learner.init_task_state(phi) if learn_phi else None
        grad_fn = self._grad_fn(drop_p > 0)
        losses, phi_objective = [], []
        for s in range(steps):
            idx, mask = self.draw(key, task_ids, s, S, batch, drop_p, support_x.device)
            x = torch.gather(support_x, 1, idx.view(*idx.shape, 1, 1, 1).expand(-1, -1, *support_x.shape[2:]))
            y = torch.gather(support_y, 1, idx)
            step_state = loss_state
            active = self.net.active_ops(params, temps[s])   # ops not pruned in every task
            if self.engine == "vmap":
                grads, (logits, loss_state) = grad_fn(params, phi, x, y, temps[s], mask, loss_state, active)
            else:   # one task at a time: skip that task's pruned ops
                outs = [grad_fn(_at(params, i), _at(phi, i), x[i], y[i], temps[s], None if mask is None else mask[i],
                                _at_tree(loss_state, i), self.net.active_ops(_at(params, i), temps[s]))
                        for i in range(len(task_ids))]
                grads = _stack([o[0] for o in outs])
                logits = torch.stack([o[1][0] for o in outs])
                loss_state = _stack_trees([o[1][1] for o in outs])
            if learn_phi:
                phi_grads, value = self._map_tasks(
                    self._phi_grad, (phi, params, x, y, logits, grads, step_state, temps[s], mask, query_x, query_y,
                                     active),
                    batched=(True, True, True, True, True, True, True, False, mask is not None, query_x is not None,
                             query_y is not None, False))
                phi, phi_opt = self.phi_learner.task_step(phi, phi_grads, phi_opt, s + 1)
                phi_objective.append(float(value.mean()))
            with torch.no_grad():
                losses.append(F.cross_entropy(logits.flatten(0, 1), y.flatten()).item())
            with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
                params, state = self.opt.step(params, grads, state, s + 1)
        stats = {"inner_ce_first": losses[0] if losses else None, "inner_ce_last": losses[-1] if losses else None}
        if learn_phi:
            stats.update(phi=phi, phi_objective_first=phi_objective[0], phi_objective_last=phi_objective[-1])
        if predict_temp is not None:
            stats["query_logits"] = self.predict(params, support_x, query_x, predict_temp)
        return params, stats

    def _map_tasks(self, fn, args: tuple, batched: tuple):
        """fn over the task dimension of the `batched` args: vmapped, or looped and stacked."""
        if self.engine == "vmap":
            return vmap(fn, in_dims=tuple(0 if b else None for b in batched))(*args)
        outs = [fn(*(_at_tree(a, i) if b else a for a, b in zip(args, batched)))
                for i in range(next(iter(args[0].values())).shape[0])]
        return _stack_trees(outs)

    def query_logits(self, params: dict, support_x, query_x, temp: float):
        """Query logits (T, Q, n) after adaptation, BN statistics per `bn_mode`."""
        def one(p, sx, qx, active):
            if self.cfg.bn_mode == "support_stats":
                return self.logits(p, torch.cat([sx, qx]), temp, None, sx.shape[0], active)[sx.shape[0]:]
            return self.logits(p, qx, temp, active=active)

        if self.engine == "vmap":
            active = self.net.active_ops(params, temp)
            return vmap(lambda p, sx, qx: one(p, sx, qx, active))(params, support_x, query_x)
        return torch.stack([one(_at(params, i), support_x[i], query_x[i], self.net.active_ops(_at(params, i), temp))
                            for i in range(query_x.shape[0])])

    def phi_meta_update(self, phi: dict, meta_state: dict, *, batch, adapted: dict, stats: dict, task_phi: dict,
                        query_logits) -> tuple[dict, dict, dict]:
        """φ's meta-update after a meta-batch (learned losses): Reptile toward the adapted
        φ_i in stats["phi"], or, for meta_gradient, an Adam step on the task-averaged
        ∇_φ CE_query, back through the differentiable adaptation from `task_phi` (the
        per-task copies of φ that required grad). φ's meta-state lives in
        meta_state["phi"]. Returns (φ, meta_state, metrics row)."""
        pl = self.phi_learner
        phi_state = meta_state.get("phi") or pl.init_phi_state(phi)
        if pl.mode == "meta_gradient":
            logits = self.query_logits(adapted, batch.support_x, batch.query_x, self.cfg.temp_end)
            ce = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten(), reduction="sum") / logits.shape[1]
            names = list(task_phi)
            grads = torch.autograd.grad(ce, [task_phi[k] for k in names], allow_unused=True)
            grads = {k: torch.zeros_like(task_phi[k]) if g is None else g for k, g in zip(names, grads)}
            phi, phi_state, row = pl.meta_update(phi, phi_state, meta_grads=grads)
        else:
            phi, phi_state, row = pl.meta_update(phi, phi_state, adapted_phi=stats.pop("phi"))
        row.update(pl.diagnostics(phi, query_logits, batch.query_y))
        phi_state = pl.record(phi_state, phi_state["t"], row)   # t = meta-updates so far = epoch
        return phi, {**meta_state, "phi": phi_state}, row

    @torch.no_grad()
    def predict(self, params: dict, support_x, query_x, temp: float):
        """Query logits (T, Q, n) after adaptation, BN statistics per `bn_mode`."""
        return self.query_logits(params, support_x, query_x, temp)


def _in_graph(params: dict, phi: dict) -> bool:
    """True when results must stay in an outer autograd graph (MAML, meta_gradient)."""
    return torch.is_grad_enabled() and any(v.requires_grad for d in (params, phi) for v in d.values())


def _at(d: dict, i: int) -> dict:
    return {k: v[i] for k, v in d.items()}


def _stack(ds: list[dict]) -> dict:
    return {k: torch.stack([d[k] for d in ds]) for k in ds[0]} if ds else {}


def _at_tree(tree, i: int):
    """Task i of a pytree of tensors with a leading task dimension (None/() pass through)."""
    return tree_map(lambda v: v[i] if isinstance(v, torch.Tensor) else v, tree)


def _stack_trees(trees: list):
    """Stack per-task pytrees along a new leading task dimension."""
    from torch.utils._pytree import tree_flatten, tree_unflatten

    flat = [tree_flatten(t) for t in trees]
    leaves = [torch.stack(ls) for ls in zip(*(f[0] for f in flat))]
    return tree_unflatten(leaves, flat[0][1])


def expand(params: dict, n: int) -> dict:
    """n per-task copies of the meta-parameters (a leading task dimension)."""
    return {k: v.detach().unsqueeze(0).expand(n, *v.shape).clone() for k, v in params.items()}


def query_metrics(logits, query_y) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task query cross-entropy and accuracy, each (T,)."""
    T, Q, n = logits.shape
    ce = F.cross_entropy(logits.reshape(T * Q, n), query_y.reshape(-1), reduction="none").view(T, Q).mean(1)
    acc = (logits.argmax(-1) == query_y).float().mean(1)
    return ce, acc
