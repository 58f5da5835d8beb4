"""The task-loss seam: what the task learner minimises on a support batch.

A task loss is a pure function of tensors, `loss(phi, logits, labels, state) -> (scalar,
new_state)`, so the engine can `torch.func.vmap` it over tasks and differentiate it twice
(w.r.t. the network for the task step, then w.r.t. φ for the φ proxies). φ is a plain dict
of tensors, never an nn.Module: it travels with the task like θ and α do.

Cross-entropy is the trivial case (φ = {}); the learned losses (fnn.py, lstm.py) subclass
`TaskLoss` and only define their parameter shapes and `forward`.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def one_hot(labels: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """(N,) long -> (N, n). Written as a comparison because F.one_hot checks label values
    (a data-dependent op that vmap refuses)."""
    return (labels.unsqueeze(-1) == torch.arange(n, device=labels.device)).to(dtype)


def per_sample_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of each sample, (N,); the reference the learned losses are compared to."""
    return -(one_hot(labels, logits.shape[-1], logits.dtype) * torch.log_softmax(logits, -1)).sum(-1)


def orthogonal(shape: tuple[int, ...], generator: torch.Generator, blocks: int = 1) -> Tensor:
    """Orthogonal init (Saxe et al. 2014); `blocks` > 1 splits dim 0 into equal blocks that
    are each orthogonal (the four gates of an LSTM weight)."""
    rows = shape[0] // blocks
    parts = [torch.nn.init.orthogonal_(torch.empty(rows, *shape[1:]), generator=generator) for _ in range(blocks)]
    return torch.cat(parts, 0)


class TaskLoss:
    """Cross-entropy; base class of the learned losses.

    Subclasses set `learned = True` and define `phi_shapes()` and `forward()`; everything
    else (n-way checks, the batch mean, per-sample values, parameter counts) lives here.
    """

    learned = False

    def __init__(self, n_way: int):
        self.n_way = int(n_way)

    # ---- parameters -------------------------------------------------------------------
    def phi_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def init_phi(self, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {}

    def init_state(self, phi: dict) -> Any:
        """Loss state carried through a task's inner steps (None: stateless)."""
        return None

    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.phi_shapes().values())

    def first_layer_logit_weights(self, phi: dict) -> Tensor | None:
        """The first layer's columns that read the logits, (H, n); None for CE."""
        return None

    def check_phi(self, phi: dict) -> None:
        """Refuse a φ built for another n-way (or another network) with a clear message."""
        want = self.phi_shapes()
        if set(phi) != set(want):
            raise ValueError(f"loss parameters {sorted(phi)} do not match a {type(self).__name__} "
                             f"(expected {sorted(want)})")
        for k, shape in want.items():
            if tuple(phi[k].shape[-len(shape):]) != shape:
                raise ValueError(
                    f"loss parameter {k!r} has shape {tuple(phi[k].shape)}, expected {shape}: a loss network is "
                    f"tied to n-way and this one was not built for {self.n_way}-way tasks")

    def check_logits(self, logits: Tensor) -> None:
        if logits.shape[-1] != self.n_way:
            raise ValueError(f"{type(self).__name__} is tied to {self.n_way}-way tasks but got logits with "
                             f"{logits.shape[-1]} classes; build a new loss for {logits.shape[-1]}-way tasks")

    # ---- evaluation -------------------------------------------------------------------
    def forward(self, phi: dict, logits: Tensor, labels: Tensor, state: Any) -> tuple[Tensor, Any]:
        """Per-sample loss values (N,) whose mean is the task loss, and the new state."""
        return per_sample_ce(logits, labels), state

    def __call__(self, phi: dict, logits: Tensor, labels: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        self.check_logits(logits)
        values, state = self.forward(phi, logits, labels, state)
        return values.mean(), state

    def per_sample(self, phi: dict, logits: Tensor, labels: Tensor) -> Tensor:
        """Per-sample values from a fresh state (for the Pearson check and the landscapes)."""
        self.check_logits(logits)
        return self.forward(phi, logits, labels, self.init_state(phi))[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_way={self.n_way})"


class CrossEntropy(TaskLoss):
    """The hand-crafted task loss of MetaNAS: no φ."""


def embed_input(phi: dict, logits: Tensor, labels: Tensor, residual: bool, elu_alpha: float) -> Tensor:
    """Shared first layer of the learned losses: [logits, one-hot label] -> H, plus the batch
    cross-entropy as a residual (it gives the network CE's gradient from the start), ELU."""
    n = logits.shape[-1]
    x = torch.cat([logits, one_hot(labels, n, logits.dtype)], -1)
    h = x @ phi["embed.weight"].T + phi["embed.bias"]
    if residual:
        h = h + per_sample_ce(logits, labels).mean()
    return torch.nn.functional.elu(h, elu_alpha)
