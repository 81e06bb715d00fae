"""The 11 datasets of the many-shot linear transfer protocol (Ericsson et al., "How Well Do Self-Supervised Models
Transfer?", CVPR 2021, github.com/linusericsson/ssl-transfer ``linear.py``), read from disk for
``eval.linear_transfer``.

Layouts under ``--data_root`` (one folder per dataset, named as in :data:`DATASETS`; nothing is downloaded):

* ``cifar10/``, ``cifar100/``: the python-version pickles (``cifar-10-batches-py/`` / ``cifar-100-python/``, or
  their files directly), read by :mod:`src.data.cifar`;
* ``voc2007/``: ``VOCdevkit/VOC2007/`` (or ``VOC2007/`` or the folder itself) read by :mod:`src.data.voc`, splits
  ``train``, ``val``, ``test``; a label 1 is a positive, 0 ("difficult" only) and -1 negatives, as ssl-transfer's
  ``target == 1``;
* ``food101/``, ``sun397/``, ``cars/``, ``pets/``, ``caltech101/``: the dataset as its archives extract, read from
  its metadata files in the order ssl-transfer's ``datasets/*.py`` list the images (:data:`STANDARD`), so that the
  20% validation draw (:func:`carve_val`) picks the reference's images; or ``train/<class>/<image>`` and
  ``test/<class>/<image>`` folders, listed in sorted order (another order: the draw picks other images, and
  :attr:`TransferData.note` says so);
* ``aircraft/``, ``dtd/``, ``flowers/``: ``train/``, ``val/`` and ``test/`` class folders (the official splits; their
  order does not matter, nothing is drawn from them).

Validation data, as ssl-transfer (``get_train_valid_loader``): Aircraft, DTD, Flowers and VOC2007 use their official
val split (required); the other 7 draw 20% of train and refit on the whole train split, so a ``val/`` folder there is
refused rather than used or ignored.
"""
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from src.data.cifar import CifarPickleDataset, find_cifar_folder
from src.data.folders import ImageList, SafeImageFolder, require_folder
from src.data.voc import VOCImages, find_voc_dir, read_split, voc_classes
from src.run.errors import UserError

