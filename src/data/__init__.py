"""Datasets: image decoding (``decode``), image folders with a resumable sampler and the loader (``folders``), CIFAR
pickles (``cifar``) and STL-10 binaries (``stl10``), VOC2007 (``voc``), segmentation pairs (``segmentation``), the
transfer sets (``transfer``), labelled subsets (``subsets``), the generated demo sets (``demo``), video decoding,
clips and datasets (``video/``). Imports ``src.run`` only (errors, stop-signal handling of loader workers): the
transforms a dataset applies are its caller's (``src.augment``)."""
