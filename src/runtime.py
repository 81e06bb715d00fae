"""What a training loop needs around its steps to survive pre-emption and to stay consistent across ranks:
a stop request on SIGTERM / SIGUSR1 that all ranks agree on, every rank's RNG state for a bit-exact
resume, and a once-per-epoch check that the replicated state is identical on every rank.

    stop = StopSignal(device)
    for it in steps:
        if stop.requested(it, every=print_freq):   # collective: every rank calls it at the same steps
            save(..., rng=gather_rng_states(device)); break
    check_ranks_in_sync({"trunk.conv1.weight": ..., "queue.queue": ...}, device)
"""
import os
import signal

import torch

from . import dist
from .checkpoint import rng_state
from .logging import print_rank0


class StopSignal:
    """SIGTERM / SIGUSR1 (SLURM pre-emption, ``--signal=USR1@600``) ask for a checkpoint and a clean exit.

    The handler only sets a flag; :meth:`requested` turns it into a decision shared by all ranks.

    Args:
        device: device of this rank's collectives (gloo: CPU, NCCL: its GPU).
    """

    def __init__(self, device):
        self.flag, self.device, self.pid = False, device, os.getpid()
        for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
            if sig is not None:
                try:
                    signal.signal(sig, self._handler)
                except ValueError:  # not the main thread (e.g. inside a test harness thread)
                    pass

    def _handler(self, signum, frame):
        if os.getpid() != self.pid:
            # a forked child (DataLoader or Pool worker) inherited this handler: it must still die of the signal,
            # or SLURM's SIGTERM leaves it running and Pool.terminate() waits for it forever
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.flag = True

    def requested(self, it, every):
        """Whether to stop after 0-based iteration ``it``; checked (one all-reduce) every ``every`` steps.

        Args:
            it: iteration index within the epoch (the same on every rank).
            every: check interval in iterations (the print frequency keeps it cheap).
        Returns:
            True on every rank as soon as any rank received a signal, at a checked step.
        """
        if (it + 1) % max(every, 1) != 0:
            return False
        flag = torch.tensor([float(self.flag)], device=self.device)
        return bool(dist.all_reduce(flag, op="sum").item() > 0)


def gather_rng_states(device):
    """Every rank's RNG states in rank order (a collective: all ranks call it), so that each rank resumes
    its own stream.

    Args:
        device: this rank's device (a CUDA generator state is included there).
    Returns:
        list of ``world_size`` dicts as :func:`src.checkpoint.rng_state` returns; the torch CPU state is
        gathered from every rank, the other fields (python, numpy, CUDA) are this rank's.
    """
    state = rng_state(device)
    torch_states = dist.concat_all_gather(state["torch"].to(device)[None]).cpu()
    out = []
    for r in range(torch_states.shape[0]):
        s = dict(state)
        # a copy, not a row view: saved as a view, rank r's state would load with a storage offset, and
        # torch.set_rng_state crashes (SIGSEGV) on such a tensor
        s["torch"] = torch_states[r].to(torch.uint8).clone()
        out.append(s)
    return out


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
