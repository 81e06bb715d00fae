"""DeepCluster-v2 and SeLa-v2 pieces (Caron et al. 2020, appendix; facebookresearch/swav
``main_deepclusterv2.py``; SeLa-v2 from the maintainer's recipe in swav issue #59).

Both keep, on every process, a memory bank of the embeddings of the assignment crops of the images it saw in
the last epoch. At each epoch start the bank is turned into one hard pseudo-label per image and per head:

* DeepCluster-v2: distributed spherical k-means (:func:`spherical_kmeans`) on the bank; the normalised centroids
  BECOME the prototypes (which SGD never updates: they are frozen for ``--freeze_prototypes_niters``);
* SeLa-v2: Sinkhorn-Knopp equipartition of the whole bank against the current prototypes, run to
  convergence and rounded to equal cluster sizes (:func:`sela_labels`, docs/sela.md); the prototypes are
  learned by SGD, as in SwAV.

Labels are gathered from every process with their dataset indices (:func:`gather_assignments`); the loss is
the cross-entropy of every crop's prototype scores against its image's label, averaged over heads
(:func:`deepcluster_loss`). The step itself is written out in ``main_deepclusterv2.py``'s ``step``.
"""
import torch
import torch.nn.functional as F

from src.losses import sinkhorn_equipartition
from src.run import dist
from src.run.errors import UserError

IGNORE = -100  # label of images not in any bank (cross-entropy's ignore_index)


class WithIndex(torch.utils.data.Dataset):
    """Items ``(crops, target, index)``: the dataset's item followed by its position, which indexes the memory bank's
    rows and the cluster labels. A batch still starts with ``(crops, labels)``, as every pretraining batch does.

    Args:
        dataset: a dataset returning ``(x, target)`` with ``set_epoch`` (``src.data.folders``).
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        x, target = self.dataset[index]
        return x, target, index

    def set_epoch(self, epoch):
        self.dataset.set_epoch(epoch)


class MemoryBank:
    """This process's bank: the dataset index and the assignment crops' embeddings of each image it saw.

    Row ``it * B + b`` holds sample b of iteration it: a training epoch overwrites it in place, so the labels
    computed at the start of epoch e come from the embeddings produced during epoch e - 1 (as the
    reference's ``local_memory_embeddings``).

    Args:
        n_assign: number of assignment crops; size: rows (``iters_per_epoch * batch_size``); dim: 128; device.
    """

    def __init__(self, n_assign, size, dim, device):
        self.index = torch.zeros(size, dtype=torch.long, device=device)
        self.embeddings = torch.zeros(n_assign, size, dim, device=device)

    @torch.no_grad()
    def write(self, start, index, crop_embeddings):
        """Args: start: first row; index: (B,) dataset indices; crop_embeddings: list of (B, D), one per
        assignment crop."""
        self.index[start:start + index.shape[0]] = index
        for j, z in enumerate(crop_embeddings):
            self.embeddings[j, start:start + z.shape[0]] = z.float()

    def state(self):
        """The reference's file layout (``mb{rank}.pth``)."""
        return {"local_memory_index": self.index.cpu(), "local_memory_embeddings": self.embeddings.cpu()}

    def load(self, state):
        if tuple(state["local_memory_embeddings"].shape) != tuple(self.embeddings.shape):
            return False
        self.index.copy_(state["local_memory_index"])
        self.embeddings.copy_(state["local_memory_embeddings"])
        return True


@torch.no_grad()
def fill_memory_bank(model, loader, bank, crops_for_assign, iters_per_epoch, device, autocast):
    """Before the first epoch: one pass over the loader (train mode, no gradient, as the reference), each
    assignment crop through the model on its own."""
    model.train()
    for it, (crops, _, index) in enumerate(loader):
        if it >= iters_per_epoch:
            break
        with autocast:
            zs = [model(crops[a].to(device, non_blocking=True))[0] for a in crops_for_assign]
        bank.write(it * index.shape[0], index.to(device), zs)


@torch.no_grad()
def spherical_kmeans(x, centroids, n_iters):
    """Distributed spherical k-means (the reference's ``cluster_memory``): ``n_iters`` rounds of [assign each row
    to its highest dot-product centroid; per-cluster sums and counts all-reduced over processes; non-empty clusters
    take the mean; every centroid is L2-normalised], then a last assignment.

    Args:
        x: (N_local, D) unit rows of this process.
        centroids: (K, D) initial centroids, identical on every process.
        n_iters: k-means iterations (10).
    Returns:
        (centroids (K, D) unit rows, identical on every process; assignments (N_local,) long).
    """
    centroids = centroids.clone().float()
    K = centroids.shape[0]
    for n_iter in range(n_iters + 1):
        assignments = (x @ centroids.t()).argmax(dim=1)  # E step
        if n_iter == n_iters:
            break
        sums = torch.zeros_like(centroids).index_add_(0, assignments, x.float())  # M step, (K, D)
        counts = torch.bincount(assignments, minlength=K).to(centroids.dtype)
        dist.all_reduce(sums)
        dist.all_reduce(counts)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1)
        centroids = F.normalize(centroids, dim=1)
    return centroids, assignments


