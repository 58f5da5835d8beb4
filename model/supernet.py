"""The DARTS supernet as MetaNAS searches it, written for functional per-task parameters.

Weights θ and architecture α live in one parameter dict; α entries are named `alpha_*`
(`is_arch(name)`), so `torch.func.functional_call(net, params, x, ...)` runs any task's
(θ_i, α_i) and one backward gives both gradients (first-order DARTS).

Edge weights are softmax(α/T); ops whose weight is <= `prune_threshold` are switched off
("soft pruning": `active_ops` lists the ops to run — per task in the loop engine; under
vmap, where the weights differ per task, those not pruned in every task, the rest being
multiplied by zero). Skipping adds no error: a pruned op's term is an exact zero
and its mask passes no gradient. With `pairwise_alpha`, each node also weighs every pair of its
inputs: input i's weight is the sum of the pair weights that contain i (MetaNAS).
"""
from __future__ import annotations

from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import BN, OPS, FactorizedReduce, Identity, ReLUConvBN

ALPHA_PREFIX = "alpha_"
# Run the cells in channels-last (NHWC) layout on plain tensors: oneDNN's convolutions,
# pools and BN are 1.5-7x faster in it on CPU, a whole paper-config step ~1.6x
# (BENCHMARKS.md). Never under a torch.func transform: vmap's batched convolutions regroup
# tasks into channels, and under torch.func.grad channels-last ran slower and erratically,
# so the loop engine takes its gradients with plain autograd (TaskLearner). (The "double
# free" once blamed on torch.func.grad is FactorizedReduce's, see ops.py.)
CHANNELS_LAST = True


def _plain(x) -> bool:
    """True for an ordinary tensor, False under any torch.func transform (vmap, grad, jvp)."""
    return not torch._C._functorch.is_functorch_wrapped_tensor(x)


def is_arch(name: str) -> bool:
    return name.startswith(ALPHA_PREFIX)


def node_pairs(node: int) -> list[tuple[int, int]]:
    """Input pairs of intermediate node `node` (its inputs are 0 .. node+1)."""
    return list(combinations(range(node + 2), 2))


def edge_count(nodes: int) -> int:
    return sum(j + 2 for j in range(nodes))


class MixedOp(nn.Module):
    def __init__(self, C: int, stride: int, ops: list[str]):
        super().__init__()
        self.ops = nn.ModuleList(OPS[name](C, stride) for name in ops)
        self.droppable = [not isinstance(op, Identity) for op in self.ops]

    def forward(self, x, weights, drop_mask, stats_from, active=None):
        """`active`: the op indices to run (None = all)."""
        if active is None:
            active = range(len(self.ops))
        active = active or (0,)  # all pruned: still a zero of the right shape (weight 0)
        out, xr = 0, None
        for i in active:
            op = self.ops[i]
            if getattr(op, "relu_first", False):   # one ReLU per edge input, shared by the ops
                if xr is None:
                    xr = F.relu(x)
                y = op(xr, stats_from, relu_done=True)
            else:
                y = op(x, stats_from)
            if drop_mask is not None and self.droppable[i]:   # op weight and keep-mask in one multiply
                y = y * (weights[i] * drop_mask[i]).view(-1, 1, 1, 1)
            else:
                y = weights[i] * y
            out = y if i == active[0] else out + y
        return out


class Cell(nn.Module):
    def __init__(self, nodes, C_pp, C_p, C, reduction, reduction_prev, ops):
        super().__init__()
        self.reduction, self.nodes = reduction, nodes
        self.pre0 = FactorizedReduce(C_pp, C) if reduction_prev else ReLUConvBN([nn.Conv2d(C_pp, C, 1, bias=False)], C)
        self.pre1 = ReLUConvBN([nn.Conv2d(C_p, C, 1, bias=False)], C)
        self.edges = nn.ModuleList(
            MixedOp(C, 2 if reduction and i < 2 else 1, ops) for j in range(nodes) for i in range(j + 2)
        )

    def forward(self, s0, s1, edge_w, input_w, drop_mask, stats_from, active=None):
        states = [self.pre0(s0, stats_from), self.pre1(s1, stats_from)]
        e = 0
        for j in range(self.nodes):
            node = 0
            for i in range(j + 2):
                mask = None if drop_mask is None else drop_mask[e]
                y = self.edges[e](states[i], edge_w[e], mask, stats_from, None if active is None else active[e])
                node = node + (y if input_w is None else input_w[j][i] * y)
                e += 1
            states.append(node)
        return torch.cat(states[2:], dim=1)


