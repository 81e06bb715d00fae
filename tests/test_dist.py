"""Tests for src.run.dist: launcher detection, collectives and gradients with 2 gloo processes on a CPU.

Each multi-process test spawns 2 workers (torch.multiprocessing, 'spawn' start method). A worker saves what it
saw to ``tmp_path/rank{r}.pt``; the parent process makes the assertions, so failures read clearly.
Run: ``python -m pytest -q tests/test_dist.py``.
"""
import os

import pytest
import torch
import torch.multiprocessing as mp

from src.run import dist
from src.run.errors import UserError

LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST",
              "SLURM_NODELIST")


@pytest.fixture
def clean_env(monkeypatch):
    """Remove every launcher variable from this process (and so from the workers it spawns).

    Args:
        monkeypatch: pytest fixture; restores the env afterwards.
    Returns:
        None.
    """
    for k in LAUNCH_ENV:
        monkeypatch.delenv(k, raising=False)


def _collectives(info, path):
    """Run every collective in an initialised worker and save the results for the parent.

    Args:
        info: this worker's DistInfo.
        path: directory for ``rank{r}.pt``.
    Returns:
        None.
    """
    r = info.rank
    out = {"info": (info.rank, info.world_size, info.local_rank, str(info.device), info.distributed,
                    info.backend, info.launcher),
           "queries": (dist.is_dist(), dist.get_rank(), dist.get_world_size(), dist.is_main_process()),
           "gather": dist.concat_all_gather(torch.full((2, 3), float(r))),
           "sum": dist.all_reduce(torch.tensor([r + 1.0]), op="sum"),
           "mean": dist.all_reduce(torch.tensor([r + 1.0]), op="mean"),
           "max": dist.all_reduce(torch.tensor([r + 1.0]), op="max"),
           "bcast": dist.broadcast(torch.tensor([10.0 * r + 5]), src=1)}
    dist.barrier()
    torch.save(out, os.path.join(path, f"rank{r}.pt"))


def _load(path, world=2):
    """Args: path: directory the workers wrote to. Returns: list of their dicts, in rank order."""
    return [torch.load(os.path.join(path, f"rank{r}.pt"), weights_only=False) for r in range(world)]


def _check_collectives(results, launcher):
    """Assert what 2 workers saw: ranks, launcher, rank-ordered gather, reductions, broadcast.

    Args:
        results: list from :func:`_load`.
        launcher: expected DistInfo.launcher.
    Returns:
        None.
    """
    for r, res in enumerate(results):
        assert res["info"] == (r, 2, r, "cpu", True, "gloo", launcher)
        assert res["queries"] == (True, r, 2, r == 0)
        assert torch.equal(res["gather"], torch.tensor([0.0, 0, 1, 1])[:, None].expand(4, 3))
        assert res["sum"].item() == 3.0 and res["mean"].item() == 1.5 and res["max"].item() == 2.0
        assert res["bcast"].item() == 15.0


# ==================================================================================================
def test_no_group_everything_is_identity(clean_env, monkeypatch, capsys):
    info = dist.init_distributed()
    assert (info.rank, info.world_size, info.local_rank, info.distributed, info.backend, info.launcher) == \
        (0, 1, 0, False, None, "none")
    assert info.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert capsys.readouterr().out.strip().startswith("distributed: launcher=none, world_size=1, rank=0")
    assert not dist.is_dist() and dist.get_rank() == 0 and dist.get_world_size() == 1 and dist.is_main_process()
    x = torch.randn(3, 2, requires_grad=True)
    assert dist.concat_all_gather(x) is x and dist.gather_with_grad(x) is x
    t = torch.tensor([2.0])
    assert dist.all_reduce(t, "mean") is t and t.item() == 2.0 and dist.broadcast(t) is t and t.item() == 2.0
    dist.barrier()
    dist.cleanup()  # nothing to destroy: must not raise
    # a MoCo-style URL with a single process, and a single srun task: still no group
    assert dist.init_distributed("tcp://127.0.0.1:1", world_size=1, rank=0, device="cpu").launcher == "manual"
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    info = dist.init_distributed(device="cpu")
    assert (info.launcher, info.distributed, info.world_size) == ("slurm", False, 1)


def test_seed_everything_is_reproducible_and_rank_dependent():
    import random

    import numpy as np

    assert dist.seed_everything(7, rank=3) == 10
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    dist.seed_everything(10)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())
    dist.seed_everything(7, rank=0)
    assert torch.rand(1).item() != a[2]


@pytest.mark.parametrize("nodelist, host", [("node[01-03,7],gpu5", "node01"), ("a-b-c", "a-b-c"),
                                            ("gpu[9]", "gpu9"), ("gpu5,node[1-2]", "gpu5"),
                                            ("rack[2-3]-n[07,9]", "rack2-n07")])
def test_first_slurm_host(nodelist, host):
    assert dist.first_slurm_host(nodelist) == host


def test_spawn_workers_needs_url_for_several_nodes():
    with pytest.raises(UserError):
        dist.spawn_workers(_spawned_worker, 1, 0, 2, "env://", ())


