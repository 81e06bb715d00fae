"""Slow-only R3D-18 / R3D-50 (docs/video.md "Networks"): parameter counts from an independent count of the architecture
description, kernel and stride layout, output shapes, time kept, zero-init of each block's last BN."""
import pytest
import torch
from torch import nn

from src.models import KNOWN_ARCHS, VIDEO_ARCHS, build_backbone
from src.models.r3d import BasicBlock3d, Bottleneck3d

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread per module


def conv(cin, cout, t, h, w):
    return cin * cout * t * h * w


def bn(c):
    return 2 * c  # gamma and beta


def described_params(kind, depths, widths, temporal=(1, 1, 3, 3), stem=64):
    """Parameters of a slow-only 3D ResNet, counted from the architecture's description (not from the module)."""
    total = conv(3, stem, 1, 7, 7) + bn(stem)
    cin = stem
    for stage, (n, out, t) in enumerate(zip(depths, widths, temporal)):
        for j in range(n):
            stride = 2 if stage > 0 and j == 0 else 1
            if kind == "basic":  # conv_a (t,3,3) - BN - conv_b (1,3,3) - BN
                total += conv(cin, out, t, 3, 3) + bn(out) + conv(out, out, 1, 3, 3) + bn(out)
            else:  # conv_a (t,1,1) - BN - conv_b (1,3,3) - BN - conv_c 1x1x1 - BN, inner = out / 4
                inner = out // 4
                total += (conv(cin, inner, t, 1, 1) + bn(inner) + conv(inner, inner, 1, 3, 3) + bn(inner)
                          + conv(inner, out, 1, 1, 1) + bn(out))
            if cin != out or stride != 1:  # projection shortcut 1x1x1 + BN
                total += conv(cin, out, 1, 1, 1) + bn(out)
            cin = out
    return total


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_registered_next_to_the_image_arches():
    for arch in ("r3d18", "r3d50"):
        assert arch in KNOWN_ARCHS and arch in VIDEO_ARCHS
    assert "resnet50" not in VIDEO_ARCHS


@pytest.mark.parametrize("arch,kind,depths,widths,stem,dim", [
    ("r3d18", "basic", (2, 2, 2, 2), (64, 128, 256, 512), 64, 512),
    ("r3d50", "bottleneck", (3, 4, 6, 3), (256, 512, 1024, 2048), 64, 2048),
    ("r3d_tiny", "basic", (1, 1, 1, 1), (16, 32, 64, 128), 16, 128),
])
def test_parameter_count_matches_the_description(arch, kind, depths, widths, stem, dim):
    model, out_dim = build_backbone(arch)
    assert out_dim == dim
    assert n_params(model) == described_params(kind, depths, widths, stem=stem)


def test_r3d50_is_pytorchvideo_slow_r50_without_its_head():
    # pytorchvideo's model zoo lists Slow R50 (8x8, Kinetics-400 head 2048 -> 400) at 32.45M parameters
    model, _ = build_backbone("r3d50")
    assert n_params(model) + 2048 * 400 + 400 == 32_454_096
    assert n_params(build_backbone("r3d18")[0]) == 20_023_872


@pytest.mark.parametrize("arch", ["r3d18", "r3d50"])
def test_kernels_and_strides_as_listed(arch):
    model, _ = build_backbone(arch)
    assert model.conv1.kernel_size == (1, 7, 7) and model.conv1.stride == (1, 2, 2)
    assert model.conv1.padding == (0, 3, 3) and model.conv1.bias is None
    assert model.maxpool.kernel_size == (1, 3, 3) and model.maxpool.stride == (1, 2, 2)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv3d):
            assert m.stride[0] == 1, name  # no temporal stride anywhere
            assert m.bias is None, name
            temporal_3 = name.endswith(".conv1") and name.split(".")[0] in ("layer3", "layer4")
            assert m.kernel_size[0] == (3 if temporal_3 else 1), name
    for i, layer in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
        first = layer[0]
        strided = first.conv1 if isinstance(first, BasicBlock3d) else first.conv2  # conv_a (basic) / conv_b
        assert strided.stride == (1, 1 if i == 0 else 2, 1 if i == 0 else 2)
        assert all(b.downsample is None for b in layer[1:])


@pytest.mark.parametrize("arch,frames,size,dim,hw", [("r3d18", 4, 32, 512, 1), ("r3d18", 8, 64, 512, 2),
                                                     ("r3d50", 2, 32, 2048, 1), ("r3d_tiny", 3, 64, 128, 2)])
def test_output_shapes_keep_time(arch, frames, size, dim, hw):
    torch.manual_seed(0)
    model, _ = build_backbone(arch)
    x = torch.randn(2, 3, frames, size, size)
    with torch.no_grad():
        fmap = model.eval().forward_features(x)
        feat = model(x)
    assert fmap.shape == (2, dim, frames, hw, hw)  # T unchanged through every stage
    assert feat.shape == (2, dim)
    assert torch.allclose(feat, fmap.mean(dim=(2, 3, 4)), atol=1e-5)


@pytest.mark.parametrize("arch", ["r3d18", "r3d50"])
def test_last_bn_of_each_block_starts_at_zero(arch):
    model, _ = build_backbone(arch)
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock3d, Bottleneck3d))]
    assert len(blocks) == (8 if arch == "r3d18" else 16)
    for b in blocks:
        last = b.bn2 if isinstance(b, BasicBlock3d) else b.bn3
        assert torch.count_nonzero(last.weight) == 0
        assert torch.all(b.bn1.weight == 1)
        if b.downsample is not None:
            assert torch.all(b.downsample[1].weight == 1)  # the shortcut's BN is not the branch's last BN
    # consequence: a block without shortcut is the identity on non-negative inputs at init
    block = model.layer1[1]
    x = torch.rand(1, block.conv1.in_channels, 2, 8, 8)
    with torch.no_grad():
        assert torch.equal(block.eval()(x), x)
