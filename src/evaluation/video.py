"""The video evaluations (``--modality video`` of ``eval_linear.py``, ``main_transfer.py``, ``eval/retrieval.py``,
and the training monitor): their datasets, assembled from ``src.data.video`` and ``src.augment.video``, and flags.

* :func:`train_set`: 1 random clip, random short side + crop + flip (+ colour for fine-tuning);
* :func:`test_set`: 10 clips x 3 crops of the short-side-resized video, stacked as (30, 3, T, S, S);
* :func:`add_video_eval_args`, :class:`VideoEval` (those flags, read once) and :func:`eval_sets` / :func:`bank_sets`:
  the flags and datasets of the evaluation scripts run with ``--modality video``; :class:`ViewAverage`: a trunk's
  features averaged over the views of a video.
"""
from dataclasses import dataclass, fields

from torch import nn

from src.augment.video import ClipTestTransform, eval_train_transform
from src.data.video.clips import ConstantClipsSampler, RandomMultiClipSampler
from src.data.video.dataset import VideoDataset
from src.data.video.splits import video_samples
from src.run.args import add_arg
from src.run.errors import UserError


def train_set(samples, classes, size=224, short_side=(256, 320), finetune=False, num_frames=8, clip_duration=2.56,
              seed=None, frames_fps=30.0):
    """Classifier training: items ``(clip (3, T, size, size), label)``, 1 random clip."""
    return VideoDataset(samples, classes, RandomMultiClipSampler(1, clip_duration),
                        eval_train_transform(size, short_side, finetune), num_frames=num_frames, output="single",
                        seed=seed, frames_fps=frames_fps)


def test_set(samples, classes, short_side=256, crop=256, num_clips=10, num_crops=3, num_frames=8, clip_duration=2.56,
             frames_fps=30.0):
    """The test protocol: items ``(views (num_clips * num_crops, 3, T, crop, crop), label)``, clip-major."""
    return VideoDataset(samples, classes, ConstantClipsSampler(num_clips, clip_duration, num_crops),
                        ClipTestTransform(short_side, crop, num_crops), num_frames=num_frames, output="stack",
                        frames_fps=frames_fps)


def add_video_eval_args(parser):
    """The ``video`` flag group of the evaluation scripts (docs/video.md "Evaluation"); with ``--modality image``
    (the default) none of them is read. ``--resize`` / ``--crop_size`` of the script give the short side (train:
    random in [resize, 1.25 resize]; test: resize) and the training crop; the test crops are resize x resize."""
    g = parser.add_argument_group("video")
    add_arg(g, "--modality", default="image", choices=["image", "video"],
            help="video: DIR holds videos (files decoded with PyAV, or folders of frames) in class folders under "
                 "train/ and val/ (or test/), or the class folders of UCF101 / HMDB51 with --splits_dir; the trunk "
                 "is an R3D; tests average the softmax of --test_clips x --test_crops views per video")
    add_arg(g, "--num_frames", default=8, type=int, help="frames per clip, uniformly spaced (8 or 16; 4 on a CPU)")
    add_arg(g, "--clip_duration", default=2.56, type=float, help="clip length in seconds (2.56)")
    add_arg(g, "--frames_fps", default=None, type=float,
            help="frame rate of videos given as folders of frames (30; 25 for UCF101's frames)")
    add_arg(g, "--splits_dir", default="", type=str,
            help="folder of official split files (UCF101 ucfTrainTestlist/ or HMDB51 testTrainMulti_7030_splits/); "
                 "DIR then holds the class folders (default: DIR/train and DIR/val)")
    add_arg(g, "--split_id", default=1, type=int, help="official split 1, 2 or 3 (1)")
    add_arg(g, "--test_clips", default=10, type=int, help="clips per test video, evenly spaced (10)")
    add_arg(g, "--test_crops", default=3, type=int, choices=[1, 3], help="spatial crops per test clip (3)")
    add_arg(g, "--test_videos_per_batch", default=4, type=int,
            help="test videos per batch and process; each brings test_clips x test_crops clips (4)")
    return g


