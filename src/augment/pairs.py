"""Views of one image for a *static* positive-pair dataset (``python -m experiments.sample-augs``).

The static set freezes augmentation so that instance discrimination, alignment and uniformity
(``eval/instdisc.py``, ``eval/stats-dist.py``) compare checkpoints on identical pairs. Behaviour follows
SSL-small's ``experiments/sample-augs.py`` (docs/evaluation.md); view 0, the original image, is written
by the caller. Modes:

* ``moco``: views 1 and 2, each an independent MoCo v2 augmentation: RandomResizedCrop(size, scale
  0.2-1) -> ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8 -> RandomGrayscale(0.2) -> Gaussian blur
  (sigma 0.1-2 px at 224 px, scaled with ``size``) with p 0.5 -> HFlip.
* ``nointer``: two different quadrants of the image (so the views share no pixel), each then through
  the same pipeline with a crop scale of 0.4-1.
* ``easy`` / ``hard`` / ``super-hard``: two random crops whose IoU lies in [0.25, 1] / [0.05, 0.25] /
  [1e-4, 0.05], neither containing the other, resized to ``size`` without colour changes. Ten views:
  1, 2 the crops; 3, 4 with their overlap replaced by uniform noise; 5, 6 the same noise patch at a
  random place instead; 7, 8 the overlap filled with the ImageNet mean colour (124, 116, 104);
  9, 10 that fill at a random place. Masks are drawn in crop pixels, before resizing.

Randomness comes from the torch / Python generators (torchvision transforms) and from the numpy
``Generator`` passed in; the caller seeds both per image (``src.data.folders.fork_rng``).
"""
import math

import numpy as np
from PIL import Image
from torchvision import transforms as T

from src.augment.image import GaussianBlur

MODES = ("moco", "nointer", "easy", "hard", "super-hard")
IOU_RANGES = {"easy": (0.25, 1.0), "hard": (0.05, 0.25), "super-hard": (1e-4, 0.05)}
MEAN_FILL = (124, 116, 104)  # ImageNet mean colour in 0-255 (0.485, 0.456, 0.406)
VIEWS_PER_MODE = {"moco": 2, "nointer": 2, "easy": 10, "hard": 10, "super-hard": 10}


def colour_pipeline(size, min_scale=0.2):
    """MoCo v2 view on a PIL image, ending as a ``size`` x ``size`` PIL image (no tensor conversion).

    Args:
        size: output side in pixels (224 in the reference).
        min_scale: lower bound of the RandomResizedCrop area scale (0.2; 0.4 for ``nointer``).
    Returns:
        torchvision Compose.
    """
    sigma = (0.1 * size / 224, 2.0 * size / 224)  # the reference's [0.1, 2] at 224 px
    return T.Compose([T.RandomResizedCrop(size, scale=(min_scale, 1.0)),
                      T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                      T.RandomGrayscale(p=0.2),
                      T.RandomApply([GaussianBlur(sigma)], p=0.5),
                      T.RandomHorizontalFlip()])


# ==== crop boxes ====
def sample_boxes(rng, width, height, n, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
    """``n`` RandomResizedCrop-style boxes inside a ``width`` x ``height`` image (integer pixels).

    Area fraction ~ U(scale), log aspect ratio ~ U(log ratio), position uniform; boxes that do not fit
    are clipped to the image.

    Returns:
        (n, 4) int64 array of ``x0, y0, x1, y1`` (x1, y1 exclusive), each box at least 1 x 1.
    """
    area = width * height * rng.uniform(*scale, size=n)
    r = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=n))
    w = np.clip(np.round(np.sqrt(area * r)), 1, width).astype(np.int64)
    h = np.clip(np.round(np.sqrt(area / r)), 1, height).astype(np.int64)
    x0 = (rng.uniform(size=n) * (width - w + 1)).astype(np.int64)
    y0 = (rng.uniform(size=n) * (height - h + 1)).astype(np.int64)
    return np.stack([x0, y0, x0 + w, y0 + h], axis=1)


def box_iou(a, b):
    """IoU of box ``a`` (4,) with each row of ``b`` (n, 4) (or one box); returns (n,) floats."""
    b = np.atleast_2d(b)
    iw = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return inter / union


def _contains(a, b):
    """(n,) bools: box ``a`` contains row of ``b`` or is contained in it."""
    a_in_b = (b[:, 0] <= a[0]) & (b[:, 1] <= a[1]) & (a[2] <= b[:, 2]) & (a[3] <= b[:, 3])
    b_in_a = (a[0] <= b[:, 0]) & (a[1] <= b[:, 1]) & (b[:, 2] <= a[2]) & (b[:, 3] <= a[3])
    return a_in_b | b_in_a


