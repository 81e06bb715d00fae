"""Crop geometry: torchvision's RandomResizedCrop sampling (:func:`rrc_box`), the constrained small crops of Van
Gansbeke et al. 2021 (:func:`constrained_box`, docs/moco.md), and the multi-crop geometry of a recipe
(:class:`MultiScaleCrops`), which the per-image and the split pipelines share."""
import math

import torch
from torchvision import transforms as T
from torchvision.transforms import functional as TF


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
    """A small-crop box that overlaps the key crop (wvangansbeke/Revisiting-Contrastive-SSL).

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
        out, key_box = [], None
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
