"""FNN learned loss: [logits, one-hot label] -> H (+ batch CE) -> ELU -> 1, batch mean."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import TaskLoss, embed_input, orthogonal


class FNNLoss(TaskLoss):
    learned = True

    def __init__(self, n_way: int, hidden: int = 64, residual: bool = True, elu_alpha: float = 1.0):
        super().__init__(n_way)
        self.hidden, self.residual, self.elu_alpha = int(hidden), bool(residual), float(elu_alpha)

    def phi_shapes(self):
        H, n = self.hidden, self.n_way
        return {"embed.weight": (H, 2 * n), "embed.bias": (H,), "head.weight": (1, H), "head.bias": (1,)}

    def init_phi(self, generator=None):
        g = generator or torch.Generator().manual_seed(0)
        return {k: orthogonal(s, g) if k.endswith("weight") else torch.zeros(s) for k, s in self.phi_shapes().items()}

    def first_layer_logit_weights(self, phi):
        return phi["embed.weight"][:, : self.n_way]

    def forward(self, phi, logits: Tensor, labels: Tensor, state=None):
        h = embed_input(phi, logits, labels, self.residual, self.elu_alpha)
        return (h @ phi["head.weight"].T + phi["head.bias"]).squeeze(-1), state

    def __repr__(self):
        return f"FNNLoss(n_way={self.n_way}, hidden={self.hidden}, residual={self.residual})"
