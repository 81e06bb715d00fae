"""What happens to one crop after cropping, described once (:class:`ViewAug`), and the constants of the references'
pipelines. ``src.augment.image`` realises a view per image (torchvision / PIL ops), ``src.augment.device`` batched on
the training device; ``src.augment.recipes`` assembles the views of each method."""
import math
from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SWAV_STD = (0.228, 0.224, 0.225)  # facebookresearch/swav's normalisation std (0.228, not 0.229)
SCE_JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue (eztorch's SCE configs)
MOCO_V2_JITTER = (0.4, 0.4, 0.4, 0.1)
BLUR_KERNEL, BLUR_SIGMA = 23, (0.1, 2.0)  # the references' Gaussian blur at 224 px
REFERENCE_SIZE = 224  # the crop side the blur of every reference is defined for


def scaled_blur(scale, kernel=BLUR_KERNEL, sigma=BLUR_SIGMA):
    """The blur of a 224-px crop scaled by ``scale``: ``(odd kernel side >= 3, (sigma_min, sigma_max))``.

    Every blur scaling of the toolkit goes through here: 1 is each reference's setting; ``size / 224`` keeps the
    blur's size relative to a smaller crop (CPU runs on 32-64 px images, where a 2-px sigma erases the image).
    """
    return max(3, int(round(kernel * scale)) | 1), (sigma[0] * scale, sigma[1] * scale)


def relative_blur_scale(size):
    """``size / 224``: the blur scale that keeps the reference's blur relative to a ``size``-px crop."""
    return size / REFERENCE_SIZE


def resolve_blur_scale(value, size):
    """A ``--blur_scale`` value for crops of side ``size``: the number itself, or ``size / 224`` for ``"relative"``."""
    return relative_blur_scale(size) if value == "relative" else float(value)


@dataclass(frozen=True)
class ViewAug:
    """What happens to one crop after cropping (hashable: equal views of equal size are batched together).

    Args:
        jitter: ColorJitter strengths (brightness, contrast, saturation, hue); 0 turns one op off.
        jitter_p: probability of applying the jitter (RandomApply).
        grey_p: RandomGrayscale probability.
        grey_first: grayscale before the jitter (MoCo v1) instead of after it (SimCLR, MoCo v2, SwAV, SCE).
        blur_p: Gaussian blur probability; blur_sigma: (min, max) of the uniform sigma, pixels.
        blur_kernel: odd kernel side of a torchvision-style blur; 0: 2 ceil(3 sigma_max) + 1 (PIL-style radius).
        solarize_p: solarization probability; solarize_threshold: on [0, 1] values (128/255).
        flip_p: horizontal flip probability.
        mean, std: per-channel normalisation.
    """
    jitter: tuple = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grey_p: float = 0.2
    grey_first: bool = False
    blur_p: float = 0.5
    blur_sigma: tuple = (0.1, 2.0)
    blur_kernel: int = 0
    solarize_p: float = 0.0
    solarize_threshold: float = 128 / 255
    flip_p: float = 0.5
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def ranges(self):
        """The uniform ranges of (brightness, contrast, saturation, hue), as torchvision's ColorJitter."""
        b, c, s, h = self.jitter
        return [(max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s), (-h, h)]

    def kernel_size(self):
        """Blur kernel side: ``blur_kernel``, or 2 ceil(3 sigma_max) + 1."""
        return self.blur_kernel or 2 * math.ceil(3 * self.blur_sigma[1]) + 1
