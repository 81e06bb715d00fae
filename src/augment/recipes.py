"""The augmentation recipes, each described once as a :class:`Recipe`: its crop geometry and one
:class:`~src.augment.views.ViewAug` per crop. The per-image pipeline (loader workers), the batched device half
(``--device-aug``) and the split pipeline are all derived from that one object::

    recipe = swav_recipe([224, 96], [2, 6], [0.14, 0.05], [1.0, 0.14])
    transform = recipe.split() if device_aug else recipe.per_image()

Recipes (the references' values; docs/moco.md, docs/sce.md, docs/swav.md):

- :func:`moco_recipe`: MoCo v1 / v2 (and SSL-small's jitter / grey / blur): two views of one augmentation;
- :func:`moco_multicrop_recipe`: Van Gansbeke et al. 2021: a query and a key crop plus small crops (optionally
  constrained to overlap the key), AutoAugment 50/50 on chosen crops (per image only);
- :func:`sce_recipe`: SCE's asymmetric views (global 1 blur 1.0; global 2 blur 0.1 + solarize 0.2; locals) over
  SwAV-style multi-crop groups;
- :func:`swav_recipe`: SwAV / DeepCluster-v2 / SeLa-v2 multi-crop.

A blur is scaled only through :func:`~src.augment.views.scaled_blur` (``blur_scale`` 1 is the reference).
"""
from dataclasses import dataclass

from src.augment.crops import MultiScaleCrops
from src.augment.device import MultiCropAugment
from src.augment.image import MultiCropTransform, MultiViewTransform, autoaugment_or, view_transform
from src.augment.split import CropsToUint8
from src.augment.views import MOCO_V2_JITTER, SCE_JITTER, SWAV_STD, ViewAug, scaled_blur


@dataclass(frozen=True)
class Recipe:
    """One recipe: crop geometry and the view of every crop.

    Args:
        name: for messages and ``repr``.
        style: the per-image op order of the reference (``src.augment.image.STYLES``).
        groups: ``((size, n, (min_scale, max_scale)), ...)``: n crops of side ``size`` per group, crop-major.
        views: one ViewAug per crop (``sum(n)``).
        constrained, min_overlap: small crops overlap the key crop (the last crop of the first group).
        crop_in_view: per image, each view draws its own RandomResizedCrop (the two-view MoCo, SCE and SwAV
            pipelines); False: the multi-crop geometry is drawn first, then the colour of each crop (MoCo multi-crop).
        auto_augment: crop indices that take HFlip + AutoAugment 50/50 instead of their view (per image only).
    """
    name: str
    style: str
    groups: tuple
    views: tuple
    constrained: bool = False
    min_overlap: float = 0.1
    crop_in_view: bool = True
    auto_augment: tuple = ()

    def __post_init__(self):
        if len(self.views) != sum(n for _, n, _ in self.groups):
            raise ValueError(f"{self.name}: {len(self.views)} views for {sum(n for _, n, _ in self.groups)} crops")

    def describe(self):
        """The geometry in words, e.g. ``2x224 + 6x96``."""
        return " + ".join(f"{n}x{size}" for size, n, _ in self.groups)

    def crop_sizes(self):
        """The side of every crop, in batch order, e.g. [224, 224, 96, 96, 96, 96, 96, 96]."""
        return [size for size, n, _ in self.groups for _ in range(n)]

    def crops(self):
        """The geometry as :class:`~src.augment.crops.MultiScaleCrops` (PIL crops, or boxes for the split path)."""
        sizes, nums, scales = zip(*self.groups)
        return MultiScaleCrops(list(sizes), list(nums), [lo for lo, _ in scales], [hi for _, hi in scales],
                               constrained=self.constrained, min_overlap=self.min_overlap)

    def per_image(self):
        """The per-image pipeline: PIL image -> list of normalised (3, s, s) tensors, one per crop."""
        if not self.crop_in_view:
            colour = view_transform(self.views[0], self.style) if len(set(self.views)) == 1 else None
            transforms = [colour or view_transform(v, self.style) for v in self.views]
            return MultiCropTransform(self.crops(), [autoaugment_or(t) if i in self.auto_augment else t
                                                     for i, t in enumerate(transforms)])
        out, i = [], 0
        for size, n, scale in self.groups:
            for _ in range(n):
                out.append(view_transform(self.views[i], self.style, size, scale))
                i += 1
        return MultiViewTransform(out)

    def device(self):
        """The batched half (``src.augment.device``): list of uint8 crops on the device -> normalised floats."""
        return MultiCropAugment(self.views)

    def split(self):
        """The split pipeline: loader workers crop and resize to uint8, the device does the rest."""
        if self.auto_augment:
            raise ValueError(f"{self.name}: AutoAugment runs per image: no split form")
        return CropsToUint8(self.crops().boxes, self.device())

    def transform(self, split=False):
        """:meth:`split` when ``split`` (``--device-aug``), else :meth:`per_image`."""
        return self.split() if split else self.per_image()


def _groups(size_crops, nmb_crops, min_scale_crops, max_scale_crops):
    lists = (size_crops, nmb_crops, min_scale_crops, max_scale_crops)
    if len({len(x) for x in lists}) != 1:
        raise ValueError(f"size/nmb/min_scale/max_scale crop lists differ in length: {lists}")
    return tuple((int(s), int(n), (float(lo), float(hi))) for s, n, lo, hi in zip(*lists))


# ==== MoCo v1 / v2, SSL-small, Revisiting ====
def ssl_small_jitter(strength):
    """SSL-small's ``--cj`` colour jitter: ``(0.8 s, 0.8 s, 0.8 s, min(0.5, 0.4 s))`` (brightness, contrast,
    saturation, hue) for strength ``s`` (SSL-small's README recipe uses 1.0, its script's default 1.5)."""
    return (0.8 * strength, 0.8 * strength, 0.8 * strength, min(0.5, 0.4 * strength))


