"""DeepCluster-v2 / SeLa-v2 pieces against straightforward references (2-process versions: test_swav_sinkhorn.py)."""
import math

import torch
import torch.nn.functional as F

from src.methods.deepcluster import (IGNORE, MemoryBank, cluster_memory, deepcluster_loss, gather_assignments,
                                     sela_labels, spherical_kmeans)
from src.methods.swav import SwAVModel


def _reference_kmeans(points, centroids, n_iters):
    """Spherical k-means with Python lists: nearest centroid by dot product, mean of members, normalise."""
    cs = [list(map(float, c)) for c in centroids]
    xs = [list(map(float, p)) for p in points]

    def assign():
        return [max(range(len(cs)), key=lambda k: sum(a * b for a, b in zip(x, cs[k]))) for x in xs]

    for _ in range(n_iters):
        labels = assign()
        for k in range(len(cs)):
            members = [x for x, l in zip(xs, labels) if l == k]
            if members:
                cs[k] = [sum(col) / len(members) for col in zip(*members)]
            norm = math.sqrt(sum(v * v for v in cs[k]))
            cs[k] = [v / norm for v in cs[k]]
    return torch.tensor(cs), torch.tensor(assign())


def _separable(n_per=20, k=4, dim=6, seed=0):
    """k tight clusters around orthogonal directions, shuffled."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(dim)[:k]
    x = torch.cat([centers[i] + 0.1 * torch.randn(n_per, dim, generator=g) for i in range(k)])
    truth = torch.arange(k).repeat_interleave(n_per)
    perm = torch.randperm(k * n_per, generator=g)
    return F.normalize(x[perm], dim=1), truth[perm]


def test_kmeans_matches_reference_and_recovers_separable_clusters():
    x, truth = _separable()
    init = x[:4].clone()  # random rows, possibly two from the same cluster
    c, a = spherical_kmeans(x, init, 10)
    rc, ra = _reference_kmeans(x, init, 10)
    torch.testing.assert_close(c, rc, rtol=1e-5, atol=1e-5)
    assert torch.equal(a, ra)
    # on separable points with one seed per cluster, each found cluster is one true cluster
    seeds = torch.stack([x[truth == i][0] for i in range(4)])
    _, a = spherical_kmeans(x, seeds, 10)
    assert torch.equal(a, truth)
    torch.testing.assert_close(c.norm(dim=1), torch.ones(4))


def test_kmeans_keeps_empty_clusters():
    x, _ = _separable(k=2)
    init = torch.cat([x[:2], -x[:1]])  # the third centroid attracts nothing
    c, a = spherical_kmeans(x, init, 3)
    assert (a != 2).all() and torch.allclose(c[2], -x[0])


def test_sela_labels_are_equipartitioned():
    """Features concentrated near one prototype: the raw argmax piles everything into a few clusters, the
    Sinkhorn labels fill every cluster equally (N / K = 100 each; tests/test_sela_equipartition.py has more)."""
    g = torch.Generator().manual_seed(0)
    K, N = 10, 1000
    protos = F.normalize(torch.randn(K, 16, generator=g), dim=1)
    x = F.normalize(protos[0] + 0.3 * torch.randn(N, 16, generator=g), dim=1)
    raw = torch.bincount((x @ protos.t()).argmax(dim=1), minlength=K)
    labels = sela_labels(x, protos, epsilon=0.05, max_iters=1000)
    counts = torch.bincount(labels, minlength=K)
    assert raw.max() > 3 * N / K
    assert (counts == N // K).all(), counts


def test_deepcluster_loss_matches_cross_entropy_with_ignored_rows():
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn(6, 5, generator=g), torch.randn(6, 7, generator=g)]
    targets = [torch.tensor([0, 4, IGNORE, 1, 2, 3]), torch.tensor([6, 0, 1, 2, IGNORE, IGNORE])]
    expected = sum(F.cross_entropy(s / 0.1, t, ignore_index=IGNORE) for s, t in zip(scores, targets)) / 2
    torch.testing.assert_close(deepcluster_loss(scores, targets, 0.1), expected)
    none = deepcluster_loss([scores[0].requires_grad_()], [torch.full((6,), IGNORE)], 0.1)
    assert float(none.detach()) == 0.0
    none.backward()  # a batch without labels still has a (zero) gradient path


def test_cluster_memory_copies_centroids_only_for_deepcluster():
    torch.manual_seed(0)
    model = SwAVModel("resnet18", feat_dim=6, hidden_mlp=0, nmb_prototypes=[4, 4, 3])
    x, _ = _separable(n_per=10)
    bank = MemoryBank(2, 40, 6, "cpu")
    bank.write(0, torch.arange(40) * 2, [x, -x])
    before = [p.weight.detach().clone() for p in model.prototype_layers()]
    labels, stats = cluster_memory(model, bank, 80, "sela", epoch=0, seed=1)
    assert labels.shape == (3, 80) and (labels[:, 1::2] == IGNORE).all() and (labels[:, ::2] >= 0).all()
    assert all(torch.equal(b, p.weight) for b, p in zip(before, model.prototype_layers()))
    labels, stats = cluster_memory(model, bank, 80, "deepcluster", epoch=0, seed=1)
    for h, layer in enumerate(model.prototype_layers()):  # head h clusters bank h % 2, its centroids are the prototypes
        xb = bank.embeddings[h % 2]
        _, a = spherical_kmeans(xb, layer.weight.detach(), 0)
        assert torch.equal(a, labels[h, ::2])
        torch.testing.assert_close(layer.weight.norm(dim=1), torch.ones(layer.weight.shape[0]))
    for (used, ent), k in zip(stats, (4, 4, 3)):
        assert 1 <= used <= k and 0 < ent <= math.log(k) + 1e-6


def test_gather_assignments_single_process():
    out = gather_assignments(torch.tensor([3, 1]), torch.tensor([4, 0]), 5)
    assert out.tolist() == [1, IGNORE, IGNORE, IGNORE, 3]