# name -> (column title of SCE's transfer table, metric, has an official val split in ssl-transfer, reader);
# in the order of that table. Metrics as ssl-transfer's LINEAR_DATASETS.
DATASETS = {
    "food101": ("Food101", "top1", False, "food101"),
    "cifar10": ("CIFAR10", "top1", False, "cifar"),
    "cifar100": ("CIFAR100", "top1", False, "cifar"),
    "sun397": ("SUN397", "top1", False, "sun397"),
    "cars": ("Cars", "top1", False, "cars"),
    "aircraft": ("Aircraft", "mean_per_class", True, "folders"),
    "voc2007": ("VOC2007", "map11", True, "voc"),
    "dtd": ("DTD", "top1", True, "folders"),
    "pets": ("Pets", "mean_per_class", False, "pets"),
    "caltech101": ("Caltech101", "mean_per_class", False, "caltech101"),
    "flowers": ("Flowers", "mean_per_class", True, "folders"),
}
# The archives' own layouts, read in ssl-transfer's order: subfolders tried (the archive's top folder, or none) and
# the metadata files that must be there (train list, test list, class list).
STANDARD = {
    "food101": (("food-101", ""), ("meta/train.json", "meta/test.json", "meta/classes.txt"),
                "meta/{classes.txt,train.json,test.json} and images/<class>/<id>.jpg"),
    "sun397": (("SUN397", ""), ("Training_01.txt", "Testing_01.txt", "ClassName.txt"),
               "ClassName.txt, Training_01.txt, Testing_01.txt and the images as those lists name them"),
    "cars": (("",), ("devkit/cars_train_annos.mat", "devkit/cars_test_annos_withlabels.mat"),
             "devkit/cars_train_annos.mat, devkit/cars_test_annos_withlabels.mat, cars_train/ and cars_test/"),
    "pets": (("",), ("annotations/trainval.txt", "annotations/test.txt"),
             "annotations/{trainval,test}.txt and images/<id>.jpg"),
    "caltech101": (("",), ("train.txt", "test.txt"),
                   "ssl-transfer's caltech101-splits {train,test}.txt and caltech101/101_ObjectCategories/"),
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
    """A dataset of the protocol: ``train``, ``test`` and the official ``val`` (None: carve it from train).
    ``order``: how the train split is listed; ``note``: a warning for the user (e.g. not the reference's order),
    or None."""
    name: str
    folder: str
    classes: list
    train: Split
    test: Split
    val: Optional[Split] = None
    order: str = ""
    note: Optional[str] = None


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
    kind = DATASETS[name][3]
    what = {"cifar": "the extracted python-version pickles", "voc": "VOCdevkit/VOC2007 (train, val, test)",
            "folders": "train/, val/ and test/, one subfolder per class"}.get(kind)
    if what is None:
        what = f"its archive extracted ({STANDARD[name][2]}) or train/ and test/ class folders"
    require_folder(folder, f"put {DATASETS[name][0]} there as {what}, or leave the dataset out of --datasets "
                           "(nothing is downloaded)", what="dataset folder")
    return folder


def find_standard(folder, name):
    """The folder holding dataset ``name``'s metadata files (:data:`STANDARD`), or None."""
    subs, files, _ = STANDARD[name]
    for sub in subs:
        base = os.path.join(folder, sub) if sub else folder
        if all(os.path.isfile(os.path.join(base, f)) for f in files):
            return base
    return None


def _check_splits(folder, name, splits):
    for split in splits:
        require_folder(os.path.join(folder, split), f"{name} needs {', '.join(s + '/' for s in splits)} in "
                                                    f"'{folder}', one subfolder per class", what="split folder")


def _check_val_policy(folder, name):
    """ssl-transfer's train/val policy on a folder layout: the official val/ where it has one, never otherwise."""
    val = os.path.join(folder, "val")
    if DATASETS[name][2]:
        _check_splits(folder, name, ("train", "val", "test"))
    elif os.path.exists(val):
        raise UserError(f"'{val}' exists but ssl-transfer has no val split for {name}: it draws 20% of train (seed "
                        f"0) and refits on all of train; move val/'s images into train/ (or remove val/)")


def check_layout(root, name):
    """Cheap up-front check that dataset ``name`` is where :func:`load_dataset` will look (no image listing).

    Returns:
        the dataset's folder.
    Raises:
        UserError: naming the missing folder or file (or a val/ folder the protocol does not use).
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
    elif kind == "folders" or find_standard(folder, name) is None:
        if kind != "folders" and not os.path.isdir(os.path.join(folder, "train")):
            raise UserError(f"'{folder}' holds neither {name}'s archive layout ({STANDARD[name][2]}) nor train/ and "
                            "test/ class folders: extract the dataset there (nothing is downloaded)")
        _check_splits(folder, name, ("train", "test"))
        _check_val_policy(folder, name)
    return folder


def _image_folder(folder, split, transform):
    data = SafeImageFolder(os.path.join(folder, split), transform=transform)
    labels = np.asarray(data.targets, dtype=np.int64)
    listing = "\n".join(f"{os.path.relpath(p, folder)} {t}" for p, t in data.samples)
    return data, Split(data, labels, _digest(listing))


def _image_list(base, samples, classes, source, transform):
    data = ImageList(base, samples, classes, source, transform=transform)
    labels = np.asarray(data.targets, dtype=np.int64)
    listing = "\n".join(f"{os.path.relpath(p, base)} {t}" for p, t in samples)
    return Split(data, labels, _digest(listing))


def _load_folders(name, folder, transform):
    train_set, train = _image_folder(folder, "train", transform)
    test_set, test = _image_folder(folder, "test", transform)
    val_set, val = _image_folder(folder, "val", transform) if DATASETS[name][2] else (None, None)
    for split, data in (("test", test_set), ("val", val_set)):
        if data is not None and data.classes != train_set.classes:
            only = sorted(set(data.classes) ^ set(train_set.classes))[:5]
            raise UserError(f"'{os.path.join(folder, split)}' and '{os.path.join(folder, 'train')}' have different "
                            f"class folders (e.g. {', '.join(only) or 'the same names in another order'}): every "
                            "split needs the same class subfolders")
    order, note = "sorted class folders, sorted file names", None
    if name in STANDARD:
        note = (f"{name} read from train/ and test/ class folders, in sorted order: ssl-transfer lists its images "
                f"from the archive's metadata in another order, so the 20% validation draw picks other images than "
                f"the reference's; extract the archive ({STANDARD[name][2]}) into '{folder}' for its draw")
    return TransferData(name, folder, list(train_set.classes), train, test, val, order, note)


# ==== the archives' layouts, in ssl-transfer's order ====
def _lines(path):
    """(line number, stripped text) of the non-blank lines of a text file."""
    try:
        with open(path) as f:
            return [(i, line.strip()) for i, line in enumerate(f, 1) if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read '{path}' ({type(exc).__name__}: {exc}): re-extract the dataset") from None


def _bad_line(path, number, text, expected):
    return UserError(f"'{path}' line {number} ({text[:80]!r}) is not {expected}: re-extract the file")


def _food101(base):
    """Food-101: classes in ``meta/classes.txt`` order, each class's images in ``meta/<split>.json`` order."""
    classes = [text for _, text in _lines(os.path.join(base, "meta", "classes.txt"))]
    out = {}
    for split in ("train", "test"):
        path = os.path.join(base, "meta", f"{split}.json")
        try:
            with open(path) as f:
                lists = json.load(f)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read '{path}' as JSON ({type(exc).__name__}: {exc}): re-extract the "
                            "dataset") from None
        missing = [c for c in classes if not isinstance(lists, dict) or not isinstance(lists.get(c), list)]
        if missing:
            raise UserError(f"'{path}' has no image list for class {missing[0]!r} of meta/classes.txt: re-extract "
                            "the dataset")
        out[split] = ([(os.path.join(base, "images", f"{image_id}.jpg"), i)
                       for i, c in enumerate(classes) for image_id in lists[c]], path)
    return out, classes


