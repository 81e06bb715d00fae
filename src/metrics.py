"""Evaluation metrics on feature tensors, pure and on the device of their inputs (nothing here reads files):

* Best-NN (SSL-small ``eval/knn.py``; docs/knn.md): Euclidean neighbours from an exact streaming top-k over bank
  batches (:class:`StreamingKNN`, the bank is never held whole), majority vote, best odd k;
* weighted kNN (Wu et al. 2018; facebookresearch/dino ``eval_knn.py``): cosine, votes ``exp(sim / T)``;
* :func:`accuracy`, alignment / uniformity (Wang & Isola 2020), instance discrimination on static pairs;
* retrieval at k (video SCE; juliendenize/eztorch ``run/retrieval_from_bank.py``);
* segmentation mIoU (wvangansbeke/Revisiting-Contrastive-SSL ``evaluation/segmentation``).
"""
import torch
import torch.nn.functional as F

from src.run.errors import UserError

REP_SPACES = ("original", "norm", "shifted-norm", "shift-norm")


# ==== representation spaces ====
def feature_sum(batches):
    """Sum and count of feature rows streamed batch by batch, accumulated in float64.

    Args:
        batches: iterable of (b, D) tensors (any device and float dtype).
    Returns:
        ``(sum (D,) float64 tensor on the batches' device, count int)``; ``(None, 0)`` for no batch.
    """
    total, count = None, 0
    for x in batches:
        s = x.double().sum(dim=0)
        total = s if total is None else total + s
        count += x.shape[0]
    return total, count


def feature_mean(x, chunk_size=65536):
    """Mean row of ``x`` (N, D), summed in float64 chunk by chunk (no float64 copy of the whole set)."""
    total, count = feature_sum(x.split(chunk_size))
    if not count:
        raise UserError("cannot centre an empty feature set: it has no rows")
    return total / count


def transform_rep(x, rep_space, mean=None):
    """Map features to a representation space.

    Args:
        x: (B, D) features.
        rep_space: ``"original"`` (unchanged), ``"norm"`` (rows L2-normalised), ``"shifted-norm"`` or its
            alias ``"shift-norm"`` (subtract ``mean``, then L2-normalise rows).
        mean: (D,) centre for ``shift-norm``: the mean of the whole set ``x`` belongs to (see
            :func:`feature_mean`). None centres ``x`` by its own mean, which is right only when ``x`` is
            the whole set: the SSL-small reference subtracts each batch's mean, which approximates the set
            mean only because its loaders shuffle; on class-sorted batches it does not.
    Returns:
        (B, D) tensor.
    Raises:
        UserError: unknown ``rep_space``.
    """
    if rep_space == "original":
        return x
    if rep_space == "norm":
        return F.normalize(x, dim=1)
    if rep_space in ("shifted-norm", "shift-norm"):
        centre = feature_mean(x) if mean is None else mean
        return F.normalize(x - centre.to(x), dim=1)
    raise UserError(f"unknown representation space {rep_space!r}: choose one of {', '.join(REP_SPACES)}")


# ==== exact streaming nearest neighbours ====
def _check_finite(x, what):
    if not bool(torch.isfinite(x).all()):
        raise UserError(f"the {what} contain NaN or inf: no neighbour (and no score) is defined for them; the trunk "
                        "that produced them is broken (e.g. a diverged checkpoint): evaluate a healthy one")


def _keep_topk(values, labels, k, largest):
    """Keep the k best columns per row, sorted best first. values, labels: (N, m) -> (N, min(k, m))."""
    k = min(k, values.shape[1])
    values, idx = torch.topk(values, k, dim=1, largest=largest, sorted=True)
    return values, torch.gather(labels, 1, idx)


