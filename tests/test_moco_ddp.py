"""Two gloo processes train exactly like one process on the concatenated batch (no batch statistics:
DeiT-Tiny has LayerNorm only, so shuffle-BN cannot change the keys)."""
import os

import torch
import torch.multiprocessing as mp

import main_moco
from src.run import dist
from tests.helpers import free_port

B, STEPS = 4, 2  # per-rank batch, optimizer steps


def _batches(n_total):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, n_total, 3, 32, 32, generator=g) for _ in range(STEPS)]


def _train(info, per_rank_batch, batches, data):
    args = main_moco.get_args_parser().parse_args(
        [data, "-a", "vit_tiny", "--crop-size", "32", "-b", str(per_rank_batch * info.world_size),
         "--moco-k", "16", "--mlp", "--moco-t", "0.2", "--bn-splits", "1", "--moco-m", "0.9", "--lr", "0.5",
         "-p", "1000", "-j", "0", "--seed", "0"])
    parts = main_moco.build(args, info)  # SGD lr 0.5, momentum 0.9, wd 1e-4: constant lr for these steps
    sl = slice(info.rank * per_rank_batch, (info.rank + 1) * per_rank_batch)
    for it, b in enumerate(batches):
        main_moco.step(parts, ([b[0][sl], b[1][sl]], torch.zeros(per_rank_batch)), it)
    return {k: v.clone() for k, v in parts.model.state_dict().items()}


def _worker(rank, port, path, data):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    info = dist.init_distributed(device="cpu")
    state = _train(info, B, _batches(2 * B), data)
    if rank == 0:
        torch.save(state, path)
    dist.cleanup()


def test_two_processes_equal_one_process_on_concatenated_batch(tmp_path, monkeypatch, tiny_data):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    path = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(free_port(), path, tiny_data), nprocs=2, join=True)
    ddp = torch.load(path, weights_only=True)
    single_info = dist.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), distributed=False,
                                backend=None, launcher="none")
    single = _train(single_info, 2 * B, _batches(2 * B), tiny_data)
    changed = 0
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-5, atol=1e-6, msg=k)
    # the run did something: the query encoder moved and the queue holds both ranks' keys in rank order
    init = _train(single_info, 2 * B, [], tiny_data)
    for k in single:
        if k.startswith("encoder_q.") and not torch.equal(init[k], single[k]):
            changed += 1
    assert changed > 10
    assert int(ddp["queue.ptr"]) == (STEPS * 2 * B) % 16
