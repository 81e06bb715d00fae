"""DeepCluster-v2 and SeLa-v2 pieces (Caron et al. 2020, appendix; facebookresearch/swav
``main_deepclusterv2.py``; spec ``swav.md`` A.12-A.13).

Both keep, on every process, a memory bank of the embeddings of the assignment crops of the images it saw in
the last epoch. At each epoch start the bank is turned into one hard pseudo-label per image and per head:

* DeepCluster-v2: distributed spherical k-means (:func:`spherical_kmeans`) on the bank; the normalised centroids
  BECOME the prototypes (which SGD never updates: they are frozen for ``--freeze_prototypes_niters``);
* SeLa-v2: Sinkhorn-Knopp equipartition of the whole bank against the current prototypes
  (:func:`sela_labels`); the prototypes are learned by SGD, as in SwAV (maintainer's recipe, swav issue #59).

Labels are gathered from every process with their dataset indices (:func:`gather_assignments`); the loss is
the cross-entropy of every crop's prototype scores against its image's label, averaged over heads
(:func:`deepcluster_loss`). The step itself is written out in ``main_deepclusterv2.py``.
"""
import torch
import torch.nn.functional as F

from .. import dist
from ..errors import UserError
from ..losses import distributed_sinkhorn

IGNORE = -100  # label of images not in any bank (cross-entropy's ignore_index)


class WithIndex(torch.utils.data.Dataset):
    """Items ``(index, crops)`` instead of ``(crops, target)``: the labels are indexed by dataset position.

    Args:
        dataset: a dataset returning ``(x, target)`` with ``set_epoch`` (``src.data``).
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return index, self.dataset[index][0]

    def set_epoch(self, epoch):
        self.dataset.set_epoch(epoch)


class MemoryBank:
    """This process's bank: the dataset index and the assignment crops' embeddings of each image it saw.

    Row ``it * B + b`` holds sample b of iteration it: a training epoch overwrites it in place, so the labels
    computed at the start of epoch e come from the embeddings produced during epoch e - 1 (spec A.12).

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
    for it, (index, crops) in enumerate(loader):
        if it >= iters_per_epoch:
            break
        with autocast:
            zs = [model(crops[a].to(device, non_blocking=True))[0] for a in crops_for_assign]
        bank.write(it * index.shape[0], index.to(device), zs)


@torch.no_grad()
def spherical_kmeans(x, centroids, n_iters):
    """Distributed spherical k-means (spec A.12): ``n_iters`` rounds of [assign each row to its highest
    dot-product centroid; per-cluster sums and counts all-reduced over processes; non-empty clusters take the
    mean; every centroid is L2-normalised], then a last assignment.

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


@torch.no_grad()
def sela_labels(x, prototypes, epsilon, n_iters):
    """SeLa-v2 pseudo-labels: Sinkhorn-Knopp over the WHOLE bank of every process (the prototypes used equally
    by the dataset), then each image's most likely prototype.

    Args:
        x: (N_local, D) unit rows; prototypes: (K, D) (normalised here); epsilon: entropy regularisation;
        n_iters: Sinkhorn iterations.
    Returns:
        (N_local,) long labels.
    """
    scores = x.float() @ F.normalize(prototypes.detach().float(), dim=1).t()  # (N_local, K)
    return distributed_sinkhorn(scores, epsilon, n_iters).argmax(dim=1)


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
def cluster_memory(model, bank, n_images, mode, epoch, seed, kmeans_iters=10, epsilon=0.05, sinkhorn_iterations=3):
    """Labels for the coming epoch, one row per head (bank j = h modulo the number of assignment crops).

    DeepCluster-v2 (``mode="deepcluster"``): spherical k-means with K_h clusters; the centroids are copied into
    prototype head h. SeLa-v2 (``mode="sela"``): :func:`sela_labels` with the current prototypes (unchanged).

    Args:
        model: SwAVModel with several prototype heads; bank: MemoryBank; n_images: dataset size;
        epoch, seed: seed the centroid initialisation (generator ``seed * 1000003 + epoch * 101 + h``);
        kmeans_iters, epsilon, sinkhorn_iterations: method parameters.
    Returns:
        (assignments (n_heads, n_images) long, stats: list of (clusters used, entropy of cluster sizes) per head).
    """
    heads = model.prototype_layers()
    n_assign = bank.embeddings.shape[0]
    assignments, stats = [], []
    for h, layer in enumerate(heads):
        x = bank.embeddings[h % n_assign]
        if mode == "deepcluster":
            g = torch.Generator().manual_seed(seed * 1000003 + epoch * 101 + h)
            centroids, labels = spherical_kmeans(x, init_centroids(x, layer.weight.shape[0], g), kmeans_iters)
            layer.weight.copy_(centroids)
        else:
            labels = sela_labels(x, layer.weight, epsilon, sinkhorn_iterations)
        full = gather_assignments(labels, bank.index, n_images)
        assignments.append(full)
        stats.append(cluster_stats(full, layer.weight.shape[0]))
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
