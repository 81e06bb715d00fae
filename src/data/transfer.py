"""The 11 datasets of the many-shot linear transfer protocol (Ericsson et al., "How Well Do Self-Supervised Models
Transfer?", CVPR 2021, github.com/linusericsson/ssl-transfer ``linear.py``), read from disk for
``eval.linear_transfer``.

Layouts under ``--data_root`` (one folder per dataset, named as in :data:`DATASETS`; nothing is downloaded):

* ``cifar10/``, ``cifar100/``: the python-version pickles (``cifar-10-batches-py/`` / ``cifar-100-python/``, or
  their files directly), read by :mod:`src.data.cifar`;
* ``voc2007/``: ``VOCdevkit/VOC2007/`` (or ``VOC2007/`` or the folder itself) read by :mod:`src.data.voc`, splits
  ``train``, ``val``, ``test``; a label 1 is a positive, 0 ("difficult" only) and -1 negatives, as ssl-transfer's
  ``target == 1``;
* the 8 others: ``train/<class>/<image>``, ``test/<class>/<image>`` and optionally ``val/<class>/<image>``, the same
  class folders in every split (:class:`src.data.folders.SafeImageFolder` order: sorted classes, sorted files).

Validation data, as ssl-transfer: Aircraft, DTD, Flowers and VOC2007 have an official val split (``val/``); for the
other 7 the reference draws 20% of train (:func:`carve_val`) and refits on the whole train split. Here a ``val/``
folder is used whenever it exists, and 20% of train is drawn otherwise.
"""
import hashlib
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from src.data.cifar import CifarPickleDataset, find_cifar_folder
from src.data.folders import SafeImageFolder
from src.data.voc import VOCImages, find_voc_dir, read_split, voc_classes
from src.run.errors import UserError

# name -> (column title of SCE's README table, metric, has an official val split in ssl-transfer, reader);
# in the order of that table. Metrics as ssl-transfer's LINEAR_DATASETS.
DATASETS = {
    "food101": ("Food101", "top1", False, "folders"),
    "cifar10": ("CIFAR10", "top1", False, "cifar"),
    "cifar100": ("CIFAR100", "top1", False, "cifar"),
    "sun397": ("SUN397", "top1", False, "folders"),
    "cars": ("Cars", "top1", False, "folders"),
    "aircraft": ("Aircraft", "mean_per_class", True, "folders"),
    "voc2007": ("VOC2007", "map11", True, "voc"),
    "dtd": ("DTD", "top1", True, "folders"),
    "pets": ("Pets", "mean_per_class", False, "folders"),
    "caltech101": ("Caltech101", "mean_per_class", False, "folders"),
    "flowers": ("Flowers", "mean_per_class", True, "folders"),
}
ALIASES = {"food": "food101", "voc07": "voc2007"}  # ssl-transfer's name for Food-101, and a common one for VOC
METRIC_NAMES = {"top1": "top-1", "mean_per_class": "mean per-class accuracy", "map11": "mAP (11-point)"}
VAL_FRACTION = 0.2  # ssl-transfer's valid_size


@dataclass
class Split:
    """One split: ``dataset[i]`` is ``(image tensor, anything)``; ``labels`` (N,) class ids, or (N, C) in {0, 1}
    for VOC; ``key``: a hash of what the split lists (files and labels), so a cache of its features can be
    checked."""
    dataset: torch.utils.data.Dataset
    labels: np.ndarray
    key: str


@dataclass
class TransferData:
    """A dataset of the protocol: ``train``, ``test`` and the official ``val`` (None: carve it from train)."""
    name: str
    folder: str
    classes: list
    train: Split
    test: Split
    val: Optional[Split] = None


def resolve_names(names):
    """``["all"]`` or dataset names (ssl-transfer's aliases allowed) -> canonical names, in the order given.

    Raises:
        UserError: an unknown name (the message lists the known ones).
    """
    if list(names) == ["all"]:
        return list(DATASETS)
    out = []
    for name in names:
        key = ALIASES.get(name.lower(), name.lower())
        if key not in DATASETS:
            raise UserError(f"unknown dataset {name!r} in --datasets: use 'all' or some of {', '.join(DATASETS)}")
        if key not in out:
            out.append(key)
    return out


def _digest(*parts):
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _folder(root, name):
    folder = os.path.join(str(root), name)
    if not os.path.isdir(folder):
        kind = DATASETS[name][3]
        what = {"cifar": "the extracted python-version pickles", "voc": "VOCdevkit/VOC2007 (train, val, test)",
                "folders": "train/ and test/ (val/ optional), one subfolder per class"}[kind]
        raise UserError(f"dataset folder '{folder}' does not exist: put {DATASETS[name][0]} there as {what}, "
                        "or leave the dataset out of --datasets (nothing is downloaded)")
    return folder


