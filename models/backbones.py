"""ResNet-18 backbones with the parameter names of the AR-Seg release (torchvision-style layout).

Two variants:
- `DilatedResNet18` (PSPNet's `feats`): output stride 8; layer3/layer4 keep the resolution, their second block
  is dilated (2 / 4). Returns (layer4 output, layer3 output).
- `ResNet18` (BiSeNet's `cp.resnet`): plain output stride 32. Returns (layer2, layer3, layer4) outputs.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(x, conv, bn):
    """bn(conv(x)). With the batch norm in eval mode (running statistics: a fixed per-channel affine map) it is
    folded into the convolution's weight and bias, one convolution instead of a convolution plus a full pass
    over its output; the same function up to float rounding, and differentiable in all parameters alike."""
    if bn.training or bn.running_mean is None or bn.weight is None:
        return bn(conv(x))
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv._conv_forward(x, conv.weight * scale.view(-1, 1, 1, 1), bias)


def pointwise_conv(x, conv):
    """conv(x) for a 1x1 nn.Conv2d (stride 1, no padding or groups). On CPU with an NCHW input it is one batched
    matrix product, weight (out, in) @ x (N, in, H*W): for few output channels at high resolution (PSPNet-18's
    classifier, 64 -> 12 channels at 720x960) the GEMM runs several times faster than oneDNN's convolution
    (72 vs 10 ms on 2 cores, min of 7). Anywhere else, and for other convolutions, the convolution itself."""
    simple = (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)
              and conv.dilation == (1, 1) and conv.groups == 1)
    if not simple or x.device.type != "cpu" or x.dim() != 4 or not x.is_contiguous():
        return conv(x)
    n, c, h, w = x.shape
    weight = conv.weight.view(1, conv.out_channels, c).expand(n, -1, -1)
    flat = x.view(n, c, h * w)
    out = torch.bmm(weight, flat) if conv.bias is None else torch.baddbmm(conv.bias.view(1, -1, 1), weight, flat)
    return out.view(n, conv.out_channels, h, w)


def conv3x3(in_ch, out_ch, stride=1, dilation=1):
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-bn-relu-conv3x3-bn, plus identity or `downsample` (1x1 conv, bn), then relu."""

    def __init__(self, in_ch, out_ch, stride=1, dilation=1):
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride, dilation)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch, 1, dilation)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x):
        # Functional ReLUs, not in-place: nothing here may modify a tensor autograd or DDP still needs.
        out = F.relu(conv_bn(x, self.conv1, self.bn1))
        out = conv_bn(out, self.conv2, self.bn2)
        shortcut = x if self.downsample is None else conv_bn(x, *self.downsample)
        return F.relu(out + shortcut)


def _layer(in_ch, out_ch, stride, second_dilation):
    # The first block of every layer is undilated (it also carries the stride); only the second is dilated.
    return nn.Sequential(BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1, second_dilation))


class _ResNet18Base(nn.Module):
    def __init__(self, strides, dilations):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths = (64, 64, 128, 256, 512)
        for i in range(4):
            setattr(self, f"layer{i + 1}", _layer(widths[i], widths[i + 1], strides[i], dilations[i]))

    def _stages(self, x):
        x = self.maxpool(F.relu(conv_bn(x, self.conv1, self.bn1)))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return f2, f3, self.layer4(f3)


class DilatedResNet18(_ResNet18Base):
    """ResNet-18 at output stride 8 (PSPNet `feats`). forward -> (layer4 out, layer3 out)."""

    def __init__(self):
        super().__init__(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))

    def forward(self, x):
        _, f3, f4 = self._stages(x)
        return f4, f3


class ResNet18(_ResNet18Base):
    """Plain ResNet-18 (BiSeNet `cp.resnet`). forward -> (1/8 layer2, 1/16 layer3, 1/32 layer4 outputs)."""

    def __init__(self):
        super().__init__(strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1))

    def forward(self, x):
        return self._stages(x)
