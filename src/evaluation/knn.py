"""Best-NN and the weighted kNN of a frozen trunk, streamed: the search behind ``python -m eval.knn`` (the SCE /
SSL-small ``eval/knn.py`` protocol, docs/knn.md), in a form a training script can call too.

One search, any number of shards: the training set is cut into contiguous shards (:func:`shard_bounds`); each shard
embeds the whole val set in order (:func:`embed_queries`) and streams its share of the training set through two
exact top-k searches (:func:`search_bank`: Euclidean in the representation space for Best-NN, cosine for the
weighted kNN); :func:`summarize` merges the shards' candidates, in shard order, into the scores. ``shift-norm``
first needs the mean of the whole training set: each shard sums its raw features (:func:`bank_sum`) and
:func:`bank_mean` adds the sums. Nothing keeps the training features.

In one process, :func:`run_knn` does all of it. Split over ranks (an online monitor, ``eval.knn -g``), each rank
calls :func:`search_shard` on its shard and the merged result equals :func:`run_knn` on the whole set::

    lo, hi = shard_bounds(len(train_set), world_size)[rank]
    shard = DataLoader(Subset(train_set, range(lo, hi)), batch_size=b)       # in order, not shuffled
    mean = bank_mean(all_gather(bank_sum(model, shard, device)))             # shift-norm only
    part = search_shard(model, shard, val_loader, device, max_k=5, bank_mean=mean)
    result = summarize(all_gather(part), part["val_labels"], max_k=5)        # parts in rank order
"""
import torch
import torch.nn.functional as F

from src.evaluation.features import iter_features
from src.metrics import (StreamingKNN, best_nn_from_candidates, feature_mean, feature_sum, merge_candidates,
                         transform_rep, weighted_knn_from_candidates)
from src.run.errors import UserError

SHIFT = ("shift-norm", "shifted-norm")