def check_layout(root, name):
    """Cheap up-front check that dataset ``name`` is where :func:`load_dataset` will look (no image listing).

    Returns:
        the dataset's folder.
    Raises:
        UserError: naming the missing folder or file.
    """
    folder = _folder(root, name)
    kind = DATASETS[name][3]
    if kind == "cifar":
        find_cifar_folder(folder, name)
    elif kind == "voc":
        main = os.path.join(find_voc_dir(folder, "VOC2007"), "ImageSets", "Main")
        for split in ("train", "val", "test"):
            if not os.path.isfile(os.path.join(main, f"{split}.txt")):
                raise UserError(f"'{os.path.join(main, split + '.txt')}' does not exist: the protocol needs VOC2007's "
                                "train, val and test splits (VOCtrainval and VOCtest extracted together)")
    else:
        for split in ("train", "test"):
            if not os.path.isdir(os.path.join(folder, split)):
                raise UserError(f"'{os.path.join(folder, split)}' does not exist: {name} needs {folder}/train/ and "
                                f"{folder}/test/ (val/ optional), one subfolder per class")
    return folder


def _image_folder(folder, split, transform):
    data = SafeImageFolder(os.path.join(folder, split), transform=transform)
    labels = np.asarray(data.targets, dtype=np.int64)
    listing = "\n".join(f"{os.path.relpath(p, folder)} {t}" for p, t in data.samples)
    return data, Split(data, labels, _digest(listing))


def _load_folders(name, folder, transform):
    train_set, train = _image_folder(folder, "train", transform)
    test_set, test = _image_folder(folder, "test", transform)
    has_val = os.path.isdir(os.path.join(folder, "val"))
    val_set, val = _image_folder(folder, "val", transform) if has_val else (None, None)
    for split, data in (("test", test_set), ("val", val_set)):
        if data is not None and data.classes != train_set.classes:
            only = sorted(set(data.classes) ^ set(train_set.classes))[:5]
            raise UserError(f"'{os.path.join(folder, split)}' and '{os.path.join(folder, 'train')}' have different "
                            f"class folders (e.g. {', '.join(only) or 'the same names in another order'}): every "
                            "split needs the same class subfolders")
    return TransferData(name, folder, list(train_set.classes), train, test, val)


def _load_cifar(name, folder, transform):
    splits = []
    for train in (True, False):
        data = CifarPickleDataset(folder, name, train=train, transform=transform)
        labels = np.asarray(data.targets, dtype=np.int64)
        splits.append(Split(data, labels, _digest(data.data.tobytes(), labels.tobytes())))
    return TransferData(name, folder, list(data.classes), splits[0], splits[1], None)


def _load_voc(name, folder, transform):
    voc_dir = find_voc_dir(folder, "VOC2007")
    classes = voc_classes(voc_dir, ["train", "val", "test"])
    splits = {}
    for split in ("train", "val", "test"):
        ids, labels, _ = read_split(voc_dir, split, classes)
        positive = (labels > 0).astype(np.int64)  # ssl-transfer: target == 1; difficult-only (0) is a negative
        one_sided = [c for c, n in zip(classes, positive.sum(0)) if n in (0, len(ids))]
        if one_sided:
            raise UserError(f"class {one_sided[0]} has only positive or only negative images in the {split} split of "
                            f"'{voc_dir}': each class's binary classifier needs both in train, val and test")
        splits[split] = Split(VOCImages(voc_dir, ids, transform), positive, _digest("\n".join(ids), positive.tobytes()))
    return TransferData(name, folder, classes, splits["train"], splits["test"], splits["val"])


def load_dataset(root, name, transform):
    """Read dataset ``name`` from ``root/name`` (see the module docstring for the layouts).

    Args:
        root: the ``--data_root`` folder. name: a key of :data:`DATASETS`.
        transform: callable on a PIL image, giving the trunk's input tensor.
    Returns:
        TransferData.
    Raises:
        UserError: a missing folder or file, an unreadable file, splits with different classes.
    """
    folder = check_layout(root, name)
    reader = {"folders": _load_folders, "cifar": _load_cifar, "voc": _load_voc}[DATASETS[name][3]]
    return reader(name, folder, transform)


def carve_val(n, fraction=VAL_FRACTION, seed=0):
    """ssl-transfer's validation split of a train set without one: ``indices = list(range(n))`` shuffled by
    numpy's legacy global RNG seeded with ``seed`` (``np.random.seed(0); np.random.shuffle(indices)``), the first
    ``floor(fraction * n)`` are validation, the rest train.

    Args:
        n: rows of the train split. fraction: share held out (0.2). seed: RNG seed (the reference's 0).
    Returns:
        ``(train_idx, val_idx)``: int64 arrays, in the shuffled order.
    """
    indices = list(range(n))
    np.random.RandomState(seed).shuffle(indices)  # the same Mersenne Twister stream as np.random.seed + shuffle
    split = int(np.floor(fraction * n))
    return np.asarray(indices[split:], dtype=np.int64), np.asarray(indices[:split], dtype=np.int64)
