"""Two gloo processes train SCE exactly like one process on the concatenated batch, and the queue holds the
gathered keys of both global views in rank order. No batch statistics anywhere (DeiT-Tiny has LayerNorm
only; the heads' BatchNorms are left out here), otherwise per-rank BN would legitimately differ."""
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import main_sce
import src.methods.sce as sce_mod
from src.models.heads import build_mlp
from src.run import dist
from tests.helpers import free_port

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread per module


B, STEPS, CROPS = 4, 2, 3  # per-rank batch, optimizer steps, crops (2 global + 1 local, all 32 px for DeiT)
FLAGS = ["--arch", "vit_tiny", "--size_crops", "32", "--nmb_crops", str(CROPS), "--min_scale_crops", "0.2",
         "--max_scale_crops", "1", "--queue_size", str(2 * 2 * B * STEPS), "--feat_dim", "16", "--proj_hidden_dim",
         "32", "--pred_hidden_dim", "32", "--print_freq", "1000", "--temperature_m", "0.1", "--wd", "1e-4"]


def _bn_free_heads():
    sce_mod.build_projector = lambda i, h, o: build_mlp(i, [h, h], o, bias=False, last_bias=False)
    sce_mod.build_predictor = lambda d, h: build_mlp(d, [h], d, bias=False, last_bias=False)


def _batches():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(CROPS, 2 * B, 3, 32, 32, generator=g) for _ in range(STEPS)]


def _build(info, data):
    _bn_free_heads()
    args = main_sce.get_args_parser().parse_args(
        FLAGS + ["--batch_size", str(2 * B // info.world_size), "--data_path", data, "--workers", "0", "--seed", "0"])
    parts = main_sce.build(args, info)  # LARS with momentum 0.9, wd 1e-4, trust 1e-3
    parts.lr_schedule, parts.m_schedule = np.full(STEPS, 0.5), np.full(STEPS, 0.9)  # constant for these steps
    return parts


def _train(info, batches, data):
    parts = _build(info, data)
    n = parts.args.batch_size
    sl = slice(info.rank * n, (info.rank + 1) * n)
    parts.model.train()
    for it, b in enumerate(batches):
        main_sce.step(parts, ([c[sl] for c in b], torch.zeros(n)), it)
    return {k: v.clone() for k, v in parts.model.state_dict().items()}


def _worker(rank, port, path, data):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    info = dist.init_distributed(device="cpu")
    state = _train(info, _batches(), data)
    torch.save(state, f"{path}.{rank}")
    dist.cleanup()


def test_two_processes_equal_one_process_and_queue_in_rank_order(tmp_path, monkeypatch, tiny_data):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    build_projector, build_predictor = sce_mod.build_projector, sce_mod.build_predictor
    try:
        path = str(tmp_path / "ddp.pt")
        mp.spawn(_worker, args=(free_port(), path, tiny_data), nprocs=2, join=True)
        ranks = [torch.load(f"{path}.{r}", weights_only=True) for r in range(2)]
        single_info = dist.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"),
                                    distributed=False, backend=None, launcher="none")
        batches = _batches()
        single = _train(single_info, batches, tiny_data)
        # the keys of step 1, from the initial target network: view 1 of ranks 0, 1 then view 2 of ranks 0, 1
        first = _build(single_info, tiny_data)
        init = first.model
        with torch.no_grad():
            k1, k2 = first.target([batches[0][0], batches[0][1]])
    finally:
        sce_mod.build_projector, sce_mod.build_predictor = build_projector, build_predictor

    for k in single:
        torch.testing.assert_close(ranks[0][k], single[k], rtol=1e-5, atol=1e-6, msg=k)
        assert torch.equal(ranks[0][k], ranks[1][k]), k  # replicated state is identical on both ranks
    queue = ranks[0]["queue.queue"]
    torch.testing.assert_close(queue[:4 * B], torch.cat([k1, k2]), rtol=1e-5, atol=1e-6)
    assert int(ranks[0]["queue.ptr"]) == 0  # 2 steps x 2 views x 8 keys filled the queue of 32 exactly
    moved = [k for k in single if k.startswith("trunk.") and not torch.equal(init.state_dict()[k], single[k])]
    assert len(moved) > 10
    # the target moved towards the online weights (EMA after each step) without reaching them
    name = "trunk.vit.conv_proj.weight"
    target_w = single["momentum_" + name]
    assert not torch.equal(target_w, init.state_dict()[name]) and not torch.equal(target_w, single[name])
