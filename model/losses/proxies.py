"""How φ learns inside a task: the objectives of paper Eq. 7 and Eq. 8, with ∇_φ.

All functions are pure and built from torch.func transforms, so they vmap over tasks.
Every objective here is *minimised* (the inner-product proxy returns minus the similarity).
`inner_product_phi_grad` given ordinary tensors outside any transform (the loop engine)
takes the network's derivatives by plain autograd and forward-mode AD instead: the same
numbers, with the supernet in channels-last (the φ gradient ~2x faster on a CPU, BENCHMARKS.md).

A batch of the task network is passed as `(logits_fn, labels)`, where `logits_fn(params)
-> logits` is the network on that batch as a function of its parameter dict (θ and α
together; α entries are named `alpha_*`), with the images, temperature and drop-path mask
already bound by the caller.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.func import grad, grad_and_value, jvp, vjp

from .base import TaskLoss, per_sample_ce

Params = dict[str, Tensor]
Batch = tuple[Callable[[Params], Tensor], Tensor]   # (params -> logits, labels)
EPS = 1e-12


def is_arch(name: str) -> bool:
    from ..supernet import is_arch as _is_arch  # lazy: keeps model.losses importable alone
    return _is_arch(name)


# ---- Eq. 7: MSE to cross-entropy ---------------------------------------------------------

def mse_objective(loss: TaskLoss, phi: Params, logits: Tensor, labels: Tensor, state=None) -> Tensor:
    """Mean over the batch of (ℓ_φ(z_i, y_i) − CE(z_i, y_i))². Per sample rather than on the
    two batch means: a mean-matching loss can be any function with the right average, and
    this one's minimiser also matches the batch means."""
    logits = logits.detach()
    values, _ = loss.forward(phi, logits, labels, state)
    return ((values - per_sample_ce(logits, labels)) ** 2).mean()


def mse_phi_grad(loss: TaskLoss, phi: Params, logits: Tensor, labels: Tensor, state=None) -> tuple[Params, Tensor]:
    """(∇_φ, value) of the MSE proxy; needs only the step's support logits."""
    return grad_and_value(lambda p: mse_objective(loss, p, logits, labels, state))(phi)


# ---- Eq. 8: gradient alignment -----------------------------------------------------------

def similarity(g_loss: Params, g_ce: Params, lam: float, xi: float, normalize: str) -> Tensor:
    """λ·s(∇_θ L_φ, ∇_θ CE) + ξ·s(∇_α L_φ, ∇_α CE), s = inner product or cosine."""
    total = 0.0
    for weight, arch in ((lam, False), (xi, True)):
        names = [k for k in g_loss if is_arch(k) == arch]
        if weight == 0 or not names:
            continue
        dot = sum((g_loss[k] * g_ce[k]).sum() for k in names)
        if normalize == "cosine":
            norm_l = torch.sqrt(sum((g_loss[k] ** 2).sum() for k in names) + EPS)
            norm_c = torch.sqrt(sum((g_ce[k] ** 2).sum() for k in names) + EPS)
            dot = dot / (norm_l * norm_c)
        total = total + weight * dot
    return torch.as_tensor(total)


def ce_param_grad(params: Params, batch: Batch) -> Params:
    """∇_params of the batch cross-entropy; the φ-free half of Eq. 8."""
    logits_fn, y = batch
    return grad(lambda p: per_sample_ce(logits_fn(p), y).mean())(params)


def _eager(*trees: Params) -> bool:
    """True when plain autograd may stand in for torch.func: no transform is active (so the
    tensors are ordinary ones) and none must stay in an outer autograd graph (MAML)."""
    return torch._C._functorch.maybe_current_level() is None and not (
        torch.is_grad_enabled() and any(v.requires_grad for tree in trees for v in tree.values()))


def _eager_vjp(fn: Callable[[Params], Tensor], params: Params):
    """`torch.func.vjp(fn, params)` by plain autograd: (fn(params), cotangent -> (∇,))."""
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    with torch.enable_grad():
        out = fn(leaves)

    def pull_back(cotangent):
        return (dict(zip(leaves, torch.autograd.grad(out, list(leaves.values()), cotangent, retain_graph=True,
                                                     materialize_grads=True))),)
    return out.detach(), pull_back


