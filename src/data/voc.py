"""PASCAL VOC-style classification sets on disk and VOC's average precision (for ``eval.voc_svm``).

Layout (VOC2007 as extracted from the official archives; nothing is downloaded)::

    ROOT/VOCdevkit/VOC2007/          (or ROOT/VOC2007/, or ROOT itself)
        JPEGImages/<id>.jpg
        ImageSets/Main/<split>.txt            image ids, one per line (trainval, test, ...)
        ImageSets/Main/<class>_<split>.txt    "<id> <label>", label 1 (present), -1 (absent), 0 (only "difficult")
        Annotations/<id>.xml                  objects (<name>, <difficult>): used when the class files are absent

Labels follow the VOC devkit: 1 if the image holds a non-difficult object of the class, 0 if it holds only
difficult ones, -1 otherwise. Classes are VOC's 20 when their files are all there, else every ``<class>_<split>``
file found (sorted), else the object names of the annotations (sorted).
"""
import glob
import os
import xml.etree.ElementTree as ET

import numpy as np
import torch
from PIL import Image

from src.data.decode import to_rgb
from src.run.errors import UserError

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def find_voc_dir(root, year="VOC2007"):
    """The folder holding JPEGImages/ and ImageSets/: ``root/VOCdevkit/<year>``, ``root/<year>`` or ``root``.

    Raises:
        UserError: none of them has both subfolders.
    """
    for folder in (os.path.join(root, "VOCdevkit", year), os.path.join(root, year), root):
        if all(os.path.isdir(os.path.join(folder, *sub)) for sub in (["JPEGImages"], ["ImageSets", "Main"])):
            return folder
    if os.path.exists(root) and not os.path.isdir(root):
        raise UserError(f"'{root}' is a file, not a folder: pass the folder holding VOCdevkit/{year}")
    raise UserError(f"no VOC-style folder at '{root}': expected {root}/VOCdevkit/{year}/ (or {root}/{year}/, or "
                    f"'{root}' itself) holding JPEGImages/<id>.jpg, ImageSets/Main/<split>.txt and either "
                    "ImageSets/Main/<class>_<split>.txt or Annotations/<id>.xml; extract VOCtrainval and VOCtest there "
                    "(nothing is downloaded)")


def _read_lines(path):
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


def _classes(voc_dir, splits):
    main = os.path.join(voc_dir, "ImageSets", "Main")
    if all(os.path.isfile(os.path.join(main, f"{c}_{s}.txt")) for c in VOC_CLASSES for s in splits):
        return list(VOC_CLASSES)
    found = [sorted(os.path.basename(p)[:-len(f"_{s}.txt")] for p in glob.glob(os.path.join(main, f"*_{s}.txt")))
             for s in splits]
    if found[0] and all(f == found[0] for f in found):
        return found[0]
    names = set()
    for path in glob.glob(os.path.join(voc_dir, "Annotations", "*.xml")):
        names |= {name for name, _ in _objects(path)}
    if not names:
        raise UserError(f"no classes in '{voc_dir}': need ImageSets/Main/<class>_<split>.txt for the splits "
                        f"{', '.join(splits)} (the same classes for each), or Annotations/<id>.xml")
    return sorted(names)


def _objects(path):
    """[(name, difficult)] of an annotation file."""
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError) as exc:
        raise UserError(f"cannot read annotation '{path}' ({type(exc).__name__}: {exc})") from None
    return [(obj.findtext("name", "").strip(), obj.findtext("difficult", "0").strip() == "1")
            for obj in tree.getroot().iter("object")]


