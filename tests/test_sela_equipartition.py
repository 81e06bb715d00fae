"""SeLa-v2's label step reaches an equipartition (issue 19, item 7).

Sinkhorn to a tolerance against a float64 loop and a hand-computed case; the balanced rounding against a loop
version of the same rounds; every head's cluster sizes within one image of N / K on synthetic banks (one where
the features crowd a few prototypes, where the plan's argmax is far from balanced); 2 gloo processes give the
labels of one process on the whole bank, identical on both ranks.
"""
import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from src.losses import sinkhorn_equipartition
from src.methods.deepcluster import MemoryBank, balanced_rounding, cluster_memory, sela_labels
from src.methods.swav import SwAVModel
from src.run import dist
from src.run.errors import UserError
from tests.helpers import free_port


def reference_equipartition(scores, epsilon, tolerance, max_iters):
    """Sinkhorn on the explicit matrix, Python floats: Q = exp(S / eps); repeat [scale each sample's row to sum
    1; stop if every prototype's column is within tolerance of N / K (relative); scale each column to N / K].
    Returns (Q as a list of rows, iterations, error)."""
    N, K = len(scores), len(scores[0])
    Q = [[math.exp(s / epsilon) for s in row] for row in scores]
    for it in range(1, max_iters + 1):
        Q = [[v / sum(row) for v in row] for row in Q]
        cols = [sum(Q[i][k] for i in range(N)) for k in range(K)]
        error = max(abs(c / (N / K) - 1) for c in cols)
        if error <= tolerance:
            break
        Q = [[Q[i][k] * (N / K) / cols[k] for k in range(K)] for i in range(N)]
    return Q, it, error


