"""The candidate ops in the layouts the engines run them in: channels-last (plain tensors,
the loop engine) and NCHW (under torch.func, the vmap engine) give the same numbers,
gradients included, at the small channel counts of the smoke/demo presets, where torch
2.14.1's strided 1x1 channels-last convolution backward corrupted the heap."""
import pytest
import torch
import torch.nn.functional as F

from model import supernet
from model.config import ALL_OPS, build_config
from model.ops import OPS, FactorizedReduce
from model.supernet import SuperNet

CL = torch.channels_last


def _run(op, x, memory_format):
    """Output and gradients (input, then parameters) of a fixed weighted sum of op(x)."""
    x = x.detach().contiguous(memory_format=memory_format).requires_grad_()
    out = op(x)
    probe = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
    grads = torch.autograd.grad((out * probe).sum(), [x, *op.parameters()])
    return out.detach(), grads


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels,size", [(2, 7), (4, 16), (6, 15), (8, 14)])
def test_op_is_layout_independent_and_repeatable(name, stride, channels, size):
    torch.manual_seed(0)
    op = OPS[name](channels, stride).double()
    x = torch.randn(5, channels, size, size, dtype=torch.float64)
    ref_out, ref_grads = _run(op, x, torch.contiguous_format)
    runs = [_run(op, x, CL) for _ in range(3)]
    for out, grads in runs:
        torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)
    for out, grads in runs[1:]:   # channels-last runs repeat bitwise (no heap corruption, no races)
        assert torch.equal(out, runs[0][0]) and all(torch.equal(a, b) for a, b in zip(grads, runs[0][1]))


@pytest.mark.parametrize("size", [7, 8, 15])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CL])
def test_factorized_reduce_equals_two_offset_stride_2_convolutions(size, memory_format):
    """Independent: the DARTS definition, 1x1 stride-2 convolutions of x and of x shifted by
    one pixel (zero past the edge), concatenated, then BN. Outputs and gradients."""
    torch.manual_seed(1)
    fr = FactorizedReduce(6, 6).double()
    x = torch.randn(4, 6, size, size, dtype=torch.float64)

    def definition(x):
        r = F.relu(x)
        shifted = F.pad(r[:, :, 1:, 1:], (0, 1, 0, 1))
        y = torch.cat([F.conv2d(r, fr.conv_a.weight, stride=2), F.conv2d(shifted, fr.conv_b.weight, stride=2)], dim=1)
        return F.batch_norm(y, None, None, training=True)

    got, grads = _run(fr, x, memory_format)
    fr.forward = definition   # the same parameters, through the definition
    expected, expected_grads = _run(fr, x, torch.contiguous_format)
    assert got.shape == (4, 6, (size + 1) // 2, (size + 1) // 2)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_supernet_backward_keeps_channels_last_gradients():
    """Every cell's output gets its gradient in channels-last: one NCHW gradient (a slice's
    or a global pool's backward) would turn every op upstream into a transposing copy."""
    torch.manual_seed(3)
    cfg = build_config("smoke", {"channels": 8, "layers": 4, "reductions": [1, 3], "nodes": 3})
    net = SuperNet(cfg, cfg.n_way)
    layouts = []

    def watch(module, inputs, out):
        out.register_hook(lambda g: layouts.append(g.is_contiguous(memory_format=CL)))

    hooks = [cell.register_forward_hook(watch) for cell in net.cells]
    F.cross_entropy(net(torch.rand(6, 1, 28, 28)), torch.arange(6) % cfg.n_way).backward()
    for h in hooks:
        h.remove()
    assert layouts == [True] * len(net.cells)


def test_supernet_runs_channels_last_on_plain_tensors_only():
    """Plain forward converts to channels-last after the stem; under a torch.func transform
    the layout stays NCHW. Logits agree either way."""
    torch.manual_seed(2)
    cfg = build_config("smoke", {"channels": 4})
    net = SuperNet(cfg, cfg.n_way).double()
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    seen = []
    hook = net.cells[0].register_forward_hook(
        lambda m, i, o: seen.append(supernet._plain(i[1]) and i[1].is_contiguous(memory_format=CL)))
    plain = net(x)
    under_vmap = torch.func.vmap(lambda xi: net(xi))(x.unsqueeze(0))[0]
    hook.remove()
    assert seen == [True, False]
    torch.testing.assert_close(plain, under_vmap, rtol=1e-12, atol=1e-12)
    assert supernet.CHANNELS_LAST