def moco_views(n_crops, aug_plus=True, jitter=MOCO_V2_JITTER, grey_p=0.2, blur_p=0.5, blur_sigma=(0.1, 2.0)):
    """MoCo v2 (``aug_plus``): jitter p 0.8, grayscale, PIL blur, flip; MoCo v1: grayscale, then
    ColorJitter(0.4, 0.4, 0.4, 0.4) on every image, flip (facebookresearch/moco ``main_moco.py``)."""
    if aug_plus:
        view = ViewAug(jitter=tuple(jitter), jitter_p=0.8, grey_p=grey_p, blur_p=blur_p, blur_sigma=tuple(blur_sigma))
    else:
        view = ViewAug(jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0, grey_p=grey_p, grey_first=True, blur_p=0.0)
    return [view] * n_crops


def moco_recipe(crop_size=224, aug_plus=True, min_scale=0.2, jitter=MOCO_V2_JITTER, grey_p=0.2, blur_p=0.5,
                blur_scale=1.0):
    """MoCo's two views of one augmentation: RandomResizedCrop(crop_size, scale (min_scale, 1)) + :func:`moco_views`,
    the blur sigma 0.1-2 px scaled by ``blur_scale``."""
    _, sigma = scaled_blur(blur_scale)
    return Recipe("moco_v2" if aug_plus else "moco_v1", "moco", ((crop_size, 2, (min_scale, 1.0)),),
                  tuple(moco_views(2, aug_plus, jitter, grey_p, blur_p, sigma)))


def moco_multicrop_recipe(size_crops, num_crops, min_scale_crops, max_scale_crops, constrained=False,
                          min_overlap=0.1, jitter=MOCO_V2_JITTER, grey_p=0.2, blur_p=0.5, auto_augment=()):
    """Van Gansbeke et al. 2021's multi-crop: the query and key crops, then the small crops (constrained to the key
    crop with ``constrained``), each with MoCo v2's colour (blur sigma 0.1-2 px at every size, as the reference),
    AutoAugment 50/50 on the ``auto_augment`` crops."""
    groups = _groups(size_crops, num_crops, min_scale_crops, max_scale_crops)
    views = moco_views(sum(num_crops), True, jitter, grey_p, blur_p)
    return Recipe("moco_multicrop", "moco", groups, tuple(views), constrained=constrained, min_overlap=min_overlap,
                  crop_in_view=False, auto_augment=tuple(auto_augment))


# ==== SCE ====
def sce_views(nmb_crops, blur_probs=(1.0, 0.1, 0.5), solarize_probs=(0.0, 0.2, 0.2), blur_scale=1.0):
    """SCE: ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, torchvision blur (kernel 23, sigma 0.1-2, scaled by
    ``blur_scale``), solarization; blur / solarize probabilities of global view 1, global view 2, every local crop."""
    kernel, sigma = scaled_blur(blur_scale)
    return [ViewAug(jitter=SCE_JITTER, blur_p=blur_probs[min(i, 2)], blur_sigma=sigma, blur_kernel=kernel,
                    solarize_p=solarize_probs[min(i, 2)]) for i in range(sum(nmb_crops))]


def sce_recipe(size_crops, nmb_crops, min_scale_crops, max_scale_crops, blur_probs=(1.0, 0.1, 0.5),
               solarize_probs=(0.0, 0.2, 0.2), blur_scale=1.0):
    """SCE's views of one image, global crops first: ``[g1, g2, l1, ..., lL]`` (docs/sce.md). The 5-crop recipe is
    ``nmb 2 1 1 1 1``, ``size 224 192 160 128 96``, ``min 0.2 0.172 0.143 0.114 0.086``, ``max 1 0.86 0.715 0.571
    0.429``."""
    return Recipe("sce", "sce", _groups(size_crops, nmb_crops, min_scale_crops, max_scale_crops),
                  tuple(sce_views(nmb_crops, blur_probs, solarize_probs, blur_scale)))


# ==== SwAV / DeepCluster-v2 / SeLa-v2 ====
def swav_views(size_crops, nmb_crops, blur_scale=1.0, pil_blur=True):
    """SwAV: RandomResizedCrop -> HFlip 0.5 -> ColorJitter(0.8, 0.8, 0.8, 0.2) p 0.8 -> grayscale 0.2 -> blur p 0.5
    sigma 0.1-2 px (scaled by ``blur_scale``): PIL's radius blur, or (``pil_blur`` False, the code that trained the
    released checkpoints) a fixed 23-px kernel -> std (0.228, 0.224, 0.225)."""
    kernel, sigma = scaled_blur(blur_scale)
    view = ViewAug(jitter=(0.8, 0.8, 0.8, 0.2), blur_sigma=sigma, blur_kernel=0 if pil_blur else kernel, std=SWAV_STD)
    return [view] * sum(nmb_crops)


def swav_recipe(size_crops, nmb_crops, min_scale_crops, max_scale_crops, blur_scale=1.0, pil_blur=True):
    """SwAV's multi-crop views of one image, crop-major by group (2x224 + 6x96: ``[224, 96]``, ``[2, 6]``, scales
    ``(0.14, 1)`` and ``(0.05, 0.14)``; facebookresearch/swav ``src/multicropdataset.py``)."""
    return Recipe("swav", "swav", _groups(size_crops, nmb_crops, min_scale_crops, max_scale_crops),
                  tuple(swav_views(size_crops, nmb_crops, blur_scale, pil_blur)))