class SuperNet(nn.Module):
    def __init__(self, cfg, n_way: int, in_channels: int = 1):
        super().__init__()
        self.n_way = n_way
        self.ops = list(cfg.ops)
        self.nodes = cfg.nodes
        self.pairwise = cfg.pairwise_alpha
        self.prune_threshold = cfg.prune_threshold
        C = cfg.channels
        C_stem = cfg.stem_multiplier * C
        self.warnings: list[str] = []  # recorded in run.json by train()
        if cfg.stem == "resnet":  # ResNet-18 layers (paper section 5)
            from .resnet_stem import ResNetStem

            self.stem_resnet = ResNetStem(in_channels, C_stem, cfg.resnet_weights, cfg.resnet_trainable)
            self.warnings += self.stem_resnet.warnings
        else:
            self.stem_conv = nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False)
        self.stem_bn = BN(C_stem, affine=True)
        C_pp, C_p = C_stem, C_stem
        cells, reduction_prev = [], False
        for k in range(cfg.layers):
            reduction = k in cfg.reductions
            cells.append(Cell(cfg.nodes, C_pp, C_p, C, reduction, reduction_prev, self.ops))
            C_pp, C_p, reduction_prev = C_p, cfg.nodes * C, reduction
        self.cells = nn.ModuleList(cells)
        self.classifier = nn.Linear(C_p, n_way)
        self.num_edges = edge_count(cfg.nodes)
        n_ops = len(self.ops)
        for kind in ("normal", "reduce"):
            self.register_parameter(f"alpha_{kind}", nn.Parameter(1e-3 * torch.randn(self.num_edges, n_ops)))
            if self.pairwise:
                for j in range(cfg.nodes):
                    pairs = len(node_pairs(j))
                    self.register_parameter(f"alpha_{kind}_pairs_{j}", nn.Parameter(1e-3 * torch.randn(pairs)))

    # ---- architecture weights --------------------------------------------------------
    def edge_weights(self, alpha, temp):
        w = F.softmax(alpha / temp, dim=-1)
        if self.prune_threshold > 0:
            w = w * (w > self.prune_threshold)
        return w

    def input_weights(self, kind, temp, params=None):
        """Per node, a weight per input: sum of the pair weights that contain it."""
        if not self.pairwise:
            return None
        out = []
        for j in range(self.nodes):
            beta = getattr(self, f"alpha_{kind}_pairs_{j}") if params is None else params[f"alpha_{kind}_pairs_{j}"]
            pw = F.softmax(beta / temp, dim=-1)
            out.append(torch.stack([sum(pw[p] for p, pair in enumerate(node_pairs(j)) if i in pair) for i in range(j + 2)]))
        return out

    # ---- forward ----------------------------------------------------------------------
    @torch.no_grad()
    def active_ops(self, params: dict, temp: float) -> dict:
        """{kind: per edge, the ops not pruned at `temp` in at least one task}: α in `params`
        may have a leading task dimension. Plain Python data, so vmap can branch on it."""
        out = {}
        for kind in ("normal", "reduce"):
            alive = self.edge_weights(params[f"alpha_{kind}"], temp) > 0
            alive = alive.reshape(-1, *alive.shape[-2:]).any(0)
            out[kind] = tuple(tuple(i for i, on in enumerate(edge) if on) for edge in alive.tolist())
        return out

    def forward(self, x, temp: float = 1.0, drop_mask=None, stats_from: int | None = None, active=None):
        """Logits. `drop_mask`: (cells, edges, ops, batch) keep-masks already scaled by 1/(1-p);
        `active`: `active_ops()` of the tasks being run (None = every op)."""
        w = {k: self.edge_weights(getattr(self, f"alpha_{k}"), temp) for k in ("normal", "reduce")}
        iw = {k: self.input_weights(k, temp) for k in ("normal", "reduce")}
        stem = self.stem_resnet(x, stats_from) if hasattr(self, "stem_resnet") else self.stem_conv(x)
        if CHANNELS_LAST and stem.dim() == 4 and _plain(stem):   # after the stem: 1-channel input has no layout
            stem = stem.contiguous(memory_format=torch.channels_last)
        s0 = s1 = self.stem_bn(stem, stats_from)
        for c, cell in enumerate(self.cells):
            kind = "reduce" if cell.reduction else "normal"
            mask = None if drop_mask is None else drop_mask[c]
            s0, s1 = s1, cell(s0, s1, w[kind], iw[kind], mask, stats_from, None if active is None else active[kind])
        out = F.avg_pool2d(s1, s1.shape[-2:]).flatten(1)   # adaptive_avg_pool2d's backward is NCHW (tests/test_ops.py)
        return self.classifier(out)

    def drop_mask_shape(self, batch: int) -> tuple[int, ...]:
        return (len(self.cells), self.num_edges, len(self.ops), batch)


def split_params(params: dict) -> tuple[dict, dict]:
    theta = {k: v for k, v in params.items() if not is_arch(k)}
    alpha = {k: v for k, v in params.items() if is_arch(k)}
    return theta, alpha


def count_params(net: SuperNet, params: dict | None = None, temp: float = 1.0) -> dict[str, int]:
    """Weights in the supernet, and those active after soft pruning at temperature `temp`."""
    params = params or dict(net.named_parameters())
    total = sum(v.numel() for k, v in params.items() if not is_arch(k))
    inactive = 0
    with torch.no_grad():
        for kind in ("normal", "reduce"):
            w = net.edge_weights(params[f"alpha_{kind}"], temp)
            for cell_i, cell in enumerate(net.cells):
                if (kind == "reduce") != cell.reduction:
                    continue
                for e, mixed in enumerate(cell.edges):
                    for o, op in enumerate(mixed.ops):
                        if w[e, o] == 0:
                            inactive += sum(p.numel() for p in op.parameters())
    return {"weights": total, "active_weights": total - inactive, "arch": sum(v.numel() for k, v in params.items() if is_arch(k))}


def alpha_summary(net: SuperNet, params: dict, temp: float = 1.0) -> dict:
    """softmax(α/T) as JSON lists: what metrics rows, genotypes and the UI read."""
    out: dict = {"ops": list(net.ops)}
    with torch.no_grad():
        for kind in ("normal", "reduce"):
            out[kind] = F.softmax(params[f"alpha_{kind}"].detach().float() / temp, dim=-1).tolist()
            if net.pairwise:
                out[f"{kind}_pairs"] = [
                    F.softmax(params[f"alpha_{kind}_pairs_{j}"].detach().float() / temp, dim=-1).tolist()
                    for j in range(net.nodes)
                ]
    return out
