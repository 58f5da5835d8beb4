"""Task losses: cross-entropy and the learned FNN/LSTM losses of LAMANAS, and how φ learns.

    loss = make_task_loss(cfg, n_way)          # CrossEntropy | FNNLoss | LSTMLoss
    phi = loss.init_phi(generator)             # {} for CE
    value, state = loss(phi, logits, labels, loss.init_state(phi))

See docs/learned_losses.md.
"""
from __future__ import annotations

from .base import CrossEntropy, TaskLoss, one_hot, per_sample_ce
from .fnn import FNNLoss
from .lstm import LSTMLoss
from .phi import PhiLearner, grad_cosine, loss_ce_pearson, pearson, tree_norm
from .proxies import (inner_product_objective, inner_product_phi_grad, meta_gradient_phi_grad, mse_objective,
                      mse_phi_grad, similarity)


def make_task_loss(cfg, n_way: int | None = None) -> TaskLoss:
    """The task loss a Config asks for (`loss`, `loss_hidden`, `loss_residual`, ...)."""
    n = cfg.n_way if n_way is None else n_way
    if cfg.loss == "ce":
        return CrossEntropy(n)
    if cfg.loss == "fnn":
        return FNNLoss(n, cfg.loss_hidden, cfg.loss_residual, cfg.elu_alpha)
    if cfg.loss == "lstm":
        return LSTMLoss(n, cfg.loss_hidden, cfg.lstm_layers, cfg.loss_residual, cfg.elu_alpha, cfg.lstm_state)
    raise ValueError(f"unknown loss {cfg.loss!r}; choose ce, fnn or lstm")


__all__ = [
    "TaskLoss", "CrossEntropy", "FNNLoss", "LSTMLoss", "make_task_loss", "PhiLearner",
    "one_hot", "per_sample_ce", "mse_objective", "mse_phi_grad", "similarity", "inner_product_objective",
    "inner_product_phi_grad", "meta_gradient_phi_grad", "loss_ce_pearson", "grad_cosine", "pearson", "tree_norm",
]
