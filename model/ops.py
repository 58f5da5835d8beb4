"""DARTS candidate operations, as MetaNAS uses them for few-shot learning.

Every module's forward takes `(x, stats_from)`: BatchNorm never keeps running statistics
(they would not survive functional, per-task parameters) and normalises with the
statistics of the whole batch, or of its first `stats_from` samples only (so queries can
be normalised with the support set's statistics). BN inside ops has no affine parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Speed switches (numerically equivalent paths; tests compare both). A dilated depthwise
# convolution runs as a dense depthwise convolution whose kernel has zeros between the taps:
# oneDNN's dilated depthwise kernels are 2-3x slower than its dense ones on CPU.
DILATED_AS_DENSE = True


def batch_norm(x, weight=None, bias=None, stats_from: int | None = None, eps: float = 1e-5):
    if stats_from is None:
        # affine applied below, not by F.batch_norm: its weight/bias path has a wrong double
        # backward under vmap(grad) (torch 2.14), which broke second-order MAML/meta_gradient
        y = F.batch_norm(x, None, None, None, None, training=True, eps=eps)
    else:
        ref = x[:stats_from]
        mean = ref.mean(dim=(0, 2, 3), keepdim=True)
        var = ref.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    return y


class BN(nn.Module):
    def __init__(self, channels: int, affine: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None

    def forward(self, x, stats_from=None):
        return batch_norm(x, self.weight, self.bias, stats_from)


class ReLUConvBN(nn.Module):
    """ReLU -> one or more convolutions -> BN (the DARTS StdConv / FacConv / DilConv shape).
    `relu_done=True`: x is already ReLU'd (MixedOp applies one ReLU per edge input)."""

    relu_first = True

    def __init__(self, convs: list[nn.Conv2d], channels: int):
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.bn = BN(channels, affine=False)

    def forward(self, x, stats_from=None, relu_done=False):
        if not relu_done:
            x = F.relu(x)
        for conv in self.convs:
            x = conv(x)
        return self.bn(x, stats_from)


class SepConv(nn.Module):
    """Two stacked depthwise-separable convolutions (DARTS sep_conv)."""

    def __init__(self, C: int, k: int, stride: int):
        super().__init__()
        p = k // 2
        self.first = ReLUConvBN([_dw(C, k, stride, p, 1), _pw(C)], C)
        self.second = ReLUConvBN([_dw(C, k, 1, p, 1), _pw(C)], C)

    relu_first = True

    def forward(self, x, stats_from=None, relu_done=False):
        return self.second(self.first(x, stats_from, relu_done), stats_from)


class Pool(nn.Module):
    def __init__(self, C: int, kind: str, stride: int):
        super().__init__()
        self.kind, self.stride = kind, stride
        self.bn = BN(C, affine=False)

    def forward(self, x, stats_from=None):
        if self.kind == "max":
            x = F.max_pool2d(x, 3, self.stride, 1)
        else:
            x = F.avg_pool2d(x, 3, self.stride, 1, count_include_pad=False)
        return self.bn(x, stats_from)


class Identity(nn.Module):
    def forward(self, x, stats_from=None):
        return x


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset 1x1 stride-2 convolutions (works for odd sizes).

    Run as one 2x2 stride-2 convolution whose kernel holds conv_a's weight at tap (0, 0)
    and conv_b's at tap (1, 1): the same numbers as the DARTS definition, with no slicing.
    Slices would hand back NCHW gradients to a channels-last network (slice_backward writes
    into fresh NCHW zeros) and slow every op upstream; and a strided 1x1 convolution's
    channels-last backward corrupts the heap for fewer than 8 input channels (torch 2.14.1
    CPU). tests/test_ops.py checks both against the definition."""

    def __init__(self, C_in: int, C_out: int):
        super().__init__()
        self.conv_a = nn.Conv2d(C_in, C_out // 2, 1, bias=False)
        self.conv_b = nn.Conv2d(C_in, C_out - C_out // 2, 1, bias=False)
        self.bn = BN(C_out, affine=False)

    relu_first = True

    def forward(self, x, stats_from=None, relu_done=False):
        if not relu_done:
            x = F.relu(x)
        H, W = x.shape[-2:]
        if H % 2 or W % 2:   # the odd pixels' last row/column reads zeros past the edge
            x = F.pad(x, (0, W % 2, 0, H % 2))
        kernel = torch.cat([F.pad(self.conv_a.weight, (0, 1, 0, 1)), F.pad(self.conv_b.weight, (1, 0, 1, 0))])
        return self.bn(F.conv2d(x, kernel, stride=2), stats_from)


class DepthwiseConv(nn.Conv2d):
    """Depthwise convolution; a dilated one runs as a dense kernel with zeros between taps
    (same result, same parameter: `weight` keeps its (C, 1, k, k) shape)."""

    def forward(self, x):
        d = self.dilation[0]
        if d == 1 or not DILATED_AS_DENSE:
            return super().forward(x)
        return F.conv2d(x, dilate_kernel(self.weight, d), None, self.stride, self.padding, 1, self.groups)


def dilate_kernel(w, d: int):
    """(.., kh, kw) kernel -> (.., (kh-1)d+1, (kw-1)d+1) with d-1 zeros between taps."""
    kh, kw = w.shape[-2:]
    w = torch.stack([w] + [torch.zeros_like(w)] * (d - 1), dim=-1).flatten(-2)[..., : (kw - 1) * d + 1]
    w = torch.stack([w] + [torch.zeros_like(w)] * (d - 1), dim=-2).flatten(-3, -2)[..., : (kh - 1) * d + 1, :]
    return w


def _dw(C, k, stride, pad, dilation):
    return DepthwiseConv(C, C, k, stride, pad, dilation=dilation, groups=C, bias=False)


def _pw(C):
    return nn.Conv2d(C, C, 1, bias=False)


def _fac(C, k, stride):
    p = k // 2
    return ReLUConvBN(
        [nn.Conv2d(C, C, (1, k), (1, stride), (0, p), bias=False), nn.Conv2d(C, C, (k, 1), (stride, 1), (p, 0), bias=False)],
        C,
    )


# name -> constructor(C, stride); a plain registry, as in DARTS.
OPS = {
    "max_pool_3x3": lambda C, s: Pool(C, "max", s),
    "avg_pool_3x3": lambda C, s: Pool(C, "avg", s),
    "skip_connect": lambda C, s: Identity() if s == 1 else FactorizedReduce(C, C),
    "conv_1x5_5x1": lambda C, s: _fac(C, 5, s),
    "conv_7x1_1x7": lambda C, s: _fac(C, 7, s),
    # MetaNAS's conv_3x3 is a depthwise-separable 3x3 (its DilConv with dilation 1).
    "conv_3x3": lambda C, s: ReLUConvBN([_dw(C, 3, s, 1, 1), _pw(C)], C),
    "sep_conv_3x3": lambda C, s: SepConv(C, 3, s),
    "sep_conv_5x5": lambda C, s: SepConv(C, 5, s),
    "dil_conv_3x3": lambda C, s: ReLUConvBN([_dw(C, 3, s, 2, 2), _pw(C)], C),
    "dil_conv_5x5": lambda C, s: ReLUConvBN([_dw(C, 5, s, 4, 2), _pw(C)], C),
}
