"""Losses as pure functions of tensors. They follow the inputs' device and compute in float32 even
under autocast, since softmax over tens of thousands of logits loses too much in half precision."""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from src.run import dist
from src.run.errors import UserError


def infonce_logits(q, k, queue, temperature):
    """MoCo logits: ``[q.k, q @ queue^T] / T``.

    Args:
        q: (B, D) unit-norm queries.
        k: (B, D) unit-norm positive keys (detached: no gradient flows to them, nor to the queue).
        queue: (K, D) unit-norm negatives.
        temperature: T.
    Returns:
        (B, 1 + K) float32 logits, the positive in column 0.
    """
    # keys and queue are constants of the step (the momentum encoder's): no gradient reaches them
    q, k, queue = q.float(), k.detach().float(), queue.detach().float()
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


def sce_loss(q, k, queue, temperature, temperature_m, coeff, mask_positive=False):
    """SCE, Similarity Contrastive Estimation (Denize et al., WACV 2023, eq. 5-7; juliendenize/eztorch
    ``losses/sce_loss.py``, ``use_keys=False``): cross-entropy between a target mixing the one-hot
    positive with the key's similarities to the queue, and the query's softmax over ``[key, queue]``.

    ``target = coeff * onehot(0) + (1 - coeff) * softmax([0, k @ queue^T] / temperature_m)`` (the key's
    similarity to itself is replaced by logit 0, as the reference code does; ``mask_positive=True`` gives
    the paper's strict ``1[i != k]`` mask instead, i.e. probability 0 on the positive), then
    ``loss = mean_B( -sum_cols target * log_softmax([q.k, q @ queue^T] / temperature) )``.
    ``coeff = 1`` is exactly InfoNCE (:func:`infonce_loss`); ``coeff = 0`` is purely relational.

    Args:
        q: (B, D) unit-norm online predictions (the only input that receives gradients).
        k: (B, D) unit-norm momentum keys of the other view (treated as constants).
        queue: (K, D) unit-norm keys of past batches (a snapshot taken before the step).
        temperature: tau of the online distribution (0.1).
        temperature_m: tau_m of the target distribution (0.07 ImageNet, 0.05 video).
        coeff: lambda, weight of the one-hot positive (0.5).
        mask_positive: paper's strict mask instead of the code's logit 0 on the positive (default False).
    Returns:
        scalar float32 loss, mean over the B rows; computed in float32 (float64 inputs stay float64)
        with autocast disabled, since 1 / temperature_m amplifies half-precision rounding.
    """
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    with torch.autocast(q.device.type, enabled=False):
        q, k, queue = q.to(dtype), k.detach().to(dtype), queue.detach().to(dtype)
        logits_q = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ queue.t()], dim=1) / temperature  # (B, 1+K)
        target = sce_target(k, queue, temperature_m, coeff, mask_positive)  # (B, 1+K), rows sum to 1
        return -(target * F.log_softmax(logits_q, dim=1)).sum(dim=1).mean()


@torch.no_grad()
def sce_target(k, queue, temperature_m, coeff, mask_positive=False):
    """SCE's target distribution over ``[positive, queue]`` (no gradient).

    Args:
        k: (B, D) unit-norm keys; queue: (K, D); temperature_m: tau_m; coeff: lambda.
        mask_positive: probability 0 on the positive's similarity term (paper) instead of logit 0 (code).
    Returns:
        (B, 1 + K) tensor in k's dtype (use float32 or float64): ``coeff * onehot(0) + (1 - coeff) *
        softmax([0 or -inf, k @ queue^T] / temperature_m)``; column 0 is
        ``coeff + (1 - coeff) * exp(0) / Z`` with the code's logit 0.
    """
    pos = torch.full((k.shape[0], 1), float("-inf") if mask_positive else 0.0, dtype=k.dtype, device=k.device)
    target = (1.0 - coeff) * torch.softmax(torch.cat([pos, k @ queue.t()], dim=1) / temperature_m, dim=1)
    target[:, 0] += coeff
    return target


