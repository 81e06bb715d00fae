"""State that spans ranks: every rank's RNG states for a bit-exact resume, and a once-per-epoch check that the
replicated state (weights, queues) is identical on every rank."""
import torch

from src.run import dist
from src.run.checkpoint import rng_state
from src.run.logging import print_rank0


def gather_rng_states(device):
    """Every rank's RNG states (torch CPU, CUDA, numpy, python) in rank order; a collective: all ranks call it.

    Args:
        device: this rank's device (a CUDA generator state is included there).
    Returns:
        list of ``world_size`` dicts as :func:`src.run.checkpoint.rng_state` returns them, entry r from rank r.
    """
    state = rng_state(device)
    if not dist.is_dist():
        return [state]
    out = [None] * dist.get_world_size()
    torch.distributed.all_gather_object(out, {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in state.items()})
    # a copy of every tensor: one saved as a view of a shared buffer would load with a storage offset, and
    # torch.set_rng_state crashes (SIGSEGV) on such a tensor
    return [{k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()} for s in out]


@torch.no_grad()
def check_ranks_in_sync(named_tensors, device, what="encoder weights and queue"):
    """Runtime sanity check (one small all-gather): tensors that must be replicated (weights, queue) are
    identical on every rank. BN running statistics legitimately differ (per-rank batches): leave them out.

    Args:
        named_tensors: {name: tensor} on ``device``.
        device: this rank's device.
        what: words for the printed line ``ranks in sync: <what> identical on N processes``.
    Raises:
        RuntimeError: naming up to five tensors that differ between ranks.
    """
    world = dist.get_world_size()
    if world == 1:
        return
    names = list(named_tensors)
    fp = torch.stack([torch.stack([t.double().sum(), t.double().square().sum()]).sum()
                      for t in named_tensors.values()])
    all_fp = dist.concat_all_gather(fp[None].to(device))
    if not bool((all_fp == all_fp[0]).all()):
        bad = [names[i] for i in range(len(names)) if not bool((all_fp[:, i] == all_fp[0, i]).all())]
        raise RuntimeError(f"ranks diverged: {', '.join(bad[:5])} differ between processes")
    print_rank0(f"ranks in sync: {what} identical on {world} processes", rank=dist.get_rank())
