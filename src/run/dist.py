"""Distributed setup and collectives: the only module that reads launchers, env variables and backends.

:func:`init_distributed` detects the launcher in this order (docs/launching.md):

1. ``torchrun`` / ``python -m torch.distributed.launch``: env ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``env://``;
2. ``srun``: ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``; ``MASTER_ADDR`` from the env or the first host
   of ``SLURM_JOB_NODELIST``, ``MASTER_PORT`` from the env or 29500. Inside sbatch these are set even for a plain
   ``python``: launch with ``srun`` when ``--ntasks`` > 1;
3. MoCo style: ``dist_url="tcp://host:port"`` with ``world_size`` and ``rank`` (``--dist-url --world-size --rank``,
   and what :func:`spawn_workers` passes for ``--multiprocessing-distributed``);
4. nothing: one process, no process group.

A process group is created only when the world size is above 1; without one every helper below is the
identity, so single-process code needs no special case. Backend: NCCL on CUDA, gloo otherwise (CPU tests).

``spawn_workers`` contract (MoCo's ``--multiprocessing-distributed``)::

    def worker(local_rank, rank, world_size, dist_url, *fn_args): ...   # module-level, so it pickles
    spawn_workers(worker, nprocs_per_node, node_rank, num_nodes, dist_url, fn_args=(args,))

Process i on node ``node_rank`` is called **positionally** as ``worker(i, node_rank * nprocs_per_node + i,
num_nodes * nprocs_per_node, dist_url, *fn_args)`` and should pass those on to ``init_distributed``.
"""
import datetime
import os
import random
import re
import socket
import subprocess
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as tdist

from src.run.errors import UserError
from src.run.signals import forward_to_children


