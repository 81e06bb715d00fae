"""torchvision's small networks, kept under explicit names: ``tv_mobilenetv3_small`` / ``_large``,
``tv_efficientnet_b0`` and ``vit_tiny`` (ViT-Ti/16).

SSL-small (Shi et al. 2021) and its SEED-distilled starting points use other implementations, built by
``src.models.mobilenetv3``, ``src.models.efficientnet`` and ``src.models.deit`` under the plain names;
these variants cannot load those checkpoints (other parameter names, SE placement, padding, BN
constants; docs/small-models.md). Each is torchvision's network cut before its classifier's last Linear,
with an ``fc = nn.Identity()`` attribute so methods can swap in a projection head the way MoCo does, and
the same representation as its SSL-small counterpart: the MobileNetV3s' first classifier Linear +
Hardswish (1024-d small, 1280-d large; the dropout that follows stays active in training),
EfficientNet-B0's 1280-d pooled feature (dropout 0.2 before ``fc``), and for ViT-Ti the 192-d class token
after the final LayerNorm.
"""
import torch
from torch import nn
from torchvision import models as tvm


class TorchvisionMobileNetV3(nn.Module):
    """torchvision MobileNetV3 without its last Linear: (B,3,H,W) -> (B, 1024 | 1280)."""

    def __init__(self, large):
        super().__init__()
        net = tvm.mobilenet_v3_large() if large else tvm.mobilenet_v3_small()
        self.features, self.avgpool = net.features, net.avgpool
        self.classifier = net.classifier[:3]  # Linear -> Hardswish -> Dropout(0.2)
        self.fc = nn.Identity()
        self.out_dim = net.classifier[0].out_features

    def forward(self, x):
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.fc(self.classifier(x))


class TorchvisionEfficientNetB0(nn.Module):
    """torchvision EfficientNet-B0 without its Linear: (B,3,H,W) -> (B, 1280)."""

    def __init__(self):
        super().__init__()
        net = tvm.efficientnet_b0()
        self.features, self.avgpool = net.features, net.avgpool
        self.dropout = net.classifier[0]
        self.fc = nn.Identity()
        self.out_dim = net.classifier[1].in_features

    def forward(self, x):
        return self.fc(self.dropout(torch.flatten(self.avgpool(self.features(x)), 1)))


class TorchvisionViTTiny(nn.Module):
    """torchvision ViT-Ti/16 (width 192, depth 12, 3 heads, MLP 768; the DeiT-Ti shape of Touvron et al.
    2021, not SSL-small's ``vit_tiny``): (B,3,S,S) -> (B, 192) class token.

    ``image_size`` fixes the position-embedding length (224 by default; smaller for tests).
    """

    def __init__(self, image_size=224, patch_size=16):
        super().__init__()
        self.vit = tvm.VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=12,
                                         num_heads=3, hidden_dim=192, mlp_dim=768)
        self.vit.heads = nn.Identity()
        self.fc = nn.Identity()
        self.out_dim = 192

    def forward(self, x):
        return self.fc(self.vit(x))