class StreamingKNN:
    """Exact k nearest neighbours of fixed queries over a bank that arrives batch by batch.

    Each batch is scored against all queries with one matrix product, cut to its k best per query, and
    merged with the k kept so far, so memory is O(N * (k + b)) whatever the bank size and nothing of the
    bank is kept. Euclidean ranking uses ``||b||^2 - 2 q.b`` (``||q||^2`` is the same for every candidate
    of a query and is added back, with the square root, in :meth:`result`); cosine ranking uses ``q.b``
    and expects unit rows on both sides.

    Args:
        query: (N, D) queries (already in their representation space).
        k: neighbours to keep (>= 1).
        metric: ``"euclidean"`` (Best-NN) or ``"cosine"`` (weighted kNN; the largest similarities win).
    Raises:
        UserError: k < 1, or non-finite queries (or, in :meth:`add`, bank rows).
    """

    def __init__(self, query, k, metric="euclidean"):
        if k < 1:
            raise UserError(f"k must be >= 1, got {k}")
        _check_finite(query, "query features")
        self.query, self.k, self.largest = query.float(), k, metric == "cosine"
        self.values = self.query.new_empty(query.shape[0], 0)
        self.labels = torch.empty(query.shape[0], 0, dtype=torch.long, device=query.device)

    def add(self, feats, labels):
        """Score one bank batch: feats (b, D) in the queries' space, labels (b,) (any per-row integer payload)."""
        feats = feats.to(self.query.device).float()
        _check_finite(feats, "bank features")
        if self.largest:
            scores = self.query @ feats.T  # (N, b) cosine similarities
        else:  # (N, b): ||b||^2 - 2 q.b, in one fused product
            scores = torch.addmm(feats.pow(2).sum(dim=1).unsqueeze(0), self.query, feats.T, alpha=-2.0)
        vals, idx = torch.topk(scores, min(self.k, feats.shape[0]), dim=1, largest=self.largest, sorted=False)
        labels = labels.to(self.query.device).long()[idx]  # (N, k_b)
        self.values, self.labels = _keep_topk(torch.cat([self.values, vals], dim=1),
                                              torch.cat([self.labels, labels], dim=1), self.k, self.largest)

    def result(self):
        """``(values, labels)``, (N, min(k, bank rows seen)), best first: Euclidean distances ascending or
        cosine similarities descending, and the payload of those bank rows."""
        if self.largest:
            return self.values, self.labels
        q_sq = self.query.pow(2).sum(dim=1, keepdim=True)
        return (self.values + q_sq).clamp_min(0).sqrt(), self.labels


def knn_candidates(query, bank_batches, k, rep_space="original", bank_mean=None):
    """Exact streaming k-nearest-neighbour search (Euclidean distance) with :class:`StreamingKNN`.

    Args:
        query: (N, D) query features, already in the representation space.
        bank_batches: iterable of ``(feats (b, D), labels (b,))`` batches of the bank (moved to
            ``query.device``).
        k: number of neighbours to keep (>= 1).
        rep_space: representation space applied to every bank batch (see :func:`transform_rep`).
        bank_mean: (D,) mean of the whole bank, required for ``shift-norm``.
    Returns:
        ``(dists, labels)``, both (N, min(k, bank size)): distances ascending along dim 1 and the bank
        labels (long) of those neighbours.
    """
    if rep_space in ("shifted-norm", "shift-norm") and bank_mean is None:
        raise ValueError("shift-norm search needs bank_mean, the mean of the whole bank (feature_mean)")
    knn = StreamingKNN(query, k)
    for feats, labels in bank_batches:
        knn.add(transform_rep(feats.float(), rep_space, mean=bank_mean), labels)
    return knn.result()


def merge_candidates(parts, k=None, largest=False):
    """Merge the candidates of several bank shards.

    Args:
        parts: list of ``(values (N, k_i), labels (N, k_i))`` from :class:`StreamingKNN` / :func:`knn_candidates`,
            same N and device.
        k: neighbours to keep; default the largest k_i.
        largest: False for distances (smallest first), True for similarities.
    Returns:
        ``(values, labels)``: (N, min(k, sum k_i)), best first.
    """
    if not parts:
        raise ValueError("merge_candidates needs at least one shard")
    k = k or max(d.shape[1] for d, _ in parts)
    values = torch.cat([d for d, _ in parts], dim=1)
    labels = torch.cat([l for _, l in parts], dim=1)
    return _keep_topk(values, labels, k, largest=largest)


# ==== Best-NN ====
def _majority_vote(labels, num_classes, chunk_size=8192):
    """Unweighted vote. labels: (N, k) long -> (N,) predicted class; ties go to the smallest class id."""
    preds = []
    for lab in labels.split(chunk_size):
        votes = torch.zeros(lab.shape[0], num_classes, dtype=torch.int32, device=lab.device)
        votes.scatter_add_(1, lab, torch.ones_like(lab, dtype=torch.int32))
        preds.append(votes.argmax(dim=1))  # argmax returns the first maximum: the smallest id
    return torch.cat(preds)