@dataclass
class DistInfo:
    """Where this process stands: ranks, the device it computes on, and how it was launched."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool  # True when a process group with world_size > 1 exists
    backend: str | None  # "nccl" / "gloo", None without a group
    launcher: str  # "none" | "torchrun" | "launch" | "slurm" | "spawn" | "manual"


# ==================================================================================================
def first_slurm_host(nodelist):
    """First host of a SLURM node list in its compact form (what ``scontrol show hostnames`` prints first).

    Args: nodelist: e.g. ``node[01-03,7],gpu5``, ``a-b-c``, ``gpu[9]``, ``rack[1-2]-n[3-4]``.
    Returns: the first host name: ``node01``, ``a-b-c``, ``gpu9``, ``rack1-n3``.
    """
    first, depth = "", 0
    for ch in nodelist.strip():  # cut at the first comma outside brackets
        if ch == "," and depth == 0:
            break
        depth += {"[": 1, "]": -1}.get(ch, 0)
        first += ch
    # each bracket group "[01-03,7]" -> its first member "01" (zero padding kept)
    return re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split(",")[0].split("-")[0], first)


def slurm_master_addr(nodelist):
    """Rendezvous host for srun: the first host of the job's node list.

    Args: nodelist: ``SLURM_JOB_NODELIST`` (compact form).
    Returns: ``scontrol show hostnames``'s first line when that tool exists, else :func:`first_slurm_host`.
    """
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=10)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass  # no scontrol on this machine (tests, containers): parse it ourselves
    return first_slurm_host(nodelist)


def pick_device(device=None, gpu=None, local_rank=0):
    """The device this process computes on: the one place that chooses it (scripts, evaluations, demos).

    Args:
        device: "cpu", "cuda", "cuda:1" or None/"" (auto); bare "cuda" means ``cuda:local_rank``.
        gpu: MoCo's ``--gpu`` id, used when ``device`` is not given.
        local_rank: index of this process on its node.
    Returns: torch.device (``cuda:local_rank % #GPUs`` when CUDA exists and nothing was forced, else cpu).
    Raises:
        UserError: a CUDA device is asked for and none is visible (collective: every rank sees the same).
    """
    if not device and gpu is not None:
        device = f"cuda:{gpu}"
    if device:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is visible; use --device cpu", collective=True)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(dist_url=None, world_size=-1, rank=-1, local_rank=None, backend=None, device=None, gpu=None,
                     timeout_s=1800):
    """Detect the launcher, pick the device, create the process group when world_size > 1.

    Args:
        dist_url: MoCo-style init URL (``tcp://host:port``); used only when no launcher env is found.
        world_size: MoCo-style total number of processes (with ``dist_url``); -1 when unknown.
        rank: MoCo-style global rank of this process (with ``dist_url``); -1 when unknown.
        local_rank: from ``--local-rank`` (torch.distributed.launch) or :func:`spawn_workers`; None otherwise.
        backend: force "nccl" or "gloo"; default nccl on CUDA, gloo otherwise.
        device: force "cpu", "cuda" or "cuda:1"; default ``cuda:local_rank`` when CUDA exists, else cpu.
        gpu: MoCo's ``--gpu`` id (when ``device`` is not given).
        timeout_s: collective timeout in seconds.
    Returns: DistInfo. Rank 0 prints one line ``distributed: launcher=..., world_size=..., ...``.
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = "launch" if local_rank is not None else "torchrun"
        rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", local_rank if local_rank is not None else 0))
        init_method = "env://"
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        launcher, init_method = "slurm", "env://"
        rank, world_size = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local_rank = int(env.get("SLURM_LOCALID", 0))
        if world_size > 1:  # env:// reads these two
            nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
            env.setdefault("MASTER_ADDR", slurm_master_addr(nodelist))
            env.setdefault("MASTER_PORT", "29500")
    elif dist_url and dist_url != "env://" and world_size >= 1 and rank >= 0:
        launcher = "spawn" if local_rank is not None else "manual"
        local_rank = local_rank if local_rank is not None else 0
        init_method = dist_url
    else:
        launcher, init_method = "none", None
        rank, world_size, local_rank = 0, 1, local_rank or 0

    dev = pick_device(device, gpu, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    distributed = world_size > 1
    backend = (backend or ("nccl" if dev.type == "cuda" else "gloo")) if distributed else None
    if distributed and not tdist.is_initialized():
        # device_id binds NCCL to this GPU eagerly; gloo on a CPU has no device to bind
        tdist.init_process_group(backend, init_method=init_method, world_size=world_size, rank=rank,
                                 timeout=datetime.timedelta(seconds=timeout_s),
                                 device_id=dev if backend == "nccl" else None)
    if rank == 0:
        print(f"distributed: launcher={launcher}, world_size={world_size}, rank={rank}, backend={backend}, "
              f"device={dev}", flush=True)
    return DistInfo(rank, world_size, local_rank, dev, distributed, backend, launcher)


def launcher_env():
    """Returns: True when a launcher (torchrun, torch.distributed.launch, srun) set this process's ranks."""
    env = os.environ
    return ("RANK" in env and "WORLD_SIZE" in env) or ("SLURM_PROCID" in env and "SLURM_NTASKS" in env)


def check_manual_launch(dist_url, world_size, rank, what="process"):
    """MoCo-style launch flags that cannot work, refused before any process or process group exists.

    Args:
        dist_url: ``--dist-url``. world_size / rank: ``--world-size`` / ``--rank`` (nodes with
            ``--multiprocessing-distributed``, processes otherwise; -1: not given). what: "node" or "process".
    Raises:
        UserError: a rank outside [0, world_size), or a ``tcp://`` URL without a valid port or a resolvable host
        (a rendezvous that can never complete would wait for its whole timeout).
    """
    if world_size >= 1 and not 0 <= rank < world_size:
        many = "nodes" if what == "node" else "processes"
        raise UserError(f"--rank {rank} is this {what}'s index among --world-size {world_size} {many}: it must be in "
                        f"[0, {world_size - 1}]")
    if dist_url and dist_url.startswith("tcp://"):
        host, _, port = dist_url[len("tcp://"):].rstrip("/").rpartition(":")
        if not port.isdigit() or not 0 < int(port) < 65536 or not host:
            raise UserError(f"--dist-url {dist_url}: give tcp://HOST:PORT with a port in 1-65535 (e.g. "
                            "tcp://127.0.0.1:23456)")
        try:
            socket.getaddrinfo(host.strip("[]"), int(port))
        except (OSError, UnicodeError):
            raise UserError(f"--dist-url {dist_url}: host '{host}' cannot be resolved; give node 0's host name or "
                            "address") from None


def spawn_workers(worker_fn, nprocs_per_node, node_rank, num_nodes, dist_url, fn_args=()):
    """MoCo's ``--multiprocessing-distributed``: start ``nprocs_per_node`` processes on this node and wait.

    Args:
        worker_fn: module-level function called as ``worker_fn(local_rank, rank, world_size, dist_url,
            *fn_args)`` (positionally; see the module docstring).
        nprocs_per_node: processes on this node (number of GPUs, or what ``--nproc-per-node`` says on a CPU).
        node_rank: index of this node (MoCo's ``--rank``).
        num_nodes: number of nodes (MoCo's ``--world-size``).
        dist_url: ``tcp://host:port`` of node 0; None/""/"env://" picks a free local port (one node only).
        fn_args: extra positional arguments for ``worker_fn``.
    Returns: None, once every process has exited (an exception in one is re-raised here).
    """
    if dist_url in (None, "", "env://"):
        if num_nodes > 1:
            raise UserError("several nodes need a shared --dist-url tcp://<node 0 host>:<port>")
        dist_url = f"tcp://127.0.0.1:{free_port()}"
    context = torch.multiprocessing.start_processes(
        _spawned, nprocs=nprocs_per_node, join=False, start_method="spawn",
        args=(worker_fn, nprocs_per_node, node_rank, num_nodes, dist_url, tuple(fn_args)))
    # a stop signal (SLURM pre-emption, kill -TERM -- -PGID, Ctrl-C) is the workers' to handle: this process passes it
    # on and keeps waiting while they save and exit
    restore = forward_to_children(context.pids)
    try:
        while not context.join():
            pass
    finally:
        restore()


def _spawned(i, worker_fn, nprocs, node_rank, num_nodes, dist_url, fn_args):
    """Spawned process ``i``: turn its index into ranks, call the worker (args as in spawn_workers).

    Returns: what ``worker_fn`` returns (ignored by spawn).
    """
    if "OMP_NUM_THREADS" not in os.environ:  # as torchrun does: N processes x all-cores threads oversubscribe the
        # CPU (docs/launching.md)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nprocs))
    return worker_fn(i, node_rank * nprocs + i, num_nodes * nprocs, dist_url, *fn_args)


def free_port():
    """Returns: a TCP port that was free a moment ago on 127.0.0.1 (for tests and default local URLs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_everything(seed, rank=0):
    """Seed python ``random``, numpy and torch (CPU and every CUDA device) with ``seed + rank``.

    Args:
        seed: base seed, shared by all ranks; rank: offset, so that ranks draw different augmentations.
    Returns: the seed used (``seed + rank``).
    """
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(s)
    return s


def cleanup():
    """Barrier, then destroy the process group, if one exists. Returns: None.

    The barrier matters: gloo workers that tear down while a peer is still in a collective may abort (SIGABRT).
    """
    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


# ==================================================================================================
def is_dist():
    """Returns: True when a process group with more than one process exists."""
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def get_rank():
    """Returns: global rank of this process (0 without a group)."""
    return tdist.get_rank() if is_dist() else 0


def get_world_size():
    """Returns: number of processes (1 without a group)."""
    return tdist.get_world_size() if is_dist() else 1


def process_rank():
    """Returns: this process's global rank: the process group's, else the launcher's (torchrun ``RANK``, srun
    ``SLURM_PROCID``), else 0. For messages that only rank 0 should print, before a group exists."""
    if is_dist():
        return tdist.get_rank()
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def local_world_size():
    """Returns: processes on this node (torchrun ``LOCAL_WORLD_SIZE``, srun ``SLURM_NTASKS_PER_NODE``), else the
    world size: what a per-node ``-j/--workers`` budget is split over."""
    for key in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        if os.environ.get(key, "").isdigit():
            return max(int(os.environ[key]), 1)
    return get_world_size()


def requeued():
    """Returns: True in a SLURM job that was requeued (``SLURM_RESTART_COUNT`` > 0): it may start while the
    pre-empted attempt is still saving."""
    value = os.environ.get("SLURM_RESTART_COUNT", "")
    return value.isdigit() and int(value) > 0


def split_batch(total, world_size, flag="-b/--batch-size"):
    """A TOTAL batch over all processes (MoCo's and the evaluations' ``-b``): each process's share.

    Raises:
        UserError: ``total`` is not divisible by ``world_size`` (collective: every rank raises it).
    """
    if total % world_size:
        raise UserError(f"{flag} {total} is the TOTAL batch over all processes: make it divisible by the "
                        f"{world_size} processes", collective=True)
    return total // world_size


def wrap_ddp(module, device):
    """``module`` in DistributedDataParallel when a process group exists (bound to ``device`` on CUDA), else itself.
    DDP broadcasts rank 0's parameters: a copy of them made before (a momentum encoder) must be refreshed after."""
    if not is_dist():
        return module
    device = torch.device(device)
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def is_main_process():
    """Returns: True on rank 0 (the one that logs and writes checkpoints)."""
    return get_rank() == 0


def barrier():
    """Wait for every process (no-op without a group). Returns: None."""
    if is_dist():
        tdist.barrier()


@torch.no_grad()
def concat_all_gather(t):
    """All-gather along dim 0 in rank order, WITHOUT gradient.

    Use it for things that must not receive gradients (MoCo's keys for the queue, shuffle-BN images).
    Warning: the result is detached; for a loss over the global batch use :func:`gather_with_grad`.

    Args: t: (n, ...) tensor; n and the other dims must be equal on every rank.
    Returns: (world_size * n, ...) tensor, rank 0's rows first; ``t`` itself without a group.
    """
    if not is_dist():
        return t
    out = [torch.empty_like(t) for _ in range(tdist.get_world_size())]
    tdist.all_gather(out, t.contiguous())
    return torch.cat(out, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward returns to each rank the summed-over-ranks gradient of its own rows.

    Each rank's loss depends on every gathered row, so the gradient of a row of rank r has a share from
    every rank's loss: backward all-reduces (sums) the full gradient and keeps this rank's slice. Written
    here instead of ``torch.distributed.nn.functional.all_gather`` because that one's backward needs
    reduce_scatter or all_to_all, which gloo lacks; one all_reduce works on every backend.
    """

    @staticmethod
    def forward(ctx, t):
        """Args: t (n, ...) on every rank. Returns: (world_size * n, ...) in rank order."""
        out = [torch.empty_like(t) for _ in range(tdist.get_world_size())]
        tdist.all_gather(out, t.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad):
        """Args: grad (world_size * n, ...) of this rank's loss. Returns: (n, ...) summed over ranks."""
        grad = grad.contiguous()
        tdist.all_reduce(grad)
        n = grad.shape[0] // tdist.get_world_size()
        return grad[tdist.get_rank() * n:(tdist.get_rank() + 1) * n]


def gather_with_grad(t):
    """All-gather along dim 0 that carries gradients back (see ``_GatherWithGrad``).

    Rank r's rows receive the gradient of ``sum over ranks of loss_rank``: when the per-rank losses add up to
    the loss of the concatenated batch, that is exactly what a single process would compute for those rows.

    Args: t: (n, ...) tensor, same shape on every rank.
    Returns: (world_size * n, ...) tensor in rank order; ``t`` itself without a group.
    """
    return _GatherWithGrad.apply(t) if is_dist() else t


_REDUCE_OPS = {"sum": "SUM", "mean": "SUM", "max": "MAX", "min": "MIN"}


@torch.no_grad()
def all_reduce(t, op="sum"):
    """In-place all-reduce, no gradient.

    Args:
        t: tensor, same shape on every rank; op: "sum", "mean" (sum, then divide: gloo has no AVG), "max", "min".
    Returns: ``t``, reduced in place.
    """
    if op not in _REDUCE_OPS:
        raise ValueError(f"op must be one of {sorted(_REDUCE_OPS)}, got {op!r}")
    if is_dist():
        tdist.all_reduce(t, op=getattr(tdist.ReduceOp, _REDUCE_OPS[op]))
        if op == "mean":
            t.div_(tdist.get_world_size())
    return t


@torch.no_grad()
def broadcast(t, src=0):
    """In-place broadcast from rank ``src``, no gradient.

    Args:
        t: tensor, same shape and dtype on every rank; src: rank whose values everyone receives.
    Returns: ``t``, overwritten in place with rank ``src``'s values.
    """
    if is_dist():
        tdist.broadcast(t, src)
    return t
