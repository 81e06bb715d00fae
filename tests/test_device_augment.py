"""src.augment.device: batched per-sample augmentation against torchvision's per-sample ops.

Tolerances: colour ops within 1/255 per pixel of torchvision's per-sample ops on float images (float rounding
only); against torchvision on 8-bit images, within the rounding it does (1 level for brightness and hue, 2 for
contrast and saturation, which also floor the luma); the Gaussian blur equals torchvision's ``gaussian_blur`` to
float rounding, and differs from PIL's ``GaussianBlur(radius=sigma)`` (three box blurs, replicated border) by at
most 6/255 per pixel and 1/255 on average (the measured gaps: docs/speed.md "Speed options").
"""
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from src.augment.device import (BRIGHTNESS, CONTRAST, HUE, SATURATION, MultiCropAugment, _blend_step, adjust_hue,
                                apply_view, draw_params, gaussian_blur, gaussian_kernels, luma)
from src.augment.recipes import moco_views, sce_views, swav_views
from src.augment.views import ViewAug

LEVEL = 1 / 255


def images(n=6, h=20, w=24, seed=0):
    """Smooth colour images with saturated patches (both clamps and hue sectors get exercised)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 5, 6, generator=g)
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    x[:, :, 2:6, 3:9] = torch.tensor([0.95, 0.05, 0.1]).view(3, 1, 1)
    x[:, :, 10:14, 4:8] = 1.0
    return (x * 255).round().to(torch.uint8)


def blend(x, op, factor):
    n = x.shape[0]
    factors = torch.full((n, 3), float(factor))
    return _blend_step(x, torch.full((n,), op), factors, torch.ones(n, dtype=torch.bool))


@pytest.mark.parametrize("factor", [0.0, 0.2, 0.7, 1.0, 1.3, 1.8])
def test_blend_ops_match_torchvision(factor):
    u8 = images()
    x = u8.float() / 255
    for op, ref in ((BRIGHTNESS, TF.adjust_brightness), (CONTRAST, TF.adjust_contrast),
                    (SATURATION, TF.adjust_saturation)):
        ours = blend(x, op, factor)
        expected = torch.stack([ref(xi, factor) for xi in x])  # per sample, float
        assert (ours - expected).abs().max() < 1e-5, (op, factor)
        # torchvision on 8-bit images truncates the result (1 level) and, for contrast and saturation, floors
        # the luma it blends with (|1 - factor| <= 1 more level): our float result lies within that rounding
        expected8 = torch.stack([ref(xi, factor) for xi in u8]).float() / 255  # per sample, 8-bit
        levels = 1 if op == BRIGHTNESS else 2
        assert (ours - expected8).abs().max() <= levels * LEVEL + 1e-6, (op, factor)


@pytest.mark.parametrize("shift", [-0.5, -0.2, 0.0, 0.05, 0.3, 0.5])
def test_hue_matches_torchvision(shift):
    u8 = images()
    x = u8.float() / 255
    ours = adjust_hue(x, torch.full((x.shape[0],), shift))
    assert (ours - TF.adjust_hue(x, shift)).abs().max() < 1e-5
    expected8 = torch.stack([TF.adjust_hue(xi, shift) for xi in u8]).float() / 255
    assert (ours - expected8).abs().max() <= LEVEL + 1e-6


def test_grey_and_solarize_match_torchvision():
    x = images().float() / 255
    assert (luma(x).expand_as(x) - TF.rgb_to_grayscale(x, num_output_channels=3)).abs().max() < 1e-6
    view = ViewAug(jitter_p=0, grey_p=0, blur_p=0, solarize_p=1.0, flip_p=0, mean=(0, 0, 0), std=(1, 1, 1))
    params = draw_params(view, x.shape[0], torch.Generator().manual_seed(0), "cpu")
    ours = apply_view(view, images(), params)
    assert torch.equal(ours, TF.solarize(x, 128 / 255))
    # on 8-bit images: pixels >= 128 are inverted, exactly as torchvision's RandomSolarize(128)
    assert torch.allclose(ours, TF.solarize(images(), 128).float() / 255, atol=1e-6)


@pytest.mark.parametrize("sigma,kernel", [(0.1, 13), (0.7, 5), (1.3, 9), (2.0, 23)])
def test_blur_matches_torchvision(sigma, kernel):
    x = images(h=32, w=32).float() / 255
    n = x.shape[0]
    ours = gaussian_blur(x, gaussian_kernels(torch.full((n,), sigma), torch.ones(n, dtype=torch.bool), kernel))
    assert (ours - TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])).abs().max() < 1e-5
    # a sample without blur is left exactly as it was
    none = gaussian_blur(x, gaussian_kernels(torch.full((n,), sigma), torch.zeros(n, dtype=torch.bool), kernel))
    assert torch.equal(none, x)


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0, 2.0])
def test_blur_close_to_pil(sigma):
    """The documented tolerance against PIL's GaussianBlur (SwAV's and MoCo v2's per-sample blur)."""
    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random((12, 12, 3)) * 255).astype(np.uint8)).resize((96, 96), Image.BICUBIC)
    a = np.array(img)
    a[30:60, 20:50] = [250, 10, 10]
    img = Image.fromarray(a)
    x = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255
    kernel = ViewAug(blur_sigma=(0.1, 2.0)).kernel_size()
    ours = gaussian_blur(x, gaussian_kernels(torch.tensor([sigma]), torch.tensor([True]), kernel))
    pil = torch.from_numpy(np.array(img.filter(ImageFilter.GaussianBlur(radius=sigma)))).permute(2, 0, 1)[None]
    diff = (ours - pil.float() / 255).abs()
    assert diff.max() <= 6 * LEVEL and diff.mean() <= LEVEL