def best_nn_from_candidates(dists, labels, test_labels, max_k):
    """Best-NN accuracy from nearest-neighbour candidates.

    Args:
        dists: (N, m) neighbour distances (any order; sorted here).
        labels: (N, m) long labels of those neighbours.
        test_labels: (N,) true labels.
        max_k: largest k' to try; every odd k' in 1, 3, ..., min(max_k, m) is evaluated.
    Returns:
        ``(best_acc, best_k, acc_by_k)``: best accuracy in percent (float), the odd k' reaching it (the
        smallest one on ties), and ``{k': accuracy in percent}``.
    """
    if max_k < 1:
        raise UserError(f"max k must be >= 1, got {max_k}")
    if labels.shape[1] == 0:
        raise UserError("no nearest-neighbour candidates: the training set is empty")
    order = torch.argsort(dists, dim=1, stable=True)
    labels = torch.gather(labels, 1, order)
    test_labels = test_labels.to(labels.device).long()
    num_classes = int(max(labels.max(), test_labels.max())) + 1
    acc_by_k = {}
    for kk in range(1, min(max_k, labels.shape[1]) + 1, 2):
        pred = _majority_vote(labels[:, :kk].contiguous(), num_classes)
        acc_by_k[kk] = 100.0 * (pred == test_labels).sum().item() / len(test_labels)
    best_k = max(acc_by_k, key=lambda kk: (acc_by_k[kk], -kk))
    return acc_by_k[best_k], best_k, acc_by_k


def best_nn(train_feats, train_labels, test_feats, test_labels, max_k=5, rep_space="original", batch_size=4096):
    """Best-NN accuracy of test features against a training bank (Euclidean kNN, majority vote).

    For ``shift-norm`` the bank is centred by the mean of all training rows and the queries by the mean
    of all test rows (each set by its own mean, the limit of the reference's shuffled per-batch means; see
    ``docs/knn.md``), so the result does not depend on ``batch_size``.

    Args:
        train_feats: (N_train, D); train_labels: (N_train,) long.
        test_feats: (N_test, D); test_labels: (N_test,) long.
        max_k: largest (odd) k' tried.
        rep_space: see :func:`transform_rep`.
        batch_size: bank rows per distance block.
    Returns:
        ``(best_acc_percent, best_k, acc_by_k)`` as :func:`best_nn_from_candidates`.
    """
    shift = rep_space in ("shifted-norm", "shift-norm")
    query = transform_rep(test_feats.float(), rep_space, mean=feature_mean(test_feats) if shift else None)
    bank = zip(train_feats.split(batch_size), train_labels.split(batch_size))
    dists, labels = knn_candidates(query, bank, max_k, rep_space, bank_mean=feature_mean(train_feats) if shift else None)
    return best_nn_from_candidates(dists, labels, test_labels, max_k)


# ==== weighted kNN ====
def _weighted_vote(sims, labels, temperature, num_classes):
    """(N, k) similarities and labels -> (N,) class with the largest sum of ``exp(sim / T)``."""
    votes = torch.zeros(labels.shape[0], num_classes, device=labels.device)
    votes.scatter_add_(1, labels, (sims / temperature).exp())
    return votes.argmax(dim=1)


def weighted_knn_from_candidates(sims, labels, test_labels, temperature=0.07, num_classes=None):
    """Weighted kNN top-1 from cosine candidates (e.g. shard results merged with ``largest=True``).

    Args:
        sims: (N, k) cosine similarities of the kept neighbours; labels: (N, k) long; test_labels: (N,).
        temperature: T of the vote weights ``exp(sim / T)``. num_classes: default largest label + 1.
    Returns:
        float: top-1 accuracy in percent.
    """
    test_labels = test_labels.to(labels.device).long()
    if num_classes is None:
        num_classes = int(max(labels.max(), test_labels.max())) + 1
    pred = _weighted_vote(sims, labels, temperature, num_classes)
    return 100.0 * (pred == test_labels).sum().item() / max(len(test_labels), 1)


