"""Training a classifier on a trunk's features: what ``eval_linear.py`` and ``main_transfer.py`` share.

* :class:`LinearClassifier`: ``fc = Linear(dim, C)`` initialised N(0, 0.01) / 0 as in every reference linear
  probe, optionally after L2-normalising the features (SSL-small's transfer trick);
* :class:`PooledMapClassifier`: SwAV's RegLog without global pooling: AvgPool2d(6, stride 1) of the last
  feature map, optional BatchNorm2d, Linear;
* :func:`train_transform` / :func:`test_transform`: RandomResizedCrop + flip, Resize (+ CenterCrop), Normalize;
* :class:`ShardSampler` and :func:`evaluate`: each rank scores a disjoint slice of the test set (no padding, so
  every image counts exactly once) and loss / top-1 / top-5 are summed over ranks;
* :func:`extract_shard` / :func:`shard_features` and :class:`FeatureBatches`: one pass of a frozen trunk over each
  rank's shard of a dataset, then epochs of shuffled batches from that cache (in memory, or streamed from disk by
  ``src.evaluation.feature_store``);
* :class:`Results`: best (by top-1) and last accuracies, the per-epoch history, saved in checkpoints and JSON;
* :func:`check_classes`: a classifier needs at least 2 classes;
* :func:`fingerprint`: a checksum of a frozen module, so a run can assert that it never changed (MoCo's
  ``sanity_check``); :func:`content_hash`: what resumes and feature caches are keyed on.
"""
import copy
import math
import time

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torch import nn

from src.augment.views import IMAGENET_MEAN
from src.data.folders import build_loader, sample_seed
from src.evaluation.features import iter_features
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


# ==== transforms ====
def train_transform(crop_size=224, scale=(0.08, 1.0), std=(0.229, 0.224, 0.225), interpolation="bilinear"):
    """RandomResizedCrop(crop_size, scale) -> RandomHorizontalFlip -> ToTensor -> Normalize(ImageNet mean, ``std``)."""
    mode = T.InterpolationMode(interpolation)
    return T.Compose([T.RandomResizedCrop(crop_size, scale=tuple(scale), interpolation=mode),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, std)])


def test_transform(resize=256, crop_size=224, std=(0.229, 0.224, 0.225), interpolation="bilinear"):
    """Resize(resize) -> CenterCrop(crop_size) (skipped when ``crop_size`` is None) -> ToTensor -> Normalize."""
    ops = [T.Resize(resize, interpolation=T.InterpolationMode(interpolation))]
    if crop_size is not None:
        ops.append(T.CenterCrop(crop_size))
    return T.Compose(ops + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, std)])


# ==== evaluation ====
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


# ==== feature caches ====
def extract_shard(trunk, dataset, batch_size, workers, device, amp_dtype=None, progress=None, stats=None):
    """Features of this rank's shard of ``dataset`` (:class:`ShardSampler`: rows ``rank::world``), in order.

    Each rank keeps only its own shard, in memory (ImageNet at 2048 floats: 10.5 GB / world per process);
    ``eval_linear.py`` streams :func:`shard_features` to a file and reads batches back instead (``feature_store``).

    Args:
        trunk: frozen (B, 3, H, W) -> (B, D) module on ``device`` (put in eval mode here).
        dataset: map-style dataset of ``(image tensor, label)`` with a deterministic transform.
        batch_size, workers: DataLoader settings per rank.
        device: torch.device. amp_dtype: None or an autocast dtype.
        progress: name for the periodic "n/N images, r img/s" lines (rank 0 only), or None.
        stats: optional dict; ``stats["skipped"]`` is increased by the unreadable images left out.
    Returns:
        ``(feats (m, D) float32, labels (m,) long)`` on the CPU, m = this rank's share (readable images only).
    """
    feats, labels = [], []
    for f, y in shard_features(trunk, dataset, batch_size, workers, device, amp_dtype, progress, stats):
        feats.append(f)
        labels.append(y)
    if not feats:  # more ranks than images
        return torch.zeros(0, feature_dim(trunk, dataset, device)), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)