def _sun397(base):
    """SUN397: classes = ClassName.txt's names without their ``/x/`` letter folder, sorted; images in the order of
    ``Training_01.txt`` / ``Testing_01.txt``, each labelled with the first class (sorted) whose ``/name/`` is in its
    listed path (ssl-transfer's rule, applied to the listed path rather than the whole path on disk)."""
    classes = sorted(text[3:] for _, text in _lines(os.path.join(base, "ClassName.txt")))
    out = {}
    for split, fname in (("train", "Training_01.txt"), ("test", "Testing_01.txt")):
        path, samples = os.path.join(base, fname), []
        for number, text in _lines(path):
            rel = "/" + text.lstrip("/")
            label = next((i for i, c in enumerate(classes) if f"/{c}/" in rel), None)
            if label is None:
                raise _bad_line(path, number, text, "an image path under one of ClassName.txt's classes")
            samples.append((os.path.join(base, rel[1:]), label))
        out[split] = (samples, path)
    return out, classes


def _cars(base):
    """Stanford Cars: images in the order of the devkit's annotation files (``cars_train_annos.mat``,
    ``cars_test_annos_withlabels.mat``), label = class id - 1 (the reference's ``np.unique`` over 1..196)."""
    from scipy.io import loadmat

    out, ids = {}, set()
    for split, fname in (("train", "cars_train_annos.mat"), ("test", "cars_test_annos_withlabels.mat")):
        path = os.path.join(base, "devkit", fname)
        try:
            ann = loadmat(path)["annotations"][0]
            rows = [(str(a["fname"][0]), int(np.asarray(a["class"]).ravel()[0])) for a in ann]
        except Exception as exc:  # noqa: BLE001 - any malformed .mat: one line naming it
            raise UserError(f"cannot read the annotations of '{path}' ({type(exc).__name__}: {exc}): expected the "
                            "devkit's struct array 'annotations' with 'fname' and 'class'; re-extract it") from None
        if any(c < 1 for _, c in rows):
            raise UserError(f"'{path}' has class ids below 1: the devkit numbers classes from 1; re-extract it")
        ids |= {c for _, c in rows}
        out[split] = ([(os.path.join(base, f"cars_{split}", f), c - 1) for f, c in rows], path)
    return out, _car_names(base, max(ids))


