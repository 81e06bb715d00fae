"""Per-sample (PIL) augmentations of MoCo v1 / v2 and the evaluation transform.

MoCo v1 (He et al. 2020): RandomResizedCrop(scale 0.2-1) -> RandomGrayscale(0.2) ->
ColorJitter(0.4, 0.4, 0.4, 0.4) -> HFlip. MoCo v2 (Chen et al. 2020, ``--aug-plus``):
RandomResizedCrop(scale 0.2-1) -> ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8 -> RandomGrayscale(0.2) ->
PIL Gaussian blur with sigma ~ U[0.1, 2.0] with p 0.5 -> HFlip. Both end in ToTensor and ImageNet
normalisation (facebookresearch/moco ``main_moco.py``).
"""
import random

from PIL import ImageFilter
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GaussianBlur:
    """PIL Gaussian blur with radius sigma ~ U[sigma_min, sigma_max] (SimCLR / MoCo v2)."""

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


def moco_transform(crop_size=224, aug_plus=True, min_scale=0.2, grey_p=0.2, blur_p=0.5, blur_sigma=(0.1, 2.0)):
    """One MoCo view pipeline.

    Args:
        crop_size: output side (224 in the papers; smaller for small images / CPU runs).
        aug_plus: MoCo v2 pipeline (True) or v1 (False).
        min_scale: lower bound of RandomResizedCrop's area scale (0.2).
        grey_p, blur_p: RandomGrayscale and blur probabilities (v2: 0.2 and 0.5).
        blur_sigma: blur sigma range in pixels.
    """
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    crop = T.RandomResizedCrop(crop_size, scale=(min_scale, 1.0))
    if aug_plus:
        jitter = T.ColorJitter(0.4, 0.4, 0.4, 0.1)
        ops = [crop, T.RandomApply([jitter], p=0.8), T.RandomGrayscale(p=grey_p),
               T.RandomApply([GaussianBlur(blur_sigma)], p=blur_p), T.RandomHorizontalFlip()]
    else:
        ops = [crop, T.RandomGrayscale(p=grey_p), T.ColorJitter(0.4, 0.4, 0.4, 0.4), T.RandomHorizontalFlip()]
    return T.Compose(ops + [T.ToTensor(), normalize])


def eval_transform(resize=256, crop_size=224):
    """Resize(resize) -> CenterCrop(crop_size) -> ToTensor -> Normalize (the kNN / linear-eval protocol)."""
    return T.Compose([T.Resize(resize), T.CenterCrop(crop_size), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


# ==== SCE (Denize et al. 2023; spec sce.md section 3): asymmetric BYOL-style views, multi-crop ====
SCE_JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue


def sce_view_transform(size, scale, blur_p, solarize_p, blur_kernel=23, blur_sigma=(0.1, 2.0), jitter_p=0.8,
                       grey_p=0.2, flip_p=0.5):
    """One SCE view: RandomResizedCrop(size, scale, ratio 3/4-4/3, bilinear) -> ColorJitter(0.4, 0.4, 0.2, 0.1)
    with p 0.8 -> RandomGrayscale(0.2) -> GaussianBlur(kernel 23, sigma U[0.1, 2]) with p ``blur_p`` ->
    Solarize(pixels >= 128 of 255, i.e. 0.5) with p ``solarize_p`` -> HFlip(0.5) -> ToTensor -> ImageNet
    normalisation. Per-sample (PIL) form of the reference's batched GPU augmentations (same semantics).

    Args:
        size: output side in pixels (224 global, 192/160/128/96 local in the 5-crop recipe).
        scale: (min, max) area fraction of the crop, e.g. (0.2, 1.0).
        blur_p, solarize_p: probabilities (global 1: 1.0 / 0; global 2: 0.1 / 0.2; locals: 0.5 / 0.2).
        blur_kernel: odd kernel side (23 for every crop size in the reference).
        blur_sigma: (min, max) of the uniformly drawn sigma, in pixels.
        jitter_p, grey_p, flip_p: colour jitter, grayscale and horizontal-flip probabilities.
    Returns:
        a callable PIL image -> (3, size, size) float tensor.
    """
    ops = [T.RandomResizedCrop(size, scale=tuple(scale), ratio=(0.75, 4 / 3),
                               interpolation=T.InterpolationMode.BILINEAR, antialias=True),
           T.RandomApply([T.ColorJitter(*SCE_JITTER)], p=jitter_p), T.RandomGrayscale(p=grey_p)]
    if blur_p > 0:
        ops.append(T.RandomApply([T.GaussianBlur(blur_kernel, sigma=tuple(blur_sigma))], p=blur_p))
    if solarize_p > 0:
        ops.append(T.RandomSolarize(threshold=128, p=solarize_p))
    ops += [T.RandomHorizontalFlip(p=flip_p), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(ops)


def sce_multicrop_transform(size_crops, nmb_crops, min_scale_crops, max_scale_crops, blur_probs=(1.0, 0.1, 0.5),
                            solarize_probs=(0.0, 0.2, 0.2), blur_scale=1.0):
    """SCE's views of one image, global crops first: ``[g1, g2, l1, ..., lL]``.

    Groups follow SwAV's flags: group i gives ``nmb_crops[i]`` crops of side ``size_crops[i]`` with area
    scale in ``[min_scale_crops[i], max_scale_crops[i]]``. The first two crops are the global views and
    get the asymmetric augmentations of view 1 and view 2; every later crop gets the local one. The
    5-crop recipe is ``nmb 2 1 1 1 1``, ``size 224 192 160 128 96``, ``min 0.2 0.172 0.143 0.114 0.086``,
    ``max 1 0.86 0.715 0.571 0.429``.

    Args:
        size_crops, nmb_crops, min_scale_crops, max_scale_crops: per-group lists of equal length.
        blur_probs, solarize_probs: (global 1, global 2, local) probabilities.
        blur_scale: multiplies the blur sigma range and kernel (odd, at least 3); 1 is the reference
            (kernel 23, sigma 0.1-2 px at any crop size); size/224 keeps the blur's relative size on small images.
    Returns:
        :class:`MultiViewTransform` of ``sum(nmb_crops)`` view pipelines.
    """
    kernel = max(3, int(round(23 * blur_scale)) | 1)
    sigma = (0.1 * blur_scale, 2.0 * blur_scale)
    views = []
    for size, n, lo, hi in zip(size_crops, nmb_crops, min_scale_crops, max_scale_crops):
        for _ in range(n):
            which = min(len(views), 2)  # 0: global 1, 1: global 2, 2: any local crop
            views.append(sce_view_transform(size, (lo, hi), blur_probs[which], solarize_probs[which],
                                            blur_kernel=kernel, blur_sigma=sigma))
    return MultiViewTransform(views)
