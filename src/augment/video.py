"""Time-consistent clip augmentations of video SCE (docs/video.md "Data and augmentation").

Every random parameter (crop box, colour-jitter factors and order, grey, blur sigma, solarize, flip) is drawn
**once per clip** and applied to all of its frames, and the two clips of a video draw theirs independently: the
reference's ``same_on_frames=True`` batched GPU augmentations, done here per clip in the loader workers (the torch
RNG of the worker, seeded per sample by the dataset). A clip enters as (T, 3, H, W) float values in [0, 255] and
leaves as a (3, T, size, size) float tensor normalised with mean 0.45 and std 0.225 (the Kinetics statistics of
the reference).

* :class:`ClipAugment`: pretraining views (RandomResizedCrop scale 0.2-0.766, aspect 3/4-4/3, the same box for
  all frames -> ColorJitter(0.8, 0.8, 0.4, 0.2) p 0.8 -> grey p 0.2 -> blur (kernel 23, sigma 0.1-2) -> solarize
  (threshold 0.5) -> flip 0.5), and the evaluation training views (random short side 256-320 -> random crop 224
  -> flip, plus ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8 and grey 0.2 when fine-tuning);
* :class:`ClipTestTransform`: short side 256, then crop ``view_id`` of 3 (left / centre / right, or top /
  centre / bottom of a portrait video) of 256 x 256: the 3 crops of the 30-view test;
* :func:`sce_clip_views`: the two asymmetric SCE views (clip 1 blur 1.0, no solarize; clip 2 blur 0.1,
  solarize 0.2);
* :class:`ClipCropToUint8` / :func:`sce_clip_split_views`: the split form (``--device-aug``): the loader workers
  only crop and resize each clip to uint8, and ``src.augment.device`` applies the rest to the whole batch of clips
  on the training device, one parameter draw per clip shared by its frames (the reference's own arrangement: its
  colour augmentations ran batched on the GPU);
* :func:`pretrain_set`: the SCE pretraining set, 2 random clips per video through these two views.
"""
import math

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from src.augment.crops import rrc_box
from src.augment.device import MultiCropAugment
from src.augment.views import ViewAug, scaled_blur
from src.data.video.clips import RandomMultiClipSampler
from src.data.video.dataset import VideoDataset
from src.data.video.splits import video_samples

VIDEO_MEAN, VIDEO_STD = 0.45, 0.225
SOLARIZE_THRESHOLD = 0.5  # on [0, 1] values: x >= 0.5 becomes 1 - x
SCE_VIDEO_JITTER = (0.8, 0.8, 0.4, 0.2)  # brightness, contrast, saturation, hue (kinetics_sce_color_strength_1)
FINETUNE_JITTER = (0.4, 0.4, 0.4, 0.1)  # kinetics_contrastive_gpu


def _uniform(lo, hi):
    return lo + (hi - lo) * torch.rand(1).item()


def normalize(clip, mean=VIDEO_MEAN, std=VIDEO_STD):
    """(T, 3, H, W) in [0, 1] -> (3, T, H, W) normalised."""
    return ((clip - mean) / std).permute(1, 0, 2, 3).contiguous()


def short_side_size(height, width, short):
    """(h, w) with the shorter side equal to ``short``, aspect kept (pytorchvideo's ShortSideScale rounding)."""
    if width < height:
        return int(math.floor(height / width * short)), short
    return short, int(math.floor(width / height * short))