@torch.no_grad()
def init_centroids(x, k, generator):
    """k random rows of rank 0's bank, broadcast to every process.

    Args: x: (N_local, D); k: K; generator: torch.Generator (CPU) seeded the same way on every rank.
    Returns: (K, D) on x's device.
    """
    if k > x.shape[0]:
        raise UserError(f"--nmb_prototypes {k} is larger than the {x.shape[0]} images in each process's memory bank: "
                        "lower --nmb_prototypes (or use more data / a larger --batch_size)")
    rows = torch.randperm(x.shape[0], generator=generator)[:k].to(x.device)
    return dist.broadcast(x[rows].contiguous(), src=0)


SELA_TOLERANCE = 1e-3  # prototypes' soft shares within 0.1% of N / K before rounding
SELA_MAX_ITERS = 1000  # a cap only: the tolerance stops it first


@torch.no_grad()
def sela_labels(x, prototypes, epsilon=0.05, max_iters=SELA_MAX_ITERS, tolerance=SELA_TOLERANCE, balanced=True,
                return_transport=False):
    """SeLa-v2 pseudo-labels: an equipartition of the WHOLE bank of every process over the current prototypes.

    1. Sinkhorn-Knopp to convergence (:func:`src.losses.sinkhorn_equipartition`, as SeLa's ``optimize_L_sk``):
       the plan's prototype marginals within ``tolerance`` of ``N / K`` (N: images in all banks).
    2. Hard labels: by default the plan is rounded under capacities, so cluster sizes are exactly floor or ceil
       of N / K (:func:`balanced_rounding`); ``balanced=False`` gives SeLa's per-image argmax, which is not
       balanced where the features crowd a few prototypes (docs/sela.md).

    Args:
        x: (N_local, D) unit rows; prototypes: (K, D) (normalised here); epsilon: entropy regularisation
            (0.05); max_iters, tolerance: when Sinkhorn stops (see :func:`sinkhorn_equipartition`);
        balanced: capacity rounding (True) or the plan's argmax (False);
        return_transport: also return the Transport (its ``iterations`` and ``error`` are worth printing).
    Returns:
        (N_local,) long labels, consistent across processes (each image's label is decided identically on
        every rank); with ``return_transport``, ``(labels, transport)``.
    """
    scores = x.float() @ F.normalize(prototypes.detach().float(), dim=1).t()  # (N_local, K)
    transport = sinkhorn_equipartition(scores, epsilon, tolerance, max_iters, inplace=True)
    labels = balanced_rounding(transport) if balanced else _best_open(transport, None)[1]
    return (labels, transport) if return_transport else labels


ROUNDING_CHUNK = 1 << 14  # rows per chunk when reading plan rows: keeps the temporaries at 16k x K