def weighted_knn(train_feats, train_labels, test_feats, test_labels, k=20, temperature=0.07, num_classes=None,
                 chunk_size=1024, bank_chunk_size=65536):
    """Weighted kNN top-1 accuracy (InstDisc / DINO protocol).

    Features are L2-normalised; the k training features with the highest cosine similarity to a test
    feature vote for their class with weight ``exp(sim / temperature)``; the class with the largest sum
    wins. Test rows are processed ``chunk_size`` at a time against bank blocks of ``bank_chunk_size``
    rows, normalised block by block (:class:`StreamingKNN`), so memory is O(chunk_size * (k +
    bank_chunk_size)) beyond the inputs. Runs on the device of ``train_feats``.

    Args:
        train_feats: (N_train, D); train_labels: (N_train,) long.
        test_feats: (N_test, D); test_labels: (N_test,) long.
        k: neighbours (clipped to N_train).
        temperature: softmax-like temperature T of the vote weights.
        num_classes: number of classes (default: largest label + 1).
        chunk_size: test rows per step; bank_chunk_size: training rows per similarity block.
    Returns:
        float: top-1 accuracy in percent.
    """
    device = train_feats.device
    train_labels = train_labels.to(device).long()
    test_labels = test_labels.to(device).long()
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    correct = 0
    for q, y in zip(test_feats.split(chunk_size), test_labels.split(chunk_size)):
        knn = StreamingKNN(F.normalize(q.to(device).float(), dim=1), k, metric="cosine")
        for b, bl in zip(train_feats.split(bank_chunk_size), train_labels.split(bank_chunk_size)):
            knn.add(F.normalize(b.float(), dim=1), bl)
        correct += (_weighted_vote(*knn.result(), temperature, num_classes) == y).sum().item()
    return 100.0 * correct / max(len(test_labels), 1)


# ==== classification ====
def accuracy(output, target, topk=(1,)):
    """Top-k accuracy of classifier outputs.

    Args:
        output: (B, C) logits or scores.
        target: (B,) long class ids.
        topk: the k values to report.
    Returns:
        list of floats, one per k: percent of rows whose target is among the k highest scores.
    """
    maxk = min(max(topk), output.shape[1])
    pred = output.topk(maxk, dim=1, largest=True, sorted=True).indices  # (B, maxk)
    hit = pred.eq(target.view(-1, 1))
    return [100.0 * hit[:, :min(k, maxk)].any(dim=1).float().sum().item() / max(target.shape[0], 1) for k in topk]


@torch.no_grad()
def topk_hits(logits, target, k=5):
    """(B, min(k, C)) bool: whether the j-th highest score of each row is its target (column 0: the top-1)."""
    return logits.topk(min(k, logits.shape[1]), dim=1).indices.eq(target[:, None])


@torch.no_grad()
def topk_rates(logits, target):
    """``{"Acc@1": ..., "Acc@5": ...}``: the batch's top-1 and top-5 accuracy in percent, as 0-d tensors on the
    logits' device (no host sync: the progress logger reads them when it prints)."""
    hits = topk_hits(logits, target)
    return {"Acc@1": hits[:, 0].float().mean() * 100, "Acc@5": hits.any(dim=1).float().mean() * 100}


# ==== alignment and uniformity (Wang & Isola 2020) ====
def align(x, y):
    """Instance alignment: mean squared distance between positive pairs, ``mean_i ||x_i - y_i||^2``.

    Wang & Isola 2020, "Understanding Contrastive Representation Learning through Alignment and
    Uniformity on the Hypersphere" (alpha = 2). For unit rows it equals ``2 - 2 * mean_i <x_i, y_i>``,
    the form of SSL-small's ``eval/stats-dist.py``; it lies in [0, 4], lower is better aligned.

    Args:
        x, y: (N, D) features of the two views, row i of each from the same image; L2-normalise them
            first for the usual (hypersphere) reading.
    Returns:
        0-d tensor (differentiable, on the inputs' device and dtype).
    """
    if x.shape != y.shape or x.dim() != 2 or x.shape[0] == 0:
        raise UserError(f"align needs two (N, D) tensors of the same shape with N >= 1, got {tuple(x.shape)} "
                        f"and {tuple(y.shape)}")
    return (x - y).pow(2).sum(dim=1).mean()


