"""Shared code of the self-supervised toolkit. Its parts, in import order (each imports only those above it, and
nothing here imports a script, ``eval/``, ``experiments/`` or ``bench/``; tests/test_layout.py checks both):

- ``run/``: the run skeleton: launchers and collectives, flags, checkpoints, stop signals, NaN guards, logging;
- ``data/``: image decoding, image folders and the resumable sampler, CIFAR / STL-10 / VOC / transfer-set readers,
  demo data, video decoding, clips and datasets; the transforms are the callers';
- ``augment/``: crops and augmentation recipes, per image and batched on the device, the evaluation transforms,
  the split loader and the pretraining loader built on data's folders;
- ``models/``: backbones and heads;
- ``losses.py``, ``optim.py``, ``metrics.py``: pure math (losses, optimizers and schedules, evaluation metrics);
- ``methods/``: the methods' pieces (queues, EMA, shuffle-BN, MoCo, SCE, SwAV, DeepCluster), taking objects;
- ``evaluation/``: what the evaluations share: checkpoint layouts and trunks, feature extraction, samplers,
  classifier heads, results, the positive-pair and video evaluation sets, the training monitor.
"""