def per_sample_reference(view, x, params, kernel):
    """What the per-sample torchvision pipeline does with the same draws, in the reference order:
    [grey (v1)] -> jitter ops in the drawn order -> [grey] -> blur -> solarize -> flip -> normalise."""
    out = []
    ops = {BRIGHTNESS: TF.adjust_brightness, CONTRAST: TF.adjust_contrast, SATURATION: TF.adjust_saturation,
           HUE: TF.adjust_hue}
    for i, xi in enumerate(x.float() / 255):
        if view.grey_first and params["grey"][i]:
            xi = TF.rgb_to_grayscale(xi, num_output_channels=3)
        if params["jitter"][i]:
            values = [float(params["factors"][i, 0]), float(params["factors"][i, 1]),
                      float(params["factors"][i, 2]), float(params["hue"][i])]
            for op in params["order"][i].tolist():
                xi = ops[op](xi, values[op])
        if not view.grey_first and params["grey"][i]:
            xi = TF.rgb_to_grayscale(xi, num_output_channels=3)
        if view.blur_p > 0 and params["blur"][i]:
            s = float(params["sigma"][i])
            xi = TF.gaussian_blur(xi, [kernel, kernel], [s, s])
        if view.solarize_p > 0 and params["solarize"][i]:
            xi = TF.solarize(xi, view.solarize_threshold)
        if params["flip"][i]:
            xi = TF.horizontal_flip(xi)
        out.append(TF.normalize(xi, list(view.mean), list(view.std)))
    return torch.stack(out)


@pytest.mark.parametrize("name", ["swav", "moco_v2", "moco_v1", "sce_global1", "sce_global2", "sce_local"])
def test_view_matches_per_sample_pipeline(name):
    view = {"swav": swav_views([32], [1])[0], "moco_v2": moco_views(1)[0],
            "moco_v1": moco_views(1, aug_plus=False)[0],
            "sce_global1": sce_views([3])[0], "sce_global2": sce_views([3])[1], "sce_local": sce_views([3])[2]}[name]
    x = images(n=24, h=32, w=32)
    params = draw_params(view, 24, torch.Generator().manual_seed(1), "cpu")
    # make every branch happen at least once whatever the probabilities
    params["jitter"][:12] = True
    params["blur"][::2] = view.blur_p > 0
    params["solarize"][1::3] = view.solarize_p > 0
    params["flip"][::3] = True
    ours = apply_view(view, x, params)
    expected = per_sample_reference(view, x, params, view.kernel_size())
    assert (ours - expected).abs().max() <= LEVEL / min(view.std)


def test_all_off_is_to_tensor_and_normalize():
    view = ViewAug(jitter_p=0, grey_p=0, blur_p=0, solarize_p=0, flip_p=0)
    x = images()
    params = draw_params(view, x.shape[0], torch.Generator().manual_seed(0), "cpu")
    expected = TF.normalize(x.float() / 255, list(view.mean), list(view.std))
    assert torch.allclose(apply_view(view, x, params), expected, atol=1e-6)


