"""Shared code of the self-supervised toolkit. Its parts, in import order (each imports only those above it, and
nothing here imports a script):

- ``run/``: the run skeleton: launchers and collectives, flags, checkpoints, stop signals, NaN guards, logging;
- ``data/``: image folders and the resumable sampler, CIFAR / VOC / transfer-set readers, static pairs, demo data,
  video decoding and clips;
- ``augment/``: crops and augmentation recipes, per image, batched on the device, and the split loader;
- ``models/``: backbones and heads;
- ``losses.py``, ``optim.py``, ``metrics.py``: pure math (losses, optimizers and schedules, evaluation metrics);
- ``methods/``: the methods' pieces (queues, EMA, shuffle-BN, MoCo, SCE, SwAV, DeepCluster), taking objects;
- ``evaluation/``: what the evaluations share: checkpoint layouts, feature extraction, classifier heads.
"""