def test_spawned_process_splits_the_cores_unless_omp_num_threads_is_set(monkeypatch):
    """--multiprocessing-distributed on a CPU: each of N processes takes cores / N threads (torchrun sets
    OMP_NUM_THREADS=1; without either the processes oversubscribe the CPU, docs/launching.md); an explicit setting
    wins."""
    n = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(os, "cpu_count", lambda: 8)
        assert dist._spawned(0, lambda *a: torch.get_num_threads(), 4, 0, 1, "tcp://x:1", ()) == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        torch.set_num_threads(3)
        assert dist._spawned(0, lambda *a: torch.get_num_threads(), 4, 0, 1, "tcp://x:1", ()) == 3
    finally:
        torch.set_num_threads(n)


# ==================================================================================================
def _torchrun_worker(rank, port, path, as_launch):
    """Emulate torchrun (or torch.distributed.launch, which also passes ``--local-rank``)."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    info = dist.init_distributed(local_rank=rank if as_launch else None, device="cpu")
    _collectives(info, path)
    dist.cleanup()


@pytest.mark.parametrize("as_launch", [False, True])
def test_torchrun_env(clean_env, tmp_path, as_launch):
    mp.spawn(_torchrun_worker, args=(dist.free_port(), str(tmp_path), as_launch), nprocs=2, join=True)
    _check_collectives(_load(tmp_path), "launch" if as_launch else "torchrun")


def _slurm_worker(rank, port, path):
    """Emulate ``srun -n 2``: SLURM_* only; MASTER_ADDR must come from the node list."""
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        os.environ.pop(k, None)
    os.environ.update({"SLURM_PROCID": str(rank), "SLURM_NTASKS": "2", "SLURM_LOCALID": str(rank),
                       "SLURM_JOB_NODELIST": "localhost", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    info = dist.init_distributed(device="cpu")
    assert os.environ["MASTER_ADDR"] == "localhost"
    _collectives(info, path)
    dist.cleanup()


def test_slurm_env(clean_env, tmp_path):
    mp.spawn(_slurm_worker, args=(dist.free_port(), str(tmp_path)), nprocs=2, join=True)
    _check_collectives(_load(tmp_path), "slurm")


def _spawned_worker(local_rank, rank, world_size, dist_url, path):
    """A worker with the spawn_workers signature, as main_moco.py's."""
    torch.set_num_threads(1)
    info = dist.init_distributed(dist_url=dist_url, world_size=world_size, rank=rank, local_rank=local_rank,
                                 device="cpu")
    _collectives(info, path)
    dist.cleanup()


@pytest.mark.parametrize("url", ["tcp", "env://"])  # MoCo's default --dist-url env:// -> a free local port
def test_spawn_workers_with_dist_url(clean_env, tmp_path, url):
    url = f"tcp://127.0.0.1:{dist.free_port()}" if url == "tcp" else url
    dist.spawn_workers(_spawned_worker, 2, 0, 1, url, (str(tmp_path),))
    _check_collectives(_load(tmp_path), "spawn")


# ==================================================================================================
N, D = 3, 4


def _data():
    """Returns: (X (2N, D), W (D, D)) in float64, the same in every process."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(2 * N, D, generator=g, dtype=torch.float64), torch.randn(D, D, generator=g,
                                                                               dtype=torch.float64)


def _pair_loss(x_local, x_all, W):
    """Non-linear, contrastive-like: local rows against all rows. Summed over ranks = full-batch loss.

    Args:
        x_local: (n, D); x_all: (M, D); W: (D, D).
    Returns:
        scalar.
    """
    return torch.tanh((x_local @ W) @ x_all.T).pow(2).sum()


def _grad_worker(rank, port, path):
    """Two losses on gathered rows; save the gradients on this rank's own rows."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist.init_distributed(device="cpu")
    X, W = _data()
    x = X[rank * N:(rank + 1) * N].clone().requires_grad_(True)
    # (a) per-rank pair loss: sum over ranks equals the single-process loss
    _pair_loss(x, dist.gather_with_grad(x), W).backward()
    grad_pair = x.grad.clone()
    # (b) each rank computes the full-batch loss and divides by the world size
    x.grad = None
    g = dist.gather_with_grad(x)
    ((g @ W).pow(2).sum(1).sqrt().sum() / dist.get_world_size()).backward()
    grad_full = x.grad.clone()
    no_grad = dist.concat_all_gather(x).requires_grad
    dist.barrier()
    torch.save({"pair": grad_pair, "full": grad_full, "no_grad": no_grad}, os.path.join(path, f"rank{rank}.pt"))
    dist.cleanup()


def test_gather_with_grad_matches_single_process(clean_env, tmp_path):
    mp.spawn(_grad_worker, args=(dist.free_port(), str(tmp_path)), nprocs=2, join=True)
    results = _load(tmp_path)
    X, W = _data()
    X = X.clone().requires_grad_(True)
    _pair_loss(X, X, W).backward()
    ref_pair = X.grad.clone()
    X.grad = None
    (X @ W).pow(2).sum(1).sqrt().sum().backward()
    ref_full = X.grad.clone()
    for r, res in enumerate(results):
        sl = slice(r * N, (r + 1) * N)
        assert torch.allclose(res["pair"], ref_pair[sl]), (r, res["pair"], ref_pair[sl])
        assert torch.allclose(res["full"], ref_full[sl]), (r, res["full"], ref_full[sl])
        assert res["no_grad"] is False  # concat_all_gather is detached
