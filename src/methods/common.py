"""Pieces shared by the momentum-encoder methods (MoCo, SCE): queue, EMA update, shuffle / split BN."""
import torch
import torch.nn.functional as F
from torch import nn

from src.run import dist
from src.run.errors import UserError


class KeyQueue(nn.Module):
    """FIFO queue of K unit-norm keys, stored as a (K, D) buffer (so it is saved in the state dict).

    Initialised N(0, 1) then row-normalised, like MoCo's. ``enqueue`` writes the gathered keys of the
    global batch at the pointer and advances it modulo K, which requires ``K % global_batch == 0``
    (checked before training starts; see :func:`check_queue_size`).
    """

    def __init__(self, size, dim):
        super().__init__()
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self._host_ptr = None  # host copy of ptr: reading the buffer every step would wait for the device

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._host_ptr = None  # ptr may have changed: read it again at the next enqueue

    @torch.no_grad()
    def enqueue(self, keys):
        """keys: (G, D) from every rank (already gathered), written at rows [ptr, ptr + G)."""
        n, size = keys.shape[0], self.queue.shape[0]
        if self._host_ptr is None:
            self._host_ptr = int(self.ptr)  # one device read, then the host copy is kept up to date
        ptr = self._host_ptr
        assert size % n == 0, f"queue size {size} is not a multiple of the {n} keys enqueued per step"
        self.queue[ptr:ptr + n] = keys.to(self.queue.dtype)
        self._host_ptr = (ptr + n) % size
        self.ptr.fill_(self._host_ptr)


def check_queue_size(queue_size, global_keys_per_step):
    """Raise a clear UserError unless the queue holds a whole number of steps' keys."""

    if queue_size % global_keys_per_step != 0:
        lower = queue_size - queue_size % global_keys_per_step
        raise UserError(
            f"queue size {queue_size} is not divisible by the {global_keys_per_step} keys enqueued per step "
            f"(global batch): use a multiple of it, e.g. {max(lower, global_keys_per_step)}")


@torch.no_grad()
def copy_params(online, target):
    """Copy every parameter and buffer of ``online`` into ``target`` and freeze ``target``'s parameters."""
    target.load_state_dict(online.state_dict())
    for p in target.parameters():
        p.requires_grad = False


@torch.no_grad()
def momentum_update(online, target, m):
    """EMA over parameters only: ``theta_t <- m * theta_t + (1 - m) * theta_o`` (BN running stats
    of the target stay its own, from its own forwards, as in MoCo and SCE)."""
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    torch._foreach_mul_(t_params, m)
    torch._foreach_add_(t_params, o_params, alpha=1.0 - m)


@torch.no_grad()
def batch_shuffle(x):
    """Shuffle-BN, step 1 (MoCo, He et al. 2020 sec. 3.3): give each rank a random slice of the GLOBAL batch.

    All ranks gather the images, draw one permutation on rank 0 and broadcast it, and keep their slice.
    Only DDP spreads BN statistics over other samples; with one process this is a local permutation
    (useful together with :class:`SplitBatchNorm`). Warning: the result carries no gradient; use it
    only for the momentum encoder.

    Returns:
        (x_shuffled (B, ...), idx_unshuffle) to pass to :func:`batch_unshuffle`.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    x_all = dist.concat_all_gather(x)
    perm = torch.randperm(x_all.shape[0], device=x.device)
    perm = dist.broadcast(perm, src=0)
    idx_unshuffle = torch.argsort(perm)
    return x_all[perm.view(world, -1)[rank]], idx_unshuffle


@torch.no_grad()
def batch_unshuffle(x, idx_unshuffle):
    """Shuffle-BN, step 2: gather the encoded slices and take back this rank's samples in their order."""
    world, rank = dist.get_world_size(), dist.get_rank()
    x_all = dist.concat_all_gather(x)
    return x_all[idx_unshuffle.view(world, -1)[rank]]


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that normalises ``num_splits`` equal sub-batches separately in training mode.

    Simulates the per-GPU BN of an N-GPU run on one device (MoCo's CIFAR demo uses 8), which together
    with a key-side shuffle keeps queries and keys from sharing batch statistics. Running statistics
    are the mean over splits; evaluation uses them like plain BN, and the state dict is plain BN's.
    """

    def __init__(self, num_features, num_splits, **kwargs):
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x):
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        s = self.num_splits
        assert n % s == 0, f"batch {n} is not divisible by --bn-splits {s}"
        mean_split = self.running_mean.repeat(s)
        var_split = self.running_var.repeat(s)
        out = F.batch_norm(x.reshape(n // s, c * s, h, w), mean_split, var_split,
                           self.weight.repeat(s) if self.affine else None,
                           self.bias.repeat(s) if self.affine else None, True, self.momentum, self.eps)
        self.running_mean.copy_(mean_split.view(s, c).mean(dim=0))
        self.running_var.copy_(var_split.view(s, c).mean(dim=0))
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        return out.view(n, c, h, w)


def convert_split_bn(module, num_splits):
    """Replace every BatchNorm2d in ``module`` by a :class:`SplitBatchNorm` with the same state."""
    if num_splits <= 1:
        return module
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm):
            new = SplitBatchNorm(child.num_features, num_splits, eps=child.eps, momentum=child.momentum,
                                 affine=child.affine, track_running_stats=child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_split_bn(child, num_splits)
    return module


def resolution_groups(crops):
    """(start, end) index pairs of consecutive crops with the same spatial size.

    Args:
        crops: list of (B, 3, H_i, W_i) tensors, e.g. 2 x 224 then 6 x 96.
    Returns:
        list of (start, end) pairs, e.g. [(0, 2), (2, 8)].
    """
    groups, start = [], 0
    for end in range(1, len(crops) + 1):
        if end == len(crops) or crops[end].shape[-2:] != crops[start].shape[-2:]:
            groups.append((start, end))
            start = end
    return groups
