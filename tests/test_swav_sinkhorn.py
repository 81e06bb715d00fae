"""distributed_sinkhorn against a plain reference, its invariants, and 2 gloo processes == 1 process.

The same spawn also checks the other collectives of the clustering methods: distributed spherical k-means,
SeLa-v2's offline labels and the gathering of labels by dataset index (tests/test_deepcluster_parts.py has
their single-process references).
"""
import math
import os

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from src.losses import distributed_sinkhorn
from src.methods.deepcluster import gather_assignments, sela_labels, spherical_kmeans
from src.run import dist
from tests.helpers import free_port


def reference_sinkhorn(scores, epsilon, n_iters):
    """Sinkhorn-Knopp written from the paper (SwAV eq. 3, appendix A.1), one process, float64, loops: scale the
    K x B matrix exp(S^T / eps) so each prototype row sums to 1/K and each sample column to 1/B, ending with a
    column step; return B * Q^T."""
    Q = [[math.exp(float(scores[b, k]) / epsilon) for b in range(scores.shape[0])] for k in range(scores.shape[1])]
    K, B = len(Q), len(Q[0])
    total = sum(sum(row) for row in Q)
    Q = [[v / total for v in row] for row in Q]
    for _ in range(n_iters):
        Q = [[v / sum(row) / K for v in row] for row in Q]
        cols = [sum(Q[k][b] for k in range(K)) for b in range(B)]
        Q = [[Q[k][b] / cols[b] / B for b in range(B)] for k in range(K)]
    return torch.tensor([[Q[k][b] * B for k in range(K)] for b in range(B)], dtype=torch.float64)


def _scores(n, k, dim=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, dim, generator=g, dtype=dtype), dim=1)
    c = F.normalize(torch.randn(k, dim, generator=g, dtype=dtype), dim=1)
    return z @ c.t()


def test_matches_reference_loops():
    s = _scores(12, 7)
    for eps, iters in ((0.05, 3), (0.1, 1), (0.03, 5)):
        torch.testing.assert_close(distributed_sinkhorn(s, eps, iters), reference_sinkhorn(s, eps, iters),
                                   rtol=1e-9, atol=1e-12)


def test_rows_sum_to_one_and_float32_under_autocast():
    s = _scores(64, 300, dtype=torch.float32)
    q = distributed_sinkhorn(s)  # defaults: epsilon 0.05, 3 iterations
    assert q.shape == (64, 300) and q.dtype == torch.float32 and (q >= 0).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(64), rtol=0, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q16 = distributed_sinkhorn(s.bfloat16())
    assert q16.dtype == torch.float32 and torch.isfinite(q16).all()  # exp(20) in bf16/fp16 inputs: cast first


def test_marginals_tend_to_equipartition_with_many_iterations():
    B, K = 40, 8
    s = _scores(B, K, seed=1)
    s[:, 0] += 0.5  # one prototype far more likely: the raw softmax would favour it
    gaps = []
    for iters in (1, 3, 30, 300):
        q = distributed_sinkhorn(s, 0.05, iters)
        gaps.append(float((q.sum(dim=0) - B / K).abs().max()))
        torch.testing.assert_close(q.sum(dim=1), torch.ones(B, dtype=q.dtype))
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3] and gaps[3] < 1e-6, gaps


def test_no_gradient_and_input_untouched():
    s = _scores(8, 5, dtype=torch.float32).requires_grad_()
    before = s.detach().clone()
    q = distributed_sinkhorn(s)
    assert not q.requires_grad and torch.equal(s.detach(), before)


# ==== two gloo processes ====
def _worker(rank, port, out_dir):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    info = dist.init_distributed(device="cpu")
    s = _scores(24, 10, dtype=torch.float32)
    half = slice(rank * 12, (rank + 1) * 12)
    x, init = _points()
    xs = x[rank * 30:(rank + 1) * 30]
    out = {"codes": distributed_sinkhorn(s[half], 0.05, 3),
           "kmeans": spherical_kmeans(xs, init, 5),
           "sela": sela_labels(xs, init, 0.05, 10),
           "gathered": gather_assignments(torch.arange(30) + 100 * rank, torch.arange(rank, 60, 2), 61)}
    dist.barrier()
    torch.save(out, os.path.join(out_dir, f"rank{info.rank}.pt"))
    dist.cleanup()


def _points():
    g = torch.Generator().manual_seed(3)
    x = F.normalize(torch.randn(60, 8, generator=g), dim=1)
    return x, x[torch.tensor([0, 7, 21, 40])].clone()


def test_two_processes_equal_one_process_on_the_whole_batch(tmp_path, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    # Sinkhorn: the two halves' codes are the whole batch's codes
    whole = distributed_sinkhorn(_scores(24, 10, dtype=torch.float32), 0.05, 3)
    torch.testing.assert_close(torch.cat([r0["codes"], r1["codes"]]), whole, rtol=1e-5, atol=1e-7)
    # k-means: same centroids on both ranks and as one process on all points; assignments split by rank
    x, init = _points()
    c, a = spherical_kmeans(x, init, 5)
    torch.testing.assert_close(r0["kmeans"][0], c, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r1["kmeans"][0], c, rtol=1e-5, atol=1e-6)
    assert torch.equal(torch.cat([r0["kmeans"][1], r1["kmeans"][1]]), a)
    # SeLa-v2 labels: Sinkhorn over the whole bank of both processes
    assert torch.equal(torch.cat([r0["sela"], r1["sela"]]), sela_labels(x, init, 0.05, 10))
    # labels put at their dataset indices, identical on both ranks; index 60 was in no bank
    expected = torch.full((61,), -100, dtype=torch.long)
    expected[torch.arange(0, 60, 2)] = torch.arange(30)
    expected[torch.arange(1, 60, 2)] = torch.arange(30) + 100
    assert torch.equal(r0["gathered"], expected) and torch.equal(r1["gathered"], expected)
