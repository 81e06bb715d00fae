"""ResNets with torchvision's parameter names, optional SwAV widening and a small-image stem.

One class covers torchvision's resnet18-152 and wide_resnet50_2/101_2 (wider bottleneck only,
``width_per_group=128``) and SwAV's resnet50w2/w4/w5, which widen *every* stage: the stem has
``64 * widen`` channels and each stage ``(64, 128, 256, 512) * widen`` planes, so the pooled feature
is ``2048 * widen`` (SwAV, Caron et al. 2020, facebookresearch/swav ``src/resnet50.py``). SwAV pads
before a padding-0 stem conv, which computes the same function as torchvision's padding-3 conv, so
one layout reads both. Parameter names match torchvision (``conv1``, ``bn1``, ``layer1.0.conv1`` ...),
which is what lets plain torchvision, MoCo and SwAV state dicts load without renaming.

``cifar_stem=True`` replaces the 7x7 stride-2 conv and the max-pool by a 3x3 stride-1 conv, the usual
choice for 32-96 px images (SimCLR's CIFAR recipe).
"""
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck


def init_conv_bn(module):
    """torchvision's / pytorchvideo's ResNet init, in module order: kaiming-normal (fan_out, relu) for every 2D / 3D
    convolution, weight 1 and bias 0 for every 2D / 3D BatchNorm."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

class ResNet(nn.Module):
    """Trunk returning the globally pooled feature.

    Args:
        block: ``BasicBlock`` or ``Bottleneck`` (torchvision's).
        layers: number of blocks per stage, e.g. ``[3, 4, 6, 3]``.
        widen: SwAV width multiplier of every stage (1, 2, 4, 5).
        width_per_group: inner width of bottlenecks (torchvision's wide_resnet uses 128).
        cifar_stem: 3x3 stride-1 first conv without max-pool, for small images.
        zero_init_residual: zero the last BN of each block (Goyal et al.), off by default as in torchvision.
        base: channels of the stem and the first stage (64 in every published ResNet; 16 in ``resnet_tiny``).

    ``forward(x)``: (B, 3, H, W) -> ``fc`` of the (B, out_dim) pooled feature; ``fc`` is ``nn.Identity``
    so the trunk returns the feature; methods replace ``fc`` by their projection head as MoCo does.
    """

    def __init__(self, block, layers, widen=1, width_per_group=64, cifar_stem=False, zero_init_residual=False,
                 base=64):
        super().__init__()
        self.base_width = width_per_group
        self.inplanes = base * widen
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, self.inplanes, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, self.inplanes, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, base * widen, layers[0])
        self.layer2 = self._make_layer(block, 2 * base * widen, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * base * widen, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * base * widen, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Identity()
        self.out_dim = 8 * base * widen * block.expansion

        init_conv_bn(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        kwargs = {"base_width": self.base_width} if block is Bottleneck else {}
        layers = [block(self.inplanes, planes, stride, downsample, **kwargs)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **kwargs) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x):
        """(B, 3, H, W) -> (B, out_dim, h, w) map before pooling."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


class FeatureMap(nn.Module):
    """A :class:`ResNet` without its global pooling: (B, 3, H, W) -> (B, out_dim, h, w), the last stage's map
    (h = H / 32; H / 8 with the CIFAR stem).

    What SwAV's ``resnet50(eval_mode=True)`` returns to ``eval_linear.py``'s RegLog head, which pools it itself
    (facebookresearch/swav ``src/resnet50.py`` ``forward_backbone``). Holds the trunk, not a copy.
    """

    def __init__(self, trunk):
        super().__init__()
        self.trunk = trunk

    def forward(self, x):
        return self.trunk.forward_features(x)


# name -> (block, layers, widen, width_per_group[, base]); resnet_tiny is this project's CPU-demo trunk:
# the ResNet-10 layout (one basic block per stage) at 16-32-64-128 channels, 0.3M parameters, 128-d feature.
RESNET_CONFIGS = {
    "resnet_tiny": (BasicBlock, [1, 1, 1, 1], 1, 64, 16),
    "resnet18": (BasicBlock, [2, 2, 2, 2], 1, 64),
    "resnet34": (BasicBlock, [3, 4, 6, 3], 1, 64),
    "resnet50": (Bottleneck, [3, 4, 6, 3], 1, 64),
    "resnet101": (Bottleneck, [3, 4, 23, 3], 1, 64),
    "resnet152": (Bottleneck, [3, 8, 36, 3], 1, 64),
    "wide_resnet50_2": (Bottleneck, [3, 4, 6, 3], 1, 128),
    "wide_resnet101_2": (Bottleneck, [3, 4, 23, 3], 1, 128),
    "resnet50w2": (Bottleneck, [3, 4, 6, 3], 2, 64),
    "resnet50w4": (Bottleneck, [3, 4, 6, 3], 4, 64),
    "resnet50w5": (Bottleneck, [3, 4, 6, 3], 5, 64),
}


def build_resnet(arch, cifar_stem=False, zero_init_residual=False):
    """Build one of ``RESNET_CONFIGS`` as a trunk; returns the module (``out_dim`` attribute set)."""
    block, layers, widen, wpg, *base = RESNET_CONFIGS[arch]
    return ResNet(block, layers, widen=widen, width_per_group=wpg, cifar_stem=cifar_stem,
                  zero_init_residual=zero_init_residual, base=base[0] if base else 64)