def shard_features(trunk, dataset, batch_size, workers, device, amp_dtype=None, progress=None, stats=None):
    """:func:`extract_shard` one batch at a time: yields ``(feats (B, D) float32, labels (B,) long)`` on the CPU,
    so that a writer (``src.evaluation.feature_store``) never holds the whole shard."""
    sampler = ShardSampler(len(dataset), dist.get_world_size(), dist.get_rank())
    loader = build_loader(dataset, batch_size, sampler, workers, drop_last=False, persistent=False)
    for f, y in iter_features(trunk, loader, device, amp_dtype, progress=progress if dist.get_rank() == 0 else None,
                              stats=stats):
        yield f.cpu(), y.cpu()


@torch.no_grad()
def feature_dim(trunk, dataset, device):
    """D of ``trunk`` on the images of ``dataset`` (one forward of its first item)."""
    return trunk(dataset[0][0][None].to(device)).shape[1]


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


# ==== bookkeeping ====
class History:
    """Per-epoch scores, the best one (highest ``metric``; the earliest on ties) and the last one.

    ``add`` returns True when the new entry is the best; ``state_dict()`` / ``load_state_dict()`` hold plain lists
    and dicts (checkpoint- and JSON-safe). Subclasses say which fields an entry keeps (:meth:`entry`).
    """
    metric = None

    def __init__(self):
        self.history = []

    def entry(self, epoch, res):
        raise NotImplementedError

    def add(self, epoch, res):
        entry = self.entry(epoch, res)
        is_best = self.best is None or entry[self.metric] > self.best[self.metric]
        self.history.append(entry)
        return is_best

    @property
    def best(self):
        return max(self.history, key=lambda e: (e[self.metric], -e["epoch"])) if self.history else None

    @property
    def last(self):
        return self.history[-1] if self.history else None

    def state_dict(self):
        return {"history": copy.deepcopy(self.history)}

    def load_state_dict(self, state):
        self.history = copy.deepcopy(state["history"])


class Results(History):
    """:class:`History` of :func:`evaluate`'s dicts (top-1, top-5, loss), best by top-1."""
    metric = "top1"

    def entry(self, epoch, res):
        return {"epoch": int(epoch), **{k: float(res[k]) for k in ("top1", "top5", "loss")},
                "skipped": int(res.get("skipped", 0))}

    def summary(self):
        """dict with ``best`` and ``last`` (epoch, top1, top5, loss) and the ``history``."""
        return {"best": self.best, "last": self.last, "history": self.history}

    def final_line(self):
        """``best Acc@1 .. Acc@5 .. (epoch e); last Acc@1 .. Acc@5 .. (epoch e)`` (and the unreadable images left
        out of the last test, when there were any)."""
        b, last = self.best, self.last
        skipped = f"; {last['skipped']} unreadable test images skipped" if last.get("skipped") else ""
        return (f"best Acc@1 {b['top1']:.3f} Acc@5 {b['top5']:.3f} (epoch {b['epoch']}); "
                f"last Acc@1 {last['top1']:.3f} Acc@5 {last['top5']:.3f} (epoch {last['epoch']}){skipped}")


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


@torch.no_grad()
def fingerprint(module):
    """(T, 2) tensor of (sum, L2 norm) of every parameter and buffer, in fp32: any update of them changes it.

    Cheap enough to call every epoch (no copy of float tensors); compare with ``torch.equal``.
    """
    return torch.stack([torch.stack([t.float().sum(), torch.linalg.vector_norm(t.float())])
                        for t in module.state_dict().values() if torch.is_tensor(t)]).cpu()


@torch.no_grad()
def content_hash(module):
    """SHA-256 (hex, 16 characters) of a module's state: names, dtypes, shapes and bytes of every tensor.

    What a resumed evaluation and a feature cache are keyed on: the same path with other weights in it (a
    ``--pretrained`` file overwritten by a later epoch) gives another hash, a copy of the file the same one.
    """
    import hashlib

    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        if torch.is_tensor(t):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
