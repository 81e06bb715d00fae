"""Run a script's per-process function under whichever launcher started it (the glue of the evaluation scripts).

``launch(fn, args)`` handles MoCo's ``--multiprocessing-distributed`` (one spawned process per GPU, or
``--nproc-per-node`` on a CPU) and otherwise runs in this process, which ``src.dist.init_distributed`` places in
the group of torchrun, ``torch.distributed.launch``, ``srun`` or a plain ``python`` (no group). Each process calls
``fn(args, info)`` with its :class:`~src.dist.DistInfo`; a :class:`~src.errors.UserError` there prints one
``error:`` line and exits with status 2 (also from spawned processes), and the process group is always torn down.
The flags read are those of ``src.args.add_dist_args`` (``--device`` / ``--gpu`` too).
"""
import sys

import torch

from . import dist
from .errors import UserError, exit_on_user_error


def launch(fn, args):
    """Run ``fn(args, info)`` in every process of the run.

    Args:
        fn: module-level function (it is pickled for spawned processes).
        args: parsed flags with ``add_dist_args``'s fields.
    Returns:
        ``fn``'s return value in this process (None when processes were spawned).
    """
    if not args.multiprocessing_distributed:
        return _worker(None, None, None, None, fn, args)
    nprocs = args.nproc_per_node or max(torch.cuda.device_count(), 1)
    try:
        dist.spawn_workers(_worker, nprocs, max(args.rank, 0), max(args.world_size, 1), args.dist_url, (fn, args))
    except torch.multiprocessing.ProcessExitedException as exc:
        if exc.exit_code == 2:  # a UserError, already printed as one line by that process
            sys.exit(2)
        raise
    return None


def _worker(local_rank, rank, world_size, dist_url, fn, args):
    """One process: join the process group (any launcher), run ``fn``, leave it."""
    if rank is None:  # not spawned here: torchrun / launch / srun / plain python / MoCo-style manual ranks
        local_rank, rank, world_size = args.local_rank, args.rank, args.world_size
        dist_url = args.dist_url if args.dist_url != "env://" else None
    device = args.device or (f"cuda:{args.gpu}" if args.gpu is not None else None)
    if device and device.startswith("cuda") and not torch.cuda.is_available():
        exit_on_user_error(_raise)(UserError(f"--device {device}: no CUDA device is visible; use --device cpu"))
    info = dist.init_distributed(dist_url=dist_url, world_size=world_size, rank=rank, local_rank=local_rank,
                                 backend=args.dist_backend or None, device=device)
    try:
        return exit_on_user_error(fn)(args, info)
    finally:
        dist.cleanup()


def _raise(exc):
    raise exc
