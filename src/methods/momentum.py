"""Momentum-encoder pieces shared by MoCo and SCE: the key queue, the EMA update of the target weights, and the
copy that starts a target from the online weights."""
import torch
import torch.nn.functional as F
from torch import nn

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
