"""A discrete network built from a genotype: each node sums its two chosen ops.

It has the supernet's stem, cell stacking and classifier, and the same `(x, stats_from)`
BatchNorm convention, so the task learner can adapt it like the supernet (it simply has
no α). Use it to train or deploy the architecture a search found.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .genotypes import validate
from .ops import BN, OPS, FactorizedReduce, ReLUConvBN


class DiscreteCell(nn.Module):
    def __init__(self, entries, concat, C_pp, C_p, C, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        self.pre0 = FactorizedReduce(C_pp, C) if reduction_prev else ReLUConvBN([nn.Conv2d(C_pp, C, 1, bias=False)], C)
        self.pre1 = ReLUConvBN([nn.Conv2d(C_p, C, 1, bias=False)], C)
        self.sources = [src for _, src in entries]
        self.ops = nn.ModuleList(OPS[op](C, 2 if reduction and src < 2 else 1) for op, src in entries)
        self.concat = list(concat)

    def forward(self, s0, s1, stats_from=None):
        states = [self.pre0(s0, stats_from), self.pre1(s1, stats_from)]
        for j in range(len(self.ops) // 2):
            a, b = 2 * j, 2 * j + 1
            states.append(self.ops[a](states[self.sources[a]], stats_from) + self.ops[b](states[self.sources[b]], stats_from))
        return torch.cat([states[i] for i in self.concat], dim=1)


class DiscreteNet(nn.Module):
    def __init__(self, genotype: dict, cfg, n_way: int, in_channels: int = 1):
        super().__init__()
        validate(genotype)
        C, C_stem = cfg.channels, cfg.stem_multiplier * cfg.channels
        self.stem_conv = nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False)
        self.stem_bn = BN(C_stem, affine=True)
        C_pp, C_p, reduction_prev = C_stem, C_stem, False
        cells = []
        for k in range(cfg.layers):
            kind = "reduce" if k in cfg.reductions else "normal"
            concat = genotype[f"{kind}_concat"]
            cells.append(DiscreteCell(genotype[kind], concat, C_pp, C_p, C, kind == "reduce", reduction_prev))
            C_pp, C_p, reduction_prev = C_p, len(concat) * C, kind == "reduce"
        self.cells = nn.ModuleList(cells)
        self.classifier = nn.Linear(C_p, n_way)

    def forward(self, x, temp: float = 1.0, drop_mask=None, stats_from: int | None = None):
        # temp and drop_mask are accepted (and ignored) so the task learner can drive it.
        s0 = s1 = self.stem_bn(self.stem_conv(x), stats_from)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, stats_from)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))
