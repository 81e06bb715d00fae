"""The split clip pipeline (``main_sce.py --modality video --device-aug``): the CPU half crops exactly as the per-clip
path does; for fixed parameters the batched device ops equal the per-clip torchvision path; one draw per clip,
shared by its frames, independent across clips; the loader and model layouts of ``--channels-last`` for clips."""
import pytest
import torch

from src.augment.device import MultiCropAugment, apply_view
from src.augment.split import DeviceLoader
from src.augment.video import VIDEO_MEAN, VIDEO_STD, ClipAugment, ClipCropToUint8, sce_clip_split_views, sce_clip_views
from src.models import build_backbone
from src.run.speed import to_channels_last

pytestmark = pytest.mark.usefixtures("one_thread")


def device_params(p, frames):
    """The per-clip parameters ``p`` of :meth:`ClipAugment.sample_params` as :func:`draw_params` tensors, one row
    per frame (what the split path's draw becomes once repeated over a clip's frames)."""
    j = p["jitter"]
    one = {"jitter": torch.tensor([j is not None]),
           "factors": torch.tensor([[j["brightness"], j["contrast"], j["saturation"]] if j else [1.0, 1.0, 1.0]]),
           "hue": torch.tensor([j["hue"] if j else 0.0]),
           "order": torch.tensor([j["order"] if j else [0, 1, 2, 3]]),
           "grey": torch.tensor([p["grey"]]),
           "blur": torch.tensor([p["blur_sigma"] is not None]),
           "sigma": torch.tensor([p["blur_sigma"] if p["blur_sigma"] is not None else 1.0]),
           "solarize": torch.tensor([p["solarize"]]), "flip": torch.tensor([p["flip"]])}
    return {k: v.repeat_interleave(frames, dim=0) for k, v in one.items()}


