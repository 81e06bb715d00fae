"""MobileNetV3-Small / -Large as SSL-small and SEED build them (Howard et al. 2019, "Searching for MobileNetV3").

The structure, parameter names and initialisation follow d-li14/mobilenetv3.pytorch, which
WOWNICE/ssl-small (``architectures/mobilenet/mobilenetv3.py``) and jacobswan1/SEED use unchanged except
that the classifier's last Linear is a separate ``fc``. A SEED-distilled student therefore loads into
this trunk key for key (``features.3.conv.5.fc.0.weight`` ...). Where it differs from torchvision's
``mobilenet_v3_*`` (kept as ``tv_mobilenetv3_*`` in ``src.models.small``):

- in an expanded block the squeeze-and-excitation sits after the depthwise BN and BEFORE the depthwise
  activation (torchvision: after the activation);
- BatchNorm keeps PyTorch's defaults (eps 1e-5, momentum 0.1; torchvision: 1e-3 / 0.01);
- the SE gate is a pair of Linears on the pooled vector (torchvision: 1x1 convolutions);
- init: conv weights N(0, sqrt(2 / (k*k*out_channels))), Linear N(0, 0.01), biases 0, BN (1, 0).

Representation (docs/small-models.md): 960 / 576 channels -> 1x1 conv -> average pool -> ``classifier``
(Linear to 1280 | 1024, h-swish, Dropout 0.2) -> ``fc``. MoCo replaces ``fc`` by its head, so the
dropout stays active during pre-training, as in the reference; evaluation keeps ``fc = Identity``.
"""
import math

from torch import nn

# (kernel, expansion, out channels, SE, h-swish, stride) per inverted-residual block, from the reference.
LARGE_CFG = [
    (3, 1, 16, 0, 0, 1), (3, 4, 24, 0, 0, 2), (3, 3, 24, 0, 0, 1), (5, 3, 40, 1, 0, 2), (5, 3, 40, 1, 0, 1),
    (5, 3, 40, 1, 0, 1), (3, 6, 80, 0, 1, 2), (3, 2.5, 80, 0, 1, 1), (3, 2.3, 80, 0, 1, 1), (3, 2.3, 80, 0, 1, 1),
    (3, 6, 112, 1, 1, 1), (3, 6, 112, 1, 1, 1), (5, 6, 160, 1, 1, 2), (5, 6, 160, 1, 1, 1), (5, 6, 160, 1, 1, 1),
]
SMALL_CFG = [
    (3, 1, 16, 1, 0, 2), (3, 4.5, 24, 0, 0, 2), (3, 3.67, 24, 0, 0, 1), (5, 4, 40, 1, 1, 2), (5, 6, 40, 1, 1, 1),
    (5, 6, 40, 1, 1, 1), (5, 3, 48, 1, 1, 1), (5, 3, 48, 1, 1, 1), (5, 6, 96, 1, 1, 2), (5, 6, 96, 1, 1, 1),
    (5, 6, 96, 1, 1, 1),
]
FEATURE_DIM = {"large": 1280, "small": 1024}  # width of the classifier Linear (the representation)


def make_divisible(v, divisor=8):
    """Round ``v`` to the nearest multiple of ``divisor`` (at least ``divisor``), never more than 10% down:
    the channel rounding of the TF MobileNet code that every MobileNetV3 port uses."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class SqueezeExcite(nn.Module):
    """Channel gate ``x * hsigmoid(W2 relu(W1 avgpool(x)))``, hidden width ``make_divisible(c // 4)``.

    Shapes: (B, C, H, W) -> (B, C, H, W). Parameters ``fc.0`` and ``fc.2`` (Linears), as in the reference.
    """

    def __init__(self, channels, reduction=4):
        super().__init__()
        hidden = make_divisible(channels // reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels),
                                nn.Hardsigmoid())

    def forward(self, x):
        gate = self.fc(self.avg_pool(x).flatten(1))
        return x * gate[:, :, None, None]


def _act(hswish):
    return nn.Hardswish() if hswish else nn.ReLU(inplace=True)


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 block, laid out in one ``conv`` Sequential as the reference (its indices are the
    checkpoint's key names; ``nn.Identity`` keeps an index where a block has no SE).

    Without expansion (``inp == hidden``): dw conv, BN, act, SE, pw conv, BN.
    With expansion: pw conv, BN, act, dw conv, BN, SE, act, pw conv, BN (SE before the activation).
    Residual when stride 1 and ``inp == out``. Shapes: (B, inp, H, W) -> (B, out, H / stride, W / stride).
    """

    def __init__(self, inp, hidden, out, kernel, stride, use_se, hswish):
        super().__init__()
        self.identity = stride == 1 and inp == out
        dw = [nn.Conv2d(hidden, hidden, kernel, stride, (kernel - 1) // 2, groups=hidden, bias=False),
              nn.BatchNorm2d(hidden)]
        se = SqueezeExcite(hidden) if use_se else nn.Identity()
        pw = [nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out)]
        if inp == hidden:
            layers = dw + [_act(hswish), se] + pw
        else:
            layers = [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), _act(hswish)] + dw + \
                     [se, _act(hswish)] + pw
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.identity else self.conv(x)


class MobileNetV3(nn.Module):
    """MobileNetV3 trunk of SSL-small: (B, 3, H, W) -> (B, 1024) small / (B, 1280) large.

    Args:
        mode: "small" or "large" (width multiplier 1.0, the only one SSL-small uses).
    Attributes:
        out_dim: 1024 or 1280; ``fc``: ``nn.Identity()``, replaced by a method's head.
    """

    def __init__(self, mode="small"):
        super().__init__()
        if mode not in FEATURE_DIM:
            raise ValueError(f"MobileNetV3 mode {mode!r}: choose small or large")
        cfg = SMALL_CFG if mode == "small" else LARGE_CFG
        inp = make_divisible(16)
        layers = [nn.Sequential(nn.Conv2d(3, inp, 3, 2, 1, bias=False), nn.BatchNorm2d(inp), nn.Hardswish())]
        for kernel, t, c, use_se, hswish, stride in cfg:
            out, hidden = make_divisible(c), make_divisible(inp * t)
            layers.append(InvertedResidual(inp, hidden, out, kernel, stride, use_se, hswish))
            inp = out
        self.features = nn.Sequential(*layers)
        # the last block's expanded width (576 small, 960 large) is the width of the final 1x1 conv
        self.conv = nn.Sequential(nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = FEATURE_DIM[mode]
        self.classifier = nn.Sequential(nn.Linear(hidden, self.out_dim), nn.Hardswish(), nn.Dropout(0.2))
        self.fc = nn.Identity()
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.avgpool(self.conv(self.features(x))).flatten(1)  # (B, 576 | 960)
        return self.fc(self.classifier(x))  # (B, 1024 | 1280) with fc = Identity
