"""Datasets, a resumable sampler and the loader that the training and evaluation scripts read images with.

:func:`resolve_split` turns ``--data ROOT`` into ``ROOT/train`` (or ROOT itself when it already is an
image folder, or a split of the CIFAR-10 / CIFAR-100 pickles or STL-10 binaries ROOT holds, which
:func:`build_dataset` opens with their readers). :class:`SafeImageFolder` is ``torchvision.datasets.ImageFolder`` (same classes and
``samples``) that checks the folder up front and skips unreadable images instead of crashing a long
run; :class:`FlatImageFolder` reads images without class folders (COCO ``train2017/``), targets 0.
With ``seed`` set, the transform of sample ``i`` runs under an RNG seeded from ``(seed, epoch, i)``,
so augmentations do not depend on the worker count or on where a run resumed; with
:class:`ResumableSampler` skipping the batches already done, a resumed run sees identical batches::

    train_set = build_dataset(resolve_split(args.data, "train"), transform, seed=args.seed)
    sampler = ResumableSampler(len(train_set), world_size, rank, seed=args.seed)
    loader = build_loader(train_set, args.batch_size, sampler, args.workers)
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch, start_index=iters_done * args.batch_size if epoch == start_epoch else 0)
        train_set.set_epoch(epoch)  # before iterating: the workers read it as they build samples
"""
import contextlib
import dataclasses
import math
import os
import pathlib
import random
import sys

import numpy as np
import torch
from PIL import Image

from src.data.decode import to_rgb
from src.run.errors import UserError
from src.run.signals import ignore_stop_signals, track_loader

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # as torchvision
MAX_CONSECUTIVE_FAILURES = 50
UNREADABLE = -1  # the label of an image that evaluation could not read
_LAYOUT_HINT = "pass the folder that holds train/ (and val/), one subfolder per class"


def _is_image(name):
    return name.lower().endswith(IMG_EXTENSIONS)


def _images_under(folder):
    """Image paths below ``folder`` in ImageFolder's order: sorted ``os.walk``, sorted file names."""
    paths = []
    for dirpath, _, names in sorted(os.walk(folder, followlinks=True)):
        paths += [os.path.join(dirpath, n) for n in sorted(names) if _is_image(n)]
    return paths


def _has_image(folder):
    """True as soon as one image is found below ``folder`` (no full scan)."""
    return any(_is_image(n) for _, _, names in os.walk(folder, followlinks=True) for n in names)


def require_folder(path, hint=_LAYOUT_HINT, what="data folder"):
    """Refuse a ``path`` that is not a folder, saying whether it is missing or a file.

    Args:
        path: the folder. hint: what to pass instead. what: how the message names it.
    Raises:
        UserError: ``"<what> '<path>' does not exist: <hint>"`` or ``"... is a file, not a folder: <hint>"``.
    """
    if os.path.isdir(path):
        return
    if os.path.exists(path):
        raise UserError(f"{what} '{path}' is a file, not a folder: {hint}")
    raise UserError(f"{what} '{path}' does not exist: {hint}")


def _require_dir(root):
    require_folder(root)


def class_folder_samples(root, list_items, what, kinds, hint):
    """``(samples, classes)`` of a folder with one subfolder per class (ImageFolder's order: sorted classes, each
    class's items as ``list_items`` gives them), for images and videos alike.

    Args:
        root: the folder. list_items: class folder -> list of items (paths). what: "images" / "videos".
        kinds: the accepted items in words, for the message. hint: what to pass instead.
    Returns:
        ``([(item, class index)], [class names])``.
    Raises:
        UserError: no class subfolders, or a class folder without items.
    """
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise UserError(f"{'video' if what == 'videos' else 'data'} folder '{root}' has no class subfolders: {hint}")
    samples = []
    for idx, name in enumerate(classes):
        items = list_items(os.path.join(root, name))
        if not items:
            raise UserError(f"class folder '{os.path.join(root, name)}' has no {what} ({kinds}): add some or "
                            "remove the folder")
        samples += [(item, idx) for item in items]
    return samples, classes


# datasets stored as pixel arrays: the folder their archive extracts to, and the files that mark that folder itself
ARRAY_LAYOUTS = {"cifar10": ("CIFAR-10", "cifar-10-batches-py", ("batches.meta",)),
                 "cifar100": ("CIFAR-100", "cifar-100-python", ("meta", "train")),
                 "stl10": ("STL-10", "stl10_binary", ("train_X.bin",))}


