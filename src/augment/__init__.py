"""Augmentations: crop geometry and the per-image recipes (``image``), the same recipes batched on the training device
(``device``), the split pipeline that crops in loader workers and finishes on the device (``split``), the static-pair
views of ``experiments.sample-augs`` (``pairs``) and time-consistent clip augmentations (``video``). Imports
``src.run`` only."""
