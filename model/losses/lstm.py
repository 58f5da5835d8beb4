"""LSTM learned loss (paper Fig. 2).

[logits, one-hot label] -> H (+ batch CE) -> ELU -> L stacked LSTM layers -> head -> 1,
batch mean. The embedded batch is read as (1, N, H): N sequences of length one, so each
sample is scored independently and its hidden/cell states start from a learned projection
of its one-hot label (per layer). The cell is written with plain tensor ops on the φ dict
so it vmaps over tasks and differentiates twice (nn.LSTM's fused kernels do neither).

`state="across_steps"` gives the loss a memory across a task's inner steps: a per-class
table of (h, c) rows per layer, built from the one-hot classes at the task's start (i.e.
the learned projections), is gathered by label at each step, and the class means of the
new states are written back (classes absent from the batch keep their rows). Batches are
resampled each step, so a per-class table is what can persist.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import TaskLoss, embed_input, one_hot, orthogonal


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM step, gates in PyTorch's order (input, forget, cell, output)."""
    i, f, g, o = (x @ w_ih.T + h @ w_hh.T + bias).chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def write_class_means(table: Tensor, values: Tensor, y1h: Tensor) -> Tensor:
    """table (L, n, H) <- per-class means of values (L, N, H); absent classes unchanged."""
    counts = y1h.sum(0)                                         # (n,)
    means = torch.einsum("nk,lnh->lkh", y1h, values) / counts.clamp(min=1)[None, :, None]
    return torch.where(counts[None, :, None] > 0, means, table)


class LSTMLoss(TaskLoss):
    learned = True

    def __init__(self, n_way: int, hidden: int = 64, layers: int = 5, residual: bool = True,
                 elu_alpha: float = 1.0, state: str = "per_step"):
        super().__init__(n_way)
        if state not in ("per_step", "across_steps"):
            raise ValueError(f"lstm state must be per_step or across_steps, got {state!r}")
        self.hidden, self.layers, self.residual = int(hidden), int(layers), bool(residual)
        self.elu_alpha, self.state_mode = float(elu_alpha), state

    def phi_shapes(self):
        H, n, L = self.hidden, self.n_way, self.layers
        return {
            "embed.weight": (H, 2 * n), "embed.bias": (H,),
            "lstm.w_ih": (L, 4 * H, H), "lstm.w_hh": (L, 4 * H, H), "lstm.bias": (L, 4 * H),
            "lstm.h0": (L, n, H), "lstm.c0": (L, n, H),   # label -> initial (h, c): one-hot @ table
            "head.weight": (1, H), "head.bias": (1,),
        }

    def init_phi(self, generator=None):
        g = generator or torch.Generator().manual_seed(0)
        phi = {}
        for k, s in self.phi_shapes().items():
            if k in ("lstm.w_ih", "lstm.w_hh"):
                phi[k] = torch.stack([orthogonal(s[1:], g, blocks=4) for _ in range(s[0])])
            elif k in ("lstm.h0", "lstm.c0"):
                phi[k] = torch.stack([orthogonal(s[1:], g) for _ in range(s[0])])
            elif k.endswith("weight"):
                phi[k] = orthogonal(s, g)
            else:
                phi[k] = torch.zeros(s)
        return phi

    def init_state(self, phi):
        if self.state_mode == "per_step":
            return None
        return phi["lstm.h0"], phi["lstm.c0"]   # the projections of the n one-hot classes

    def first_layer_logit_weights(self, phi):
        return phi["embed.weight"][:, : self.n_way]

    def forward(self, phi, logits: Tensor, labels: Tensor, state=None):
        y1h = one_hot(labels, self.n_way, logits.dtype)
        h_table, c_table = (phi["lstm.h0"], phi["lstm.c0"]) if state is None else state
        h0 = torch.einsum("nk,lkh->lnh", y1h, h_table)
        c0 = torch.einsum("nk,lkh->lnh", y1h, c_table)
        x = embed_input(phi, logits, labels, self.residual, self.elu_alpha)
        hs, cs = [], []
        for layer in range(self.layers):
            x, c = lstm_cell(x, h0[layer], c0[layer], phi["lstm.w_ih"][layer], phi["lstm.w_hh"][layer],
                             phi["lstm.bias"][layer])
            hs.append(x)
            cs.append(c)
        out = (x @ phi["head.weight"].T + phi["head.bias"]).squeeze(-1)
        if self.state_mode == "per_step":
            return out, None
        if state is None:
            state = self.init_state(phi)
        return out, (write_class_means(state[0], torch.stack(hs), y1h), write_class_means(state[1], torch.stack(cs), y1h))

    def __repr__(self):
        return (f"LSTMLoss(n_way={self.n_way}, hidden={self.hidden}, layers={self.layers}, "
                f"residual={self.residual}, state={self.state_mode})")