@dataclasses.dataclass(frozen=True)
class ArraySplit:
    """One split of a dataset stored as pixel arrays (what :func:`resolve_split` returns for such a root and
    :func:`build_dataset` opens).

    Attributes:
        root: the folder given. layout: a key of ``ARRAY_LAYOUTS``. split: the reader's split ("train", "test",
        "train+unlabeled").
    """

    root: str
    layout: str
    split: str

    def __str__(self):
        return f"{self.root} ({ARRAY_LAYOUTS[self.layout][0]} {self.split})"

    def open(self, transform=None, seed=None):
        """The split as a dataset (:class:`~src.data.cifar.CifarPickleDataset` or
        :class:`~src.data.stl10.STL10Binary`)."""
        from src.data.cifar import CifarPickleDataset  # the readers import this module
        from src.data.stl10 import STL10Binary

        if self.layout == "stl10":
            return STL10Binary(self.root, self.split, transform=transform, seed=seed)
        return CifarPickleDataset(self.root, self.layout, train=self.split == "train", transform=transform, seed=seed)


def array_layout(root):
    """Which dataset stored as pixel arrays ``root`` holds: its archive's folder (``root/cifar-10-batches-py``,
    ``root/cifar-100-python``, ``root/stl10_binary``) or that folder itself; None for anything else.

    Raises:
        UserError: ``root`` holds more than one of them.
    """
    found = [name for name, (_, folder, marks) in ARRAY_LAYOUTS.items()
             if os.path.exists(os.path.join(root, folder)) or all(os.path.isfile(os.path.join(root, m)) for m in marks)]
    if len(found) > 1:
        raise UserError(f"'{root}' holds {' and '.join(ARRAY_LAYOUTS[n][0] for n in found)}: pass the folder of the "
                        f"one to read ({', '.join(os.path.join(str(root), ARRAY_LAYOUTS[n][1]) for n in found)})")
    return found[0] if found else None


def resolve_split(root, split, labelled=False):
    """One split of a dataset: the folder that holds it, or, for CIFAR-10 / CIFAR-100 python pickles and STL-10
    binaries in their archives' layouts (:func:`array_layout`), an :class:`ArraySplit`.

    Args:
        root: dataset root, usually holding ``train/`` and ``val/``, or an extracted CIFAR / STL-10 archive.
        split: subfolder name, e.g. "train" or "val" (an array dataset's "val" is its test split).
        labelled: only labelled images: STL-10's "train" is then its 5,000 labelled images; otherwise (the
            pretraining set, as solo-learn and torchvision name it) "train+unlabeled", the 100,000 unlabelled
            images labelled -1.
    Returns:
        pathlib.Path: ``root/split`` if it exists, else ``root`` itself when it directly holds class
        subfolders with images or images (a flat dataset); or an :class:`ArraySplit`.
    Raises:
        UserError: ``root`` is missing, holds another split but not this one, or holds no images.
    """
    _require_dir(root)
    root = pathlib.Path(root)
    if (root / split).is_dir():
        return root / split
    layout = array_layout(root)
    if layout is not None:
        if split not in ("train", "val", "test"):
            raise UserError(f"{ARRAY_LAYOUTS[layout][0]} in '{root}' has a train and a test split, no {split!r}")
        if split != "train":
            split = "test"
        elif layout == "stl10" and not labelled:
            split = "train+unlabeled"
        return ArraySplit(str(root), layout, split)
    if (root / split).exists():
        raise UserError(f"'{root / split}' is a file, not a folder: the {split} split needs a folder there "
                        f"({_LAYOUT_HINT})")
    entries = list(os.scandir(root))
    other_splits = sorted(e.name + "/" for e in entries if e.is_dir() and e.name in ("train", "val", "test"))
    if other_splits:
        raise UserError(f"data folder '{root}' has no '{split}/' subfolder (it has {' '.join(other_splits)}): "
                        f"add it, or pass the split folder itself")
    if any(e.is_file() and _is_image(e.name) for e in entries) or any(
            e.is_dir() and _has_image(e.path) for e in entries):
        return root
    raise UserError(f"data folder '{root}' has no '{split}/' subfolder and no images: {_LAYOUT_HINT}")


def sample_seed(seed, epoch, index):
    """A 64-bit hash of ``(seed, epoch, index)`` (numpy ``SeedSequence``).

    Args:
        seed: run seed (any int; taken modulo 2**64). epoch, index: ints >= 0.
    Returns:
        int in [0, 2**64).
    """
    words = np.random.SeedSequence([seed % 2 ** 64, epoch, index]).generate_state(2, np.uint32)
    return int(words[0]) | int(words[1]) << 32


