"""Datasets whose images are rows of pixel arrays in a few files (CIFAR python pickles, STL-10 binaries) rather than
one file per image: what they share with the image folders of :mod:`src.data.folders`.

Items are ``(transform(PIL RGB image), label)``; with ``seed`` set, the transform of sample ``i`` runs under an RNG
seeded from ``(seed, epoch, i)`` (:meth:`PixelArrays.set_epoch`), exactly as ``SafeImageFolder`` does, so a resumed
run draws the same augmentations whatever the worker count. A transform of the split pipeline
(``decodes_itself``, ``src.augment.split``) gets the decoded image, as there is nothing left to decode.
"""
import torch
from PIL import Image

from src.data.folders import sample_rng


class PixelArrays(torch.utils.data.Dataset):
    """Base of the array datasets: subclasses set ``root``, ``targets`` (ints, -1 for an unlabelled image) and
    ``classes``, and implement :meth:`pixels`.

    Args:
        transform: callable on a PIL image, or None. seed: None, or an int for per-sample seeded augmentation.
    """

    def __init__(self, transform=None, seed=None):
        self.transform, self.seed = transform, seed
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()  # seen by DataLoader workers

    def pixels(self, index):
        """Image ``index`` as an (H, W, 3) uint8 array."""
        raise NotImplementedError

    def set_epoch(self, epoch):
        """Set the epoch that seeds the augmentations (with ``seed``); call it before iterating."""
        self._epoch[0] = int(epoch)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        img, target = Image.fromarray(self.pixels(index)), self.targets[index]
        if self.transform is None:
            return img, target
        with sample_rng(self.seed, int(self._epoch[0]), index):
            return self.transform(img), target
