"""PASCAL VOC 2012 and Cityscapes semantic-segmentation sets in their standard on-disk layouts (nothing is
downloaded), as Revisiting-Contrastive-SSL's ``evaluation/segmentation/data/dataloaders`` read them.

PASCAL VOC 2012 (21 classes with background; 255 marks object boundaries, ignored)::

    ROOT/VOCdevkit/VOC2012/          (or ROOT/VOC2012/, or ROOT itself)
        JPEGImages/<id>.jpg
        SegmentationClass/<id>.png         palette PNGs of train and val (1,464 / 1,449 images)
        SegmentationClassAug/<id>.png      grey PNGs of the SBD-augmented set (trainaug: 10,582 images)
        ImageSets/Segmentation/<split>.txt train.txt, val.txt, trainaug.txt (or train_aug.txt): one id per line,
                                           or DeepLab's "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"

``trainaug`` reads its masks from SegmentationClassAug/, the other splits from SegmentationClass/ (the reference's
choice). A mask must have its image's size: :func:`check_pair_sizes` refuses a split where one does not (the
reference resizes such a mask to its image; a mask of another size labels another picture, or a thumbnail of it).

Cityscapes (the 19 train classes of the fine annotations; every other class is 255)::

    ROOT/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
    ROOT/gtFine/<split>/<city>/<name>_gtFine_labelIds.png       mapped to train ids here (the reference's way),
                                 or <name>_gtFine_labelTrainIds.png (cityscapesScripts' createTrainIdLabelImgs)

Items: training ``(image (3, h, w) float, mask (h, w) int64)``; evaluation ``(image, mask at full resolution,
readable)`` where an unreadable image or mask comes back with ``readable`` False (left out and counted), while
training replaces it by the next item with one warning line. Each item's augmentation runs under a generator
seeded from ``(seed, epoch, index)``, so it does not depend on the loader workers or on where a run resumed.
"""
import os
import sys

import numpy as np
import torch
from PIL import Image

from src.data.decode import to_rgb
from src.data.folders import MAX_CONSECUTIVE_FAILURES, sample_seed
from src.data.voc import VOC_CLASSES
from src.run.errors import UserError

IGNORE = 255
VOC_SEG_CLASSES = ("background",) + VOC_CLASSES
VOC_SPLITS = ("trainaug", "train", "val")
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle")
# cityscapesScripts labels.py: label id -> train id of the 19 evaluated classes (all others are ignored)
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
SHOWN = 5  # missing files named in an error line (the rest are counted)


def _lut(pairs):
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for src, dst in pairs.items():
        lut[src] = dst
    return lut


LABEL_IDS_LUT = _lut(CITYSCAPES_TRAIN_IDS)
TRAIN_IDS_LUT = _lut({i: i for i in range(len(CITYSCAPES_CLASSES))})  # values above 18 other than 255: ignored
VOC_LUT = _lut({i: i for i in range(len(VOC_SEG_CLASSES))})  # a stray value above 20 is ignored, not a crash


def _missing_line(what, missing, total, hint):
    named = ", ".join(f"'{p}'" for p in missing[:SHOWN])
    more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
    return f"{len(missing)} of {total} {what} missing: {named}{more}: {hint}"


