"""Per-sample (PIL) augmentations of MoCo v1 / v2 and the evaluation transform.

MoCo v1 (He et al. 2020): RandomResizedCrop(scale 0.2-1) -> RandomGrayscale(0.2) ->
ColorJitter(0.4, 0.4, 0.4, 0.4) -> HFlip. MoCo v2 (Chen et al. 2020, ``--aug-plus``):
RandomResizedCrop(scale 0.2-1) -> ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8 -> RandomGrayscale(0.2) ->
PIL Gaussian blur with sigma ~ U[0.1, 2.0] with p 0.5 -> HFlip. Both end in ToTensor and ImageNet
normalisation (facebookresearch/moco ``main_moco.py``).
"""
import math
import random

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T
from torchvision.transforms import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_rgb(img):
    """A PIL image as 8-bit RGB, scaling high-bit-depth modes instead of clipping them.

    ``Image.convert("RGB")`` clips a 16-bit grey PNG (mode ``I;16``/``I``, values 0-65535) at 255, which turns
    almost every pixel white; 32-bit float images (``F``) likewise. Those are scaled to 0-255 first: 16-bit by
    1/257 (65535 -> 255), ``I`` and ``F`` by their own maximum when it exceeds 255.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            arr = arr / 257.0
        elif arr.size and arr.max() > 255:
            arr = arr * (255.0 / arr.max())
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


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


def moco_transform(crop_size=224, aug_plus=True, min_scale=0.2, grey_p=0.2, blur_p=0.5, blur_sigma=(0.1, 2.0),
                   jitter=(0.4, 0.4, 0.4, 0.1)):
    """One MoCo view pipeline.

    Args:
        crop_size: output side (224 in the papers; smaller for small images / CPU runs).
        aug_plus: MoCo v2 pipeline (True) or v1 (False).
        min_scale: lower bound of RandomResizedCrop's area scale (0.2).
        grey_p, blur_p: RandomGrayscale and blur probabilities (v2: 0.2 and 0.5).
        blur_sigma: blur sigma range in pixels.
        jitter: v2 ColorJitter (brightness, contrast, saturation, hue); see :func:`ssl_small_jitter`.
    """
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    crop = T.RandomResizedCrop(crop_size, scale=(min_scale, 1.0))
    if aug_plus:
        jitter = T.ColorJitter(*jitter)
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


# ==== MoCo revisited and small: constrained multi-scale crops, AutoAugment per crop, SSL-small jitter ====
# Van Gansbeke et al. 2021, "Revisiting Contrastive Methods for Unsupervised Learning of Visual
# Representations" (wvangansbeke/Revisiting-Contrastive-SSL); Shi et al. 2021, "On the Efficacy of Small
# Self-Supervised Contrastive Models without Distillation Signals" (WOWNICE/ssl-small). Spec moco.md C.3-C.4, D.1.
def ssl_small_jitter(strength):
    """SSL-small's ``--cj`` colour jitter: ``(0.8 s, 0.8 s, 0.8 s, min(0.5, 0.4 s))`` (brightness, contrast,
    saturation, hue) for strength ``s`` (the README recipe uses 1.0, the script's default 1.5).

    Returns:
        a 4-tuple for ``T.ColorJitter``; MoCo v2's own jitter is ``(0.4, 0.4, 0.4, 0.1)``.
    """
    return (0.8 * strength, 0.8 * strength, 0.8 * strength, min(0.5, 0.4 * strength))


def _propose_box(width, height, scale, log_ratio):
    """One RandomResizedCrop proposal (torch RNG): an area fraction ~ U(scale) and a log-uniform aspect
    ratio, placed uniformly in the image.

    Returns:
        ``((top, left, h, w), target_area)``, or None when the proposed size does not fit the image.
    """
    target_area = width * height * torch.empty(1).uniform_(scale[0], scale[1]).item()
    aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if not (0 < w <= width and 0 < h <= height):
        return None
    top = int(torch.randint(0, height - h + 1, size=(1,)).item())
    left = int(torch.randint(0, width - w + 1, size=(1,)).item())
    return (top, left, h, w), target_area


def rrc_box(width, height, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), tries=10):
    """The box of a RandomResizedCrop (torchvision's sampling): up to ``tries`` proposals, else a central
    crop with the aspect ratio clamped into ``ratio``.

    Args:
        width, height: image size in pixels.
        scale: (min, max) area fraction.
        ratio: (min, max) aspect ratio w/h.
        tries: proposals before the central fallback.
    Returns:
        ``(top, left, h, w)`` in pixels, inside the image.
    """
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(tries):
        proposal = _propose_box(width, height, scale, log_ratio)
        if proposal is not None:
            return proposal[0]
    if width / height < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif width / height > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def box_intersection(a, b):
    """Area in pixels shared by boxes ``a`` and ``b``, each ``(top, left, h, w)``."""
    dy = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dx = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(dy, 0) * max(dx, 0)


def constrained_box(width, height, key_box, scale, ratio=(3 / 4, 4 / 3), min_overlap=0.1, tries=10):
    """A small-crop box that overlaps the key crop (spec moco.md C.3).

    Up to ``tries`` RandomResizedCrop proposals; the first that fits and shares at least
    ``min_overlap`` x its target area with ``key_box`` is taken. When none does, the box is an
    unconstrained :func:`rrc_box` sample (Revisiting-Contrastive-SSL's fallback), so the overlap is
    likely but not guaranteed.

    Args:
        width, height: image size; key_box: ``(top, left, h, w)`` of the key crop.
        scale, ratio: RandomResizedCrop ranges of the small crop.
        min_overlap: required intersection / target area of the small crop (0.1).
        tries: proposals before the fallback (10).
    Returns:
        ``((top, left, h, w), accepted)``; ``accepted`` is False for the fallback.
    """
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(tries):
        proposal = _propose_box(width, height, scale, log_ratio)
        if proposal is not None and box_intersection(proposal[0], key_box) >= min_overlap * proposal[1]:
            return proposal[0], True
    return rrc_box(width, height, scale, ratio, tries), False


class MultiScaleCrops:
    """Geometry of MoCo's multi-crop (Van Gansbeke et al. 2021): PIL crops only, colour comes later.

    Group ``g`` gives ``num_crops[g]`` crops of side ``size_crops[g]`` with area fraction in
    ``[min_scale_crops[g], max_scale_crops[g]]`` (bilinear resize). Crops come group by group; the
    first group holds the large crops (crop 0 the query, crop 1 MoCo's key). With ``constrained``
    every crop of the later (small) groups is drawn by :func:`constrained_box` against the LAST crop
    of the first group (the key), for any number of small crops.

    Args:
        size_crops, num_crops, min_scale_crops, max_scale_crops: per-group lists of equal length.
        constrained: condition the small crops on the key crop.
        min_overlap, tries: see :func:`constrained_box`.
        ratio: aspect-ratio range of every crop.
    """

    def __init__(self, size_crops, num_crops, min_scale_crops, max_scale_crops, constrained=False,
                 min_overlap=0.1, tries=10, ratio=(3 / 4, 4 / 3)):
        lists = (size_crops, num_crops, min_scale_crops, max_scale_crops)
        if len({len(x) for x in lists}) != 1:
            raise ValueError(f"size/num/min_scale/max_scale crop lists differ in length: {lists}")
        self.groups = [(int(s), int(n), (float(lo), float(hi))) for s, n, lo, hi in zip(*lists)]
        self.constrained, self.min_overlap, self.tries, self.ratio = constrained, min_overlap, tries, ratio
        self.n_accepted = self.n_fallback = 0  # small crops drawn by this process (for tests / diagnostics)

    def boxes(self, width, height):
        """Sample every crop of one image: a list of ``((top, left, h, w), output_size)``."""
        out = []
        for g, (size, n, scale) in enumerate(self.groups):
            for _ in range(n):
                if g > 0 and self.constrained:
                    box, ok = constrained_box(width, height, key_box, scale, self.ratio, self.min_overlap,
                                              self.tries)
                    self.n_accepted += ok
                    self.n_fallback += not ok
                else:
                    box = rrc_box(width, height, scale, self.ratio, self.tries)
                out.append((box, size))
            if g == 0:
                key_box = out[-1][0]
        return out

    def __call__(self, img):
        """PIL image -> list of PIL crops, resized to their group's side."""
        return [TF.resized_crop(img, *box, [size, size], interpolation=T.InterpolationMode.BILINEAR, antialias=True)
                for box, size in self.boxes(*img.size)]

    def __repr__(self):
        return f"MultiScaleCrops(groups={self.groups}, constrained={self.constrained}, min_overlap={self.min_overlap})"


def moco_color_transform(jitter=(0.4, 0.4, 0.4, 0.1), grey_p=0.2, blur_p=0.5, blur_sigma=(0.1, 2.0)):
    """MoCo v2's augmentation after the crop: ColorJitter(``jitter``) with p 0.8 -> RandomGrayscale(``grey_p``)
    -> Gaussian blur sigma ~ U(``blur_sigma``) with p ``blur_p`` -> HFlip -> ToTensor -> Normalize."""
    return T.Compose([T.RandomApply([T.ColorJitter(*jitter)], p=0.8), T.RandomGrayscale(p=grey_p),
                      T.RandomApply([GaussianBlur(blur_sigma)], p=blur_p), T.RandomHorizontalFlip(),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def autoaugment_or(transform):
    """Per sample, 50/50: HFlip -> AutoAugment (torchvision's ImageNet policy: nearest interpolation, no
    fill) -> ToTensor -> Normalize, or ``transform`` (Revisiting-Contrastive-SSL ``--auto-augment``)."""
    auto = T.Compose([T.RandomHorizontalFlip(), T.AutoAugment(T.AutoAugmentPolicy.IMAGENET), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return T.RandomChoice([auto, transform])


class MultiCropTransform:
    """Crop geometry first (e.g. :class:`MultiScaleCrops`), then one transform per crop index.

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


# ==== SwAV / DeepCluster-v2 / SeLa-v2 multi-crop (Caron et al. 2020; facebookresearch/swav
# ``src/multicropdataset.py``; spec swav.md A.2) ====
SWAV_STD = (0.228, 0.224, 0.225)  # the reference's normalisation std (0.228, not 0.229)


def swav_color_distortion(strength=1.0):
    """SimCLR colour distortion as SwAV uses it: ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) with p 0.8, then
    RandomGrayscale(0.2).

    Args:
        strength: s (1.0).
    Returns:
        a callable PIL image -> PIL image.
    """
    jitter = T.ColorJitter(0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)
    return T.Compose([T.RandomApply([jitter], p=0.8), T.RandomGrayscale(p=0.2)])


def swav_crop_transform(size, scale, blur_p=0.5, blur_sigma=(0.1, 2.0), pil_blur=True, blur_kernel=23):
    """One SwAV crop: RandomResizedCrop(size, scale, ratio 3/4-4/3, bilinear) -> HFlip(0.5) -> colour
    distortion -> PIL Gaussian blur with radius ~ U[blur_sigma] and p ``blur_p`` -> ToTensor ->
    Normalize(ImageNet mean, std (0.228, 0.224, 0.225)). The blur applies to every crop, small ones too.
    ``pil_blur=False`` is the blur of the code before April 2021 (which trained the released checkpoints): a
    Gaussian with a fixed ``blur_kernel`` x ``blur_kernel`` kernel (23) and sigma ~ U[blur_sigma], same p.

    Args:
        size: output side in pixels (224 / 160 global, 96 local in the papers).
        scale: (min, max) area fraction, e.g. (0.14, 1.0) global and (0.05, 0.14) local.
        blur_p: blur probability (0.5).
        blur_sigma: (min, max) blur radius in pixels ((0.1, 2.0)).
        pil_blur: PIL's blur (True, current reference) or the fixed-kernel Gaussian (False, older reference).
        blur_kernel: kernel side of the fixed-kernel blur (odd; 23).
    Returns:
        a callable PIL image -> (3, size, size) float tensor.
    """
    blur = GaussianBlur(tuple(blur_sigma)) if pil_blur else T.GaussianBlur(blur_kernel, sigma=tuple(blur_sigma))
    return T.Compose([T.RandomResizedCrop(size, scale=tuple(scale)), T.RandomHorizontalFlip(p=0.5),
                      swav_color_distortion(1.0), T.RandomApply([blur], p=blur_p),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, SWAV_STD)])


def swav_multicrop_transform(size_crops, nmb_crops, min_scale_crops, max_scale_crops, blur_scale=1.0, pil_blur=True):
    """SwAV's multi-crop views of one image, crop-major by group: ``nmb_crops[0]`` crops of side
    ``size_crops[0]``, then ``nmb_crops[1]`` of side ``size_crops[1]``, ... (2x224 + 6x96 is
    ``[224] [96]``, ``[2] [6]``, scales ``(0.14, 1)`` and ``(0.05, 0.14)``).

    Args:
        size_crops, nmb_crops, min_scale_crops, max_scale_crops: per-group lists of equal length.
        blur_scale: multiplies the blur radius range (0.1-2 px); 1 is the reference, ``size_crops[0] / 224``
            keeps the blur's relative size on small images (the fixed kernel, 23, shrinks with it).
        pil_blur: see :func:`swav_crop_transform` (``--use_pil_blur``).
    Returns:
        :class:`MultiViewTransform` of ``sum(nmb_crops)`` crop pipelines.
    """
    sigma = (0.1 * blur_scale, 2.0 * blur_scale)
    kernel = max(3, int(round(23 * blur_scale)) | 1)
    views = []
    for size, n, lo, hi in zip(size_crops, nmb_crops, min_scale_crops, max_scale_crops):
        views += [swav_crop_transform(size, (lo, hi), blur_sigma=sigma, pil_blur=pil_blur, blur_kernel=kernel)] * n
    return MultiViewTransform(views)
