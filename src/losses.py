"""Losses as pure functions of tensors. They follow the inputs' device and compute in float32 even
under autocast, since softmax over tens of thousands of logits loses too much in half precision."""
import torch
import torch.nn.functional as F


def infonce_logits(q, k, queue, temperature):
    """MoCo logits: ``[q.k, q @ queue^T] / T``.

    Args:
        q: (B, D) unit-norm queries.
        k: (B, D) unit-norm positive keys (no gradient needed).
        queue: (K, D) unit-norm negatives.
        temperature: T.
    Returns:
        (B, 1 + K) float32 logits, the positive in column 0.
    """
    q, k, queue = q.float(), k.float(), queue.float()
    l_pos = (q * k).sum(dim=1, keepdim=True)  # (B, 1)
    l_neg = q @ queue.t()  # (B, K)
    return torch.cat([l_pos, l_neg], dim=1) / temperature


def infonce_loss(q, k, queue, temperature):
    """MoCo's InfoNCE (He et al. 2020, eq. 1): cross-entropy of the (1+K)-way logits with label 0.

    Args:
        q: (B, D) unit-norm queries; k: (B, D) unit-norm keys; queue: (K, D) unit-norm negatives;
        temperature: T (0.07 in MoCo v1, 0.2 in v2).
    Returns:
        scalar float32 loss, mean over the B rows.
    """
    logits = infonce_logits(q, k, queue, temperature)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels)