def sample_box_pair(rng, width, height, iou_range, scale=(0.2, 1.0), tries=200, per_try=256):
    """Two crop boxes whose IoU lies in ``iou_range`` (inclusive) and neither contains the other.

    Rejection sampling: a first box, then ``per_try`` candidates for the second, ``tries`` times.

    Returns:
        ``(a, b)``: two (4,) int arrays ``x0, y0, x1, y1``.
    Raises:
        ValueError: no pair found (tiny images or an IoU range that the crop scales cannot reach).
    """
    lo, hi = iou_range
    for _ in range(tries):
        a = sample_boxes(rng, width, height, 1, scale)[0]
        cands = sample_boxes(rng, width, height, per_try, scale)
        iou = box_iou(a, cands)
        ok = np.flatnonzero((iou >= lo) & (iou <= hi) & ~_contains(a, cands))
        if ok.size:
            return a, cands[ok[0]]
    raise ValueError(f"no crop pair with IoU in [{lo:g}, {hi:g}] found in a {width}x{height} image")


# ==== views ====
def _patch(img_arr, box, fill):
    """Write ``fill`` ((h, w, 3) array or an RGB tuple) into ``img_arr`` at ``box`` (in place)."""
    x0, y0, x1, y1 = box
    img_arr[y0:y1, x0:x1] = fill


def masked_views(img, box, other, rng, size):
    """The five variants of one crop of an IoU mode: plain, overlap noise, noise at a random place,
    overlap mean-filled, mean fill at a random place; each resized to ``size`` x ``size``.

    Args:
        img: RGB PIL image. box: this view's crop (x0, y0, x1, y1). other: the other view's crop.
        rng: numpy Generator (noise and random places). size: output side.
    Returns:
        list of 5 PIL images.
    """
    crop = np.asarray(img.crop(tuple(int(v) for v in box)).convert("RGB")).copy()
    ch, cw = crop.shape[:2]
    inter = np.array([max(box[0], other[0]), max(box[1], other[1]), min(box[2], other[2]), min(box[3], other[3])])
    rel = inter - np.array([box[0], box[1], box[0], box[1]])  # overlap in crop pixels
    ph, pw = int(rel[3] - rel[1]), int(rel[2] - rel[0])
    noise = rng.integers(0, 256, size=(ph, pw, 3), dtype=np.uint8)
    out = [crop]
    for fill in (noise, MEAN_FILL):
        at_overlap = crop.copy()
        _patch(at_overlap, rel, fill)
        x, y = int(rng.integers(0, cw - pw + 1)), int(rng.integers(0, ch - ph + 1))
        elsewhere = crop.copy()
        _patch(elsewhere, (x, y, x + pw, y + ph), fill)
        out += [at_overlap, elsewhere]
    return [Image.fromarray(a).resize((size, size), Image.BILINEAR) for a in out]


def quadrant(img, index):
    """Quadrant ``index`` (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) of a PIL image."""
    w, h = img.size
    x0, y0 = (index % 2) * (w // 2), (index // 2) * (h // 2)
    return img.crop((x0, y0, x0 + max(w // 2, 1), y0 + max(h // 2, 1)))


def make_views(img, mode, size, rng, min_scale=0.2):
    """Views 1.. of one image for ``mode`` (view 0, the original, is the caller's).

    Args:
        img: RGB PIL image.
        mode: one of ``MODES``.
        size: side of the views in pixels (224 in the reference).
        rng: numpy Generator; the torchvision transforms draw from torch's / Python's global generators,
            which the caller seeds.
        min_scale: crop area lower bound of ``moco`` and of the IoU modes' boxes.
    Returns:
        list of ``VIEWS_PER_MODE[mode]`` PIL images, views 1, 2, ... in order.
    """
    if mode == "moco":
        tf = colour_pipeline(size, min_scale)
        return [tf(img), tf(img)]
    if mode == "nointer":
        tf = colour_pipeline(size, 0.4)
        first, second = rng.choice(4, size=2, replace=False)
        return [tf(quadrant(img, int(first))), tf(quadrant(img, int(second)))]
    if mode in IOU_RANGES:
        a, b = sample_box_pair(rng, img.size[0], img.size[1], IOU_RANGES[mode], scale=(min_scale, 1.0))
        va, vb = masked_views(img, a, b, rng, size), masked_views(img, b, a, rng, size)
        return [v for pair in zip(va, vb) for v in pair]  # 1, 2 plain; 3, 4 noise; ...
    raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
