"""Per-image realisation of a view (:class:`~src.augment.views.ViewAug`): torchvision / PIL ops on one PIL image, in
the order of the reference the recipe comes from, and the evaluation transforms: :func:`eval_transform` (kNN, the
monitor, the pair evaluations), :func:`train_transform` / :func:`test_transform` (the classifier evaluations:
``eval_linear.py``, ``main_transfer.py``, ``eval_semisup.py``) and :func:`transfer_transform`
(``eval.linear_transfer``).

The orders (each reference's, so that a seeded run draws what the reference draws):

- ``moco``: [RandomResizedCrop] -> RandomApply(ColorJitter, p) -> RandomGrayscale -> RandomApply(PIL blur, p) ->
  HFlip (MoCo v2, facebookresearch/moco; MoCo v1 with ``grey_first``: RandomGrayscale -> ColorJitter -> HFlip);
- ``sce``: RandomResizedCrop -> RandomApply(ColorJitter, p) -> RandomGrayscale -> RandomApply(torchvision blur,
  kernel k) -> RandomSolarize -> HFlip (the per-image form of eztorch's batched GPU augmentations);
- ``swav``: RandomResizedCrop -> HFlip -> RandomApply(ColorJitter, p) -> RandomGrayscale -> RandomApply(blur, p)
  (facebookresearch/swav ``src/multicropdataset.py``);

each ends in ToTensor and ``Normalize(view.mean, view.std)``.
"""
import random

from PIL import ImageFilter
from torchvision import transforms as T

from src.augment.views import IMAGENET_MEAN, IMAGENET_STD

STYLES = ("moco", "sce", "swav")


class GaussianBlur:
    """PIL Gaussian blur with radius sigma ~ U[sigma_min, sigma_max] (SimCLR / MoCo v2 / SwAV)."""

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, img):
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))

    def __repr__(self):
        return f"GaussianBlur(sigma={self.sigma})"


class MultiViewTransform:
    """Apply each of ``transforms`` to the same image; returns the list of views (MoCo's TwoCropsTransform
    is ``MultiViewTransform([t, t])``)."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, img):
        return [t(img) for t in self.transforms]

    def __repr__(self):
        return f"MultiViewTransform({self.transforms})"


class MultiCropTransform:
    """Crop geometry first (e.g. :class:`~src.augment.crops.MultiScaleCrops`), then one transform per crop index.

    Args:
        crops: PIL image -> list of N PIL crops.
        transforms: N callables, ``transforms[i]`` applied to crop ``i``.
    Returns (when called): the list of N transformed crops.
    """

    def __init__(self, crops, transforms):
        self.crops, self.transforms = crops, list(transforms)

    def __call__(self, img):
        crops = self.crops(img)
        assert len(crops) == len(self.transforms), f"{len(crops)} crops for {len(self.transforms)} transforms"
        return [t(c) for t, c in zip(self.transforms, crops)]

    def __repr__(self):
        return f"MultiCropTransform({self.crops}, {self.transforms})"


def blur_op(view):
    """The view's blur: PIL's radius blur (``blur_kernel`` 0) or torchvision's fixed-kernel Gaussian."""
    if view.blur_kernel == 0:
        return GaussianBlur(tuple(view.blur_sigma))
    return T.GaussianBlur(view.blur_kernel, sigma=tuple(view.blur_sigma))


def view_transform(view, style, size=None, scale=None):
    """One view as a per-image pipeline.

    Args:
        view: :class:`~src.augment.views.ViewAug`.
        style: the reference's op order, one of ``STYLES`` (module docstring).
        size, scale: RandomResizedCrop side and area range, first in the pipeline; None: the image is already
            cropped (MoCo's multi-crop geometry comes first), colour only.
    Returns:
        a callable PIL image -> (3, s, s) float tensor.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    ops = []
    if size is not None:
        ops.append(T.RandomResizedCrop(size, scale=tuple(scale), ratio=(3 / 4, 4 / 3),
                                       interpolation=T.InterpolationMode.BILINEAR, antialias=True))
    jitter = T.ColorJitter(*view.jitter)
    if style == "swav":
        ops += [T.RandomHorizontalFlip(p=view.flip_p), T.Compose([T.RandomApply([jitter], p=view.jitter_p),
                                                                  T.RandomGrayscale(p=view.grey_p)]),
                T.RandomApply([blur_op(view)], p=view.blur_p)]
    elif style == "moco" and view.grey_first:  # MoCo v1: grey, then the jitter on every image
        ops += [T.RandomGrayscale(p=view.grey_p), jitter, T.RandomHorizontalFlip(p=view.flip_p)]
    else:
        ops += [T.RandomApply([jitter], p=view.jitter_p), T.RandomGrayscale(p=view.grey_p)]
        if style == "moco" or view.blur_p > 0:
            ops.append(T.RandomApply([blur_op(view)], p=view.blur_p))
        if view.solarize_p > 0:
            ops.append(T.RandomSolarize(threshold=round(view.solarize_threshold * 255), p=view.solarize_p))
        ops.append(T.RandomHorizontalFlip(p=view.flip_p))
    return T.Compose(ops + [T.ToTensor(), T.Normalize(view.mean, view.std)])


def autoaugment_or(transform):
    """Per sample, 50/50: HFlip -> AutoAugment (torchvision's ImageNet policy: nearest interpolation, no
    fill) -> ToTensor -> Normalize, or ``transform`` (Revisiting-Contrastive-SSL ``--auto-augment``)."""
    auto = T.Compose([T.RandomHorizontalFlip(), T.AutoAugment(T.AutoAugmentPolicy.IMAGENET), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return T.RandomChoice([auto, transform])


def eval_transform(resize=256, crop_size=224):
    """Resize(resize) -> CenterCrop(crop_size) -> ToTensor -> Normalize (the kNN / linear-eval protocol)."""
    return T.Compose([T.Resize(resize), T.CenterCrop(crop_size), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def train_transform(crop_size=224, scale=(0.08, 1.0), std=(0.229, 0.224, 0.225), interpolation="bilinear"):
    """A classifier's training images: RandomResizedCrop(crop_size, scale) -> RandomHorizontalFlip -> ToTensor ->
    Normalize(ImageNet mean, ``std``)."""
    mode = T.InterpolationMode(interpolation)
    return T.Compose([T.RandomResizedCrop(crop_size, scale=tuple(scale), interpolation=mode),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, std)])


def test_transform(resize=256, crop_size=224, std=(0.229, 0.224, 0.225), interpolation="bilinear"):
    """A classifier's test images: Resize(resize) -> CenterCrop(crop_size) (skipped when ``crop_size`` is None) ->
    ToTensor -> Normalize(ImageNet mean, ``std``)."""
    ops = [T.Resize(resize, interpolation=T.InterpolationMode(interpolation))]
    if crop_size is not None:
        ops.append(T.CenterCrop(crop_size))
    return T.Compose(ops + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, std)])


def transfer_transform(image_size=224, normalise=True):
    """The linear transfer protocol's images: Resize(image_size, bicubic) -> CenterCrop(image_size) -> ToTensor ->
    Normalize(ImageNet mean and std, or none with ``normalise`` False: the reference's ``--no-norm``)."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalise else ((0.0,) * 3, (1.0,) * 3)
    return T.Compose([T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(image_size),
                      T.ToTensor(), T.Normalize(mean, std)])
