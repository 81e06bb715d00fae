"""The labelled subset of a semi-supervised fine-tuning run: a list of training-image file names.

SimCLR's ImageNet subsets (google-research/simclr ``imagenet_subsets/1percent.txt`` and ``10percent.txt``, 12,811 and
128,116 lines, shipped here as ``data_lists/imagenet_{1,10}percent.txt``) hold one file name per line, such as
``n01440764_10026.JPEG``. As in SwAV's ``eval_semisup.py`` (facebookresearch/swav), the class folder is the part of
the name before its first underscore, so that line is ``TRAIN/n01440764/n01440764_10026.JPEG``, and the label is the
index of that folder among ALL the class folders of ``TRAIN`` in sorted order (``ImageFolder``'s ``class_to_idx``),
not only among the classes the list happens to hold; the samples keep the list's order.

What SwAV leaves to a crash hours later is checked here up front, each with one line: a malformed or repeated line,
and images of the list that are missing from the folder (how many, and the first few).

    names = read_list("data_lists/imagenet_10percent.txt")
    train = LabelledSubset("/datasets/imagenet/train", names, transform, seed=31, source=list_path)
"""
import hashlib
import os

from src.data.folders import IMG_EXTENSIONS, _ImageListDataset
from src.run.errors import UserError

EXAMPLE = "n01440764_10026.JPEG"  # the form of every line of SimCLR's lists
SHOWN = 3  # missing images named in the error line


def read_list(path):
    """The file names of a subset list, in its order.

    Blank lines and surrounding white space (``\\r\\n`` endings) are ignored.

    Args:
        path: the list file.
    Returns:
        list of str, each ``<class>_<rest>.<image extension>``.
    Raises:
        UserError: the file is missing or unreadable, empty, has a line that is not such a name (naming the line),
            or names an image twice (naming both lines).
    """
    if not os.path.isfile(path):
        raise UserError(f"--labels_file '{path}' does not exist: pass a list of training-image names, one per line "
                        f"(like {EXAMPLE}), e.g. data_lists/imagenet_10percent.txt")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read --labels_file '{path}' ({type(exc).__name__}: {exc}): pass a text file of "
                        f"training-image names, one per line (like {EXAMPLE})") from None
    names, first_line = [], {}
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            continue
        if not _is_image_name(name):
            raise UserError(f"line {number} of --labels_file '{path}' is {name[:80]!r}, not a training-image name "
                            f"<class folder>_<id>.<ext> like {EXAMPLE}: fix or remove that line")
        if name in first_line:
            raise UserError(f"--labels_file '{path}' names {name!r} twice (lines {first_line[name]} and {number}): "
                            "each labelled image must appear once")
        first_line[name] = number
        names.append(name)
    if not names:
        raise UserError(f"--labels_file '{path}' holds no image names: pass a list with one name per line "
                        f"(like {EXAMPLE})")
    return names


def _is_image_name(name):
    """``<class>_<rest>`` with a non-empty class, an image extension, and no folder part."""
    cls, sep, rest = name.partition("_")
    return (bool(cls) and bool(sep) and bool(rest) and "/" not in name and "\\" not in name
            and not cls.startswith(".") and name.lower().endswith(IMG_EXTENSIONS))


def class_of(name):
    """The class folder of a list entry: ``n01440764_10026.JPEG`` -> ``n01440764``."""
    return name.partition("_")[0]


def list_digest(names):
    """SHA-256 (hex, 16 characters) of the names in order: what a resumed run checks it was made with."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def subset_samples(train_root, names, source="the list"):
    """``(path, label)`` of every listed image, in the list's order, and the class names.

    Args:
        train_root: the training folder (``ImageNet/train``), one subfolder per class.
        names: from :func:`read_list`.
        source: how to name the list in messages (its path).
    Returns:
        ``(samples, classes)``: samples ``[(train_root/<class>/<name>, index of <class> in classes)]``; classes the
        sorted names of every subfolder of ``train_root``.
    Raises:
        UserError: ``train_root`` is missing or has no class folders, or images of the list are not there (one line
            with how many, the first few, and the class folders that are missing altogether).
    """
    if not os.path.isdir(train_root):
        raise UserError(f"training folder '{train_root}' does not exist: pass the ImageNet folder that holds train/ "
                        "and val/ (--data_path)")
    classes = sorted(e.name for e in os.scandir(train_root) if e.is_dir())
    if not classes:
        raise UserError(f"training folder '{train_root}' has no class subfolders: pass the ImageNet folder whose "
                        "train/ holds one folder per class (n01440764/, ...)")
    index = {c: i for i, c in enumerate(classes)}
    samples, missing, absent_classes = [], [], {}
    for name in names:
        cls = class_of(name)
        path = os.path.join(train_root, cls, name)
        if cls not in index:
            absent_classes[cls] = None
            missing.append(path)
        elif not os.path.isfile(path):
            missing.append(path)
        else:
            samples.append((path, index[cls]))
    if missing:
        shown = ", ".join(os.path.relpath(p, train_root) for p in missing[:SHOWN])
        folders = (f"; {len(absent_classes)} listed class folders do not exist at all ("
                   f"{', '.join(list(absent_classes)[:SHOWN])}{', ...' if len(absent_classes) > SHOWN else ''})"
                   if absent_classes else "")
        raise UserError(f"{len(missing)} of the {len(names)} images of {source} are missing from '{train_root}' "
                        f"(first: {shown}{', ...' if len(missing) > SHOWN else ''}){folders}: pass the ImageNet "
                        "folder that holds them (--data_path) or the list made for this folder (--labels_file)")
    return samples, classes


class LabelledSubset(_ImageListDataset):
    """The listed images of a training folder, with their labels: a ``torchvision.datasets.ImageFolder`` of the
    whole folder whose ``samples`` were replaced by the list's (SwAV ``eval_semisup.py``), without scanning the
    folder's other images.

    Decoding, unreadable-image skipping and the per-sample seeded transform are those of
    :class:`~src.data.folders.SafeImageFolder` (``set_epoch`` before each epoch).

    Args:
        train_root: the training folder. names: from :func:`read_list`.
        transform: callable on a PIL image, or None. seed: None, or the run seed (augmentation of sample ``i`` in
            epoch ``e`` seeded from ``(seed, e, i)``).
        source: how to name the list in messages.
    Attributes:
        classes, class_to_idx, samples, targets (ImageFolder's), names, digest (:func:`list_digest`).
    Raises:
        UserError: see :func:`subset_samples`.
    """

    def __init__(self, train_root, names, transform=None, seed=None, source="the list"):
        samples, classes = subset_samples(train_root, names, source)
        super().__init__(train_root, samples, classes, transform, seed)
        self.names, self.digest = list(names), list_digest(names)