@dataclass(frozen=True)
class VideoEval:
    """The video settings of an evaluation (the flags of :func:`add_video_eval_args`, read once by
    :meth:`from_flags`): frames and clip length, the split, the test views."""

    num_frames: int = 8
    clip_duration: float = 2.56
    frames_fps: float = None
    splits_dir: str = ""
    split_id: int = 1
    test_clips: int = 10
    test_crops: int = 3
    test_videos_per_batch: int = 4
    dataset: str = ""

    @classmethod
    def from_flags(cls, flags):
        """The fields of a parsed-flags namespace (those it has; the rest keep their defaults)."""
        return cls(**{f.name: getattr(flags, f.name) for f in fields(cls) if hasattr(flags, f.name)})

    @property
    def fps(self):
        """--frames_fps, else 25 for UCF101 (its frames are extracted at 25 fps in the reference), else 30."""
        if self.frames_fps is not None:
            return self.frames_fps
        return 25.0 if self.dataset == "ucf101" else 30.0

    @property
    def views(self):
        """Views per test video: test_clips x test_crops."""
        return self.test_clips * self.test_crops


def eval_samples(cfg, data):
    """``(train samples, test samples, classes)`` of an evaluation run (``cfg``: :class:`VideoEval`); UserError when
    the splits disagree."""
    train, classes = video_samples(data, "train", cfg.splits_dir, cfg.split_id)
    test, test_classes = video_samples(data, "val", cfg.splits_dir, cfg.split_id)
    if classes != test_classes:
        raise UserError(f"the train and test splits of '{data}' have different classes ({len(classes)} vs "
                        f"{len(test_classes)}): labels would not match")
    return train, test, classes


def eval_sets(cfg, data, resize, crop_size, seed, finetune=False):
    """``(train set, test set)`` of an evaluation: 1 random clip (short side in [resize, 1.25 resize], random
    ``crop_size`` crop, flip; colour too when fine-tuning) and the ``test_clips`` x ``test_crops`` views at
    ``resize``."""
    if cfg.num_frames < 1 or cfg.clip_duration <= 0 or cfg.test_clips < 1 or cfg.test_videos_per_batch < 1:
        raise UserError("need --num_frames, --test_clips, --test_videos_per_batch >= 1 and --clip_duration > 0")
    if crop_size > resize:
        raise UserError(f"--crop_size {crop_size} is larger than --resize {resize} (the short side)")
    train, test, classes = eval_samples(cfg, data)
    return (train_set(train, classes, crop_size, (resize, int(round(1.25 * resize))), finetune, cfg.num_frames,
                      cfg.clip_duration, seed=seed, frames_fps=cfg.fps),
            test_set(test, classes, resize, resize, cfg.test_clips, cfg.test_crops, cfg.num_frames,
                     cfg.clip_duration, frames_fps=cfg.fps))


class ViewAverage(nn.Module):
    """``trunk`` applied to every view of a video and averaged: (B, V, 3, T, H, W) -> (B, D) (raw features, no
    normalisation before the mean, as eztorch's retrieval); a plain (B, 3, T, H, W) batch goes through unchanged."""

    def __init__(self, trunk):
        super().__init__()
        self.trunk = trunk

    def forward(self, x):
        if x.ndim != 6:
            return self.trunk(x)
        feats = self.trunk(x.flatten(0, 1))  # (B * V, D), the views of a video contiguous
        return feats.view(x.shape[0], x.shape[1], -1).mean(dim=1)


def bank_sets(cfg, data, resize):
    """``(train set, test set)`` both through the test protocol (the bank and the queries of retrieval)."""
    train, test, classes = eval_samples(cfg, data)
    return tuple(test_set(s, classes, resize, resize, cfg.test_clips, cfg.test_crops, cfg.num_frames,
                          cfg.clip_duration, frames_fps=cfg.fps) for s in (train, test))