def sample_rng(seed, epoch, index):
    """The RNG of one sample's augmentation: seeded from ``(seed, epoch, index)`` (:func:`fork_rng`), so a resumed
    epoch draws what the interrupted one drew; left as it is when ``seed`` is None."""
    return contextlib.nullcontext() if seed is None else fork_rng(sample_seed(seed, epoch, index))


@contextlib.contextmanager
def fork_rng(seed):
    """Context manager: Python ``random``, numpy's global RNG and torch's CPU generator seeded from
    ``seed`` inside the block, their previous states restored after it. CUDA generators are left alone.

    Args:
        seed: int in [0, 2**64).
    """
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


class _ImageListDataset(torch.utils.data.Dataset):
    """What SafeImageFolder and FlatImageFolder share: RGB decoding, skipping unreadable files,
    and the seeded transform. Subclasses only build ``samples`` and ``classes``."""

    def __init__(self, root, samples, classes, transform, seed, skip_unreadable=False):
        self.root, self.transform, self.seed, self.skip_unreadable = str(root), transform, seed, skip_unreadable
        self.samples = self.imgs = samples  # ImageFolder's names
        self.targets = [t for _, t in samples]
        self.classes, self.class_to_idx = classes, {c: i for i, c in enumerate(classes)}
        self.n_skipped = 0  # unreadable images met by this process (each DataLoader worker counts its own)
        self._warned = set()
        # Shared memory, so DataLoader workers (persistent ones too) see set_epoch from the main process.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch):
        """Set the epoch that seeds the augmentations; call it before iterating the loader.

        Args:
            epoch: int >= 0.
        """
        self._epoch[0] = int(epoch)

    def __len__(self):
        return len(self.samples)

    def load(self, index, decode=None):
        """Decode sample ``index`` as an RGB PIL image, skipping unreadable files.

        An unreadable file is replaced by the next index (wrapping around), one warning line per
        file on stderr, and counted in ``n_skipped``.

        Args:
            index: sample index.
            decode: None, or a callable given the opened, not yet decoded, PIL image (the split pipeline
                chooses its crops first, then decodes at a reduced size where they allow it).
        Returns:
            (PIL.Image in RGB, or what ``decode`` returns; target int).
        Raises:
            UserError: more than ``MAX_CONSECUTIVE_FAILURES`` files in a row (or every file of a smaller set)
            cannot be read.
        """
        tries = min(MAX_CONSECUTIVE_FAILURES + 1, len(self.samples))  # a small set: each file once, no wrap-around
        for step in range(tries):
            path, target = self.samples[(index + step) % len(self.samples)]
            try:
                with open(path, "rb") as f:
                    img = Image.open(f)
                    return (to_rgb(img) if decode is None else decode(img)), target
            except Exception as exc:  # any decoder failure: truncated, not an image, bomb, I/O error
                self.n_skipped += 1
                if path not in self._warned:
                    self._warned.add(path)
                    print(f"warning: skipping unreadable image {path} ({type(exc).__name__}: {exc})",
                          file=sys.stderr, flush=True)
                if self.skip_unreadable:  # evaluation: left out and counted, never replaced by another image
                    return None, UNREADABLE
        if tries == len(self.samples):
            raise UserError(f"all {tries} images in '{self.root}' cannot be read, not one decodes (e.g. {path}): "
                            "replace or re-extract the files")
        raise UserError(f"{tries} images in a row from index {index} in '{self.root}' cannot be read: check the "
                        f"files (last: {path})")

    def __getitem__(self, index):
        """Args: index: int. Returns: (transformed image, target)."""
        index = index % len(self.samples)
        if getattr(self.transform, "decodes_itself", False):  # split pipeline: crops first, then decode
            with sample_rng(self.seed, int(self._epoch[0]), index):
                return self.load(index, decode=self.transform)
        img, target = self.load(index)
        if target == UNREADABLE:  # an image of the right shape, labelled -1: evaluation leaves it out
            img = Image.new("RGB", (256, 256))
        if self.transform is None:
            return img, target
        with sample_rng(self.seed, int(self._epoch[0]), index):
            return self.transform(img), target