def knn_positive_loss(neg_logits, features, feature_queue, topk):
    """Nearest neighbours as extra positives (Van Gansbeke et al. 2021, "Revisiting Contrastive Methods",
    wvangansbeke/Revisiting-Contrastive-SSL ``builder/builder_ours.py``).

    For each query row, the ``topk`` queue entries closest to it in BACKBONE space are its positives in
    HEAD space: ``-mean_rows( (1/topk) sum_{n in topk} log softmax(neg_logits)_n )``, the softmax taken
    over the K queue entries only (the positive key is not part of it).

    Args:
        neg_logits: (N, K) head-space similarities to the queue divided by the temperature, e.g.
            ``logits[:, 1:]`` of :func:`infonce_logits`; carries the gradient.
        features: (N, F) unit-norm backbone features of the same N queries (no gradient needed).
        feature_queue: (K, F) unit-norm backbone features of the keys in the queue, row n matching
            column n of ``neg_logits``: the queue before this step's keys are enqueued (the reference's
            ``builder_ours_warmup``), or after (``builder_ours``: then the rows just written hold this step's
            keys while those columns of ``neg_logits`` still hold the keys they replaced).
        topk: neighbours per row (20 in the paper's scripts, 50 the reference default), at most K.
    Returns:
        scalar float32 loss.
    """
    with torch.no_grad():
        idx = (features.float() @ feature_queue.float().t()).topk(topk, dim=1).indices  # (N, topk)
    log_prob = F.log_softmax(neg_logits.float(), dim=1)  # (N, K), max-subtracted inside
    return -log_prob.gather(1, idx).mean(dim=1).mean()


# ==== SwAV (Caron et al., NeurIPS 2020; facebookresearch/swav main_swav.py) ====
@torch.no_grad()
def distributed_sinkhorn(scores, epsilon=0.05, n_iters=3):
    """Sinkhorn-Knopp soft codes with equal prototype marginals over the GLOBAL batch (SwAV eq. 3-4).

    Exactly the order of the reference code: ``Q = exp(scores / epsilon)^T`` (K x n); divide by the global
    total; then ``n_iters`` times: divide each prototype row by its sum over every process (all-reduced) and by
    K, divide each sample column by its (local) sum and by the global sample count ``B_tot = n * world_size``;
    finally multiply by ``B_tot`` so that every sample's code sums to 1. The K-vector of row sums is the only
    per-iteration collective; a column lives on one process. Computed in float32 (float64 inputs stay float64)
    with autocast off: ``exp(1 / 0.05) = e^20`` is out of float16's range. With one process (or no process
    group) the all-reduces are the identity.

    Args:
        scores: (n_local, K) prototype scores of this process's samples (queue rows first, batch last, when
            a queue is used); unit-norm embeddings and prototypes keep them in [-1, 1].
        epsilon: entropy regularisation (0.05; 0.03 sharpens the codes, too low overflows).
        n_iters: Sinkhorn iterations (3).
    Returns:
        (n_local, K) codes, no gradient; every row sums to 1, and as ``n_iters`` grows each prototype's
        column sum over all processes tends to ``B_tot / K``.
    """
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    with torch.autocast(scores.device.type, enabled=False):
        Q = torch.exp(scores.detach().to(dtype) / epsilon).t()  # (K, n_local), prototypes x samples
        K, n_local = Q.shape
        B_tot = n_local * dist.get_world_size()
        total = Q.sum()
        Q /= dist.all_reduce(total)
        for _ in range(n_iters):
            row_sums = dist.all_reduce(Q.sum(dim=1, keepdim=True))  # (K, 1), global
            Q /= row_sums
            Q /= K
            Q /= Q.sum(dim=0, keepdim=True)  # (1, n_local), local
            Q /= B_tot
        Q *= B_tot
        return Q.t()



class Transport(NamedTuple):
    """A Sinkhorn-Knopp transport plan in factored form: ``plan[i, k] = row_scale[i] * kernel[i, k] * col_scale[k]``.

    Each row of the plan (one sample) sums to 1; each column (one prototype) sums, over every process, to
    ``n_total / K`` within ``error`` (relative).
    """
    kernel: torch.Tensor  # (n_local, K) exp((scores - row max) / epsilon)
    row_scale: torch.Tensor  # (n_local,)
    col_scale: torch.Tensor  # (K,), identical on every process
    iterations: int
    error: float  # max over prototypes of |column sum / (n_total / K) - 1|