def read_split(voc_dir, split, classes):
    """Image ids and per-class labels of one split.

    Args:
        voc_dir: folder from :func:`find_voc_dir`.
        split: e.g. "trainval" or "test".
        classes: class names (:func:`voc_classes`).
    Returns:
        ``(ids, labels, source)``: list of N ids, (N, C) int8 array of 1 / 0 / -1, and where the labels came
        from ("class files" or "annotations").
    Raises:
        UserError: missing split file, an id missing from a class file, or a missing annotation.
    """
    main = os.path.join(voc_dir, "ImageSets", "Main")
    split_file = os.path.join(main, f"{split}.txt")
    if not os.path.isfile(split_file):
        raise UserError(f"'{split_file}' does not exist: the {split} split lists its image ids there")
    ids = [parts[0] for parts in _read_lines(split_file)]
    labels = np.full((len(ids), len(classes)), -1, dtype=np.int8)
    row = {image_id: i for i, image_id in enumerate(ids)}
    if all(os.path.isfile(os.path.join(main, f"{c}_{split}.txt")) for c in classes):
        for j, c in enumerate(classes):
            path = os.path.join(main, f"{c}_{split}.txt")
            given = _class_labels(path)
            missing = [i for i in ids if i not in given]
            if missing:
                raise UserError(f"'{path}' has no label for {len(missing)} image(s) of {split}.txt, e.g. {missing[0]}")
            labels[:, j] = [given[i] for i in ids]
        return ids, labels, "class files"
    index = {c: j for j, c in enumerate(classes)}
    for image_id in ids:
        path = os.path.join(voc_dir, "Annotations", f"{image_id}.xml")
        if not os.path.isfile(path):
            raise UserError(f"no labels for image {image_id}: neither ImageSets/Main/<class>_{split}.txt nor '{path}'")
        for name, difficult in _objects(path):
            if name in index:  # a non-difficult object wins over difficult ones
                j = index[name]
                labels[row[image_id], j] = max(labels[row[image_id], j], 0 if difficult else 1)
    return ids, labels, "annotations"


def _class_labels(path):
    """``{image id: label}`` of a ``<class>_<split>.txt`` file.

    Raises:
        UserError: a line that is not ``<id> <label>`` with a label of -1, 0 or 1 (naming the file and the line).
    """
    labels = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("-1", "0", "1"):
                raise UserError(f"'{path}' line {number} ({line.strip()[:60]!r}) is not '<image id> <label>' with a "
                                "label of -1 (absent), 0 (only difficult objects) or 1 (present): fix that line or "
                                "re-extract the VOC archive")
            labels[parts[0]] = int(parts[1])
    return labels


def voc_classes(voc_dir, splits):
    """The class names of a VOC-style folder for these splits (see the module docstring)."""
    return _classes(voc_dir, splits)


class VOCImages(torch.utils.data.Dataset):
    """``(transform(JPEGImages/<id>.jpg as RGB), index)`` for a list of ids (labels are kept by the caller).

    Raises:
        UserError: when first read, an image that is missing or not readable.
    """

    def __init__(self, voc_dir, ids, transform):
        self.paths = [os.path.join(voc_dir, "JPEGImages", f"{i}.jpg") for i in ids]
        self.transform = transform
        missing = [p for p in self.paths if not os.path.isfile(p)]
        if missing:
            raise UserError(f"{len(missing)} image(s) listed in the split are missing, e.g. '{missing[0]}'")

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        try:
            with open(self.paths[index], "rb") as f:
                img = to_rgb(Image.open(f))
        except Exception as exc:  # noqa: BLE001 - any decoder failure names the file
            raise UserError(f"cannot read image '{self.paths[index]}' ({type(exc).__name__}: {exc})") from None
        return self.transform(img), index


def voc_ap(scores, labels):
    """Average precision as VOC2010+ and the reference's ``get_precision_recall`` compute it.

    Images are ranked by decreasing score; precision is made monotone (each value replaced by the best precision
    at any higher recall) and summed over the recall steps: ``AP = sum_i (r_i - r_{i-1}) * p_interp(r_i)``.

    Args:
        scores: (N,) decision values. labels: (N,) with positives > 0 (all other values are negatives).
    Returns:
        float in [0, 1]; NaN when there is no positive.
    """
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(labels) > 0
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(positive[order])
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / n_pos
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this recall or beyond
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * precision))