def uniformity(x, t=2):
    """Uniformity: ``log mean_{i<j} exp(-t ||x_i - x_j||^2)`` over all unordered pairs (Wang & Isola 2020).

    The log of the average pairwise Gaussian potential; lower (more negative) is more uniform on the
    sphere, the minimum for unit rows being about ``-t * 2`` for many well-spread points. Computed
    with a log-sum-exp, so it stays finite when every pair is far apart.

    Args:
        x: (N, D) features, N >= 2 (usually unit rows). Memory is O(N^2): estimate on chunks of a few
            thousand rows for large sets (``eval/stats-dist.py`` averages chunks of 128).
        t: temperature of the potential (2 in the paper and the reference).
    Returns:
        0-d tensor (differentiable).
    """
    if x.dim() != 2 or x.shape[0] < 2:
        raise UserError(f"uniformity needs an (N, D) tensor with N >= 2, got {tuple(x.shape)}")
    sq = torch.pdist(x, p=2).pow(2)  # (N (N - 1) / 2,) pairs i < j
    return torch.logsumexp(-t * sq, dim=0) - torch.log(torch.tensor(float(sq.numel()), dtype=x.dtype,
                                                                   device=x.device))


def intra_class_align(x, labels):
    """Intra-class alignment: for each class, the mean squared distance over its unordered pairs
    ``i < j``; then the mean over classes (SSL-small ``eval/stats-dist.py``, "cls-align").

    Every class weighs the same, whatever its size. Classes with a single sample have no pair and are
    left out of the mean.

    Args:
        x: (N, D) features (usually unit rows).
        labels: (N,) integer class ids (any values, any order).
    Returns:
        0-d tensor (differentiable).
    Raises:
        UserError: shapes disagree, or no class has two samples.
    """
    labels = torch.as_tensor(labels, device=x.device)
    if x.dim() != 2 or labels.shape != (x.shape[0],):
        raise UserError(f"intra_class_align needs x (N, D) and labels (N,), got {tuple(x.shape)} and "
                        f"{tuple(labels.shape)}")
    per_class = [torch.pdist(x[labels == c], p=2).pow(2).mean()
                 for c in torch.unique(labels) if int((labels == c).sum()) >= 2]
    if not per_class:
        raise UserError("intra_class_align: no class has two samples, so there is no pair to measure")
    return torch.stack(per_class).mean()


# ==== instance discrimination on a static positive-pair set ====
def instdisc_topk(queries, positives, topk=5, chunk_size=1024):
    """Instance-discrimination retrieval accuracy (SSL-small ``eval/instdisc.py``).

    Query i must find its own positive ``positives[i]`` among the candidates ``{positives[i]} U
    {queries[j] : j != i}`` (every other image's query view is a negative) by inner product. It is a hit
    at k when fewer than k negatives score at least as high as the positive (ties count against the
    positive, so a collapsed representation scores 0). The reference puts the query itself among the
    candidates and measures top-(k+1) instead; with unit rows the query's self-similarity is the
    maximum, so both agree except on exact ties.

    Args:
        queries: (N, D) query features, usually unit rows (view 0 for "d-sd", view 1 for "sd-sd").
        positives: (N, D) positives (view 1 for "d-sd", view 2 for "sd-sd").
        topk: largest k reported.
        chunk_size: query rows per similarity block (memory O(chunk_size * N)).
    Returns:
        list of ``topk`` floats: accuracy in percent at k = 1, ..., topk.
    """
    if queries.shape != positives.shape or queries.dim() != 2 or queries.shape[0] < 1 or topk < 1:
        raise UserError(f"instdisc_topk needs queries and positives of one (N, D) shape and topk >= 1, got "
                        f"{tuple(queries.shape)}, {tuple(positives.shape)}, topk {topk}")
    n = queries.shape[0]
    hits = torch.zeros(topk, dtype=torch.long)
    for start in range(0, n, chunk_size):
        q = queries[start:start + chunk_size]
        pos = (q * positives[start:start + chunk_size]).sum(dim=1, keepdim=True)  # (c, 1)
        neg = q @ queries.T  # (c, N); the query itself is removed below
        rows = torch.arange(q.shape[0], device=q.device)
        neg[rows, rows + start] = float("-inf")
        rank = (neg >= pos).sum(dim=1)  # negatives scoring at least the positive
        ks = torch.arange(1, topk + 1, device=q.device)
        hits += (rank.unsqueeze(1) < ks).sum(dim=0).cpu()
    return [100.0 * h / n for h in hits.tolist()]


# ==== retrieval from a bank (video SCE) ====
RETRIEVAL_KS = (1, 5, 10, 15, 20, 25)


