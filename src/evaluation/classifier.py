"""A classifier on a trunk's features and its test: what ``eval_linear.py``, ``main_transfer.py`` and
``eval_semisup.py`` share.

* :class:`LinearClassifier`: ``fc = Linear(dim, C)`` initialised N(0, 0.01) / 0 as in every reference linear
  probe, optionally after L2-normalising the features (SSL-small's transfer trick);
* :class:`PooledMapClassifier`: SwAV's RegLog without global pooling: AvgPool2d(6, stride 1) of the last
  feature map, optional BatchNorm2d, Linear;
* :func:`evaluate`: each rank scores its disjoint slice of the test set (``src.evaluation.samplers.ShardSampler``:
  no padding, so every image counts exactly once) and loss / top-1 / top-5 are summed over ranks;
* :func:`check_classes`: a classifier needs at least 2 classes.

Elsewhere in ``src.evaluation``: the samplers (``samplers``), the feature caches (``features``, ``feature_store``),
the result history (``history``), the weight checksums (``hashes``); the transforms are
``src.augment.image.train_transform`` / ``test_transform``.
"""
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from src.metrics import topk_hits
from src.run import dist
from src.run.errors import UserError
from src.run.health import check_finite_features
from src.run.speed import autocast


class LinearClassifier(nn.Module):
    """``fc(x)`` or ``fc(normalize(x))``: the linear head of a linear probe.

    Args:
        in_dim: feature dimension D.
        num_classes: C.
        normalize: L2-normalise the features first (SSL-small ``main_transfer.py``: "features unit-normalised
            before the classifier", the trick of MoCo v2's detection transfer).
        dropout: dropout probability before ``fc`` (0; 0.8 in the video fine-tuning head, docs/video.md).
    ``forward``: (B, D) -> (B, C) logits. The parameters are named ``fc.weight`` / ``fc.bias`` as in torchvision
    and MoCo's ``main_lincls.py``, so the head can be put back on a torchvision model.
    """

    def __init__(self, in_dim, num_classes, normalize=False, dropout=0.0):
        super().__init__()
        self.normalize = normalize
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # no parameters: same state dict
        self.fc = nn.Linear(in_dim, num_classes)
        nn.init.normal_(self.fc.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        return self.fc(self.dropout(F.normalize(x, dim=1) if self.normalize else x))


class PooledMapClassifier(nn.Module):
    """SwAV's linear head on a local average pooling of the trunk's last feature map: ``eval_linear.py
    --global_pooling false [--use_bn true]`` (Caron et al. 2020; facebookresearch/swav ``eval_linear.py``
    ``RegLog``).

    ``AvgPool2d(kernel_size, stride)`` over the (B, C, H, W) map -> (B, C, h, w) with h = (H - kernel) / stride + 1
    (ResNet-50 at 224 px: 2048 x 7 x 7 -> 2048 x 2 x 2) -> optional ``BatchNorm2d(C)`` (per channel, statistics
    over the batch and the h x w positions, as RegLog's; default eps 1e-5, momentum 0.1) -> flatten (C x h x w,
    channel-major: 8192 for ResNet-50) -> ``Linear`` initialised N(0, 0.01), bias 0. Parameter names
    ``bn.*`` / ``linear.*`` are RegLog's.

    Args:
        channels: C of the map.
        map_size: (H, W) of the map at the evaluation resolution.
        num_classes: number of classes.
        use_bn: the BatchNorm2d before the linear layer.
        kernel_size, stride: the pooling (SwAV: 6 and 1).
    ``forward(x)``: x is the (B, C, H, W) map, or the (B, C * h * w) output of :meth:`pool_features` (what a
    feature cache holds: the pooling has no parameters) -> (B, num_classes) logits.
    Raises:
        UserError: the map is smaller than the pooling window.
    """

    def __init__(self, channels, map_size, num_classes, use_bn=True, kernel_size=6, stride=1):
        super().__init__()
        height, width = map_size
        if min(height, width) < kernel_size:
            raise UserError(f"--global_pooling false pools the trunk's {height}x{width} feature map with a "
                            f"{kernel_size}x{kernel_size} window: raise --crop_size (ResNets: 224 gives 7x7)")
        self.channels = channels
        self.pooled_size = ((height - kernel_size) // stride + 1, (width - kernel_size) // stride + 1)
        self.in_dim = channels * self.pooled_size[0] * self.pooled_size[1]
        self.pool = nn.AvgPool2d(kernel_size, stride=stride)
        self.bn = nn.BatchNorm2d(channels) if use_bn else None
        self.linear = nn.Linear(self.in_dim, num_classes)
        nn.init.normal_(self.linear.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def pool_features(self, fmap):
        """(B, C, H, W) map -> (B, C * h * w) pooled features, flattened channel-major."""
        return torch.flatten(self.pool(fmap), 1)

    def forward(self, x):
        x = self.pool(x) if x.ndim == 4 else x.reshape(x.shape[0], self.channels, *self.pooled_size)
        if self.bn is not None:
            x = self.bn(x)
        return self.linear(torch.flatten(x, 1))


@torch.no_grad()
def evaluate(head, batches, device, features=None, amp_dtype=None):
    """Cross-entropy, top-1 and top-5 of ``head`` over ``batches``, summed over all ranks.

    Args:
        head: (B, D) -> (B, C) module, already in eval mode.
        batches: iterable of ``(x, labels)``: images when ``features`` is given, else features. Video tests give
            (B, V, 3, T, H, W): the V views of each video (10 clips x 3 crops) are scored and their softmax
            probabilities averaged (docs/video.md); loss and accuracies are those of the averaged probabilities.
        device: where the forward runs.
        features: optional (B, 3, H, W) -> (B, D) module (the trunk, in eval mode), run under autocast.
        amp_dtype: None or an autocast dtype for ``features``.
    Returns:
        dict with ``loss`` (mean), ``top1``, ``top5`` (percent), ``n`` (images over all ranks), ``skipped``
        (unreadable images left out, over all ranks), ``seconds``. Every rank gets the same numbers.
    Raises:
        UserError: non-finite features or a non-finite loss (no score is computed from them).
    """
    t0 = time.time()
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss sum, top-1 hits, top-5 hits, count, skipped
    for x, y in batches:
        keep = y >= 0  # label -1: an unreadable image (SafeImageFolder(skip_unreadable=True)), not scored
        if not bool(keep.all()):
            sums[4] += float((~keep).sum())
            x, y = x[keep], y[keep]
            if not len(y):
                continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        views = x.shape[1] if x.ndim == 6 else 0
        if views:
            x = x.flatten(0, 1)  # (B * V, 3, T, H, W), the views of a video contiguous
        if features is not None:
            with autocast(device, amp_dtype):
                x = features(x)
            check_finite_features(x)
        logits = head(x.float())
        if views:  # log of the view-averaged probabilities: its cross-entropy and top-k are theirs
            logits = logits.softmax(dim=1).view(-1, views, logits.shape[1]).mean(dim=1).clamp_min(1e-12).log()
        hits = topk_hits(logits, y)  # (B, k)
        sums[:4] += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(), hits[:, 0].sum().double(),
                                 hits.any(dim=1).sum().double(), torch.tensor(float(y.shape[0]), device=device)])
    dist.all_reduce(sums)
    loss, top1, top5, n, skipped = sums.tolist()
    if not math.isfinite(loss):
        raise UserError("the classifier's test loss is NaN/inf: the head diverged (lower --lr); no score is "
                        "reported", collective=True)
    n_safe = max(n, 1.0)
    return {"loss": loss / n_safe, "top1": 100.0 * top1 / n_safe, "top5": 100.0 * top5 / n_safe, "n": int(n),
            "skipped": int(skipped), "seconds": time.time() - t0}


def check_classes(classes, where):
    """A classifier needs at least 2 classes: with one, every prediction is right and its accuracy says nothing.

    Args:
        classes: the training set's class names. where: the folder (or dataset) named in the error.
    Raises:
        UserError: fewer than 2 classes (collective: every rank reads the same folder).
    """
    if len(classes) < 2:
        names = f" ({', '.join(repr(c) for c in classes)})" if classes else ""
        raise UserError(f"'{where}' has {len(classes)} class{names}: a classifier needs at least 2 classes (every "
                        "prediction of a 1-class head is right, so its accuracy says nothing); pass a dataset with one "
                        "subfolder per class, 2 or more", collective=True)
