"""Each augmentation recipe is described once: its per-image form (the loader workers' torchvision / PIL pipeline),
its device form (batched ops, ``--device-aug``) and its split form (the CPU crops) draw the same crop geometry and
apply every op with the same probability and range, all read from the one Recipe object."""
import pytest
from torchvision import transforms as T

from src.augment.crops import MultiScaleCrops
from src.augment.image import GaussianBlur, MultiCropTransform, MultiViewTransform
from src.augment.recipes import moco_multicrop_recipe, moco_recipe, sce_recipe, ssl_small_jitter, swav_recipe
from src.augment.video import sce_clip_split_views, sce_clip_views
from src.augment.views import SWAV_STD, scaled_blur

RECIPES = {
    "moco_v1": lambda: moco_recipe(224, aug_plus=False),
    "moco_v2": lambda: moco_recipe(224),
    "ssl_small": lambda: moco_recipe(224, jitter=ssl_small_jitter(1.0), grey_p=0.5, blur_p=0.5),
    "moco_small_crops": lambda: moco_recipe(64, blur_scale=64 / 224),
    "revisiting": lambda: moco_multicrop_recipe([160, 96], [2, 4], [0.2, 0.05], [1.0, 0.14], constrained=True),
    "sce_5crop": lambda: sce_recipe([224, 192, 160, 128, 96], [2, 1, 1, 1, 1], [0.2, 0.172, 0.143, 0.114, 0.086],
                                    [1, 0.86, 0.715, 0.571, 0.429]),
    "sce_small": lambda: sce_recipe([32], [2], [0.2], [1.0], blur_scale=32 / 224),
    "swav": lambda: swav_recipe([224, 96], [2, 6], [0.14, 0.05], [1.0, 0.14]),
    "swav_old_blur": lambda: swav_recipe([160, 96], [2, 4], [0.08, 0.05], [1.0, 0.14], pil_blur=False),
}


def _flatten(t):
    """Every leaf op of a torchvision Compose (nested Composes opened)."""
    out = []
    for op in t.transforms:
        out += _flatten(op) if isinstance(op, T.Compose) else [op]
    return out


def per_image_settings(pipeline):
    """What a per-image pipeline applies, read from its torchvision objects: {op: settings}."""
    got = {}
    for op in _flatten(pipeline):
        if isinstance(op, T.RandomResizedCrop):
            got["crop"] = (op.size[0], tuple(op.scale), tuple(round(r, 6) for r in op.ratio))
        elif isinstance(op, T.RandomApply) and isinstance(op.transforms[0], T.ColorJitter):
            got["jitter"] = (op.p, _jitter(op.transforms[0]))
        elif isinstance(op, T.ColorJitter):  # MoCo v1: on every image
            got["jitter"] = (1.0, _jitter(op))
        elif isinstance(op, T.RandomGrayscale):
            got["grey"] = op.p
        elif isinstance(op, T.RandomApply):  # the blur
            blur = op.transforms[0]
            kernel = 0 if isinstance(blur, GaussianBlur) else blur.kernel_size[0]
            got["blur"] = (op.p, tuple(round(x, 6) for x in blur.sigma), kernel)
        elif isinstance(op, T.RandomSolarize):
            got["solarize"] = (op.p, op.threshold)
        elif isinstance(op, T.RandomHorizontalFlip):
            got["flip"] = op.p
        elif isinstance(op, T.Normalize):
            got["norm"] = (tuple(op.mean), tuple(op.std))
    return got


def _jitter(cj):
    return tuple(tuple(round(v, 6) for v in r) for r in (cj.brightness, cj.contrast, cj.saturation, cj.hue))


def view_settings(view, crop=None):
    """The same settings read from a ViewAug, as the device form applies them (src.augment.device)."""
    got = {"jitter": (view.jitter_p, tuple(tuple(round(v, 6) for v in r) for r in view.ranges())),
           "grey": view.grey_p, "flip": view.flip_p, "norm": (tuple(view.mean), tuple(view.std))}
    if crop is not None:
        got["crop"] = crop
    if not view.grey_first:  # MoCo v1 (grey first) has no blur op at all
        got["blur"] = (view.blur_p, tuple(round(x, 6) for x in view.blur_sigma), view.blur_kernel)
    if view.solarize_p > 0:
        got["solarize"] = (view.solarize_p, round(view.solarize_threshold * 255))
    return got


