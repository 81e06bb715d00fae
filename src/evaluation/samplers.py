"""The orders in which an evaluation reads its rows: :class:`ShardSampler` (each rank a disjoint slice of a test
set or a feature pass, no padding, so every image counts once) and :class:`FeatureBatches` (epochs of shuffled
mini-batches of cached features, the same number of batches on every rank, resumable mid-epoch).
"""
import math

import torch

from src.data.folders import sample_seed


class ShardSampler(torch.utils.data.Sampler):
    """Indices ``rank, rank + world, rank + 2 world, ...`` of ``range(n)``: disjoint, no padding, in order.

    Args:
        n: dataset length. num_replicas: world size. rank: this process.
    """

    def __init__(self, n, num_replicas=1, rank=0):
        self.indices = list(range(rank, n, num_replicas))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class FeatureBatches:
    """Shuffled mini-batches of this rank's cached features; iterate once per epoch.

    Every rank yields the same number of batches (DDP needs it): each epoch a permutation of the local rows,
    drawn from ``(seed, epoch, rank)``, is repeated as needed to ``samples_per_rank`` indices (= ceil(N / world),
    as ``DistributedSampler`` pads), then cut into chunks of ``batch_size`` (the last one smaller). With
    ``shuffle=False`` the rows come in order, once each (a test set).

    Args:
        feats: (m, D) CPU tensor, or a :class:`src.evaluation.feature_store.FeatureFile` (on disk: each
            batch gathers only its rows); labels: (m,) long.
        batch_size: rows per batch on this rank.
        samples_per_rank: indices per rank and epoch (ignored without ``shuffle``: m).
        seed: run seed. rank: this process (rows differ per rank, so do permutations).
    """

    def __init__(self, feats, labels, batch_size, samples_per_rank, seed=0, rank=0, shuffle=True):
        self.feats, self.labels, self.batch_size, self.shuffle = feats, labels, batch_size, shuffle
        self.samples_per_rank = samples_per_rank if shuffle else feats.shape[0]
        self.seed, self.rank = seed, rank
        self.epoch, self.start_iter = 0, 0

    def set_epoch(self, epoch, start_iter=0):
        """Choose the epoch and how many of its batches to skip (resuming mid-epoch)."""
        self.epoch, self.start_iter = epoch, start_iter

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, self.rank) % 2 ** 63)
            perm = torch.randperm(self.feats.shape[0], generator=g)
            idx = perm.repeat(math.ceil(self.samples_per_rank / max(len(perm), 1)))[:self.samples_per_rank]
        else:
            idx = torch.arange(self.feats.shape[0])
        for chunk in list(idx.split(self.batch_size))[self.start_iter:]:
            yield self.feats[chunk], self.labels[chunk]

    def __len__(self):
        return math.ceil(self.samples_per_rank / self.batch_size) - self.start_iter
