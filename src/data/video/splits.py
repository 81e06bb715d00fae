"""The official train / test splits of UCF101 and HMDB51 (3 splits each), read from their split files.

* UCF101 (``ucfTrainTestlist/``): ``classInd.txt`` ("1 ApplyEyeMakeup", 1-based), ``trainlist0{s}.txt``
  ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1") and ``testlist0{s}.txt`` (path only), paths relative to the
  folder of class folders (``UCF-101/``).
* HMDB51 (``testTrainMulti_7030_splits/``): one ``<class>_test_split{s}.txt`` per class and split, lines
  "<video>.avi <id>" with id 1 = train, 2 = test, 0 = unused; videos in ``<root>/<class>/<video>.avi``.

A listed video may also be a folder of extracted frames named like the file without its extension (the
reference's frame decoders read those). :func:`split_samples` detects the format from the files present;
:func:`video_samples` reads a split either from those files or from ``ROOT/<split>/<class>/`` folders.
"""
import glob
import os
import re

from src.data.video.dataset import video_folder_samples
from src.run.errors import UserError


def _resolve(root, rel):
    """``root/rel``, or the frame folder ``root/rel`` without extension, or None."""
    path = os.path.join(root, rel)
    if os.path.exists(path):
        return path
    stem = os.path.splitext(path)[0]
    return stem if os.path.isdir(stem) else None


def _read_lines(path):
    if not os.path.isfile(path):
        raise UserError(f"split file '{path}' does not exist: pass the folder of the official split files "
                        "(UCF101 ucfTrainTestlist/ or HMDB51 testTrainMulti_7030_splits/) and a --split_id of 1-3")
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


def _check_found(samples, missing, root, split_file):
    if missing:
        raise UserError(f"{len(missing)} video(s) of '{split_file}' are not under '{root}' (first: {missing[0]}): "
                        "pass the folder that holds the class folders")
    if not samples:
        raise UserError(f"split file '{split_file}' lists no video")


def ucf101_split(root, splits_dir, split_id=1, train=True):
    """``(samples, classes)`` of UCF101 split ``split_id`` (train or test list); labels from ``classInd.txt``."""
    classes = [name for _, name in sorted((int(i), n) for i, n in _read_lines(os.path.join(splits_dir,
                                                                                          "classInd.txt")))]
    index = {c: i for i, c in enumerate(classes)}
    split_file = os.path.join(splits_dir, f"{'train' if train else 'test'}list0{split_id}.txt")
    samples, missing = [], []
    for fields in _read_lines(split_file):
        rel = fields[0].replace("\\", "/")
        cls = rel.split("/")[0]
        if cls not in index:
            raise UserError(f"'{split_file}' lists {rel}, whose class '{cls}' is not in classInd.txt")
        path = _resolve(root, rel)
        if path is None:
            missing.append(rel)
        else:
            samples.append((path, index[cls]))
    _check_found(samples, missing, root, split_file)
    return samples, classes


def hmdb51_split(root, splits_dir, split_id=1, train=True):
    """``(samples, classes)`` of HMDB51 split ``split_id``: id 1 lines (train) or id 2 lines (test) of every
    ``<class>_test_split{split_id}.txt``; classes sorted by name."""
    files = sorted(glob.glob(os.path.join(splits_dir, f"*_test_split{split_id}.txt")))
    if not files:
        raise UserError(f"no '*_test_split{split_id}.txt' in '{splits_dir}': pass HMDB51's split folder")
    classes = [re.sub(rf"_test_split{split_id}\.txt$", "", os.path.basename(f)) for f in files]
    want = "1" if train else "2"
    samples, missing = [], []
    for label, (cls, split_file) in enumerate(zip(classes, files)):
        for fields in _read_lines(split_file):
            if len(fields) >= 2 and fields[1] == want:
                path = _resolve(os.path.join(root, cls), fields[0])
                if path is None:
                    missing.append(f"{cls}/{fields[0]}")
                else:
                    samples.append((path, label))
    _check_found(samples, missing, root, splits_dir)
    return samples, classes


def split_samples(root, splits_dir, split_id=1, train=True):
    """UCF101 when ``classInd.txt`` is in ``splits_dir``, else HMDB51; see the two readers."""
    if not 1 <= split_id <= 3:
        raise UserError(f"--split_id must be 1, 2 or 3 (the official splits), got {split_id}")
    if not os.path.isdir(splits_dir):
        raise UserError(f"split folder '{splits_dir}' does not exist")
    if os.path.isfile(os.path.join(splits_dir, "classInd.txt")):
        return ucf101_split(root, splits_dir, split_id, train)
    return hmdb51_split(root, splits_dir, split_id, train)


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