def test_param_ranges_and_probabilities():
    view = swav_views([224], [1])[0]  # jitter 0.8 0.8 0.8 0.2, p 0.8, grey 0.2, blur 0.5 sigma 0.1-2
    n = 200_000
    p = draw_params(view, n, torch.Generator().manual_seed(0), "cpu")
    for k, (lo, hi) in enumerate(view.ranges()[:3]):
        f = p["factors"][:, k]
        assert lo <= f.min() < lo + 1e-3 and hi - 1e-3 < f.max() <= hi
        assert abs(f.mean() - (lo + hi) / 2) < 0.01
    assert -0.2 <= p["hue"].min() < -0.199 and 0.199 < p["hue"].max() <= 0.2 and abs(p["hue"].mean()) < 0.003
    assert 0.1 <= p["sigma"].min() and p["sigma"].max() <= 2.0 and abs(p["sigma"].mean() - 1.05) < 0.01
    for key, prob in (("jitter", 0.8), ("grey", 0.2), ("blur", 0.5), ("flip", 0.5), ("solarize", 0.0)):
        assert abs(p[key].float().mean() - prob) < 0.006, key
    sce2 = draw_params(sce_views([2])[1], n, torch.Generator().manual_seed(1), "cpu")  # SCE view 2: blur .1, sol .2
    assert abs(sce2["blur"].float().mean() - 0.1) < 0.004 and abs(sce2["solarize"].float().mean() - 0.2) < 0.005
    # op orders: uniform over the 24 permutations, as torch.randperm(4)
    order = p["order"]
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(n, 4))
    codes = (order * torch.tensor([64, 16, 4, 1])).sum(1)
    counts = torch.bincount(codes, minlength=256)
    counts = counts[counts > 0]
    assert len(counts) == 24 and (counts.float() / n - 1 / 24).abs().max() < 0.004


def test_param_distributions_match_torchvision_draws():
    """Means and ranges of our draws against torchvision's own make_params, drawn the same number of times."""
    torch.manual_seed(0)
    n = 20_000
    jitter = v2.ColorJitter(0.8, 0.8, 0.8, 0.2)
    tv = [jitter.make_params([]) for _ in range(n)]
    ours = draw_params(swav_views([224], [1])[0], n, torch.Generator().manual_seed(0), "cpu")
    for k, key in enumerate(("brightness_factor", "contrast_factor", "saturation_factor")):
        t = torch.tensor([d[key] for d in tv])
        o = ours["factors"][:, k]
        assert abs(t.mean() - o.mean()) < 0.02 and abs(t.min() - o.min()) < 0.01 and abs(t.max() - o.max()) < 0.01
        assert abs(t.std() - o.std()) < 0.01
    t = torch.tensor([d["hue_factor"] for d in tv])
    assert abs(t.mean() - ours["hue"].mean()) < 0.01 and abs(t.std() - ours["hue"].std()) < 0.005
    first = torch.bincount(torch.stack([d["fn_idx"][0] for d in tv]), minlength=4).float() / n
    assert (first - torch.bincount(ours["order"][:, 0], minlength=4).float() / n).abs().max() < 0.02
    blur = v2.GaussianBlur(13, sigma=(0.1, 2.0))
    t = torch.tensor([blur.make_params([])["sigma"][0] for _ in range(n)])
    assert abs(t.mean() - ours["sigma"].mean()) < 0.02 and abs(t.std() - ours["sigma"].std()) < 0.02


def test_multicrop_groups_shapes_and_determinism():
    views = swav_views([32, 16], [2, 3])
    crops = [images(n=4, h=32, w=32, seed=s) for s in range(2)] + [images(n=4, h=16, w=16, seed=s) for s in range(3)]
    augment = MultiCropAugment(views)
    a = augment(crops, torch.Generator().manual_seed(5))
    b = augment(crops, torch.Generator().manual_seed(5))
    assert [t.shape for t in a] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 3
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(t.dtype == torch.float32 for t in a)
    c = augment(crops, torch.Generator().manual_seed(6))
    assert not torch.equal(a[0], c[0])
    cl = augment(crops, torch.Generator().manual_seed(5), memory_format=torch.channels_last)
    assert all(t.is_contiguous(memory_format=torch.channels_last) and torch.equal(t, x) for t, x in zip(cl, a))


def test_sce_views_follow_the_asymmetric_recipe():
    views = sce_views([2, 1, 1], blur_probs=(1.0, 0.1, 0.5), solarize_probs=(0.0, 0.2, 0.2))
    assert [(v.blur_p, v.solarize_p) for v in views] == [(1.0, 0.0), (0.1, 0.2), (0.5, 0.2), (0.5, 0.2)]
    assert views[0].blur_kernel == 23 and views[0].jitter == (0.4, 0.4, 0.2, 0.1)
