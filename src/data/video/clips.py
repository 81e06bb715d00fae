"""Which clips of a video are read, which of their frames are kept, and the temporal-difference augmentation
(pytorchvideo's clip samplers and ``UniformTemporalSubsample`` as juliendenize/eztorch configures them).

A clip sampler maps a video's duration to a list of views ``(start, end, view_id)``:

* :class:`RandomMultiClipSampler` (pretraining, 2 clips; training of the evaluations, 1 clip): each clip of
  ``clip_duration`` (2.56 s) starts uniformly at random in ``[0, max(duration - clip_duration, 0)]``,
  independently, so the clips may overlap; ``view_id`` is the clip's rank (clip 0 gets the first view's
  augmentation, clip 1 the second's);
* :class:`ConstantClipsSampler` (testing, retrieval): ``num_clips`` (10) starts evenly spaced over
  ``[0, max(duration - clip_duration, 0)]``, both ends included (``k * max_start / (num_clips - 1)``), each clip
  repeated ``num_crops`` (3) times with ``view_id`` 0, 1, 2 = the spatial crop; 30 views per video, clip-major.

Frames: of the ``T`` frames inside a clip, :func:`uniform_indices` keeps ``linspace(0, T - 1, n)`` truncated to
integers (8 or 16 of the ~77 frames of 2.56 s at 30 fps). Temporal difference (:func:`temporal_difference`), drawn
per clip with p 0.2 during pretraining: grey frames, ``out[t] = (f[t] - f[t + 1] + 255) / 2`` over consecutive
*raw* frames, the last frame repeating the previous difference, computed before the subsampling; only the kept
frames and their successors are ever converted.
"""
import torch

RGB_TO_GREY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


class RandomMultiClipSampler:
    """``num_clips`` random clips of ``clip_duration`` seconds (torch RNG).

    Args:
        num_clips: 2 for SCE pretraining (the two views), 1 to train a classifier.
        clip_duration: seconds (2.56).
    ``__call__(duration)`` -> list of ``(start, end, clip_index)``.
    """

    def __init__(self, num_clips=2, clip_duration=2.56):
        self.num_clips, self.clip_duration = num_clips, clip_duration

    def __call__(self, duration):
        max_start = max(duration - self.clip_duration, 0.0)
        starts = (torch.rand(self.num_clips, dtype=torch.float64) * max_start).tolist()
        return [(s, s + self.clip_duration, i) for i, s in enumerate(starts)]


class ConstantClipsSampler:
    """``num_clips`` evenly spaced clips, each repeated for ``num_crops`` spatial crops (deterministic).

    Args:
        num_clips: 10 in the test protocol. clip_duration: seconds (2.56). num_crops: 3 (left/centre/right).
    ``__call__(duration)`` -> list of ``num_clips * num_crops`` ``(start, end, crop_index)``, clip-major.
    """

    def __init__(self, num_clips=10, clip_duration=2.56, num_crops=3):
        self.num_clips, self.clip_duration, self.num_crops = num_clips, clip_duration, num_crops

    def starts(self, duration):
        max_start = max(duration - self.clip_duration, 0.0)
        if self.num_clips == 1:
            return [max_start / 2]
        return [k * max_start / (self.num_clips - 1) for k in range(self.num_clips)]

    def __call__(self, duration):
        return [(s, s + self.clip_duration, c) for s in self.starts(duration) for c in range(self.num_crops)]


def uniform_indices(num_available, num_samples):
    """``linspace(0, num_available - 1, num_samples)`` truncated to int (pytorchvideo's uniform subsample);
    indices repeat when the clip has fewer frames than samples."""
    return torch.linspace(0, num_available - 1, num_samples).long().tolist()


def to_grey(frames):
    """(..., H, W, 3) uint8 / float -> (..., H, W, 3) float32 grey, the same value in every channel."""
    w = torch.tensor(RGB_TO_GREY, dtype=torch.float32)
    grey = (frames.float() * w).sum(dim=-1, keepdim=True)
    return grey.expand(*grey.shape[:-1], 3)


def temporal_difference(frames, next_frames):
    """``(grey(f[t]) - grey(f[t + 1]) + 255) / 2``, per frame.

    Args:
        frames: (T, H, W, 3) frames in [0, 255]; next_frames: the raw frame following each (same shape).
    Returns:
        (T, H, W, 3) float32 in [0, 255]; a static scene gives 127.5 everywhere.
    """
    return (to_grey(frames) - to_grey(next_frames) + 255.0) / 2.0


def difference_pairs(indices, num_available):
    """For each kept frame index i, the raw pair ``(j, j + 1)`` whose difference it gets: ``j = min(i, T - 2)``,
    so the last frame repeats the previous difference (needs T >= 2)."""
    return [(min(i, num_available - 2), min(i, num_available - 2) + 1) for i in indices]
