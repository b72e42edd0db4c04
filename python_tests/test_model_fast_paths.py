"""The models' cheaper evaluations of the release's functions (shared pyramid pooling, factored PSP bottleneck,
folded eval batch norm, the pointwise-conv GEMM) against the plain formulations they replace."""
import pytest
import torch
import torch.nn.functional as F

from arseg_ops import models
from arseg_ops.models.backbones import BasicBlock, conv_bn, pointwise_conv
from arseg_ops.models.bisenet import ConvBNReLU
from arseg_ops.models.pspnet import PSPModule, PSPUpsample, pyramid_avg_pool

# H, W multiples of 6 (the shared 6x6-bin pass), and not (the general adaptive pooling, overlapping bins)
PYRAMID_SIZES = [(12, 18), (36, 6), (7, 11), (4, 5), (1, 1)]


def _formats(x):
    return [("nchw", x), ("channels_last", x.to(memory_format=torch.channels_last))]


@pytest.mark.parametrize("size", PYRAMID_SIZES)
def test_pyramid_avg_pool_matches_adaptive_avg_pool(size):
    x = torch.randn(2, 5, *size, dtype=torch.float64)
    for _, f in _formats(x):
        got = pyramid_avg_pool(f, (1, 2, 3, 6))
        for g, s in zip(got, (1, 2, 3, 6)):
            torch.testing.assert_close(g, F.adaptive_avg_pool2d(f, s), rtol=1e-13, atol=1e-13)


def _random_psp(channels=6, out_channels=10):
    torch.manual_seed(3)
    psp = PSPModule(channels, out_channels).double()
    for p in psp.parameters():
        p.data.normal_()
    return psp


def _forward_and_grads(module, x, factored):
    module.factored = factored
    module.zero_grad()
    x = x.detach().requires_grad_()
    out = module(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out, x.grad, [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("size", PYRAMID_SIZES)
def test_psp_factored_bottleneck_matches_release_formulation(size):
    psp = _random_psp()
    for fmt, x in _formats(torch.randn(2, 6, *size, dtype=torch.float64)):
        out, dx, dparams = _forward_and_grads(psp, x, factored=True)
        exp, exp_dx, exp_dparams = _forward_and_grads(psp, x, factored=False)
        assert out.shape == (2, 10, *size) and out.std() > 0.1
        torch.testing.assert_close(out, exp, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(dx, exp_dx, rtol=1e-11, atol=1e-11)
        for g, e in zip(dparams, exp_dparams):
            torch.testing.assert_close(g, e, rtol=1e-11, atol=1e-11)
        # the output keeps the input's memory format (no layout copy downstream)
        assert out.is_contiguous(memory_format=torch.channels_last if fmt == "channels_last" else
                                 torch.contiguous_format)


def test_count_gmacs_counts_the_release_psp_formulation():
    # count_gmacs switches PSPModule to the release's formulation; the networks it builds are its own
    assert models.PSPNet18(12).psp.factored
    assert models.count_gmacs("psp18", (720, 960)) == pytest.approx(308.6, rel=5e-3)


def _randomize_bn(module, seed):
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g))
    return module


@pytest.mark.parametrize("conv", [
    torch.nn.Conv2d(4, 6, 3, padding=1),  # with bias (PSPUpsample)
    torch.nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, bias=False),  # dilated, strided (ResNet)
    torch.nn.Conv2d(4, 4, 3, padding=1, groups=4),  # depthwise
])
def test_conv_bn_folds_eval_batch_norm(conv):
    conv = conv.double()
    bn = _randomize_bn(torch.nn.BatchNorm2d(conv.out_channels).double(), 0).eval()
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64, requires_grad=True)
    params = [x, conv.weight, bn.weight, bn.bias] + ([conv.bias] if conv.bias is not None else [])
    got = conv_bn(x, conv, bn)
    exp = bn(conv(x))
    torch.testing.assert_close(got, exp, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(exp)
    for g, e in zip(torch.autograd.grad((got * w).sum(), params), torch.autograd.grad((exp * w).sum(), params)):
        torch.testing.assert_close(g, e, rtol=1e-11, atol=1e-11)
    # training mode: batch statistics and running-stat updates exactly as bn(conv(x))
    bn2 = _randomize_bn(torch.nn.BatchNorm2d(conv.out_channels).double(), 0).train()
    bn.train()
    torch.testing.assert_close(conv_bn(x, conv, bn), bn2(conv(x)), rtol=0, atol=0)
    torch.testing.assert_close(bn.running_mean, bn2.running_mean, rtol=0, atol=0)


@pytest.mark.parametrize("make", [lambda: BasicBlock(4, 8, stride=2), lambda: BasicBlock(8, 8, 1, 2),
                                  lambda: ConvBNReLU(4, 8), lambda: PSPUpsample(4, 8)])
def test_blocks_with_folded_bn_match_the_unfolded_blocks(make, monkeypatch):
    import arseg_ops.models.backbones as backbones
    import arseg_ops.models.bisenet as bisenet
    import arseg_ops.models.pspnet as pspnet

    torch.manual_seed(0)
    block = _randomize_bn(make().double(), 1).eval()
    x = torch.randn(2, next(block.parameters()).shape[1], 8, 10, dtype=torch.float64)
    got = block(x)
    for module in (backbones, bisenet, pspnet):
        monkeypatch.setattr(module, "conv_bn", lambda x, conv, bn: bn(conv(x)))
    exp = block(x)
    assert got.std() > 0.1
    torch.testing.assert_close(got, exp, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_psp18_with_cheaper_evaluation_compiles(memory_format):
    torch._dynamo.reset()
    net = models.PSPNet18WithCReFF(12, 7).eval().to(memory_format=memory_format)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    x = torch.randn(1, 3, 48, 48).to(memory_format=memory_format)
    hr = torch.randn(1, 64, 48, 48, requires_grad=True)
    out = compiled(x, hr)
    torch.testing.assert_close(out, net(x, hr), rtol=1e-4, atol=1e-4)
    out.square().mean().backward()
    assert hr.grad is not None and net.psp.bottleneck.weight.grad is not None



@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_conv_matches_the_convolution(bias):
    """models.backbones.pointwise_conv (a GEMM for NCHW input on CPU) equals the 1x1 convolution, and falls back
    to it for channels_last input and for other convolutions."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 5, 1, bias=bias)
    x = torch.randn(2, 16, 7, 9, requires_grad=True)
    out = pointwise_conv(x, conv)
    torch.testing.assert_close(out, conv(x), atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    grad = x.grad.clone()
    x.grad = None
    conv(x).square().sum().backward()
    torch.testing.assert_close(grad, x.grad, atol=1e-5, rtol=1e-5)
    cl = x.detach().to(memory_format=torch.channels_last)
    torch.testing.assert_close(pointwise_conv(cl, conv), conv(cl), atol=1e-5, rtol=1e-5)
    conv3 = torch.nn.Conv2d(16, 5, 3, padding=1)
    torch.testing.assert_close(pointwise_conv(x, conv3), conv3(x))