def _car_names(base, n):
    from scipy.io import loadmat

    try:
        names = [str(x[0]) for x in loadmat(os.path.join(base, "devkit", "cars_meta.mat"))["class_names"][0]]
    except Exception:  # noqa: BLE001 - the names are cosmetic: ids instead
        names = []
    return names if len(names) >= n else [str(i) for i in range(1, n + 1)]


def _pets(base):
    """Oxford-IIIT Pets: ``annotations/trainval.txt`` (train) and ``test.txt`` in their order; label = class id - 1
    (the second column, 1..37); class names from the image ids (``Abyssinian_100`` -> Abyssinian)."""
    out, names = {}, {}
    for split, fname in (("train", "trainval.txt"), ("test", "test.txt")):
        path, samples = os.path.join(base, "annotations", fname), []
        for number, text in _lines(path):
            if text.startswith("#"):  # list.txt's header style; trainval.txt and test.txt have none
                continue
            parts = text.split()
            if len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) < 1:
                raise _bad_line(path, number, text, "'<image id> <class id 1..37> ...'")
            label = int(parts[1]) - 1
            names.setdefault(label, parts[0].rsplit("_", 1)[0])
            samples.append((os.path.join(base, "images", f"{parts[0]}.jpg"), label))
        out[split] = (samples, path)
    return out, [names.get(i, str(i + 1)) for i in range(max(names) + 1)]


def _caltech101(base):
    """Caltech-101: ssl-transfer's ``train.txt`` / ``test.txt`` (``<class>/<image> <label>``, ImageFolder's labels
    over 101_ObjectCategories, BACKGROUND_Google included) in their order."""
    images = next((d for d in (os.path.join(base, "caltech101", "101_ObjectCategories"),
                               os.path.join(base, "101_ObjectCategories")) if os.path.isdir(d)), None)
    if images is None:
        raise UserError(f"no 101_ObjectCategories/ in '{base}': extract Caltech-101's images to "
                        f"'{os.path.join(base, 'caltech101', '101_ObjectCategories')}'")
    out, names = {}, {}
    for split in ("train", "test"):
        path, samples = os.path.join(base, f"{split}.txt"), []
        for number, text in _lines(path):
            parts = text.split(" ")
            if len(parts) != 2 or not parts[1].isdigit() or "/" not in parts[0]:
                raise _bad_line(path, number, text, "'<class>/<image> <label>'")
            label, cls = int(parts[1]), parts[0].split("/")[0]
            if names.setdefault(label, cls) != cls:
                raise _bad_line(path, number, text, f"labelled as the other images of class {names[label]!r}")
            samples.append((os.path.join(images, parts[0]), label))
        out[split] = (samples, path)
    return out, [names.get(i, str(i)) for i in range(max(names) + 1)]


READERS = {"food101": _food101, "sun397": _sun397, "cars": _cars, "pets": _pets, "caltech101": _caltech101}


def _load_standard(name, folder, transform):
    base = find_standard(folder, name)
    if base is None:
        return _load_folders(name, folder, transform)
    lists, classes = READERS[name](base)
    train, test = (_image_list(base, lists[s][0], classes, lists[s][1], transform) for s in ("train", "test"))
    order = f"as listed in {os.path.relpath(lists['train'][1], folder)} (ssl-transfer's order)"
    return TransferData(name, folder, classes, train, test, None, order)


def _load_cifar(name, folder, transform):
    splits = []
    for train in (True, False):
        data = CifarPickleDataset(folder, name, train=train, transform=transform)
        labels = np.asarray(data.targets, dtype=np.int64)
        splits.append(Split(data, labels, _digest(data.data.tobytes(), labels.tobytes())))
    return TransferData(name, folder, list(data.classes), splits[0], splits[1], None, "the pickles' order")


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
    return TransferData(name, folder, classes, splits["train"], splits["test"], splits["val"], "train.txt's order")


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
    kind = DATASETS[name][3]
    reader = {"folders": _load_folders, "cifar": _load_cifar, "voc": _load_voc}.get(kind, _load_standard)
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
