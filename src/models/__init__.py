"""Backbone registry: ``build_backbone(arch)`` -> (trunk, feature dim).

Every trunk maps (B, 3, H, W) images to (B, dim) pooled features and has an ``fc`` attribute equal to
``nn.Identity()``: methods replace it by their head (as MoCo does with torchvision models), and
evaluation keeps it as the identity. The video trunks of ``VIDEO_ARCHS`` (slow-only 3D ResNets) map
(B, 3, T, H, W) clips to (B, dim) the same way.

The small networks of SSL-small (Shi et al. 2021) come in two builds (docs/small-models.md):
``mobilenetv3_small``, ``mobilenetv3_large``, ``efficientnet_b0`` and ``deit_tiny`` are the reference
implementations SSL-small and SEED train (d-li14's MobileNetV3, lukemelas' EfficientNet, SSL-small's
lucidrains-style ViT), with their parameter names, so SEED-distilled students load key for key;
``tv_mobilenetv3_small``, ``tv_mobilenetv3_large``, ``tv_efficientnet_b0`` and ``vit_tiny`` are
torchvision's networks with the same representation widths.
"""
from src.models.deit import REFERENCE_IMAGE_SIZE, DeiTTiny
from src.models.efficientnet import EfficientNetB0
from src.models.mobilenetv3 import MobileNetV3
from src.models.r3d import R3D_CONFIGS, build_r3d
from src.models.resnet import RESNET_CONFIGS, build_resnet
from src.models.small import TorchvisionEfficientNetB0, TorchvisionMobileNetV3, TorchvisionViTTiny
from src.run.errors import UserError

VIDEO_ARCHS = tuple(R3D_CONFIGS)  # r3d_tiny, r3d18, r3d50: (B, 3, T, H, W) clips
SMALL_ARCHS = ("mobilenetv3_small", "mobilenetv3_large", "efficientnet_b0", "deit_tiny")  # SSL-small / SEED builds
TV_SMALL_ARCHS = ("tv_mobilenetv3_small", "tv_mobilenetv3_large", "tv_efficientnet_b0", "vit_tiny")  # torchvision
KNOWN_ARCHS = tuple(RESNET_CONFIGS) + SMALL_ARCHS + TV_SMALL_ARCHS + VIDEO_ARCHS


def build_backbone(arch, cifar_stem=False, image_size=224, zero_init_residual=False):
    """Build a trunk by name.

    Args:
        arch: one of ``KNOWN_ARCHS``.
        cifar_stem: ResNets only: 3x3 stride-1 stem without max-pool for small (32-96 px) images.
        image_size: ViTs only: input resolution. ``vit_tiny``: sets the position-embedding length.
            ``deit_tiny``: at most 224 and a multiple of 16; its table always has the reference's 197
            rows (so every checkpoint has one shape) and smaller inputs use the first rows.
        zero_init_residual: ResNets only: zero-init the last BN of every residual block (the video trunks
            always do, as their reference init).
    Returns:
        ``(module, dim)`` where ``module(x)`` is (B, dim).
    Raises:
        UserError: unknown architecture (the message lists the known ones), or a ``deit_tiny`` image
            size it cannot take.
    """
    if arch in RESNET_CONFIGS:
        net = build_resnet(arch, cifar_stem=cifar_stem, zero_init_residual=zero_init_residual)
    elif arch in ("mobilenetv3_small", "mobilenetv3_large"):
        net = MobileNetV3(mode=arch[len("mobilenetv3_"):])
    elif arch == "efficientnet_b0":
        net = EfficientNetB0()
    elif arch == "deit_tiny":
        if image_size > REFERENCE_IMAGE_SIZE or image_size % 16:
            raise UserError(f"deit_tiny takes images of at most {REFERENCE_IMAGE_SIZE} px in multiples of 16 "
                            f"(SSL-small's position table), not {image_size}: change the crop size, or use "
                            "vit_tiny (torchvision's ViT-Ti, built for the crop size)")
        net = DeiTTiny()
    elif arch in ("tv_mobilenetv3_small", "tv_mobilenetv3_large"):
        net = TorchvisionMobileNetV3(large=arch.endswith("large"))
    elif arch == "tv_efficientnet_b0":
        net = TorchvisionEfficientNetB0()
    elif arch == "vit_tiny":
        net = TorchvisionViTTiny(image_size=image_size)
    elif arch in R3D_CONFIGS:
        net = build_r3d(arch)
    else:
        raise UserError(f"unknown architecture {arch!r}: choose one of {', '.join(KNOWN_ARCHS)}")
    return net, net.out_dim
