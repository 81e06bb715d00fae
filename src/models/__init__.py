"""Backbone registry: ``build_backbone(arch)`` -> (trunk, feature dim).

Every trunk maps (B, 3, H, W) images to (B, dim) pooled features and has an ``fc`` attribute equal to
``nn.Identity()``: methods replace it by their head (as MoCo does with torchvision models), and
evaluation keeps it as the identity. The video trunks of ``VIDEO_ARCHS`` (slow-only 3D ResNets) map
(B, 3, T, H, W) clips to (B, dim) the same way.
"""
from ..errors import UserError
from .r3d import R3D_CONFIGS, build_r3d
from .resnet import RESNET_CONFIGS, build_resnet
from .small import DeiTTinyTrunk, EfficientNetTrunk, MobileNetV3Trunk

VIDEO_ARCHS = tuple(R3D_CONFIGS)  # r3d_tiny, r3d18, r3d50: (B, 3, T, H, W) clips
KNOWN_ARCHS = tuple(RESNET_CONFIGS) + ("mobilenetv3_small", "mobilenetv3_large", "efficientnet_b0",
                                       "deit_tiny") + VIDEO_ARCHS


def build_backbone(arch, cifar_stem=False, image_size=224, zero_init_residual=False):
    """Build a trunk by name.

    Args:
        arch: one of ``KNOWN_ARCHS``.
        cifar_stem: ResNets only: 3x3 stride-1 stem without max-pool for small (32-96 px) images.
        image_size: DeiT-Tiny only: input resolution (sets the position-embedding length).
        zero_init_residual: ResNets only: zero-init the last BN of every residual block (the video trunks
            always do, as their reference init).
    Returns:
        ``(module, dim)`` where ``module(x)`` is (B, dim).
    Raises:
        UserError: unknown architecture (the message lists the known ones).
    """
    if arch in RESNET_CONFIGS:
        net = build_resnet(arch, cifar_stem=cifar_stem, zero_init_residual=zero_init_residual)
    elif arch in ("mobilenetv3_small", "mobilenetv3_large"):
        net = MobileNetV3Trunk(large=arch.endswith("large"))
    elif arch == "efficientnet_b0":
        net = EfficientNetTrunk()
    elif arch == "deit_tiny":
        net = DeiTTinyTrunk(image_size=image_size)
    elif arch in R3D_CONFIGS:
        net = build_r3d(arch)
    else:
        raise UserError(f"unknown architecture {arch!r}: choose one of {', '.join(KNOWN_ARCHS)}")
    return net, net.out_dim