class SafeImageFolder(_ImageListDataset):
    """``torchvision.datasets.ImageFolder`` with checks and unreadable-image skipping.

    Same ``classes`` (sorted subfolder names), ``class_to_idx``, ``samples``, ``targets`` and item
    format ``(transform(rgb_image), target)``.

    Args:
        root: folder with one subfolder per class (images may be nested deeper).
        transform: callable on a PIL image, or None.
        seed: None for the global RNG, or an int: the transform of sample ``i`` then runs under an
            RNG seeded from ``(seed, epoch, i)`` (see :meth:`set_epoch`).
        skip_unreadable: for evaluation: an unreadable image comes back with label -1 (the consumers leave it
            out and count it) instead of being replaced by the next image (training's behaviour).
    Raises:
        UserError: missing or empty root, no class subfolders, or a class subfolder without images.
    """

    def __init__(self, root, transform=None, seed=None, skip_unreadable=False):
        _require_dir(root)
        if not any(e.is_dir() for e in os.scandir(root)) and _has_image(root):
            raise UserError(f"data folder '{root}' has images but no class subfolders: {_LAYOUT_HINT} (or use a "
                            "flat dataset)")
        samples, classes = class_folder_samples(root, _images_under, "images", f"extensions: {' '.join(IMG_EXTENSIONS)}",
                                                f"{_LAYOUT_HINT} (or use a flat dataset)")
        super().__init__(root, samples, classes, transform, seed, skip_unreadable)


class FlatImageFolder(_ImageListDataset):
    """Every image below ``root``, recursively and in sorted order, each with target 0
    (unlabelled sets such as COCO ``train2017/``). Same loading and seeding as SafeImageFolder.

    Args:
        root: folder of images (subfolders are searched too).
        transform: callable on a PIL image, or None.
        seed: None, or an int for per-sample seeded augmentation (see SafeImageFolder).
    Raises:
        UserError: missing root or no images below it.
    """

    def __init__(self, root, transform=None, seed=None):
        _require_dir(root)
        paths = _images_under(root)
        if not paths:
            raise UserError(f"data folder '{root}' has no images (extensions: {' '.join(IMG_EXTENSIONS)}): "
                            f"{_LAYOUT_HINT}")
        name = os.path.basename(os.path.normpath(str(root))) or "images"
        super().__init__(root, [(p, 0) for p in paths], [name], transform, seed)


class ImageList(_ImageListDataset):
    """Images a dataset's metadata lists, in the listed order (Food-101's ``meta/train.json``, Pets'
    ``annotations/trainval.txt``, ...), with SafeImageFolder's loading and seeding.

    Args:
        root: the dataset folder (for messages). samples: ``[(image path, class index)]``, in order.
        classes: class names, indexed by the class indices. source: the metadata file, for messages.
        transform, seed: as SafeImageFolder.
    Raises:
        UserError: an empty list, or listed images that are not on disk (naming how many and one of them).
    """

    def __init__(self, root, samples, classes, source, transform=None, seed=None):
        if not samples:
            raise UserError(f"'{source}' lists no image: re-extract the dataset's metadata")
        missing = [p for p, _ in samples if not os.path.isfile(p)]
        if missing:
            raise UserError(f"{len(missing)} of the {len(samples)} images listed in '{source}' are not on disk, e.g. "
                            f"'{missing[0]}': extract the dataset's images there")
        super().__init__(root, samples, classes, transform, seed)


def build_dataset(root, transform, seed=None, flat=False):
    """SafeImageFolder, or FlatImageFolder when ``flat`` or when ``root`` holds images and no subfolders; the reader of
    an :class:`ArraySplit`.

    Args:
        root: split folder, or an :class:`ArraySplit` (see :func:`resolve_split`).
        transform: callable on a PIL image, or None.
        seed: None, or an int for per-sample seeded augmentation.
        flat: force a flat dataset (every target 0).
    Returns:
        SafeImageFolder or FlatImageFolder (an ArraySplit's reader for an ArraySplit).
    """
    if isinstance(root, ArraySplit):
        return root.open(transform, seed=seed)
    _require_dir(root)
    if not flat:
        entries = list(os.scandir(root))
        flat = not any(e.is_dir() for e in entries) and any(_is_image(e.name) for e in entries)
    return (FlatImageFolder if flat else SafeImageFolder)(root, transform=transform, seed=seed)


