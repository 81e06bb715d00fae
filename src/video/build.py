"""The video datasets of each script, assembled from ``src.video``'s parts (what ``main_sce.py``, ``eval_linear.py``,
``main_transfer.py`` and ``eval/retrieval.py`` would otherwise each write out):

* :func:`pretrain_set`: 2 random 2.56 s clips per video, SCE's two time-consistent views, temporal difference;
* :func:`train_set`: 1 random clip, random short side + crop + flip (+ colour for fine-tuning);
* :func:`test_set`: 10 clips x 3 crops of the short-side-resized video, stacked as (30, 3, T, S, S);
* :func:`video_samples`: a split, from ``ROOT/<split>/<class>/`` folders or from official split files.
"""
import os

from ..errors import UserError
from .clips import ConstantClipsSampler, RandomMultiClipSampler
from .dataset import VideoDataset, video_folder_samples
from .splits import split_samples
from .transforms import ClipTestTransform, eval_train_transform, sce_clip_views


def video_samples(root, split, splits_dir="", split_id=1):
    """``(samples, classes)`` of one split.

    Args:
        root: ``ROOT`` holding ``train/`` and ``val/`` (or ``test/``) class folders, or, with ``splits_dir``, the
            folder of class folders the split files refer to (UCF101's ``UCF-101/``, HMDB51's videos).
        split: ``"train"`` or ``"val"`` (``val`` falls back on ``test/``; with split files: the test list).
        splits_dir: folder of official split files, or empty.
        split_id: 1, 2 or 3.
    """
    if splits_dir:
        return split_samples(root, splits_dir, split_id, train=split == "train")
    if not os.path.isdir(root):
        raise UserError(f"video folder '{root}' does not exist: pass the folder that holds train/ and val/")
    for name in ([split] if split == "train" else [split, "test"]):
        if os.path.isdir(os.path.join(root, name)):
            return video_folder_samples(os.path.join(root, name))
    if split == "train" and not any(os.path.isdir(os.path.join(root, s)) for s in ("val", "test")):
        return video_folder_samples(root)  # ROOT itself holds the class folders
    raise UserError(f"video folder '{root}' has no '{split}/' subfolder: add it, or pass --splits_dir with the "
                    "official split files")


def pretrain_set(root, size=224, num_frames=8, clip_duration=2.56, temporal_diff_p=0.2, scale=(0.2, 0.766),
                 blur_probs=(1.0, 0.1), solarize_probs=(0.0, 0.2), blur_scale=1.0, seed=None, frames_fps=30.0):
    """SCE pretraining: items ``([clip_1, clip_2], label)``, each (3, num_frames, size, size) (spec 5.2)."""
    samples, classes = video_samples(root, "train")
    return VideoDataset(samples, classes, RandomMultiClipSampler(2, clip_duration),
                        sce_clip_views(size, blur_probs, solarize_probs, scale, blur_scale), num_frames=num_frames,
                        temporal_diff_p=temporal_diff_p, output="list", seed=seed, frames_fps=frames_fps, root=root)


def train_set(samples, classes, size=224, short_side=(256, 320), finetune=False, num_frames=8, clip_duration=2.56,
              seed=None, frames_fps=30.0):
    """Classifier training: items ``(clip (3, T, size, size), label)``, 1 random clip (spec 5.4, 5.5)."""
    return VideoDataset(samples, classes, RandomMultiClipSampler(1, clip_duration),
                        eval_train_transform(size, short_side, finetune), num_frames=num_frames, output="single",
                        seed=seed, frames_fps=frames_fps)


def test_set(samples, classes, short_side=256, crop=256, num_clips=10, num_crops=3, num_frames=8, clip_duration=2.56,
             frames_fps=30.0):
    """The test protocol: items ``(views (num_clips * num_crops, 3, T, crop, crop), label)``, clip-major."""
    return VideoDataset(samples, classes, ConstantClipsSampler(num_clips, clip_duration, num_crops),
                        ClipTestTransform(short_side, crop, num_crops), num_frames=num_frames, output="stack",
                        frames_fps=frames_fps)