def _best_open(transport, open_clusters, rows=None):
    """Each row's most probable open cluster under the plan and its probability, in row chunks.

    Args: transport: Transport; open_clusters: (K,) bool or None (all open); rows: (n,) row indices or None
        (all rows).
    Returns: (values (n,), clusters (n,) long).
    """
    kernel, row_scale, col_scale = transport.kernel, transport.row_scale, transport.col_scale
    n = kernel.shape[0] if rows is None else rows.shape[0]
    values = torch.empty(n, dtype=kernel.dtype, device=kernel.device)
    clusters = torch.empty(n, dtype=torch.long, device=kernel.device)
    buf = kernel.new_empty(min(n, ROUNDING_CHUNK), kernel.shape[1])  # one temporary, reused by every chunk
    for start in range(0, n, ROUNDING_CHUNK):
        part = slice(start, min(start + ROUNDING_CHUNK, n))
        block = kernel[part] if rows is None else kernel[rows[part]]  # a view, or the gathered rows
        scaled = torch.mul(block, col_scale, out=buf[:block.shape[0]])
        if open_clusters is not None:
            scaled.masked_fill_(~open_clusters, -1.0)  # below any open cluster's (non-negative) probability
        torch.max(scaled, dim=1, out=(values[part], clusters[part]))
    rs = row_scale if rows is None else row_scale[rows]
    return values.mul_(rs), clusters


def _accept(proposed, values, capacity):
    """Which proposals the clusters keep: each cluster its ``capacity`` most probable proposers (ties: lower
    global position first). Runs identically on every process (same gathered inputs, stable sorts).

    Args: proposed: (N,) long cluster proposed by each image, -1 for none; values: (N,) plan probabilities;
        capacity: (K,) long places left.
    Returns: (N,) bool.
    """
    who = (proposed >= 0).nonzero().squeeze(1)
    k, v = proposed[who], values[who]
    order = torch.sort(v, descending=True, stable=True).indices
    order = order[torch.sort(k[order], stable=True).indices]  # grouped by cluster, most probable first
    k_sorted = k[order]
    counts = torch.bincount(k_sorted, minlength=capacity.shape[0])
    place = torch.arange(k_sorted.shape[0], device=k.device) - (torch.cumsum(counts, 0) - counts)[k_sorted]
    accepted = torch.zeros_like(proposed, dtype=torch.bool)
    accepted[who[order[place < capacity[k_sorted]]]] = True
    return accepted


