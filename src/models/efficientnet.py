"""EfficientNet-B0 as SSL-small and SEED build it (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling").

Structure, parameter names and hyperparameters follow lukemelas/EfficientNet-PyTorch v0.7
(``EfficientNet.from_name('efficientnet-b0')``), vendored by WOWNICE/ssl-small and jacobswan1/SEED with
the final Linear renamed ``fc``. A SEED-distilled student therefore loads key for key
(``_conv_stem.weight``, ``_blocks.3._se_reduce.bias``, ``_conv_head.weight`` ...). It mirrors the TF
reference where torchvision's ``efficientnet_b0`` (kept as ``tv_efficientnet_b0``) does not:

- TensorFlow "SAME" padding: output size ceil(input / stride), the extra pixel of an even padding total
  on the bottom / right (torchvision pads symmetrically, k // 2);
- BatchNorm eps 1e-3, momentum 0.01 (TF's decay 0.99);
- the SE squeeze width is a quarter of the block's INPUT channels (``max(1, int(in * 0.25))``);
- drop-connect (stochastic depth) 0.2 * block index / 16, per sample; dropout 0.2 before ``fc``;
- PyTorch's default initialisation (the reference sets none).

The reference pads statically for the 224 px it is built for; this module computes the same TF padding
from the actual input, which is identical at 224 px and at every size whose stride-2 inputs are even
(all multiples of 32) and stays TF-correct elsewhere.
Representation: the 1280-d pooled output of the head conv (docs/small-models.md).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expansion, in, out) per stage, SE ratio 0.25 everywhere: the reference's
# block strings 'r1_k3_s11_e1_i32_o16_se0.25' ... 'r1_k3_s11_e6_i192_o320_se0.25' (width / depth 1.0).
B0_STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
             (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TF's epsilon and decay 0.99, in PyTorch's convention
SE_RATIO, DROP_CONNECT, DROPOUT, HEAD_DIM = 0.25, 0.2, 0.2, 1280


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding: output ceil(in / stride), total padding
    ``max((out - 1) * stride + (k - 1) * dilation + 1 - in, 0)``, the odd pixel at the bottom / right."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1, bias=True):
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, 1, groups, bias)

    def forward(self, x):
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, [left, right, top, bottom])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def drop_connect(x, p, training):
    """Drop whole samples of a residual branch with probability ``p`` and rescale the rest by 1 / (1 - p).

    Shapes: (B, C, H, W) -> same. The identity in eval mode or with ``p == 0``.
    """
    if not training or p == 0:
        return x
    keep = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(1 - p)
    return x / (1 - p) * keep


def _bn(channels):
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-and-excitation (the reference's ``MBConvBlock``).

    expand 1x1 conv + BN + swish (only when ``expand != 1``) -> depthwise k x k conv (stride) + BN + swish
    -> SE: ``x * sigmoid(expand(swish(reduce(avgpool(x)))))`` -> project 1x1 conv + BN
    -> ``+ input`` (after drop-connect) when stride 1 and ``inp == out``.
    Shapes: (B, inp, H, W) -> (B, out, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, inp, out, kernel, stride, expand):
        super().__init__()
        mid = inp * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = Conv2dSame(inp, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        squeezed = max(1, int(inp * SE_RATIO))
        self._se_reduce = Conv2dSame(mid, squeezed, 1)
        self._se_expand = Conv2dSame(squeezed, mid, 1)
        self._project_conv = Conv2dSame(mid, out, 1, bias=False)
        self._bn2 = _bn(out)
        self.residual = stride == 1 and inp == out

    def forward(self, inputs, drop_connect_rate=0.0):
        x = inputs
        if self.expand != 1:
            x = F.silu(self._bn0(self._expand_conv(x)))
        x = F.silu(self._bn1(self._depthwise_conv(x)))
        gate = self._se_expand(F.silu(self._se_reduce(F.adaptive_avg_pool2d(x, 1))))
        x = torch.sigmoid(gate) * x
        x = self._bn2(self._project_conv(x))
        if self.residual:
            x = drop_connect(x, drop_connect_rate, self.training) + inputs
        return x


class EfficientNetB0(nn.Module):
    """EfficientNet-B0 trunk of SSL-small: (B, 3, H, W) -> (B, 1280).

    Attributes:
        out_dim: 1280; ``fc``: ``nn.Identity()``, replaced by a method's head (after the dropout 0.2, as in
        the reference, so the dropout is active in pre-training and off in eval mode).
    """

    def __init__(self):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, inp, out in B0_STAGES:
            for i in range(repeats):  # the first block of a stage changes width and stride
                blocks.append(MBConv(inp if i == 0 else out, out, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(B0_STAGES[-1][-1], HEAD_DIM, 1, bias=False)
        self._bn1 = _bn(HEAD_DIM)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(DROPOUT)
        self.fc = nn.Identity()
        self.out_dim = HEAD_DIM

    def forward(self, x):
        x = F.silu(self._bn0(self._conv_stem(x)))
        for idx, block in enumerate(self._blocks):
            # stochastic depth grows linearly with depth: 0 for the first block, 0.2 * 15/16 for the last
            x = block(x, DROP_CONNECT * idx / len(self._blocks))
        x = F.silu(self._bn1(self._conv_head(x)))
        x = self._avg_pooling(x).flatten(1)  # (B, 1280)
        return self.fc(self._dropout(x))