def reference_rounding(plan):
    """The rounds of balanced_rounding written as loops: capacities floor(N / K), +1 for the N mod K clusters
    most often the argmax (ties: lower index); each unlabelled image proposes to its most probable cluster
    (first max; after the first round only clusters with places left); each cluster keeps its most probable
    proposers (ties: lower image index) up to its places."""
    N, K = len(plan), len(plan[0])

    def best(i, allowed):
        ks = [k for k in range(K) if allowed[k]]
        return max(ks, key=lambda k: (plan[i][k], -k))

    demand = [0] * K
    for i in range(N):
        demand[best(i, [True] * K)] += 1
    capacity = [N // K] * K
    for k in sorted(range(K), key=lambda k: (-demand[k], k))[:N % K]:
        capacity[k] += 1
    labels, allowed = [-1] * N, [True] * K
    while -1 in labels:
        proposals = {}
        for i in range(N):
            if labels[i] < 0:
                proposals.setdefault(best(i, allowed), []).append(i)
        for k, who in proposals.items():
            for i in sorted(who, key=lambda i: (-plan[i][k], i))[:capacity[k]]:
                labels[i] = k
                capacity[k] -= 1
        allowed = [c > 0 for c in capacity]
    return labels


def _bank(n, k, dim, crowd, noise, seed):
    """Unit features and prototypes; with ``crowd`` > 0 every feature lies near one of the first ``crowd``
    prototypes (the hard bank: the raw argmax uses only those)."""
    g = torch.Generator().manual_seed(seed)
    protos = F.normalize(torch.randn(k, dim, generator=g), dim=1)
    if crowd:
        centre = protos[torch.randint(crowd, (n,), generator=g)]
        x = F.normalize(centre + noise * torch.randn(n, dim, generator=g), dim=1)
    else:
        x = F.normalize(torch.randn(n, dim, generator=g), dim=1)
    return x, protos


def test_sinkhorn_hand_computed_two_by_two():
    # both samples prefer prototype 0 (kernel rows [e, 1] at epsilon 1); the only equipartition with rows
    # summing to 1 splits each sample in halves. Iteration 1: columns 2e/(e+1), 2/(e+1) (error (e-1)/(e+1));
    # iteration 2 after the column step: exact.
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    t = sinkhorn_equipartition(s, epsilon=1.0, tolerance=1e-12, max_iters=10)
    plan = t.row_scale[:, None] * t.kernel * t.col_scale
    torch.testing.assert_close(plan, torch.full((2, 2), 0.5, dtype=torch.float64), rtol=0, atol=1e-15)
    assert t.iterations == 2 and t.error < 1e-12
    t1 = sinkhorn_equipartition(s, epsilon=1.0, tolerance=1e-12, max_iters=1)
    assert t1.iterations == 1 and t1.error == pytest.approx((math.e - 1) / (math.e + 1), rel=1e-12)


@pytest.mark.parametrize("eps,tol", [(0.05, 1e-3), (0.1, 1e-6), (0.03, 1e-2)])
def test_sinkhorn_matches_reference_loops(eps, tol):
    x, protos = _bank(30, 7, 8, crowd=2, noise=0.4, seed=1)
    s = (x @ protos.t()).double()
    ref, ref_iters, ref_err = reference_equipartition(s.tolist(), eps, tol, 500)
    t = sinkhorn_equipartition(s, eps, tol, 500)
    plan = t.row_scale[:, None] * t.kernel * t.col_scale
    torch.testing.assert_close(plan, torch.tensor(ref, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    assert t.iterations == ref_iters > 1 and t.error == pytest.approx(ref_err, rel=1e-6, abs=1e-12)
    torch.testing.assert_close(plan.sum(dim=1), torch.ones(30, dtype=torch.float64))
    assert ((plan.sum(dim=0) / (30 / 7) - 1).abs() <= tol).all()


def test_sinkhorn_float32_inplace_and_errors():
    x, protos = _bank(200, 10, 16, crowd=1, noise=0.3, seed=2)
    s = x @ protos.t()
    t = sinkhorn_equipartition(s.clone(), 0.05, 1e-3, 1000)
    s2 = s.clone()
    t2 = sinkhorn_equipartition(s2, 0.05, 1e-3, 1000, inplace=True)
    assert t2.kernel.data_ptr() == s2.data_ptr() and torch.equal(t.kernel, t2.kernel)
    assert t.kernel.dtype == torch.float32 and t.error <= 1e-3
    capped = sinkhorn_equipartition(s, 0.05, 1e-9, 2)  # the cap stops it and says how far it got
    assert capped.iterations == 2 and capped.error > 1e-3
    with pytest.raises(UserError, match="epsilon"):
        sinkhorn_equipartition(torch.tensor([[1.0, -1.0], [1.0, -1.0]]), 0.001, 1e-3, 100)  # exp(-2000) is 0
    with pytest.raises(UserError):
        sinkhorn_equipartition(s, 0.05, 1e-3, 0)


@pytest.mark.parametrize("n,k,crowd", [(60, 7, 2), (45, 9, 0), (10, 12, 3)])
def test_balanced_rounding_matches_reference_loops(n, k, crowd):
    x, protos = _bank(n, k, 8, crowd=crowd, noise=0.3, seed=n)
    t = sinkhorn_equipartition((x @ protos.t()).double(), 0.05, 1e-3, 1000)
    plan = ((t.kernel * t.col_scale) * t.row_scale[:, None]).tolist()  # the product in the code's order
    labels = balanced_rounding(t)
    assert labels.tolist() == reference_rounding(plan)
    counts = torch.bincount(labels, minlength=k)
    assert counts.sum() == n and counts.min() >= n // k and counts.max() <= -(-n // k)


def test_rounding_keeps_a_balanced_argmax():
    # four tight clusters of 25 around four prototypes: the plan's argmax is already an equipartition and the
    # rounding must leave it alone
    g = torch.Generator().manual_seed(4)
    protos = torch.eye(6)[:4]
    truth = torch.arange(4).repeat_interleave(25)
    x = F.normalize(protos[truth] + 0.05 * torch.randn(100, 6, generator=g), dim=1)
    assert torch.equal(sela_labels(x, protos), truth)
    assert torch.equal(sela_labels(x, protos, balanced=False), truth)


@pytest.mark.parametrize("crowd", [0, 3])
def test_every_head_is_an_equipartition(crowd):
    """3 heads x 100 prototypes on a bank of 5,000 images (issue 19's run): sizes within one image of N / K
    (here exactly 50), entropy ln K; SeLa's plain argmax of the same plan is far from that."""
    n, k = 5000, 100
    torch.manual_seed(0)
    model = SwAVModel("resnet18", feat_dim=32, hidden_mlp=0, nmb_prototypes=[k, k, k])
    x, protos = _bank(n, 3 * k, 32, crowd=crowd, noise=0.05, seed=5)
    with torch.no_grad():
        for h, layer in enumerate(model.prototype_layers()):  # crowded: every head holds the 3 crowded prototypes
            rows = torch.arange(h * k, (h + 1) * k) if not crowd else torch.cat([torch.arange(3),
                                                                                 torch.arange(3, k) + h * (k - 3)])
            layer.weight.copy_(protos[rows])
    bank = MemoryBank(2, n, 32, "cpu")
    bank.write(0, torch.randperm(n), [x, F.normalize(x + 0.05 * torch.randn_like(x), dim=1)])
    labels, stats, sk = cluster_memory(model, bank, n, "sela", epoch=0, seed=0, return_sinkhorn=True)
    for h in range(3):
        counts = torch.bincount(labels[h], minlength=k)
        assert (counts == n // k).all(), counts
        used, entropy = stats[h]
        assert used == k and entropy == pytest.approx(math.log(k), abs=1e-6)
        iters, error = sk[h]
        assert 1 <= iters < 1000 and error <= 1e-3
    argmax, _ = cluster_memory(model, bank, n, "sela", epoch=0, seed=0, balanced=False)
    raw_sizes = torch.bincount(argmax[0], minlength=k)
    if crowd:  # where the features crowd a few prototypes the argmax of the converged plan stays unbalanced
        assert raw_sizes.max() > 1.5 * n / k and raw_sizes.min() < 0.2 * n / k, raw_sizes
    else:
        assert raw_sizes.max() > n / k


# ==== two gloo processes ====
def _worker(rank, port, out_dir):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    info = dist.init_distributed(device="cpu")
    x, protos = _bank(400, 30, 16, crowd=3, noise=0.3, seed=7)
    half = x[rank * 200:(rank + 1) * 200]
    labels, t = sela_labels(half, protos, return_transport=True)
    bank = MemoryBank(1, 200, 16, "cpu")
    bank.write(0, torch.arange(rank, 400, 2), [half])
    model = SwAVModel("resnet18", feat_dim=16, hidden_mlp=0, nmb_prototypes=[30])
    with torch.no_grad():
        model.prototype_layers()[0].weight.copy_(protos)
    full, _ = cluster_memory(model, bank, 400, "sela", epoch=0, seed=0)
    out = {"labels": labels, "col_scale": t.col_scale, "iters": torch.tensor(t.iterations), "full": full}
    dist.barrier()
    torch.save(out, os.path.join(out_dir, f"rank{info.rank}.pt"))
    dist.cleanup()


def test_two_processes_give_the_labels_of_one_process(tmp_path, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    x, protos = _bank(400, 30, 16, crowd=3, noise=0.3, seed=7)
    labels, t = sela_labels(x, protos, return_transport=True)
    both = torch.cat([r0["labels"], r1["labels"]])
    assert torch.equal(both, labels)
    assert int(r0["iters"]) == int(r1["iters"]) == t.iterations
    assert torch.equal(r0["col_scale"], r1["col_scale"])
    torch.testing.assert_close(r0["col_scale"], t.col_scale, rtol=1e-4, atol=0)
    counts = torch.bincount(both, minlength=30)
    assert counts.min() >= 400 // 30 and counts.max() <= -(-400 // 30)
    # cluster_memory: rank r's bank holds images r, r + 2, ...; both ranks hold the same labels for all 400
    assert torch.equal(r0["full"], r1["full"])
    expected = torch.empty(400, dtype=torch.long)
    expected[0::2], expected[1::2] = r0["labels"], r1["labels"]
    assert torch.equal(r0["full"][0], expected)
