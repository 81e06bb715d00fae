"""Embedding a dataset with a frozen trunk: batch by batch (:func:`iter_features`) or all at once
(:func:`extract_features`), in loader order, in eval mode and without gradients; or this rank's shard of it
(:func:`extract_shard`, :func:`shard_features`: rows ``rank::world``), the feature caches of the linear
evaluations (in memory, or streamed to disk by ``src.evaluation.feature_store``).

Progress is either a tqdm bar (``show_progress=True``) or, with ``progress="name"``, a plain line
every ``log_interval`` seconds with images/s, which reads better in log files of batch jobs.
"""
import time

import torch

from src.data.folders import build_loader
from src.evaluation.samplers import ShardSampler
from src.run import dist
from src.run.health import check_finite_features
from src.run.speed import autocast


@torch.no_grad()
def iter_features(model, loader, device, amp_dtype=None, show_progress=False, progress=None, log_interval=10.0,
                  stats=None):
    """Yield the features of each batch of ``loader``, in order.

    Args:
        model: module mapping (B, 3, H, W) images to (B, D) features; put in eval mode here.
        loader: iterable of ``(images, labels)`` batches.
        device: torch.device or string the model lives on; images are moved there.
        amp_dtype: None for fp32, or ``torch.float16`` / ``torch.bfloat16`` to run under autocast.
        show_progress: wrap the loader in a tqdm bar.
        progress: if a string, print ``"<progress>: n/N images, r img/s"`` every ``log_interval``
            seconds and once at the end.
        log_interval: seconds between progress lines.
        stats: optional dict; ``stats["skipped"]`` counts the images a dataset built with ``skip_unreadable``
            could not read (label -1): they are left out of the yielded batches.
    Yields:
        ``(feats, labels)``: (B, D) float32 features on ``device`` and (B,) long labels on ``device``.
    Raises:
        UserError: the trunk produced NaN/inf features (no score may be computed from them).
    """
    model.eval()
    total = len(loader.dataset) if hasattr(loader, "dataset") else None
    batches = loader
    if show_progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc=progress or "features", unit="batch")
    t0 = t_last = time.time()
    seen = skipped = 0
    for images, labels in batches:
        keep = labels >= 0  # -1: an unreadable image
        if not bool(keep.all()):
            skipped += int((~keep).sum())
            images, labels = images[keep], labels[keep]
        seen += int(keep.numel())
        if not len(labels):
            continue
        images = images.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            feats = check_finite_features(model(images).float())
        yield feats, labels.to(device).long()
        now = time.time()
        if progress and not show_progress and now - t_last >= log_interval:
            t_last = now
            print(f"{progress}: {seen}/{total} images, {seen / (now - t0):.1f} img/s", flush=True)
    if stats is not None:
        stats["skipped"] = stats.get("skipped", 0) + skipped
    if progress and not show_progress:
        elapsed = max(time.time() - t0, 1e-9)
        note = f", {skipped} unreadable skipped" if skipped else ""
        print(f"{progress}: {seen}/{total} images, {seen / elapsed:.1f} img/s (done in {elapsed:.1f} s){note}",
              flush=True)


@torch.no_grad()
def extract_features(model, loader, device, amp_dtype=None, show_progress=False, progress=None, stats=None):
    """Embed every image of ``loader``, keeping the loader's order.

    Args:
        model: module mapping (B, 3, H, W) to (B, D); switched to eval mode.
        loader: iterable of ``(images, labels)``; use ``shuffle=False`` to get dataset order.
        device: device the model lives on.
        amp_dtype: None, ``torch.float16`` or ``torch.bfloat16`` (autocast for the forward pass).
        show_progress: show a tqdm bar.
        progress: optional name for periodic plain progress lines (see :func:`iter_features`).
        stats: optional dict counting unreadable images left out (see :func:`iter_features`).
    Returns:
        ``(feats, labels)``: (N, D) float32 CPU tensor and (N,) long CPU tensor.
    """
    feats, labels = [], []
    for f, y in iter_features(model, loader, device, amp_dtype, show_progress=show_progress, progress=progress,
                              stats=stats):
        feats.append(f.cpu())
        labels.append(y.cpu())
    if not feats:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)


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