@pytest.mark.parametrize("name", list(RECIPES))
def test_per_image_device_and_split_forms_come_from_one_description(name):
    recipe = RECIPES[name]()
    per_image, device, split = recipe.per_image(), recipe.device(), recipe.split()
    assert device.views == list(recipe.views) == split.device_augment.views  # the batched half
    geometry = recipe.crops().groups
    assert split.crops.__self__.groups == geometry  # the CPU half of --device-aug crops with the same boxes
    ratio = tuple(round(r, 6) for r in recipe.crops().ratio)
    crops = [(size, scale, ratio) for size, n, scale in geometry for _ in range(n)]
    if isinstance(per_image, MultiCropTransform):  # geometry first (the same MultiScaleCrops), colour per crop
        assert isinstance(per_image.crops, MultiScaleCrops) and per_image.crops.groups == geometry
        assert per_image.crops.constrained == recipe.constrained == split.crops.__self__.constrained
        pipelines = per_image.transforms
        crops = [None] * len(crops)
    else:
        assert isinstance(per_image, MultiViewTransform)
        pipelines = per_image.transforms
    assert len(pipelines) == len(recipe.views) == len(crops)
    for pipeline, view, crop in zip(pipelines, recipe.views, crops):
        expected = view_settings(view, crop)
        got = per_image_settings(pipeline)
        if recipe.style == "sce" and view.blur_p == 0:
            expected.pop("blur")  # SCE's pipeline leaves out a blur that never applies
        assert got == expected, (name, got, expected)


def test_blur_is_scaled_in_one_place():
    kernel, sigma = scaled_blur(32 / 224)
    assert kernel == 3 and sigma == pytest.approx((0.1 * 32 / 224, 2.0 * 32 / 224), rel=1e-12)
    assert scaled_blur(1.0) == (23, (0.1, 2.0))
    sce = sce_recipe([32], [2], [0.2], [1.0], blur_scale=32 / 224)
    clip = sce_clip_views(32, blur_scale=32 / 224).transforms[0]
    swav = swav_recipe([32], [2], [0.14], [1.0], blur_scale=32 / 224, pil_blur=False)
    assert sce.views[0].blur_kernel == clip.blur_kernel == swav.views[0].blur_kernel == kernel
    assert sce.views[0].blur_sigma == tuple(clip.blur_sigma) == swav.views[0].blur_sigma == sigma
    assert moco_recipe(32, blur_scale=32 / 224).views[0].blur_sigma == sigma
    assert swav.views[0].std == SWAV_STD


def test_video_clip_views_per_clip_and_device_forms_agree():
    per_clip = sce_clip_views(64, blur_probs=(1.0, 0.1), solarize_probs=(0.0, 0.2))
    split = sce_clip_split_views(64, blur_probs=(1.0, 0.1), solarize_probs=(0.0, 0.2))
    for clip, view in zip(per_clip.transforms, split.device_augment.views):
        assert view == clip.device_view()
        assert (view.blur_p, view.solarize_p, view.jitter_p, view.grey_p, view.flip_p) == \
            (clip.blur_p, clip.solarize_p, clip.jitter_p, clip.grey_p, clip.flip_p)
        assert view.blur_kernel == clip.blur_kernel and view.blur_sigma == tuple(clip.blur_sigma)
    assert [v.blur_p for v in split.device_augment.views] == [1.0, 0.1]
    assert [v.solarize_p for v in split.device_augment.views] == [0.0, 0.2]


def test_auto_augment_has_no_split_form():
    recipe = moco_multicrop_recipe([160, 96], [2, 4], [0.2, 0.05], [1.0, 0.14], auto_augment=(0, 2))
    assert len(recipe.per_image().transforms) == 6
    with pytest.raises(ValueError, match="AutoAugment"):
        recipe.split()
