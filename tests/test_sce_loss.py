"""SCE loss against a loop written from the paper's formula (float64), its InfoNCE limit, its target,
the multi-crop normalisation and the momentum schedule."""
import math

import pytest
import torch
import torch.nn.functional as F

from src.losses import infonce_loss, sce_loss, sce_target
from src.methods.sce import momentum_schedule, multicrop_sce_loss, num_loss_pairs

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread per module


def _unit(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=1)


def _loop_sce(q, k, queue, tau, tau_m, lam, mask_positive=False):
    """Paper, eq. 5-7, with the instances k replaced by [positive, queue entries] (the reference code's form):
    w_ik = lam * 1[k = positive] + (1 - lam) * s_ik, s_ik = exp(z'_i.z'_k / tau_m) / sum_j exp(...), where
    the positive's own similarity term is exp(0) in the code (or removed by the paper's 1[i != k] mask);
    p_ik = exp(z_i.z'_k / tau) / sum_j exp(z_i.z'_j / tau); L = -1/N sum_i sum_k w_ik log p_ik."""
    total = 0.0
    for i in range(q.shape[0]):
        sims_q = [float(q[i] @ k[i])] + [float(q[i] @ queue[j]) for j in range(queue.shape[0])]
        sims_k = [None] + [float(k[i] @ queue[j]) for j in range(queue.shape[0])]
        e_q = [math.exp(s / tau) for s in sims_q]
        e_k = [0.0 if mask_positive else math.exp(0.0)] + [math.exp(s / tau_m) for s in sims_k[1:]]
        z_q, z_k = sum(e_q), sum(e_k)
        for c in range(len(sims_q)):
            w = lam * (1.0 if c == 0 else 0.0) + (1 - lam) * e_k[c] / z_k
            total -= w * math.log(e_q[c] / z_q)
    return total / q.shape[0]


@pytest.mark.parametrize("lam,tau,tau_m", [(0.5, 0.1, 0.07), (0.5, 0.1, 0.05), (0.0, 0.2, 0.1), (0.8, 1.0, 0.5)])
@pytest.mark.parametrize("mask_positive", [False, True])
def test_sce_matches_paper_loop_float64(lam, tau, tau_m, mask_positive):
    q, k, queue = _unit(5, 8, seed=1), _unit(5, 8, seed=2), _unit(12, 8, seed=3)
    got = float(sce_loss(q, k, queue, tau, tau_m, lam, mask_positive=mask_positive))
    assert abs(got - _loop_sce(q, k, queue, tau, tau_m, lam, mask_positive)) < 1e-6


def test_coeff_one_is_exactly_infonce():
    for seed in range(3):
        q, k, queue = (_unit(6, 16, seed=seed + s, dtype=torch.float32) for s in (0, 10, 20))
        assert torch.equal(sce_loss(q, k, queue, 0.2, 0.07, 1.0), infonce_loss(q, k, queue, 0.2))


def test_first_target_column_and_one_hot_mask():
    # hand-made: 2 keys, a queue of 3; column 0 = coeff + (1 - coeff) * e^0 / Z, Z = e^0 + sum_j e^{k.Q_j / tau_m}
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    queue = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    tau_m, lam = 0.5, 0.3
    target = sce_target(k, queue, tau_m, lam)
    assert target.shape == (2, 4)
    for i in range(2):
        z = 1.0 + sum(math.exp(float(k[i] @ queue[j]) / tau_m) for j in range(3))
        assert abs(float(target[i, 0]) - (lam + (1 - lam) / z)) < 1e-12
    torch.testing.assert_close(target.sum(1), torch.ones(2, dtype=torch.float64))
    # the one-hot part is exactly column 0: lam = 1 leaves [1, 0, 0, 0] on every row
    onehot = sce_target(k, queue, tau_m, 1.0)
    assert torch.equal(onehot, torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]], dtype=torch.float64))
    # the paper's strict mask puts no relational weight on the positive
    assert torch.allclose(sce_target(k, queue, tau_m, lam, mask_positive=True)[:, 0],
                          torch.full((2,), lam, dtype=torch.float64))


def test_fp32_under_autocast_and_gradient_to_q_only():
    q = _unit(4, 8, seed=5, dtype=torch.float32).requires_grad_()
    k, queue = _unit(4, 8, seed=6, dtype=torch.float32), _unit(16, 8, seed=7, dtype=torch.float32)
    ref = sce_loss(q, k, queue, 0.1, 0.07, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = sce_loss(q, k.bfloat16(), queue.bfloat16(), 0.1, 0.07, 0.5)
    assert amp.dtype == torch.float32
    assert abs(amp.item() - ref.item()) < 0.05  # only the bf16 rounding of k and the queue differs
    ref.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_multicrop_normalisation_constant():
    assert num_loss_pairs(2, 2) == 2 and num_loss_pairs(2, 6) == 10
    queue = _unit(16, 8, seed=9, dtype=torch.float32)
    keys = [_unit(4, 8, seed=10, dtype=torch.float32), _unit(4, 8, seed=11, dtype=torch.float32)]
    queries = [_unit(4, 8, seed=20 + j, dtype=torch.float32) for j in range(6)]
    got = multicrop_sce_loss(queries, keys, queue, 0.1, 0.07, 0.5)
    expected = sum(sce_loss(queries[j], keys[i], queue, 0.1, 0.07, 0.5) for i in range(2) for j in range(6) if j != i)
    torch.testing.assert_close(got, expected / 10)
    # 2 crops: (q = online(g2), k = target(g1)) + (q = online(g1), k = target(g2)), divided by 2
    two = multicrop_sce_loss(queries[:2], keys, queue, 0.1, 0.07, 0.5)
    torch.testing.assert_close(two, (sce_loss(queries[1], keys[0], queue, 0.1, 0.07, 0.5)
                                     + sce_loss(queries[0], keys[1], queue, 0.1, 0.07, 0.5)) / 2)


def test_momentum_schedule_endpoints_and_shape():
    m = momentum_schedule(0.99, epochs=3, iters_per_epoch=7)
    assert len(m) == 21 and m[0] == 0.99 and m[-1] == 1.0
    assert all(a <= b for a, b in zip(m[:-1], m[1:]))
    s, total = 5, 21  # eztorch's cosine formula at an inner step
    assert abs(m[s] - (1 - 0.01 * (1 + math.cos(math.pi * s / (total - 1))) / 2)) < 1e-15
