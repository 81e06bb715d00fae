"""Augmentations: crop geometry, the per-image recipes and the evaluation transforms (``image``), the same recipes
batched on the training device (``device``), the split pipeline that crops in loader workers and finishes on the
device, and the pretraining loader built on it (``split``), the static-pair views of ``experiments.sample-augs``
(``pairs``), time-consistent clip augmentations and SCE's video pretraining set (``video``). Imports ``src.data``
(image decoding, the image folders and video datasets the loaders are built on), nothing above it."""
