"""The split input pipeline (``--device-aug``): CPU workers decode, crop and resize to uint8; the training device
does the rest (colour, blur, solarize, flip, normalise) in batches, ``src.augment.device``.

CPU side, per image: the crop boxes are drawn first (torchvision's RandomResizedCrop sampling, or MoCo's
constrained multi-crop), from the size in the file header; when every crop is at least 2x larger than its output
side, the JPEG is decoded at 1/2, 1/4 or 1/8 of its size (PIL ``draft``: the decoder skips the DCT
coefficients it would throw away) and the boxes are scaled to it; then each box is resized (bilinear,
antialiased, as torchvision on PIL images) and returned as a (3, s, s) uint8 tensor. Training side,
:class:`DeviceLoader` copies each batch to the device (non-blocking, from pinned memory with CUDA) and augments
it with one random generator per step, seeded from (seed, epoch, step, rank), so a resumed run draws the same
augmentations. :func:`pretrain_loader` is what every pretraining script reads: the image folder, the training
loader and this device half.

    transform = swav_recipe([224, 96], [2, 6], [0.14, 0.05], [1, 0.14]).split()  # src.augment.recipes
    dataset = build_dataset(root, transform, seed=seed)
    loader = device_loader(build_loader(dataset, ...), transform, device, seed=seed, rank=rank)
    for crops, _ in loader:  # list of (B, 3, s, s) float on the device, augmented and normalised
"""
import math

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from src.augment.device import layout
from src.data.decode import to_rgb
from src.data.folders import build_dataset, train_loader


def draft_scale(boxes, width, height):
    """The size to ask the JPEG decoder for: each side divided by the smallest ratio box side / output side over
    all crops, when that ratio is at least 2 (else None: decode at full size).

    Args:
        boxes: list of ``((top, left, h, w), size)``. width, height: full image size.
    Returns:
        (w, h) or None.
    """
    ratio = min(min(h, w) / size for (_, _, h, w), size in boxes)
    if ratio < 2:
        return None
    return math.ceil(width / ratio), math.ceil(height / ratio)


class CropsToUint8:
    """CPU half of the split pipeline: an opened (not decoded) PIL image -> list of uint8 crops.

    Args:
        crops: callable ``(width, height) -> [((top, left, h, w), size), ...]``, e.g. ``MultiScaleCrops.boxes``.
        augment: the device half (:class:`~src.augment.device.MultiCropAugment`), kept here so the two stay
            together (:func:`device_loader` reads it).
        draft: decode JPEGs at a reduced size when the crops allow it.
    Returns (when called):
        list of (3, s, s) uint8 tensors, one per crop.
    """

    decodes_itself = True  # src.data.folders hands it the image before decoding

    def __init__(self, crops, augment, draft=True):
        self.crops, self.device_augment, self.draft = crops, augment, draft
        self.n_images = self.n_drafted = 0  # this process's counts (diagnostics, bench)

    def __call__(self, img):
        width, height = img.size
        boxes = self.crops(width, height)
        self.n_images += 1
        request = draft_scale(boxes, width, height) if self.draft else None
        if request is not None and img.format == "JPEG":
            img.draft("RGB" if img.mode == "RGB" else img.mode, request)
            self.n_drafted += img.size != (width, height)
        sx, sy = img.size[0] / width, img.size[1] / height
        img = to_rgb(img)
        out = []
        for (top, left, h, w), size in boxes:
            box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
            out.append(pil_to_tensor(img.resize((size, size), Image.BILINEAR, box=box)))
        return out

    def __repr__(self):
        return f"CropsToUint8({self.crops}, draft={self.draft}) -> {self.device_augment}"


# ==== training side ====
def step_seed(seed, epoch, step, rank):
    """A 64-bit seed for the augmentations of one step of one rank (numpy ``SeedSequence``)."""
    words = np.random.SeedSequence([seed % 2 ** 64, epoch, step, rank, 0x5A5A]).generate_state(2, np.uint32)
    return int(words[0]) | int(words[1]) << 32


