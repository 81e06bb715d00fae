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
