"""The segmentation network of Revisiting-Contrastive-SSL (Van Gansbeke et al. 2021, "Revisiting Contrastive
Methods for Unsupervised Learning of Visual Representations", wvangansbeke/Revisiting-Contrastive-SSL
``evaluation/segmentation/models/model.py``): a pretrained ResNet whose last stage is dilated, an FCN decoder and
bilinear upsampling to the input size. The whole network is fine-tuned.

- Trunk: "The 3 x 3 convolutions in the conv5 (layer 4) blocks have dilation 2 and stride 1": every 3x3 conv of
  ``layer4`` gets dilation 2 (padding 2) and stride 1, and its strided 1x1 shortcut conv stride 1, so the output
  stride is 16 instead of 32. Unlike torchvision's ``replace_stride_with_dilation``, the first block's 3x3 conv is
  dilated too (the reference's rule touches every 3x3 conv of the stage).
- Decoder: 3x3 conv (dilation d) -> 256, BN, ReLU, 3x3 conv (dilation d) -> 256, BN, ReLU, 1x1 conv -> classes, no
  biases; d = 6 for PASCAL VOC and 1 for Cityscapes in the reference (``utils/common_config.py get_model``).
"""
import torch.nn.functional as F
from torch import nn

from src.run.errors import UserError

DECODER_WIDTH = 256


def dilate_last_stage(trunk):
    """Turn ``trunk.layer4`` into the reference's dilated stage, in place (weights untouched).

    Args:
        trunk: a ResNet of ``src.models.resnet`` (torchvision layout: ``layer4`` of Basic or Bottleneck blocks).
    Returns:
        ``trunk``.
    """
    for m in trunk.layer4.modules():
        if isinstance(m, nn.Conv2d):
            if m.kernel_size == (3, 3):
                m.dilation, m.padding, m.stride = (2, 2), (2, 2), (1, 1)
            if m.stride == (2, 2):  # the first block's 1x1 shortcut
                m.stride = (1, 1)
    return trunk


def fcn_decoder(in_channels, num_classes, dilation):
    """The reference's FCN head: two dilated 3x3 conv-BN-ReLU at 256 channels and a 1x1 classifier, no biases.

    Args:
        in_channels: trunk channels (2048 for ResNet-50). num_classes: C. dilation: of both 3x3 convs.
    Returns:
        ``nn.Sequential`` mapping (B, in_channels, h, w) to (B, C, h, w) logits.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, DECODER_WIDTH, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(DECODER_WIDTH), nn.ReLU(),
        nn.Conv2d(DECODER_WIDTH, DECODER_WIDTH, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(DECODER_WIDTH), nn.ReLU(),
        nn.Conv2d(DECODER_WIDTH, num_classes, 1, bias=False))


class SegmentationFCN(nn.Module):
    """Dilated ResNet trunk -> FCN decoder -> bilinear upsampling (``align_corners=False``) to the input size.

    Args:
        trunk: a ResNet trunk (pretrained weights loaded); its ``layer4`` is dilated here.
        num_classes: output classes (21 for VOC with background, 19 for Cityscapes).
        head_dilation: dilation of the decoder's 3x3 convs (VOC 6, Cityscapes 1).
    ``forward(x)``: (B, 3, H, W) -> (B, num_classes, H, W) logits. State-dict keys: ``backbone.*`` (the trunk's
    torchvision names) and ``decoder.*``.
    Raises:
        UserError: the trunk is not a ResNet.
    """

    def __init__(self, trunk, num_classes, head_dilation=6):
        super().__init__()
        if not all(hasattr(trunk, name) for name in ("layer4", "forward_features", "out_dim")):
            raise UserError(f"segmentation needs a ResNet trunk (resnet18/34/50/101, wide or SwAV-wide ResNets, "
                            f"resnet_tiny), not a {type(trunk).__name__}: pass another -a/--arch")
        self.backbone = dilate_last_stage(trunk)
        self.decoder = fcn_decoder(trunk.out_dim, num_classes, head_dilation)

    def forward(self, x):
        size = x.shape[-2:]
        feats = self.backbone.forward_features(x)  # (B, D, H/16, W/16) for the ImageNet stem
        return F.interpolate(self.decoder(feats), size=size, mode="bilinear", align_corners=False)
