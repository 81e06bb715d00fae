"""Video datasets: one folder per class (video files or folders of frames), or the official split files of
UCF101 / HMDB51 (``src.data.video.splits``); clips sampled, subsampled, optionally temporally differenced, then
augmented per view.

One item is ``(views, label)``: the clip sampler gives the views of the video (2 random clips to pretrain, 1 to
train a classifier, 10 clips x 3 crops = 30 to test); each view's clip is decoded, reduced to ``num_frames``
uniformly spaced frames (``src.data.video.clips``), with probability ``temporal_diff_p`` replaced by its temporal
difference, then passed to ``transform(clip, view_id)`` (``src.augment.video``). ``output`` says how the views
come out: ``"list"`` (one (3, T, S, S) tensor per view, the crop list SCE's loop takes), ``"single"`` (the only
view's tensor) or ``"stack"`` ((V, 3, T, S, S), views in the sampler's order).

A video that cannot be read (corrupt, truncated, not a video) or that is too short (fewer than ``min_frames``
frames in a clip; 2 by default, since a clip needs motion and the temporal difference needs a next frame) is
skipped: the next index is used instead, one ``warning:`` line per file goes to stderr and ``n_skipped`` counts
the skips (per process: each loader worker counts its own), as the image datasets do with unreadable images.
With ``seed`` set, every random draw of sample ``i`` (clip starts, temporal difference, augmentations) runs under
an RNG seeded from ``(seed, epoch, i)``, so a resumed run or another worker count sees the same clips.
"""
import os
import sys

import numpy as np
import torch

from src.data.folders import MAX_CONSECUTIVE_FAILURES, class_folder_samples, sample_rng
from src.data.video.clips import difference_pairs, temporal_difference, uniform_indices
from src.data.video.io import VIDEO_EXTENSIONS, VideoError, list_videos, load_frame, open_video
from src.run.errors import UserError

_LAYOUT_HINT = ("pass the folder that holds train/ (and val/), one subfolder per class with video files or "
                "folders of frames")


def video_folder_samples(root):
    """``(samples, classes)`` of a folder with one subfolder per class holding videos (files or frame folders).

    Returns:
        samples: list of ``(path, class index)``, classes sorted, videos sorted by name; classes: names.
    Raises:
        UserError: missing folder, no class subfolders, or a class without videos.
    """
    if not os.path.isdir(root):
        raise UserError(f"video folder '{root}' does not exist: {_LAYOUT_HINT}")
    return class_folder_samples(root, list_videos, "videos",
                                f"extensions: {' '.join(VIDEO_EXTENSIONS)}, or folders of frames", _LAYOUT_HINT)


class VideoDataset(torch.utils.data.Dataset):
    """Clips of labelled videos, decoded with PyAV (files) or read from frame folders.

    Args:
        samples: list of ``(path, label)``. classes: class names (``len`` = number of classes).
        clip_sampler: duration -> list of ``(start, end, view_id)`` (``src.data.video.clips``).
        transform: ``(clip (T, 3, H, W) float in [0, 255], view_id) -> tensor``.
        num_frames: frames kept per clip (8 or 16).
        temporal_diff_p: probability, per clip, of the temporal-difference augmentation (0.2 to pretrain).
        output: ``"list"``, ``"single"`` or ``"stack"`` (module docstring).
        seed: None, or an int for per-sample seeded randomness.
        frames_fps: frame rate of frame folders (30; 25 for UCF101's extracted frames).
        min_frames: a clip with fewer frames makes the video "too short" (skipped).
        root: shown in error messages.
    """

    def __init__(self, samples, classes, clip_sampler, transform, num_frames=8, temporal_diff_p=0.0, output="list",
                 seed=None, frames_fps=30.0, min_frames=2, root=""):
        if output not in ("list", "single", "stack"):
            raise ValueError(f"output must be list, single or stack, got {output!r}")
        self.samples, self.classes, self.root = list(samples), list(classes), str(root)
        self.targets = [t for _, t in self.samples]
        self.clip_sampler, self.transform, self.num_frames = clip_sampler, transform, num_frames
        self.temporal_diff_p, self.output, self.seed = temporal_diff_p, output, seed
        self.frames_fps, self.min_frames = frames_fps, max(min_frames, 2 if temporal_diff_p > 0 else 1)
        self.n_skipped = 0
        self._warned = set()
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()  # seen by persistent workers

    def set_epoch(self, epoch):
        """Set the epoch that seeds the sampling and augmentations; call before iterating the loader."""
        self._epoch[0] = int(epoch)

    def __len__(self):
        return len(self.samples)

    def read_views(self, index):
        """The views of sample ``index`` before their transform.

        Returns:
            ``(clips, view_ids, label)``: clips a list of (T, 3, H, W) float32 tensors in [0, 255], one per view.
        Raises:
            VideoError: unreadable or too short.
        """
        path, label = self.samples[index]
        video = open_video(path, self.frames_fps)
        views = self.clip_sampler(video.duration)
        spans = list(dict.fromkeys((s, e) for s, e, _ in views))  # unique, in order
        frames = dict(zip(spans, video.read_spans(spans)))
        clips, plain = [], {}
        for s, e, _ in views:
            items = frames[(s, e)]
            if len(items) < self.min_frames:
                raise VideoError(f"too short: {len(items)} frame(s) in the {e - s:.2f} s clip, need {self.min_frames}")
            idx = uniform_indices(len(items), self.num_frames)
            if self.temporal_diff_p > 0 and torch.rand(1).item() < self.temporal_diff_p:
                pairs = difference_pairs(idx, len(items))
                cur = _stack([load_frame(items[j][1]) for j, _ in pairs])
                nxt = _stack([load_frame(items[k][1]) for _, k in pairs])
                clip = temporal_difference(cur, nxt)
            else:
                if (s, e) not in plain:  # the 3 crops of a test clip share its frames
                    plain[(s, e)] = _stack([load_frame(items[i][1]) for i in idx]).float()
                clip = plain[(s, e)]
            clips.append(clip.permute(0, 3, 1, 2))  # (T, 3, H, W)
        return clips, [v for _, _, v in views], label

    def _item(self, index):
        clips, view_ids, label = self.read_views(index)
        out = [self.transform(c, v) for c, v in zip(clips, view_ids)]
        if self.output == "single":
            return out[0], label
        return (torch.stack(out) if self.output == "stack" else out), label

    def __getitem__(self, index):
        """Args: index. Returns: ``(views, label)``; an unreadable video is replaced by the next one."""
        index = index % len(self.samples)
        for step in range(MAX_CONSECUTIVE_FAILURES + 1):
            i = (index + step) % len(self.samples)
            try:
                with sample_rng(self.seed, int(self._epoch[0]), i):  # a replacement draws as its own index does
                    return self._item(i)
            except VideoError as exc:
                self.n_skipped += 1
                path = self.samples[i][0]
                if path not in self._warned:
                    self._warned.add(path)
                    print(f"warning: skipping video {path} ({exc}); {self.n_skipped} skipped so far in this process",
                          file=sys.stderr, flush=True)
        raise UserError(f"{MAX_CONSECUTIVE_FAILURES + 1} videos in a row from index {index} in '{self.root}' cannot "
                        f"be read: check the files (last: {path})")


def _stack(frames):
    """List of (H, W, 3) uint8 arrays -> (T, H, W, 3) uint8 tensor (frames must share one size)."""
    if len({f.shape for f in frames}) != 1:
        raise VideoError(f"frames of different sizes {sorted({f.shape for f in frames})}")
    return torch.from_numpy(np.stack(frames))
