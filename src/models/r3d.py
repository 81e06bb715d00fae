"""Slow-only 3D ResNets for video SCE: R3D-18 and R3D-50 (docs/video.md "Networks").

Denize et al., "Similarity Contrastive Estimation for Image and Video Soft Contrastive Self-Supervised Learning"
(MVAP 2023) pretrain two video trunks, built in the reference code with pytorchvideo (eztorch
``create_resnet3d_basic`` for depth 18, pytorchvideo ``create_resnet(model_depth=50, stem_conv_kernel_size=(1, 7,
7))`` for depth 50, i.e. the SlowFast paper's "Slow-only" pathway, Feichtenhofer et al. 2019). Both:

* stem: Conv3d(3 -> 64, kernel (1, 7, 7), stride (1, 2, 2), padding (0, 3, 3), no bias) - BN - ReLU -
  MaxPool3d(kernel (1, 3, 3), stride (1, 2, 2), padding (0, 1, 1));
* four stages (res2..res5) with **no temporal stride anywhere**: a clip of T frames stays T frames deep until the
  global average pool; spatial stride 2 at the first block of res3, res4 and res5;
* temporal kernel 3 **only** in the first conv of each block of res4 and res5 (conv_a); every other conv is
  purely spatial (temporal kernel 1);
* a projection shortcut (1x1x1 conv carrying the stride + BN) when the width or the stride changes;
* init as pytorchvideo's ``init_net_weights``: convs kaiming-normal (fan_out, ReLU gain), BN gamma 1 and beta 0,
  **except the last BN of each residual branch, whose gamma is 0** (each block starts as the identity).

R3D-18: :class:`BasicBlock3d` (2, 2, 2, 2), 512-d feature; R3D-50: :class:`Bottleneck3d` (3, 4, 6, 3), 2048-d.

Parameter names follow the torchvision ResNet layout (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``
...), as our image trunks do, so the checkpoint tools read video trunks without renaming. ``r3d_tiny`` (one basic block
per stage at 16-32-64-128 channels) is this project's CPU-demo trunk, the video twin of ``resnet_tiny``.
"""
import torch
from torch import nn

from src.models.resnet import init_conv_bn


def _conv3d(cin, cout, kernel, stride=(1, 1, 1)):
    """Conv3d without bias, "same" padding per axis (kernel // 2)."""
    return nn.Conv3d(cin, cout, kernel, stride=stride, padding=tuple(k // 2 for k in kernel), bias=False)


def _shortcut(cin, cout, spatial_stride):
    """Identity, or a 1x1x1 conv (carrying the spatial stride) + BN when the width or the stride changes."""
    if cin == cout and spatial_stride == 1:
        return None
    return nn.Sequential(nn.Conv3d(cin, cout, 1, stride=(1, spatial_stride, spatial_stride), bias=False),
                         nn.BatchNorm3d(cout))


class BasicBlock3d(nn.Module):
    """conv_a (t, 3, 3) with the stride - BN - ReLU - conv_b (1, 3, 3) - BN, plus the shortcut, then ReLU.

    Args:
        cin, cout: input and output channels.
        spatial_stride: 1 or 2 (applied by conv_a; time is never strided).
        temporal_kernel: 1 (res2, res3) or 3 (res4, res5).
    ``forward``: (B, cin, T, H, W) -> (B, cout, T, H / stride, W / stride).
    """

    def __init__(self, cin, cout, spatial_stride=1, temporal_kernel=1):
        super().__init__()
        self.conv1 = _conv3d(cin, cout, (temporal_kernel, 3, 3), (1, spatial_stride, spatial_stride))
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = _conv3d(cout, cout, (1, 3, 3))
        self.bn2 = nn.BatchNorm3d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, cout, spatial_stride)
        self.last_bn = self.bn2

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck3d(nn.Module):
    """conv_a (t, 1, 1) - BN - ReLU - conv_b (1, 3, 3) with the stride - BN - ReLU - conv_c 1x1x1 - BN, plus the
    shortcut, then ReLU.

    Args:
        cin, cout: input and output channels (inner width cout / 4).
        spatial_stride: 1 or 2 (applied by conv_b, as pytorchvideo's bottleneck).
        temporal_kernel: 1 (res2, res3) or 3 (res4, res5).
    ``forward``: (B, cin, T, H, W) -> (B, cout, T, H / stride, W / stride).
    """

    def __init__(self, cin, cout, spatial_stride=1, temporal_kernel=1):
        super().__init__()
        inner = cout // 4
        self.conv1 = _conv3d(cin, inner, (temporal_kernel, 1, 1))
        self.bn1 = nn.BatchNorm3d(inner)
        self.conv2 = _conv3d(inner, inner, (1, 3, 3), (1, spatial_stride, spatial_stride))
        self.bn2 = nn.BatchNorm3d(inner)
        self.conv3 = _conv3d(inner, cout, (1, 1, 1))
        self.bn3 = nn.BatchNorm3d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, cout, spatial_stride)
        self.last_bn = self.bn3

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class R3D(nn.Module):
    """Slow-only 3D ResNet trunk returning the globally pooled feature.

    Args:
        block: :class:`BasicBlock3d` or :class:`Bottleneck3d`.
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)``.
        widths: output channels per stage, e.g. ``(64, 128, 256, 512)`` (basic) or ``(256, 512, 1024, 2048)``.
        temporal_kernels: conv_a temporal kernel per stage, ``(1, 1, 3, 3)`` in both published trunks.
        stem_width: channels of the stem (64).

    ``forward(x)``: (B, 3, T, H, W) -> ``fc`` of the (B, out_dim) pooled feature; ``fc`` is ``nn.Identity``, as in
    the image trunks of ``src.models``. ``forward_features(x)``: (B, out_dim, T, H / 32, W / 32), T unchanged.
    """

    def __init__(self, block, layers, widths, temporal_kernels=(1, 1, 3, 3), stem_width=64):
        super().__init__()
        self.conv1 = nn.Conv3d(3, stem_width, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        cin = stem_width
        for i, (n, width, tk) in enumerate(zip(layers, widths, temporal_kernels)):
            stride = 1 if i == 0 else 2
            blocks = [block(cin if j == 0 else width, width, stride if j == 0 else 1, tk) for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Identity()
        self.out_dim = cin
        self.reset_parameters()

    def reset_parameters(self):
        """pytorchvideo's init: kaiming-normal (fan_out) convs, BN (1, 0), the last BN of each residual branch 0."""
        init_conv_bn(self)
        for m in self.modules():
            if isinstance(m, (BasicBlock3d, Bottleneck3d)):
                nn.init.zeros_(m.last_bn.weight)

    def forward_features(self, x):
        """(B, 3, T, H, W) -> (B, out_dim, T, h, w) map before pooling."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


# name -> (block, layers, widths, stem width)
R3D_CONFIGS = {
    "r3d_tiny": (BasicBlock3d, (1, 1, 1, 1), (16, 32, 64, 128), 16),
    "r3d18": (BasicBlock3d, (2, 2, 2, 2), (64, 128, 256, 512), 64),
    "r3d50": (Bottleneck3d, (3, 4, 6, 3), (256, 512, 1024, 2048), 64),
}


def build_r3d(arch):
    """Build one of ``R3D_CONFIGS`` (temporal kernels (1, 1, 3, 3)); returns the module (``out_dim`` set)."""
    block, layers, widths, stem = R3D_CONFIGS[arch]
    return R3D(block, layers, widths, temporal_kernels=(1, 1, 3, 3), stem_width=stem)