def shard_bounds(n, g):
    """Contiguous ``[lo, hi)`` index ranges of ``g`` shards of ``n`` items (sizes differ by at most one), in order."""
    return [(i * n // g, (i + 1) * n // g) for i in range(g)]


def embed_queries(model, val_loader, device, rep_space, weighted=True, amp=None, progress=None):
    """Embed the val set in order; map it to ``rep_space`` (shift-norm: minus the val-set mean) and, for the
    weighted kNN, to unit rows.

    Returns:
        ``(query (N, D), cos_query (N, D) unit rows or None, labels (N,) CPU)``, features on ``device``.
    Raises:
        UserError: no readable val image (nothing to classify).
    """
    feats, labels = [], []
    for f, y in iter_features(model, val_loader, device, amp, progress=progress):
        feats.append(f)
        labels.append(y.cpu())
    if not feats:
        raise UserError(f"no val image could be read from '{_root(val_loader)}': nothing to classify; check the files")
    feats = torch.cat(feats)  # finite: iter_features refuses NaN / inf features
    query = transform_rep(feats, rep_space, mean=feature_mean(feats) if rep_space in SHIFT else None)
    return query, F.normalize(feats, dim=1) if weighted else None, torch.cat(labels)


def _root(loader):
    ds = getattr(loader, "dataset", None)
    return getattr(ds, "root", None) or getattr(getattr(ds, "dataset", None), "root", "the val set")


def bank_sum(model, train_loader, device, amp=None, progress=None):
    """First pass of shift-norm on one shard: ``{"sum": (D,) float64 CPU tensor or None (no row), "count": rows}``
    of the raw training features."""
    total, count = feature_sum(f for f, _ in iter_features(model, train_loader, device, amp, progress=progress))
    return {"sum": None if total is None else total.cpu(), "count": count}


def bank_mean(sums, what="the trunk"):
    """The (D,) mean of the whole training set from the shards' :func:`bank_sum` results (any order).

    Raises:
        UserError: no training row, or a non-finite sum (``what`` names the trunk in the message).
    """
    parts = [s["sum"] for s in sums if s["sum"] is not None]
    count = sum(s["count"] for s in sums)
    if not parts or not count:
        raise UserError("the training set has no readable image: no neighbour can be searched; check the files")
    total = sum(parts)
    if not bool(torch.isfinite(total).all()):
        raise UserError(f"{what} gives NaN or inf features on the training set: the checkpoint is broken (e.g. a "
                        "diverged run); no score is reported")
    return total / count


def search_bank(model, train_loader, query, device, max_k, rep_space="original", bank_mean=None, cos_query=None,
                knn_k=20, amp=None, progress=None):
    """Stream the training images through the trunk once and keep, for every query, the ``max_k`` nearest
    (Euclidean, in ``rep_space``) and, if ``cos_query`` is given, the ``knn_k`` most cosine-similar ones.

    Args:
        model: trunk on ``device``; train_loader: ``(images, labels)`` batches.
        query: (N_val, D) queries in ``rep_space``; cos_query: (N_val, D) unit rows or None.
        bank_mean: (D,) mean of the whole training set, required for shift-norm.
    Returns:
        dict of CPU tensors: ``dists`` / ``labels`` (N_val, <= max_k) and ``sims`` / ``sim_labels``
        (N_val, <= knn_k) (None without ``cos_query``).
    """
    if rep_space in SHIFT and bank_mean is None:
        raise ValueError("shift-norm needs bank_mean, the mean of the whole training set (bank_sum)")
    euclid = StreamingKNN(query, max_k)
    cosine = StreamingKNN(cos_query, knn_k, metric="cosine") if cos_query is not None else None
    for f, y in iter_features(model, train_loader, device, amp, progress=progress):
        euclid.add(transform_rep(f, rep_space, mean=bank_mean), y)
        if cosine is not None:
            cosine.add(F.normalize(f, dim=1), y)
    dists, labels = euclid.result()
    sims, sim_labels = cosine.result() if cosine is not None else (None, None)
    return {"dists": dists.cpu(), "labels": labels.cpu(), "sims": None if sims is None else sims.cpu(),
            "sim_labels": None if sim_labels is None else sim_labels.cpu()}


def search_shard(model, train_loader, val_loader, device, max_k=5, rep_space="original", bank_mean=None, knn_k=20,
                 weighted=True, amp=None, progress=None):
    """One shard's part: embed the val set (in order), then :func:`search_bank` over this shard's training images.

    Args:
        train_loader: this shard's training images, in order (e.g. a ``Subset`` over :func:`shard_bounds`).
        val_loader: the WHOLE val set, in order (every shard has the same queries).
        bank_mean: (D,) mean of the whole training set (:func:`bank_mean`), shift-norm only.
        progress: None, or the names of the two progress lines, ``(val name, train name)``.
    Returns:
        :func:`search_bank`'s dict plus ``val_labels`` (N_val,) on the CPU.
    """
    val_name, train_name = progress or (None, None)
    query, cos_query, val_labels = embed_queries(model, val_loader, device, rep_space, weighted, amp,
                                                 progress=val_name)
    part = search_bank(model, train_loader, query, device, max_k, rep_space, bank_mean, cos_query, knn_k, amp,
                       progress=train_name)
    part["val_labels"] = val_labels
    return part


def summarize(parts, val_labels, max_k, knn_k=20, knn_t=0.07, weighted=True):
    """Merge shard candidates into Best-NN and (optionally) the weighted kNN top-1.

    Args:
        parts: list of :func:`search_bank` results, in shard order. val_labels: (N_val,).
    Returns:
        dict with ``best_nn``, ``best_k``, ``acc_by_k`` and ``weighted_knn_top1`` (None if skipped).
    """
    dists, labels = merge_candidates([(p["dists"], p["labels"]) for p in parts], k=max_k)
    best, best_k, acc_by_k = best_nn_from_candidates(dists, labels, val_labels, max_k)
    wknn = None
    if weighted:
        sims, sim_labels = merge_candidates([(p["sims"], p["sim_labels"]) for p in parts], k=knn_k, largest=True)
        wknn = weighted_knn_from_candidates(sims, sim_labels, val_labels, temperature=knn_t)
    return {"best_nn": best, "best_k": best_k, "acc_by_k": acc_by_k, "weighted_knn_top1": wknn}


def run_knn(model, train_loader, val_loader, device, max_k=5, rep_space="original", knn_k=20, knn_t=0.07,
            weighted=True, amp=None):
    """Best-NN and weighted kNN in this process (one shard), e.g. from a training script; the figures of
    ``python -m eval.knn`` on the same images, sizes and settings.

    Args:
        model: trunk mapping images to (B, D) features, on ``device``.
        train_loader, val_loader: loaders of ``(images, labels)``, not shuffled (shift-norm reads train twice).
        device: the model's device. max_k, rep_space: Best-NN settings. knn_k, knn_t: weighted kNN.
        weighted: also compute the weighted kNN. amp: optional autocast dtype.
    Returns:
        dict as :func:`summarize`.
    """
    mean = bank_mean([bank_sum(model, train_loader, device, amp)]) if rep_space in SHIFT else None
    part = search_shard(model, train_loader, val_loader, device, max_k, rep_space, mean, knn_k, weighted, amp)
    return summarize([part], part["val_labels"], max_k, knn_k, knn_t, weighted)
