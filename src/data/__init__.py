"""Datasets: image folders with a resumable sampler and the loader (``folders``), CIFAR pickles (``cifar``), VOC2007
(``voc``), static positive pairs (``pairs``), the generated demo sets (``demo``), video decoding and clips
(``video/``). Imports ``src.run`` only (errors, stop-signal handling of loader workers) and ``src.augment`` for the
video clip transforms."""