class DeviceLoader:
    """A DataLoader whose batches arrive on the device: tensors copied non-blocking; lists of image tensors
    (the crops) or of clip tensors (B, 3, T, s, s) augmented in batches when ``augment`` is given (uint8 crops),
    and put in ``memory_format`` (its 3-D form for clips).

    The step index (for the augmentation seed) continues from the sampler's ``start_index`` when resuming
    (:class:`src.data.folders.ResumableSampler`). Other attributes are the DataLoader's.

    Args:
        loader: a DataLoader (or any iterable of batches). device: the training device.
        augment: a :class:`~src.augment.device.MultiCropAugment`, or None.
        memory_format: of the image tensors (``torch.channels_last`` for channels-last models).
        seed, rank: seed the per-step generator.
    """

    def __init__(self, loader, device, augment=None, memory_format=torch.contiguous_format, seed=0, rank=0):
        self.loader, self.device, self.augment, self.memory_format = loader, torch.device(device), augment, memory_format
        self.seed, self.rank = int(seed or 0), rank
        self.generator = torch.Generator(device=self.device)

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):  # sampler, dataset, batch_size, ...
        if "loader" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["loader"], name)

    def __iter__(self):
        sampler = getattr(self.loader, "sampler", None)
        epoch = getattr(sampler, "epoch", 0)
        batch_size = getattr(self.loader, "batch_size", None) or 1
        first = getattr(sampler, "start_index", 0) // batch_size
        for i, batch in enumerate(self.loader):
            self.generator.manual_seed(step_seed(self.seed, epoch, first + i, self.rank))
            yield self.move(batch)

    def move(self, obj):
        """Copy ``obj`` (tensor, or list / tuple of them, nested) to the device; augment the crop lists."""
        if torch.is_tensor(obj):
            return obj.to(self.device, non_blocking=True)
        if isinstance(obj, (list, tuple)) and obj and all(torch.is_tensor(t) and t.dim() in (4, 5) for t in obj):
            # images (B, 3, s, s) or clips (B, 3, T, s, s)
            crops = [t.to(self.device, non_blocking=True) for t in obj]
            if self.augment is not None and crops[0].dtype == torch.uint8:
                return self.augment(crops, self.generator, memory_format=self.memory_format)
            return [t.contiguous(memory_format=layout(self.memory_format, t.dim())) for t in crops]
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.move(t) for t in obj)
        return obj


def device_loader(loader, transform, device, seed=0, rank=0, channels_last=False):
    """Wrap ``loader`` in a :class:`DeviceLoader` when ``transform`` is a split pipeline or channels-last is on;
    else return it unchanged (the per-sample path).

    Args:
        loader: the DataLoader. transform: the dataset's transform (its ``device_augment`` is used if present).
        device: training device. seed, rank: for the per-step augmentation seed. channels_last: image layout.
    """
    augment = getattr(transform, "device_augment", None)
    if augment is None and not channels_last:
        return loader
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return DeviceLoader(loader, device, augment=augment, memory_format=fmt, seed=seed, rank=rank)


def pretrain_loader(root, transform, batch_size, workers, info, seed, channels_last=False, wrap=None,
                    flag="--batch_size"):
    """What every pretraining script reads: the image folder of ``root`` (class folders or flat) with ``transform``
    seeded per sample, ``src.data.folders.train_loader``, and, for a split ``transform`` or channels-last,
    :func:`device_loader`, which finishes the batches on the training device.

    Args:
        root: split folder (``src.data.folders.resolve_split``). transform: per-image or split
            (``src.augment.recipes``).
        batch_size, workers: per process. info: ``src.run.dist.DistInfo``. seed: the run seed.
        channels_last: batches in channels-last layout. wrap: optional dataset -> dataset (DeepCluster's indices).
        flag: the batch flag's name, for the error.
    Returns:
        ``(loader, sampler, dataset, iters_per_epoch)``.
    """
    dataset = build_dataset(root, transform, seed=seed)
    if wrap is not None:
        dataset = wrap(dataset)
    loader, sampler, iters_per_epoch = train_loader(dataset, batch_size, workers, info.world_size, info.rank, seed,
                                                    flag)
    loader = device_loader(loader, transform, info.device, seed=seed, rank=info.rank, channels_last=channels_last)
    return loader, sampler, dataset, iters_per_epoch