@torch.no_grad()
def balanced_rounding(transport):
    """Hard labels from a transport plan with cluster sizes exactly floor(N / K) or ceil(N / K).

    Rounds of proposals: every unlabelled image proposes to its most probable cluster under the plan among
    those with places left; each cluster keeps its most probable proposers up to its places (a greedy by plan
    probability, cluster by cluster); the others propose again. The places sum to N, so every round labels at
    least one image and the last round labels all that remain; a round closes at least one cluster or ends.
    Capacities: ``floor(N / K)`` each, plus one for the ``N mod K`` clusters that are the argmax of the most
    images (ties: lower index). Distributed: the proposals are all-gathered (two (N,) tensors per round) and
    every process takes the same decisions, so each image's label is the same whichever rank computes it.

    Args:
        transport: Transport from :func:`sinkhorn_equipartition` (this process's rows).
    Returns:
        (n_local,) long labels.
    """
    kernel = transport.kernel
    n_local, K = kernel.shape
    device = kernel.device
    n_total = int(dist.all_reduce(torch.tensor([n_local], device=device)).item())
    values, clusters = _best_open(transport, None)
    demand = dist.all_reduce(torch.bincount(clusters, minlength=K))
    capacity = torch.full((K,), n_total // K, dtype=torch.long, device=device)
    capacity[torch.sort(demand, descending=True, stable=True).indices[:n_total % K]] += 1
    labels = torch.full((n_local,), -1, dtype=torch.long, device=device)
    rank = dist.get_rank()
    left = torch.arange(n_local, device=device)
    while True:
        proposed = torch.full((n_local,), -1, dtype=torch.long, device=device)
        proposed[left] = clusters
        prob = torch.zeros(n_local, dtype=values.dtype, device=device)
        prob[left] = values
        proposed_all, prob_all = dist.concat_all_gather(proposed), dist.concat_all_gather(prob)
        accepted_all = _accept(proposed_all, prob_all, capacity)
        capacity -= torch.bincount(proposed_all[accepted_all], minlength=K)
        accepted = accepted_all[rank * n_local:(rank + 1) * n_local]
        labels[accepted] = proposed[accepted]
        if int(accepted_all.sum()) == int((proposed_all >= 0).sum()):  # nobody rejected: every image labelled
            return labels
        left = (labels < 0).nonzero().squeeze(1)
        values, clusters = _best_open(transport, capacity > 0, left)


@torch.no_grad()
def gather_assignments(labels, index, n_images):
    """Labels of every process, put at their dataset indices (IGNORE for images in no bank).

    Args: labels: (N_local,) long; index: (N_local,) dataset indices; n_images: dataset size.
    Returns: (n_images,) long, identical on every process.
    """
    out = torch.full((n_images,), IGNORE, dtype=torch.long, device=labels.device)
    out[dist.concat_all_gather(index)] = dist.concat_all_gather(labels)
    return out


@torch.no_grad()
def cluster_memory(model, bank, n_images, mode, epoch, seed, kmeans_iters=10, epsilon=0.05,
                   sinkhorn_iterations=SELA_MAX_ITERS, sinkhorn_tolerance=SELA_TOLERANCE, balanced=True,
                   return_sinkhorn=False):
    """Labels for the coming epoch, one row per head (bank j = h modulo the number of assignment crops).

    DeepCluster-v2 (``mode="deepcluster"``): spherical k-means with K_h clusters; the centroids are copied into
    prototype head h. SeLa-v2 (``mode="sela"``): :func:`sela_labels` with the current prototypes (unchanged).

    Args:
        model: SwAVModel with several prototype heads; bank: MemoryBank; n_images: dataset size;
        epoch, seed: seed the centroid initialisation (generator ``seed * 1000003 + epoch * 101 + h``);
        kmeans_iters: k-means iterations; epsilon, sinkhorn_iterations (a cap), sinkhorn_tolerance, balanced:
        SeLa-v2's label step; return_sinkhorn: also return, per head, ``(iterations, error)`` of the Sinkhorn
        run (None for DeepCluster-v2).
    Returns:
        (assignments (n_heads, n_images) long, stats: list of (clusters used, entropy of cluster sizes) per head)
        and, with ``return_sinkhorn``, the list of (iterations, error) per head as a third element.
    """
    heads = model.prototype_layers()
    n_assign = bank.embeddings.shape[0]
    assignments, stats, sinkhorn = [], [], []
    for h, layer in enumerate(heads):
        x = bank.embeddings[h % n_assign]
        if mode == "deepcluster":
            g = torch.Generator().manual_seed(seed * 1000003 + epoch * 101 + h)
            centroids, labels = spherical_kmeans(x, init_centroids(x, layer.weight.shape[0], g), kmeans_iters)
            layer.weight.copy_(centroids)
            sinkhorn.append(None)
        else:
            labels, transport = sela_labels(x, layer.weight, epsilon, sinkhorn_iterations, sinkhorn_tolerance,
                                            balanced, return_transport=True)
            sinkhorn.append((transport.iterations, transport.error))
            del transport  # the N_local x K kernel: free it before the next head's
        full = gather_assignments(labels, bank.index, n_images)
        assignments.append(full)
        stats.append(cluster_stats(full, layer.weight.shape[0]))
    if return_sinkhorn:
        return torch.stack(assignments), stats, sinkhorn
    return torch.stack(assignments), stats


def cluster_stats(labels, k):
    """(number of non-empty clusters, entropy of the cluster-size distribution in nats) of labels, IGNORE skipped."""
    counts = torch.bincount(labels[labels != IGNORE], minlength=k).float()
    p = counts[counts > 0] / counts.sum().clamp_min(1)
    return int((counts > 0).sum()), float(-(p * p.log()).sum())


def deepcluster_loss(scores, targets, temperature):
    """Mean over heads of the cross-entropy of ``scores_h / T`` against the hard labels (IGNORE rows skipped).

    Args:
        scores: list of (V * B, K_h) prototype scores (crop-major), one per head.
        targets: list of (V * B,) long labels, the image's label repeated for each of its V crops.
        temperature: T (0.1).
    Returns:
        scalar float32 loss; 0 (with gradient) for a batch whose images all lack a label.
    """
    loss = 0.0
    with torch.autocast(scores[0].device.type, enabled=False):
        for s, t in zip(scores, targets):
            n_valid = (t != IGNORE).sum().clamp_min(1)
            loss = loss + F.cross_entropy(s.float() / temperature, t, ignore_index=IGNORE, reduction="sum") / n_valid
    return loss / len(scores)