class ClipAugment:
    """One random view of a clip, the same on every frame.

    Args:
        size: output side in pixels (224; 32-64 on a CPU).
        crop: ``"rrc"`` (RandomResizedCrop with ``scale``, ``ratio``) or ``"short_side"`` (resize the short side to
            an integer drawn in ``short_side``, then a random ``size`` x ``size`` crop).
        scale, ratio: RandomResizedCrop area fraction (0.2, 0.766) and aspect range (3/4, 4/3), log-uniform.
        short_side: (lo, hi) short-side range for ``"short_side"`` (256, 320).
        jitter: ColorJitter (brightness, contrast, saturation, hue) strengths; jitter_p its probability.
        grey_p, blur_p, solarize_p, flip_p: probabilities.
        blur_kernel, blur_sigma: Gaussian blur kernel side and sigma range (23, (0.1, 2.0)).
    ``sample_params(height, width)`` -> dict; ``apply(clip, params)``; ``__call__(clip, view_id=0)`` does both.
    """

    def __init__(self, size, crop="rrc", scale=(0.2, 0.766), ratio=(3 / 4, 4 / 3), short_side=(256, 320),
                 jitter=SCE_VIDEO_JITTER, jitter_p=0.8, grey_p=0.2, blur_p=0.0, blur_kernel=23,
                 blur_sigma=(0.1, 2.0), solarize_p=0.0, flip_p=0.5):
        if crop not in ("rrc", "short_side") or (crop == "short_side" and short_side[0] < size):
            raise ValueError(f"crop must be 'rrc' or 'short_side' with a short side >= size, got {crop!r}, "
                             f"{short_side}, {size}")
        self.size, self.crop, self.scale, self.ratio, self.short_side = size, crop, scale, ratio, short_side
        self.jitter, self.jitter_p, self.grey_p, self.flip_p = jitter, jitter_p, grey_p, flip_p
        self.blur_p, self.blur_kernel, self.blur_sigma, self.solarize_p = blur_p, blur_kernel, blur_sigma, solarize_p

    def sample_box(self, height, width):
        """The geometric choices of one view of a (height x width) clip: ``{"resize": (h, w) or None, "box": (top,
        left, h, w)}`` (the first draws of :meth:`sample_params`, so both see the same box for one RNG state)."""
        p = {"resize": None}
        if self.crop == "rrc":
            p["box"] = rrc_box(width, height, self.scale, self.ratio)
        else:
            short = int(torch.randint(self.short_side[0], self.short_side[1] + 1, (1,)).item())
            h, w = short_side_size(height, width, short)
            p["resize"] = (h, w)
            top = int(torch.randint(0, max(h - self.size, 0) + 1, (1,)).item())
            left = int(torch.randint(0, max(w - self.size, 0) + 1, (1,)).item())
            p["box"] = (top, left, self.size, self.size)
        return p

    def sample_params(self, height, width):
        """Every random choice of one view of a (height x width) clip."""
        p = self.sample_box(height, width)
        p["jitter"] = None
        if self.jitter is not None and torch.rand(1).item() < self.jitter_p:
            b, c, s, hue = self.jitter
            p["jitter"] = {"order": torch.randperm(4).tolist(), "brightness": _uniform(max(0.0, 1 - b), 1 + b),
                           "contrast": _uniform(max(0.0, 1 - c), 1 + c), "saturation": _uniform(max(0.0, 1 - s), 1 + s),
                           "hue": _uniform(-hue, hue)}
        p["grey"] = torch.rand(1).item() < self.grey_p
        p["blur_sigma"] = _uniform(*self.blur_sigma) if torch.rand(1).item() < self.blur_p else None
        p["solarize"] = torch.rand(1).item() < self.solarize_p
        p["flip"] = torch.rand(1).item() < self.flip_p
        return p

    def resize_crop(self, clip, p):
        """(T, 3, H, W) -> (T, 3, size, size), the box of ``p`` (resized with antialiasing), values unchanged."""
        top, left, h, w = p["box"]
        if p["resize"] is not None:  # short side scale, then a crop of exactly size x size
            clip = TF.resize(clip, list(p["resize"]), InterpolationMode.BILINEAR, antialias=True)
            return clip[..., top:top + h, left:left + w]
        return TF.resized_crop(clip, top, left, h, w, [self.size, self.size], InterpolationMode.BILINEAR,
                               antialias=True)

    def device_view(self):
        """The colour / blur / solarize / flip / normalise settings of this view as a
        :class:`~src.augment.views.ViewAug`, for the split pipeline (``--device-aug``)."""
        return ViewAug(jitter=tuple(self.jitter) if self.jitter is not None else (0.0, 0.0, 0.0, 0.0),
                       jitter_p=self.jitter_p if self.jitter is not None else 0.0, grey_p=self.grey_p,
                       blur_p=self.blur_p, blur_sigma=tuple(self.blur_sigma), blur_kernel=self.blur_kernel,
                       solarize_p=self.solarize_p, solarize_threshold=SOLARIZE_THRESHOLD, flip_p=self.flip_p,
                       mean=(VIDEO_MEAN,) * 3, std=(VIDEO_STD,) * 3)

    def apply(self, clip, p):
        """(T, 3, H, W) in [0, 255] -> (3, T, size, size) normalised, with the parameters ``p``."""
        clip = (self.resize_crop(clip, p) / 255.0).clamp_(0.0, 1.0)
        if p["jitter"] is not None:
            j = p["jitter"]
            ops = (lambda x: TF.adjust_brightness(x, j["brightness"]), lambda x: TF.adjust_contrast(x, j["contrast"]),
                   lambda x: TF.adjust_saturation(x, j["saturation"]), lambda x: TF.adjust_hue(x, j["hue"]))
            for k in j["order"]:
                clip = ops[k](clip)
        if p["grey"]:
            clip = TF.rgb_to_grayscale(clip, num_output_channels=3)
        if p["blur_sigma"] is not None:
            clip = TF.gaussian_blur(clip, [self.blur_kernel] * 2, [p["blur_sigma"]] * 2)
        if p["solarize"]:
            clip = TF.solarize(clip, SOLARIZE_THRESHOLD)
        if p["flip"]:
            clip = clip.flip(-1)
        return normalize(clip)

    def __call__(self, clip, view_id=0):
        return self.apply(clip, self.sample_params(clip.shape[-2], clip.shape[-1]))


