"""STL-10 from its binary archive on disk (no download).

Layout (Coates et al.'s ``stl10_binary.tar.gz``, extracted): ``stl10_binary/`` holding ``train_X.bin`` /
``train_y.bin`` (5,000 labelled images), ``test_X.bin`` / ``test_y.bin`` (8,000), ``unlabeled_X.bin`` (100,000
images without labels) and ``class_names.txt``. An ``*_X.bin`` file is raw uint8 pixels, 96 x 96 x 3 = 27,648
bytes per image, each image stored channel by channel (red, green, blue) and each channel column by column
(column-major, as MATLAB writes arrays); a ``*_y.bin`` file is one byte per image, the class 1-10.

The pixel files are memory-mapped, not read: the unlabelled set alone is 2.8 GB, and every loader worker would
otherwise hold its own copy.
"""
import os

import numpy as np

from src.data.arrays import PixelArrays
from src.run.errors import UserError

FOLDER = "stl10_binary"
SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
SPLITS = {"train": ["train"], "test": ["test"], "unlabeled": ["unlabeled"], "train+unlabeled": ["train", "unlabeled"]}
CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]  # class_names.txt
_ARCHIVE_HINT = ("extract stl10_binary.tar.gz (https://cs.stanford.edu/~acoates/stl10/) there: nothing is "
                 "downloaded")


def _files(split):
    """The files a split reads: ``[(pixel file, label file or None)]``."""
    return [(f"{part}_X.bin", None if part == "unlabeled" else f"{part}_y.bin") for part in SPLITS[split]]


def find_stl10_folder(root, split):
    """The folder holding the files of ``split``: ``root/stl10_binary`` or ``root`` itself.

    Raises:
        UserError: naming every file expected and where.
    """
    files = [f for pair in _files(split) for f in pair if f]
    for folder in (os.path.join(str(root), FOLDER), str(root)):
        if all(os.path.isfile(os.path.join(folder, f)) for f in files):
            return folder
    folder = os.path.join(str(root), FOLDER)
    if not os.path.isdir(folder) and any(os.path.isfile(os.path.join(str(root), f)) for f in files):
        folder = str(root)  # the archive's folder itself was given
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    found = f"missing: {', '.join(missing)}" if os.path.isdir(folder) else "that folder does not exist"
    raise UserError(f"STL-10 {split} split not found: expected {folder}/ holding {', '.join(files)} ({found}); "
                    f"{_ARCHIVE_HINT}")


def _count_images(path):
    """How many images a ``*_X.bin`` file holds (its size checked)."""
    size = os.path.getsize(path)
    if size == 0 or size % IMAGE_BYTES:
        raise UserError(f"'{path}' is {size} bytes, not a whole number of 96x96x3 images ({IMAGE_BYTES} bytes each): "
                        "the file is truncated or not from the STL-10 archive; re-extract stl10_binary.tar.gz")
    return size // IMAGE_BYTES


def _read_labels(path, count):
    """The classes 0-9 of a ``*_y.bin`` file (stored 1-10), checked against its pixel file's ``count``."""
    labels = np.fromfile(path, dtype=np.uint8)
    if len(labels) != count:
        raise UserError(f"'{path}' holds {len(labels)} labels for {count} images in its pixel file: one of the two "
                        "is truncated; re-extract stl10_binary.tar.gz")
    if len(labels) and not 1 <= int(labels.min()) <= int(labels.max()) <= len(CLASSES):
        raise UserError(f"'{path}' holds labels from {int(labels.min())} to {int(labels.max())}: STL-10 labels are "
                        f"1-{len(CLASSES)}; the file is damaged or not from the STL-10 archive")
    return [int(t) - 1 for t in labels]


def _read_class_names(folder):
    """``class_names.txt`` (one name a line) when it is there and names 10 classes, else STL-10's names."""
    path = os.path.join(folder, "class_names.txt")
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError):
        return list(CLASSES)
    return names if len(names) == len(CLASSES) else list(CLASSES)


class STL10Binary(PixelArrays):
    """An STL-10 split read from the binary archive; items ``(transform(PIL RGB 96x96), label)``, label -1 for the
    unlabelled images.

    Same ``targets`` order as ``torchvision.datasets.STL10`` (``train+unlabeled``: the 5,000 labelled images first).

    Args:
        root: folder holding ``stl10_binary/`` (or that folder itself).
        split: "train", "test", "unlabeled" or "train+unlabeled".
        transform: callable on a PIL image, or None. seed: None, or an int for per-sample seeded augmentation.
    Raises:
        UserError: an unknown split, missing files (naming them), a pixel file that is not a whole number of
        images, or labels that do not match it.
    """

    def __init__(self, root, split="train", transform=None, seed=None):
        if split not in SPLITS:
            raise UserError(f"unknown STL-10 split {split!r}: {', '.join(SPLITS)}")
        super().__init__(transform, seed)
        self.root = folder = find_stl10_folder(root, split)
        self.split, self.classes = split, _read_class_names(folder)
        self._parts, self.targets = [], []  # [(pixel file, number of images)], labels in that order
        for pixels, labels in _files(split):
            path = os.path.join(folder, pixels)
            count = _count_images(path)
            self._parts.append((path, count))
            self.targets += _read_labels(os.path.join(folder, labels), count) if labels else [-1] * count
        self._maps = None

    def pixels(self, index):
        if self._maps is None:  # opened in the process that reads (a loader worker maps the files itself)
            self._maps = [np.memmap(path, dtype=np.uint8, mode="r", shape=(count, 3, SIDE, SIDE))
                          for path, count in self._parts]
        for array, (_, count) in zip(self._maps, self._parts):
            if index < count:
                return np.ascontiguousarray(array[index].transpose(2, 1, 0))  # (C, W, H) column-major -> (H, W, C)
            index -= count
        raise IndexError(index)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"] = None  # maps are not sent to spawned workers: each opens its own
        return state