def _eager_jvp(fn: Callable[[Params], Tensor], params: Params, tangents: Params) -> Tensor:
    """J_fn(params) · tangents by forward-mode AD on ordinary tensors."""
    with fwAD.dual_level():
        out = fn({k: fwAD.make_dual(v, tangents[k]) for k, v in params.items()})
        return fwAD.unpack_dual(out).tangent


def inner_product_objective(loss: TaskLoss, phi: Params, params: Params, support: Batch, ce_batch: Batch, *,
                            lam: float, xi: float, normalize: str, state=None) -> Tensor:
    """−(Eq. 8 similarity), straight from its definition: ∇_params L_φ is built as a
    differentiable function of φ (the `create_graph=True` of eager autograd). The reference
    for `inner_product_phi_grad` and the tests; it differentiates the network twice."""
    support_logits, ys = support
    g_ce = ce_param_grad(params, ce_batch)
    g_loss = grad(lambda p: loss(phi, support_logits(p), ys, state)[0])(params)
    return -similarity(g_loss, g_ce, lam, xi, normalize)


def inner_product_phi_grad(loss: TaskLoss, phi: Params, params: Params, support: Batch, ce_batch: Batch, *,
                           lam: float, xi: float, normalize: str, state=None,
                           step: tuple[Tensor, Params] | None = None) -> tuple[Params, Tensor]:
    """(∇_φ, value) of `inner_product_objective` (CE on `ce_batch`: the query set, Eq. 6, or
    the support batch), exactly, without a double backward through
    the network.

    φ enters only through a(φ) = ∇_z L_φ(z_s, y_s) on the support logits, and
    ∇_params L_φ = J_sᵀ a. Writing the objective as h(b) with b = J_sᵀ a:
        ∇_φ h = (∂a/∂φ)ᵀ J_s ∇_b h = (∂a/∂φ)ᵀ c,   c = J_s ∇_b h  (one JVP).
    For `normalize="none"` ∇_b h = −(λ g_θ, ξ g_α) is φ-free (g = ∇_params CE, one VJP), so
    the network is touched by one VJP and one JVP; `cosine` adds the VJP b = J_sᵀ a for the
    norms. The second derivatives are then those of the small loss network only.

    `step` = (support logits, ∇_params L_φ) when the task step has computed them already at
    these params on this batch (the task learner has): it saves that forward and VJP."""
    support_logits, ys = support
    eager = _eager(params, phi)
    if eager:
        ce, pull_ce = _eager_vjp(lambda p: per_sample_ce(ce_batch[0](p), ce_batch[1]).mean(), params)
        g_ce = pull_ce(torch.ones_like(ce))[0]
    else:
        g_ce = ce_param_grad(params, ce_batch)
    if step is None:
        z_s, pull_back = (_eager_vjp if eager else vjp)(support_logits, params)
        z_s = z_s.detach()
    else:
        z_s, b = step[0].detach(), step[1]

    def loss_slope(p):  # a(φ) = ∇_z L_φ(z_s, y_s), a differentiable function of φ
        return grad(lambda z: loss(p, z, ys, state)[0])(z_s)

    a = loss_slope(phi).detach()
    if normalize == "none":
        weighted = {k: -(xi if is_arch(k) else lam) * g for k, g in g_ce.items()}
    else:
        if step is None:
            b = pull_back(a)[0]
        weighted = grad(lambda b_: -similarity(b_, g_ce, lam, xi, normalize))(b)
        value = -similarity(b, g_ce, lam, xi, normalize)
    c = _eager_jvp(support_logits, params, weighted) if eager else jvp(support_logits, (params,), (weighted,))[1]
    c = c.detach()
    if normalize == "none":
        value = (a * c).sum()
    grads = grad(lambda p: (loss_slope(p) * c).sum())(phi)
    return grads, value.detach()


# ---- beyond the paper: the meta-gradient (ML3 / SAVN) ------------------------------------

def meta_gradient_phi_grad(adapt: Callable[[Params], Params], query_loss: Callable[[Params], Tensor],
                           phi: Params) -> tuple[Params, Tensor]:
    """(∇_φ, value) of the query CE of the model adapted with L_φ: `adapt(phi)` must run the
    task learner differentiably in φ (SGD steps built with torch.func.grad)."""
    return grad_and_value(lambda p: query_loss(adapt(p)))(phi)