class ClipCropToUint8:
    """CPU half of the split clip pipeline (``--device-aug``): ``(clip, view_id) -> (3, T, size, size) uint8``.

    The box is drawn as the per-clip path draws it (:meth:`ClipAugment.sample_box`, the same for every frame), the
    frames are resized to it and rounded to 8 bits; everything else (colour, grey, blur, solarize, flip,
    normalisation) runs batched on the training device with one parameter draw per clip shared by its frames
    (``device_augment``, a :class:`~src.augment.device.MultiCropAugment` with one view per clip rank), which is
    what the reference does with ``same_on_frames=True``.

    Args:
        views: list of :class:`ClipAugment`, one per ``view_id`` (their geometry is used here, the rest on the
            device).
    """

    def __init__(self, views):
        self.views = list(views)
        self.device_augment = MultiCropAugment([v.device_view() for v in self.views])

    def __call__(self, clip, view_id=0):
        aug = self.views[view_id]
        clip = aug.resize_crop(clip, aug.sample_box(clip.shape[-2], clip.shape[-1]))
        return clip.round().clamp_(0, 255).to(torch.uint8).permute(1, 0, 2, 3).contiguous()

    def __repr__(self):
        return f"ClipCropToUint8({len(self.views)} views) -> {self.device_augment}"