def moving_clip(frames=5, height=40, width=56, seed=0):
    """A smooth colour gradient with a bright square that moves: every frame differs, values in [0, 255]."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, 1, 1, generator=g) * torch.linspace(0, 1, width)[None, None] * 200 + 20
    base = base.expand(3, height, width).clone()
    clip = base[None].repeat(frames, 1, 1, 1)
    for t in range(frames):
        clip[t, :, 5:15, 4 + 6 * t:14 + 6 * t] = torch.tensor([250.0, 240.0, 30.0])[:, None, None]
    return clip


@pytest.mark.parametrize("crop", ["rrc", "short_side"])
def test_cpu_half_crops_like_the_per_clip_path(crop):
    aug = ClipAugment(32, crop, short_side=(40, 48))
    split = ClipCropToUint8([aug])
    clip = torch.rand(4, 3, 48, 64) * 255
    for seed in range(10):
        torch.manual_seed(seed)
        params = aug.sample_params(48, 64)  # the box is its first draw
        torch.manual_seed(seed)
        out = split(clip, 0)
        assert out.dtype == torch.uint8 and out.shape == (3, 4, 32, 32)
        ref = aug.resize_crop(clip, params).permute(1, 0, 2, 3)
        assert (out.float() - ref).abs().max() <= 0.5 + 1e-3  # rounding only


@pytest.mark.parametrize("setting", [
    dict(jitter_p=1.0, grey_p=0.0, blur_p=1.0, solarize_p=1.0),  # every op, colour kept
    dict(jitter_p=1.0, grey_p=1.0, blur_p=1.0, solarize_p=0.0),  # grey after the jitter
    dict(jitter_p=0.0, grey_p=0.0, blur_p=0.0, solarize_p=0.0),  # flip and normalisation only
    dict(jitter_p=0.5, grey_p=0.5, blur_p=0.5, solarize_p=0.5),  # mixed
])
def test_device_ops_equal_the_per_clip_path_for_fixed_parameters(setting):
    """Same parameters -> the device ops on the (T, 3, s, s) frames equal ClipAugment.apply within 1/1000 of a grey
    level (float32 rounding; both blur with torchvision's kernel)."""
    aug = ClipAugment(32, "rrc", blur_kernel=7, blur_sigma=(0.3, 2.0), **setting)
    clip = moving_clip()
    view = aug.device_view()
    assert view.mean == (VIDEO_MEAN,) * 3 and view.std == (VIDEO_STD,) * 3 and view.solarize_threshold == 0.5
    seen = set()
    for seed in range(24):
        torch.manual_seed(seed)
        p = aug.sample_params(clip.shape[-2], clip.shape[-1])
        seen.add((p["jitter"] is not None, p["grey"], p["blur_sigma"] is not None, p["solarize"], p["flip"]))
        ref = aug.apply(clip, p)  # (3, T, s, s)
        frames = (aug.resize_crop(clip, p) / 255).clamp(0, 1)
        out = apply_view(view, frames, device_params(p, clip.shape[0])).permute(1, 0, 2, 3)
        assert (out - ref).abs().max() * VIDEO_STD * 255 < 1e-3, (seed, p)
    assert len(seen) > 1 or setting["jitter_p"] == 0.0  # the draws varied


def test_one_draw_per_clip_shared_by_its_frames():
    """Clips made of T identical frames come out with T identical frames (one draw per clip); the clips of a batch
    draw independently: the grey and flip rates per clip match their probabilities."""
    n, t = 400, 3
    image = moving_clip(frames=1, height=16, width=16)[0].round().to(torch.uint8)  # (3, 16, 16), asymmetric
    clips = image[:, None].expand(3, t, 16, 16)[None].expand(n, 3, t, 16, 16).contiguous()
    view = ClipAugment(16, jitter_p=0.8, grey_p=0.2, blur_p=0.5, blur_kernel=3, solarize_p=0.2).device_view()
    out, = MultiCropAugment([view])([clips], torch.Generator().manual_seed(0))
    assert out.shape == (n, 3, t, 16, 16) and out.dtype == torch.float32
    assert torch.equal(out[:, :, :1].expand_as(out), out)  # every frame equals the clip's first frame
    first = out[:, :, 0]  # (n, 3, 16, 16)
    grey = (first[:, 0] == first[:, 1]).all(dim=(1, 2)) & (first[:, 1] == first[:, 2]).all(dim=(1, 2))
    assert 0.14 < grey.float().mean() < 0.26  # p 0.2, one coin per clip (4 sigma: 0.08)
    # clips draw their own parameters: the 80% with a jitter (continuous factors) are all distinct
    assert len({tuple(c.flatten().tolist()) for c in first}) > 0.7 * n


def test_device_loader_augments_clip_batches_in_3d_channels_last():
    views = sce_clip_split_views(16, blur_scale=16 / 224)
    clip = moving_clip(frames=4)
    torch.manual_seed(0)
    batch = ([torch.stack([views(clip, v) for _ in range(2)]) for v in (0, 1)], torch.zeros(2, dtype=torch.long))
    assert batch[0][0].shape == (2, 3, 4, 16, 16) and batch[0][0].dtype == torch.uint8
    loader = DeviceLoader([batch], "cpu", augment=views.device_augment, memory_format=torch.channels_last, seed=3)
    (c1, c2), _ = next(iter(loader))
    for c in (c1, c2):
        assert c.shape == (2, 3, 4, 16, 16) and c.dtype == torch.float32
        assert c.is_contiguous(memory_format=torch.channels_last_3d)
    (again, _), _ = next(iter(DeviceLoader([batch], "cpu", augment=views.device_augment, seed=3)))
    assert torch.equal(again, c1)  # the step seed, not the layout, decides the draw
    plain = DeviceLoader([([c1, c2], None)], "cpu", memory_format=torch.channels_last)
    assert next(iter(plain))[0][0].is_contiguous(memory_format=torch.channels_last_3d)


def test_split_views_keep_the_asymmetric_sce_settings():
    per_clip, split = sce_clip_views(64, blur_scale=64 / 224), sce_clip_split_views(64, blur_scale=64 / 224)
    for aug, view in zip(per_clip.transforms, split.device_augment.views):
        assert (view.blur_p, view.solarize_p, view.blur_kernel) == (aug.blur_p, aug.solarize_p, aug.blur_kernel)
        assert (view.jitter, view.jitter_p, view.grey_p, view.flip_p) == ((0.8, 0.8, 0.4, 0.2), 0.8, 0.2, 0.5)
    assert [v.blur_p for v in split.device_augment.views] == [1.0, 0.1]
    assert [v.solarize_p for v in split.device_augment.views] == [0.0, 0.2]


def test_channels_last_puts_r3d_weights_in_ndhwc():
    trunk, _ = build_backbone("r3d_tiny")
    to_channels_last(trunk, True)
    convs = [p for p in trunk.parameters() if p.dim() == 5]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in convs)
    out = trunk(torch.randn(2, 3, 4, 16, 16).contiguous(memory_format=torch.channels_last_3d))
    assert torch.isfinite(out).all()
