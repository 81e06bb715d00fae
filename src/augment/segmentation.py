"""Joint image + mask transforms of Revisiting-Contrastive-SSL's segmentation evaluation
(wvangansbeke/Revisiting-Contrastive-SSL ``evaluation/segmentation``: ``utils/common_config.py``
``get_train_transformations`` / ``get_val_transformations``, ``data/dataloaders/fblib_transforms.py`` and
``vanilla_transforms.py``), each recipe described once here.

Images are (H, W, 3) uint8 RGB arrays, masks (H, W) uint8 class ids (255: ignored); resampling is OpenCV's, as in
the reference: bicubic for images, nearest for masks. Every random choice comes from the ``rng`` passed in (a
``numpy.random.Generator``; the datasets seed one per sample and epoch), never from a global generator.

- PASCAL VOC, train: horizontal flip (p 0.5) -> rotation uniform in [-5, 5] degrees and scale uniform in
  [0.75, 1.25] about the image centre, same output size (``cv2.warpAffine``; the area uncovered is 0 in the image
  AND in the mask, i.e. background, as the reference's default border gives) -> resize to 512 x 512 (the aspect
  ratio is not kept) -> tensor, ImageNet normalisation.
- PASCAL VOC, test: the image resized to 512 x 512; the prediction is brought back to the image's own size.
- Cityscapes, train: scale chosen from {0.5, 0.75, ..., 2.0} -> random 768 x 768 crop (an image smaller than the
  crop is first enlarged so that its shorter side is the crop's, plus one pixel) -> horizontal flip -> tensor.
- Cityscapes, test: the image as it is (2048 x 1024).
"""
import cv2
import numpy as np
import torch

from src.augment.image import IMAGENET_MEAN, IMAGENET_STD


# ==== the geometric pieces: (image, mask[, rng]) -> (image, mask) ====
def hflip(image, mask, rng, p=0.5):
    """Mirror both left-right with probability ``p``."""
    if rng.random() < p:
        return image[:, ::-1], mask[:, ::-1]
    return image, mask


def resize(image, mask, rows, cols):
    """Both to ``rows x cols``: the image bicubic, the mask nearest (``mask`` None: image only)."""
    image = cv2.resize(np.ascontiguousarray(image), (cols, rows), interpolation=cv2.INTER_CUBIC)
    if mask is not None:
        mask = cv2.resize(np.ascontiguousarray(mask), (cols, rows), interpolation=cv2.INTER_NEAREST)
    return image, mask


def scale_rotate(image, mask, rng, max_rotation=5.0, scales=(0.75, 1.25), mask_fill=0):
    """Rotate by an angle uniform in [-max_rotation, max_rotation] degrees and zoom by a factor uniform in
    ``scales`` about the centre, keeping the size (fblib ``ScaleNRotate``). Uncovered pixels become 0 in the image
    and ``mask_fill`` in the mask (the reference: 0, background)."""
    rot = rng.uniform(-max_rotation, max_rotation)
    scale = rng.uniform(scales[0], scales[1])
    rows, cols = mask.shape
    m = cv2.getRotationMatrix2D((cols / 2, rows / 2), rot, scale)
    image = cv2.warpAffine(np.ascontiguousarray(image), m, (cols, rows), flags=cv2.INTER_CUBIC,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mask = cv2.warpAffine(np.ascontiguousarray(mask), m, (cols, rows), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=int(mask_fill))
    return image, mask


def random_scale(image, mask, rng, scales):
    """Resize both by one factor drawn from the list ``scales`` (vanilla ``RandomScale``)."""
    s = float(scales[rng.integers(len(scales))])
    rows, cols = mask.shape
    return resize(image, mask, int(rows * s), int(cols * s))


def random_crop(image, mask, rng, size):
    """A ``size x size`` window at a uniform offset (vanilla ``RandomCrop``); an image smaller than the window is
    first enlarged, bicubic / nearest, so that both sides reach it (``int(scale * side + 1)``)."""
    rows, cols = mask.shape
    if rows < size or cols < size:
        scale = max(size / rows, size / cols)
        rows, cols = int(scale * rows + 1), int(scale * cols + 1)
        image, mask = resize(image, mask, rows, cols)
    top, left = int(rng.random() * (rows - size)), int(rng.random() * (cols - size))
    return image[top:top + size, left:left + size], mask[top:top + size, left:left + size]


def to_tensors(image, mask=None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """(H, W, 3) uint8 -> (3, H, W) float32 normalised; (H, W) uint8 -> (H, W) int64 (or None)."""
    # np.require copies only views that are flipped, cropped or read-only (a decoded file's buffer); planes made
    # contiguous before the float maths, normalised in place: much faster than on the (H, W, 3)-strided view
    x = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).contiguous().float()
    x.sub_(255.0 * torch.tensor(mean).view(3, 1, 1)).div_(255.0 * torch.tensor(std).view(3, 1, 1))
    return x, (None if mask is None else torch.from_numpy(np.require(mask, requirements=["C", "W"])).long())


# ==== the recipes ====
class VOCTrain:
    """PASCAL VOC training: flip -> scale + rotate -> fixed resize -> tensors (see the module docstring).

    Args:
        size: output side (512). max_rotation: degrees (5). scales: (low, high) zoom range (0.75, 1.25).
    ``__call__(image, mask, rng)`` -> ((3, size, size) float, (size, size) int64).
    """

    def __init__(self, size=512, max_rotation=5.0, scales=(0.75, 1.25)):
        self.size, self.max_rotation, self.scales = size, max_rotation, tuple(scales)

    def __call__(self, image, mask, rng):
        image, mask = hflip(image, mask, rng)
        image, mask = scale_rotate(image, mask, rng, self.max_rotation, self.scales)
        return to_tensors(*resize(image, mask, self.size, self.size))


class CityscapesTrain:
    """Cityscapes training: random scale from a list -> random crop -> flip -> tensors (see the module docstring).

    Args:
        size: crop side (768). scales: the factors one is drawn from (0.5, 0.75, ..., 2.0).
    ``__call__(image, mask, rng)`` -> ((3, size, size) float, (size, size) int64).
    """

    def __init__(self, size=768, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)):
        self.size, self.scales = size, tuple(scales)

    def __call__(self, image, mask, rng):
        image, mask = random_scale(image, mask, rng, self.scales)
        image, mask = random_crop(image, mask, rng, self.size)
        return to_tensors(*hflip(image, mask, rng))


class SegTest:
    """Evaluation: the image resized to ``size x size`` (VOC 512) or kept (``size`` 0: Cityscapes); the mask stays
    at the image's own resolution, where the prediction is scored.

    ``__call__(image, mask, rng=None)`` -> ((3, h, w) float, (H, W) int64 mask at full resolution).
    """

    def __init__(self, size=0):
        self.size = size

    def __call__(self, image, mask, rng=None):
        if self.size:
            image, _ = resize(image, None, self.size, self.size)
        return to_tensors(image, mask)