class ViewTransforms:
    """``transforms[view_id](clip)``: one augmentation per clip rank (SCE's asymmetric views)."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, clip, view_id=0):
        return self.transforms[view_id](clip)


def sce_clip_views(size, blur_probs=(1.0, 0.1), solarize_probs=(0.0, 0.2), scale=(0.2, 0.766), blur_scale=1.0):
    """The two SCE video views: clip 1 blur p 1.0 and no solarize, clip 2 blur p 0.1 and solarize 0.2.

    Args:
        size: crop side. blur_probs, solarize_probs: (clip 1, clip 2). scale: RandomResizedCrop area range.
        blur_scale: multiplies the blur kernel (odd, at least 3) and sigma range, as the image recipe does for
            crops smaller than 224 (1 is the reference).
    """
    kernel, sigma = scaled_blur(blur_scale)
    return ViewTransforms([ClipAugment(size, "rrc", scale=scale, blur_p=bp, solarize_p=sp, blur_kernel=kernel,
                                       blur_sigma=sigma) for bp, sp in zip(blur_probs, solarize_probs)])


def sce_clip_split_views(size, blur_probs=(1.0, 0.1), solarize_probs=(0.0, 0.2), scale=(0.2, 0.766),
                         blur_scale=1.0):
    """Split form of :func:`sce_clip_views` (``--device-aug``): the CPU crops, then the same two views on the
    device; same arguments."""
    return ClipCropToUint8(sce_clip_views(size, blur_probs, solarize_probs, scale, blur_scale).transforms)


def eval_train_transform(size=224, short_side=(256, 320), finetune=False):
    """Training views of the evaluations: random short side in ``short_side``, random crop, flip 0.5; fine-tuning
    adds ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8 and grey 0.2."""
    return ClipAugment(size, "short_side", short_side=short_side, jitter=FINETUNE_JITTER if finetune else None,
                       jitter_p=0.8 if finetune else 0.0, grey_p=0.2 if finetune else 0.0)


class ClipTestTransform:
    """Short side ``short_side``, then spatial crop ``view_id`` of ``num_crops`` (pytorchvideo ``uniform_crop``).

    With 3 crops, crop 0 / 1 / 2 is the left / centre / right square of a landscape frame (top / centre / bottom of a
    portrait one); with 1 crop, the centre. ``__call__(clip, view_id)``: (T, 3, H, W) in [0, 255] -> (3, T, crop,
    crop) normalised.
    """

    def __init__(self, short_side=256, crop=256, num_crops=3):
        if num_crops not in (1, 3) or crop > short_side:
            raise ValueError(f"need 1 or 3 crops no larger than the short side, got {num_crops} x {crop} at "
                             f"{short_side}")
        self.short_side, self.crop, self.num_crops = short_side, crop, num_crops

    def box(self, height, width, view_id):
        """(top, left) of crop ``view_id`` in a (height x width) frame."""
        top, left = (height - self.crop) // 2, (width - self.crop) // 2
        if self.num_crops == 3 and view_id != 1:
            if height > width:
                top = 0 if view_id == 0 else height - self.crop
            else:
                left = 0 if view_id == 0 else width - self.crop
        return top, left

    def __call__(self, clip, view_id=0):
        h, w = short_side_size(clip.shape[-2], clip.shape[-1], self.short_side)
        clip = TF.resize(clip, [h, w], InterpolationMode.BILINEAR, antialias=True)
        top, left = self.box(h, w, view_id)
        clip = clip[..., top:top + self.crop, left:left + self.crop]
        return normalize((clip / 255.0).clamp_(0.0, 1.0))


def pretrain_set(root, size=224, num_frames=8, clip_duration=2.56, temporal_diff_p=0.2, scale=(0.2, 0.766),
                 blur_probs=(1.0, 0.1), solarize_probs=(0.0, 0.2), blur_scale=1.0, seed=None, frames_fps=30.0,
                 split=False):
    """SCE pretraining: items ``([clip_1, clip_2], label)``, each (3, num_frames, size, size): float
    and fully augmented, or with ``split`` (``--device-aug``) uint8 crops whose transform's ``device_augment``
    finishes them on the training device (``src.augment.video.ClipCropToUint8``)."""
    samples, classes = video_samples(root, "train")
    views = (sce_clip_split_views if split else sce_clip_views)(size, blur_probs, solarize_probs, scale, blur_scale)
    return VideoDataset(samples, classes, RandomMultiClipSampler(2, clip_duration), views, num_frames=num_frames,
                        temporal_diff_p=temporal_diff_p, output="list", seed=seed, frames_fps=frames_fps, root=root)
