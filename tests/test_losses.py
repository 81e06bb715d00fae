"""InfoNCE against a loop version written from the paper's formula (float64)."""
import math

import torch
import torch.nn.functional as F

from src.losses import infonce_logits, infonce_loss


def _loop_infonce(q, k, queue, t):
    total = 0.0
    for i in range(q.shape[0]):
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(math.exp(float(q[i] @ queue[j]) / t) for j in range(queue.shape[0]))
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


def test_infonce_matches_loop():
    torch.manual_seed(0)
    q = F.normalize(torch.randn(6, 8, dtype=torch.float64), dim=1)
    k = F.normalize(torch.randn(6, 8, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(10, 8, dtype=torch.float64), dim=1)
    for t in (0.07, 0.2, 1.0):
        assert abs(float(infonce_loss(q, k, queue, t)) - _loop_infonce(q, k, queue, t)) < 1e-5


def test_infonce_tiny_hand_case():
    # one query equal to its key, one orthogonal negative, T = 1: loss = -log(e / (e + 1))
    q = torch.tensor([[1.0, 0.0]])
    loss = infonce_loss(q, q.clone(), torch.tensor([[0.0, 1.0]]), 1.0)
    assert abs(float(loss) - (-math.log(math.e / (math.e + 1)))) < 1e-6


def test_infonce_positive_in_column_zero_and_fp32():
    q = F.normalize(torch.randn(3, 4), dim=1).half()
    logits = infonce_logits(q, q, F.normalize(torch.randn(5, 4), dim=1), 0.5)
    assert logits.dtype == torch.float32 and logits.shape == (3, 6)
    torch.testing.assert_close(logits[:, 0], torch.full((3,), 2.0), rtol=1e-3, atol=1e-3)


def test_infonce_gradient_flows_to_q_only():
    q = F.normalize(torch.randn(4, 8), dim=1).requires_grad_()
    k = F.normalize(torch.randn(4, 8), dim=1).requires_grad_()  # even keys that could take a gradient get none
    queue = F.normalize(torch.randn(16, 8), dim=1).requires_grad_()
    infonce_loss(q, k, queue, 0.2).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None and queue.grad is None