@torch.no_grad()
def sinkhorn_equipartition(scores, epsilon=0.05, tolerance=1e-3, max_iters=1000, inplace=False):
    """Sinkhorn-Knopp run until every prototype holds the same share of the samples (SeLa's label step).

    SeLa (Asano et al., ICLR 2020, section 3; yukimasano/self-label ``optimize_L_sk``) runs to convergence rather
    than SwAV's fixed count: with ``kernel = exp(scores / epsilon)`` it alternates ``c <- 1 / (kernel r)`` (rows sum
    to 1) and ``r <- (n_total / K) / (c^T kernel)`` (columns to ``n_total / K``), until every column, after a row
    step, is within ``tolerance`` of ``n_total / K``. SeLa's ``softmax(logits) ** lambda`` is this kernel with
    ``epsilon = 1 / lambda``. Per iteration: two matrix-vector products and one all-reduce of a K-vector; the plan
    stays factored, so no N x K temporary besides the kernel.

    Args:
        scores: (n_local, K) scores of this process's samples (cosine similarities in [-1, 1] here);
            float32 (float64 stays float64).
        epsilon: entropy regularisation (0.05; SeLa's lambda 25 is 0.04 on its logits). Below about 0.025
            float32 underflows (exp(-2 / epsilon)) and a UserError is raised.
        tolerance: stop once ``max_k |column_k / (n_total / K) - 1| <= tolerance`` (1e-3).
        max_iters: at most this many iterations (1000); the plan is returned with its error if not reached.
        inplace: overwrite ``scores`` with the kernel (saves one n_local x K tensor on a large bank).
    Returns:
        Transport (kernel, row_scale, col_scale, iterations, error); ``col_scale`` and ``error`` are identical
        on every process.
    """
    if max_iters < 1 or tolerance < 0 or epsilon <= 0:
        raise UserError(f"Sinkhorn needs epsilon > 0, tolerance >= 0 and max_iters >= 1, got {epsilon}, {tolerance}, "
                        f"{max_iters}")
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    with torch.autocast(scores.device.type, enabled=False):
        kernel = scores.detach()
        if not (inplace and kernel.dtype == dtype):
            kernel = kernel.to(dtype, copy=True)
        # subtracting each row's max keeps every entry in (0, 1]; the row factor is absorbed by the row scale
        kernel.sub_(kernel.max(dim=1, keepdim=True).values).div_(epsilon).exp_()
        n_local, K = kernel.shape
        n_total = float(dist.all_reduce(torch.tensor([n_local], device=kernel.device)).item())  # nccl: on the device
        col_scale = torch.ones(K, dtype=dtype, device=kernel.device)
        for it in range(1, max_iters + 1):
            row_scale = 1.0 / (kernel @ col_scale)  # (n_local,): every row of the plan sums to 1
            col_mass = dist.all_reduce(row_scale @ kernel)  # (K,): sum_i row_scale_i kernel_ik, all processes
            columns = col_scale * col_mass  # the plan's column sums, target n_total / K
            error = float((columns * (K / n_total) - 1.0).abs().max())
            if not math.isfinite(error):  # a row or column of zeros (underflow) turns the scales inf / NaN
                raise UserError(f"Sinkhorn over the memory bank over- or underflowed at epsilon {epsilon}: use a "
                                "larger --epsilon (0.05; at least 0.025)")
            if error <= tolerance:
                break
            col_scale = (n_total / K) / col_mass
        return Transport(kernel, row_scale, col_scale, it, error)


def swav_loss(scores, codes, crops_for_assign, temperature):
    """SwAV's swapped prediction (eq. 1-2): each assignment crop's code is predicted by every other crop.

    ``L = 1/|A| sum_{a in A} 1/(V-1) sum_{v != a} mean_b [ -sum_k codes_a[b, k] log softmax(scores_v[b] / T)_k ]``

    Args:
        scores: (V * B, K) prototype scores of all V crops, crop-major (crop 0's B rows first); the only input
            that receives gradients.
        codes: list of (B, K) codes (rows sum to 1), one per entry of ``crops_for_assign``.
        crops_for_assign: crop ids whose codes are targets, e.g. (0, 1).
        temperature: softmax temperature T (0.1).
    Returns:
        scalar loss, computed in float32 with autocast off (float64 inputs stay float64).
    """
    n_rows, K = scores.shape
    B = codes[0].shape[0]
    V = n_rows // B
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    with torch.autocast(scores.device.type, enabled=False):
        log_p = F.log_softmax(scores.to(dtype) / temperature, dim=1).view(V, B, K)
        loss = 0.0
        for a, q in zip(crops_for_assign, codes):
            others = [v for v in range(V) if v != a]
            cross = -(q.to(dtype).unsqueeze(0) * log_p[others]).sum(dim=2)  # (V - 1, B)
            loss = loss + cross.mean(dim=1).sum() / (V - 1)
        return loss / len(crops_for_assign)