# ==== the dataset ====
class SegmentationDataset(torch.utils.data.Dataset):
    """Image / mask pairs with a joint transform (``src.augment.segmentation``).

    Args:
        images, masks: paths, one mask per image.
        classes: class names (index = class id).
        transform: ``transform(image uint8 HWC, mask uint8 HW, rng)`` -> (image tensor, mask tensor).
        lut: None, or a (256,) uint8 table applied to the mask values (Cityscapes label ids -> train ids).
        seed: None (fresh entropy per item) or the run's seed (items seeded from ``(seed, epoch, index)``).
        train: training items (unreadable ones replaced by the next) or evaluation items (flagged).
    """

    def __init__(self, images, masks, classes, transform, lut=None, seed=None, train=True):
        self.images, self.masks, self.classes = list(images), list(masks), list(classes)
        self.transform, self.lut, self.seed, self.train = transform, lut, seed, train
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()  # seen by persistent workers
        self._warned = set()

    def __len__(self):
        return len(self.images)

    def set_epoch(self, epoch):
        """The epoch that seeds the augmentations; call it before iterating the loader."""
        self._epoch[0] = int(epoch)

    def read(self, index):
        """``(image (H, W, 3) uint8 RGB, mask (H, W) uint8 class ids)`` of item ``index``, as the files hold them."""
        with open(self.images[index], "rb") as f:
            image = np.asarray(to_rgb(Image.open(f)))
        with open(self.masks[index], "rb") as f:
            mask = np.asarray(Image.open(f))
        if mask.ndim != 2 or mask.dtype != np.uint8:
            raise ValueError(f"mask of shape {mask.shape} and type {mask.dtype}: expected one 8-bit channel of class "
                             "ids (a palette or grey PNG), not a colour rendering")
        if mask.shape != image.shape[:2]:  # check_pair_sizes refuses these up front; a file changed since is unreadable
            raise ValueError(f"mask of {mask.shape[1]}x{mask.shape[0]} px for an image of {image.shape[1]}x"
                             f"{image.shape[0]}: a mask labels its own image pixel for pixel")
        if self.lut is not None:
            mask = self.lut[mask]
        return image, mask

    def __getitem__(self, index):
        epoch = int(self._epoch[0])
        for step in range(MAX_CONSECUTIVE_FAILURES + 1):
            i = (index + step) % len(self.images)
            try:
                image, mask = self.read(i)
                break
            except Exception as exc:  # noqa: BLE001 - any decoder failure: truncated, not an image, I/O error
                if i not in self._warned:
                    self._warned.add(i)
                    print(f"warning: skipping unreadable pair {self.images[i]} / {self.masks[i]} "
                          f"({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)
                if not self.train:  # evaluation: left out and counted, never replaced by another image
                    return torch.zeros(3, 1, 1), torch.full((1, 1), IGNORE, dtype=torch.long), False
        else:
            raise UserError(f"{MAX_CONSECUTIVE_FAILURES + 1} images in a row from index {index} cannot be read: check "
                            f"the files (last: {self.images[i]})")
        rng = np.random.default_rng(None if self.seed is None else sample_seed(self.seed, epoch, index))
        x, y = self.transform(image, mask, rng)
        return (x, y) if self.train else (x, y, True)


def check_pair_sizes(dataset, what):
    """Every mask of ``dataset`` has its image's size, read from the file headers (nothing is decoded). A file whose
    header cannot be read is left to the reader (replaced in training, counted when scoring).

    Args:
        dataset: a :class:`SegmentationDataset`. what: the split's name in the error ("VOC val").
    Raises:
        UserError: naming the first pairs that differ (and how many).
    """
    bad = []
    for image, mask in zip(dataset.images, dataset.masks):
        try:
            with Image.open(image) as a, Image.open(mask) as b:
                if a.size != b.size:
                    bad.append(f"'{mask}' is {b.size[0]}x{b.size[1]} px, its image '{image}' {a.size[0]}x{a.size[1]}")
        except Exception:  # noqa: BLE001 - an unreadable file: the reader's warning or count says it
            continue
    if bad:
        more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        raise UserError(f"{len(bad)} of {len(dataset.masks)} {what} masks differ in size from their images: "
                        f"{'; '.join(bad[:SHOWN])}{more}: a mask labels its own image pixel for pixel, so a score "
                        "against a resized one would mean nothing; replace those masks or remove their ids from the "
                        "split list")


def collate_eval(batch):
    """Evaluation batches: lists of images, full-resolution masks and readable flags (sizes may differ)."""
    images, masks, readable = zip(*batch)
    return list(images), list(masks), list(readable)


# ==== PASCAL VOC 2012 ====
def find_voc2012(root):
    """The VOC2012 folder under ``root``: ``root/VOCdevkit/VOC2012``, ``root/VOC2012`` or ``root``.

    Raises:
        UserError: none of them holds JPEGImages/ and ImageSets/Segmentation/ (naming what is missing).
    """
    candidates = (os.path.join(root, "VOCdevkit", "VOC2012"), os.path.join(root, "VOC2012"), root)
    for folder in candidates:
        if os.path.isdir(os.path.join(folder, "JPEGImages")) and \
                os.path.isdir(os.path.join(folder, "ImageSets", "Segmentation")):
            return folder
    folder = next((c for c in candidates if os.path.isdir(c)), candidates[0])
    missing = [os.path.join(folder, *p) for p in (["JPEGImages"], ["ImageSets", "Segmentation"])
               if not os.path.isdir(os.path.join(folder, *p))]
    raise UserError(f"no PASCAL VOC 2012 folder at '{root}' (missing: {', '.join(missing)}): pass the folder that "
                    "holds VOCdevkit/VOC2012/ with JPEGImages/, SegmentationClass[Aug]/ and ImageSets/Segmentation/"
                    "<split>.txt (nothing is downloaded)")


def voc_split_file(voc_dir, split):
    """``ImageSets/Segmentation/<split>.txt`` (``trainaug``: also ``train_aug.txt``). Raises: UserError when absent."""
    names = [f"{split}.txt"] + (["train_aug.txt"] if split == "trainaug" else [])
    paths = [os.path.join(voc_dir, "ImageSets", "Segmentation", n) for n in names]
    for path in paths:
        if os.path.isfile(path):
            return path
    hint = (" (the SBD-augmented list of 10,582 ids; or train with --train_split train)" if split == "trainaug"
            else "")
    raise UserError(f"the {split} split list is missing: '{' or '.join(paths)}'{hint}")


def voc_segmentation(root, split, transform, seed=None, train=True):
    """PASCAL VOC 2012 segmentation split ``split`` (trainaug, train or val) as a :class:`SegmentationDataset`.

    Raises:
        UserError: a missing folder, split list, image or mask (one line naming them).
    """
    if split not in VOC_SPLITS:
        raise UserError(f"unknown VOC split {split!r}: choose one of {', '.join(VOC_SPLITS)}")
    voc_dir = find_voc2012(root)
    mask_dir = os.path.join(voc_dir, "SegmentationClassAug" if split == "trainaug" else "SegmentationClass")
    if not os.path.isdir(mask_dir):
        raise UserError(f"the {split} masks folder '{mask_dir}' is missing"
                        + (": trainaug needs the SBD-augmented masks (SegmentationClassAug)" if split == "trainaug"
                           else ": extract VOCtrainval_11-May-2012 there"))
    with open(voc_split_file(voc_dir, split)) as f:  # "<id>" or "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"
        ids = [os.path.splitext(os.path.basename(line.split()[0]))[0] for line in f if line.strip()]
    if not ids:
        raise UserError(f"the {split} split list of '{voc_dir}' is empty")
    images = [os.path.join(voc_dir, "JPEGImages", f"{i}.jpg") for i in ids]
    masks = [os.path.join(mask_dir, f"{i}.png") for i in ids]
    _check_files(images, masks, f"VOC {split}")
    return SegmentationDataset(images, masks, VOC_SEG_CLASSES, transform, lut=VOC_LUT, seed=seed, train=train)


# ==== Cityscapes ====
def cityscapes_segmentation(root, split, transform, seed=None, train=True):
    """Cityscapes fine split ``split`` (train, val) with the 19 train classes, as a :class:`SegmentationDataset`.

    Masks: ``*_gtFine_labelIds.png`` mapped to train ids, else ``*_gtFine_labelTrainIds.png`` (the whole split
    must use one kind).
    Raises:
        UserError: a missing folder, image or mask (one line naming them).
    """
    image_root, mask_root = os.path.join(root, "leftImg8bit", split), os.path.join(root, "gtFine", split)
    missing = [p for p in (image_root, mask_root) if not os.path.isdir(p)]
    if missing:
        raise UserError(f"Cityscapes folder(s) missing: {', '.join(missing)}: pass the folder that holds "
                        f"leftImg8bit/{split}/<city>/ and gtFine/{split}/<city>/ (nothing is downloaded)")
    images = []
    for city in sorted(e.name for e in os.scandir(image_root) if e.is_dir()):
        images += [os.path.join(image_root, city, n) for n in sorted(os.listdir(os.path.join(image_root, city)))
                   if n.endswith("_leftImg8bit.png")]
    if not images:
        raise UserError(f"no <city>/<name>_leftImg8bit.png images under '{image_root}'")
    stems = [os.path.join(mask_root, os.path.basename(os.path.dirname(p)),
                          os.path.basename(p)[:-len("_leftImg8bit.png")]) for p in images]
    kind = "labelIds" if os.path.isfile(stems[0] + "_gtFine_labelIds.png") else "labelTrainIds"
    masks = [f"{s}_gtFine_{kind}.png" for s in stems]
    _check_files(images, masks, f"Cityscapes {split}", mask_hint="_gtFine_labelIds.png (or _gtFine_labelTrainIds.png)")
    lut = LABEL_IDS_LUT if kind == "labelIds" else TRAIN_IDS_LUT
    return SegmentationDataset(images, masks, CITYSCAPES_CLASSES, transform, lut=lut, seed=seed, train=train)


def _check_files(images, masks, what, mask_hint=None):
    """Raise one line naming the missing images and masks (the first few of each, and how many)."""
    missing_images = [p for p in images if not os.path.isfile(p)]
    missing_masks = [p for p in masks if not os.path.isfile(p)]
    parts = []
    if missing_images:
        parts.append(_missing_line(f"{what} images", missing_images, len(images), "check the image folder"))
    if missing_masks:
        parts.append(_missing_line(f"{what} masks", missing_masks, len(masks),
                                   f"each image needs its mask{f' ({mask_hint})' if mask_hint else ''}"))
    if parts:
        raise UserError("; ".join(parts))