class ResumableSampler(torch.utils.data.Sampler):
    """``DistributedSampler(drop_last=False)`` that can start an epoch part-way through.

    For an epoch it yields exactly DistributedSampler's indices: a permutation from a generator
    seeded with ``seed + epoch`` (or ``range`` without shuffling), padded by wrap-around to a
    multiple of ``num_replicas``, then ``indices[rank::num_replicas]``.

    Args:
        dataset_len: number of samples (an int, or anything with ``len``).
        num_replicas: world size.
        rank: this process's rank, in [0, num_replicas).
        shuffle: permute every epoch.
        seed: base seed, the same on every rank.
    """

    def __init__(self, dataset_len, num_replicas=1, rank=0, shuffle=True, seed=0):
        self.n = dataset_len if isinstance(dataset_len, int) else len(dataset_len)
        if self.n < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"ResumableSampler: need dataset_len >= 1 and 0 <= rank < num_replicas, got "
                             f"{self.n}, rank {rank}, num_replicas {num_replicas}")
        self.num_replicas, self.rank, self.shuffle, self.seed = num_replicas, rank, shuffle, seed
        self.num_samples = math.ceil(self.n / num_replicas)  # per rank, for a full epoch
        self.epoch, self.start_index = 0, 0

    def set_epoch(self, epoch, start_index=0):
        """Choose the epoch, and how many of this rank's indices to skip (resuming mid-epoch).

        Call it before every epoch; the skip lasts until the next call.

        Args:
            epoch: epoch number.
            start_index: indices of this rank already consumed, e.g. ``iters_done * batch_size_per_rank``.
        """
        if not 0 <= start_index <= self.num_samples:
            raise ValueError(f"start_index {start_index} outside [0, {self.num_samples}]")
        self.epoch, self.start_index = epoch, start_index

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(self.n, generator=g).tolist()
        else:
            indices = list(range(self.n))
        total = self.num_samples * self.num_replicas
        indices = (indices * math.ceil(total / self.n))[:total]  # wrap-around padding
        return iter(indices[self.rank::self.num_replicas][self.start_index:])

    def __len__(self):
        return self.num_samples - self.start_index


def build_loader(dataset, batch_size, sampler, workers, drop_last=True, pin_memory=None, persistent=True,
                 collate_fn=None):
    """A DataLoader for training or evaluation.

    Workers are persistent (no re-fork and re-read of the file list every epoch) and ignore SIGTERM /
    SIGUSR1 (the training process saves first, then shuts them down: ``src.run.signals``). A dataset
    built with ``seed`` needs no seeding of its own: its augmentations are seeded per sample;
    without ``seed`` torch's per-worker seeding applies.

    Args:
        dataset: a map-style dataset.
        batch_size: samples per batch on this process.
        sampler: e.g. ResumableSampler, or None for sequential order.
        workers: loader processes (0 loads in the main process).
        drop_last: drop the last incomplete batch (True for training).
        pin_memory: None pins when CUDA is available.
        persistent: keep the workers between epochs (False for a single pass).
        collate_fn: DataLoader's (None: the default stacking).
    Returns:
        torch.utils.data.DataLoader.
    """
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return track_loader(torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                                    num_workers=workers, pin_memory=pin_memory, drop_last=drop_last,
                                                    persistent_workers=persistent and workers > 0,
                                                    worker_init_fn=ignore_stop_signals, collate_fn=collate_fn))


def train_loader(dataset, batch_size, workers, world_size=1, rank=0, seed=0, flag="--batch_size"):
    """The training loader of every pretraining script: a :class:`ResumableSampler` over this rank's share, batches
    of ``batch_size`` without the last incomplete one (the references' drop_last), the workers' base seed from a
    generator of its own (so starting an epoch, or resuming, does not shift the global RNG stream).

    Args:
        dataset: map-style dataset (``set_epoch`` is the caller's). batch_size: per process. workers: loader workers.
        world_size, rank: the process group. seed: the run seed. flag: the batch flag's name, for the error.
    Returns:
        ``(loader, sampler, iters_per_epoch)``.
    Raises:
        UserError: fewer samples than one global batch.
    """
    iters_per_epoch = math.ceil(len(dataset) / world_size) // batch_size
    if iters_per_epoch == 0:
        root = getattr(dataset, "root", "") or getattr(getattr(dataset, "dataset", None), "root", "")
        raise UserError(f"a batch of {batch_size} x {world_size} processes is larger than the {len(dataset)} training "
                        f"samples{f' in {root!r}' if root else ''}: lower {flag} (the last incomplete batch is "
                        "dropped)", collective=True)
    sampler = ResumableSampler(len(dataset), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    loader = build_loader(dataset, batch_size, sampler, workers, drop_last=True)
    loader.generator = torch.Generator().manual_seed(seed)
    return loader, sampler, iters_per_epoch