def retrieval_at_k(query, query_labels, bank, bank_labels, ks=RETRIEVAL_KS, chunk_size=1024):
    """Top-k retrieval accuracy of a query set against a bank (video SCE; docs/video.md "Evaluation").

    Each set is centred by **its own** mean (query minus the query mean, bank minus the bank mean), rows are
    L2-normalised, similarity is the cosine; for each k, a query is a hit when **any** of its k most similar bank
    items has its label. "Retrieval 1" of the tables is k = 1.

    Args:
        query: (Q, D) features (the test split); query_labels: (Q,) ints.
        bank: (N, D) features (the train split); bank_labels: (N,) ints.
        ks: the k values (1, 5, 10, 15, 20, 25); each at most N.
        chunk_size: query rows per similarity block (memory O(chunk_size * N)).
    Returns:
        dict {k: accuracy in percent}.
    """
    if query.dim() != 2 or bank.dim() != 2 or query.shape[1] != bank.shape[1] or not len(query) or not len(bank):
        raise UserError(f"retrieval_at_k needs (Q, D) queries and (N, D) bank features, got {tuple(query.shape)} "
                        f"and {tuple(bank.shape)}")
    if max(ks) > bank.shape[0] or min(ks) < 1:
        raise UserError(f"retrieval at k = {max(ks)} needs at least that many bank items, the bank has "
                        f"{bank.shape[0]}")
    q = F.normalize(query.float() - query.float().mean(dim=0), dim=1)
    b = F.normalize(bank.float() - bank.float().mean(dim=0), dim=1)
    bank_labels = bank_labels.to(b.device)
    hits = torch.zeros(len(ks), dtype=torch.long)
    for start in range(0, q.shape[0], chunk_size):
        idx = (q[start:start + chunk_size] @ b.T).topk(max(ks), dim=1).indices  # (c, kmax), most similar first
        match = bank_labels[idx] == query_labels[start:start + chunk_size].to(b.device)[:, None]
        hits += torch.stack([match[:, :k].any(dim=1).sum() for k in ks]).cpu()
    return {k: 100.0 * h / q.shape[0] for k, h in zip(ks, hits.tolist())}


# ==== semantic segmentation ====
IGNORE_INDEX = 255  # VOC's object boundaries and Cityscapes' void classes


def confusion_matrix(pred, target, num_classes, ignore_index=IGNORE_INDEX):
    """Pixel confusion matrix of a segmentation.

    Args:
        pred: predicted class per pixel, any shape, integer values in [0, num_classes).
        target: ground truth of the same shape; pixels equal to ``ignore_index`` (or outside [0, num_classes))
            are not counted.
        num_classes: C.
        ignore_index: the label left out (255).
    Returns:
        (C, C) int64 tensor on ``target``'s device: entry [t, p] counts pixels of true class t predicted as p.
    """
    if pred.shape != target.shape:
        raise UserError(f"confusion_matrix: prediction {tuple(pred.shape)} and ground truth {tuple(target.shape)} "
                        "differ in shape")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    if bool(((pred[keep] < 0) | (pred[keep] >= num_classes)).any()):
        raise UserError(f"confusion_matrix: predictions outside [0, {num_classes})")
    cells = target[keep] * num_classes + pred[keep]
    return torch.bincount(cells, minlength=num_classes * num_classes).view(num_classes, num_classes)


def iou_from_confusion(conf):
    """Per-class intersection over union and their mean.

    IoU of class c is ``TP / (TP + FP + FN)`` with TP the diagonal, FN the rest of row c (true c, predicted
    otherwise) and FP the rest of column c. A class absent from both the ground truth and the predictions has
    no IoU (NaN) and is left out of the mean, as cityscapesScripts does; the reference's ``SemsegMeter`` counts it as
    0 instead. On the full VOC and Cityscapes val sets every class is present, so both give the same number.

    Args:
        conf: (C, C) counts from :func:`confusion_matrix` (summed over images and ranks).
    Returns:
        ``(iou, miou)``: (C,) float64 tensor (NaN for absent classes) and the mean over the others as a float.
    Raises:
        UserError: no class is present (no labelled pixel and no prediction).
    """
    conf = conf.double()
    tp = conf.diagonal()
    union = conf.sum(dim=0) + conf.sum(dim=1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    present = ~torch.isnan(iou)
    if not bool(present.any()):
        raise UserError("mIoU: no labelled pixel was scored (every ground-truth pixel is 255 or there are no "
                        "images): check the masks")
    return iou, float(iou[present].mean())
