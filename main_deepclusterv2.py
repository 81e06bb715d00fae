#!/usr/bin/env python
"""DeepCluster-v2 and SeLa-v2 pretraining (Caron et al., NeurIPS 2020, "SwAV" paper, sec. 4 and appendix).

DeepCluster-v2 (``--mode deepcluster``, the default) follows facebookresearch/swav ``main_deepclusterv2.py``
(flags and defaults, spec ``swav.md`` A.12): a memory bank per process of the two large crops' embeddings; at
each epoch start, distributed spherical k-means with 3 heads of 3000 clusters; the centroids become the (frozen)
prototypes; every crop of an image predicts its cluster (cross-entropy, T = 0.1), averaged over the heads.

SeLa-v2 (``--mode sela``) has no public training code (only checkpoints); this is the maintainer's recipe (swav
issue #59, spec A.13): the same script with the k-means labels replaced by an offline Sinkhorn-Knopp
equipartition of the whole memory bank against the prototypes, which SGD learns as in SwAV.

DeepCluster-v2, 400 epochs, 2x160+4x96, 64 GPUs (paper: 74.3 linear top-1):  sbatch scripts/deepclusterv2_400ep.sh
SeLa-v2, same crops (paper: 71.8):                                            sbatch scripts/selav2_400ep.sh
One GPU or a CPU, no launcher needed; two processes with any launcher:
    python main_deepclusterv2.py --data_path /path/to/data --nmb_prototypes 3000 3000 3000 --batch_size 64 ...
    torchrun --nproc_per_node=2 main_deepclusterv2.py --mode sela --data_path data/demo --arch resnet18 \
        --cifar_stem --hidden_mlp 512 --nmb_prototypes 30 30 30 --batch_size 32 --size_crops 32 16 \
        --nmb_crops 2 4 --min_scale_crops 0.14 0.05 --max_scale_crops 1 0.14 --base_lr 0.6 --final_lr 0.0006 \
        --warmup_epochs 0 --epochs 2 --workers 1 --dump_path runs/selav2-cpu
"""
import argparse
import json
import os
import time
from contextlib import nullcontext

import torch

from src import dist
from src.args import add_amp_args, add_arg, add_dist_args, add_speed_args, autocast_dtype
from src.checkpoint import find_resume_checkpoint, load_checkpoint, load_state_strict, set_rng_state
from src.errors import UserError, exit_on_user_error
from src.logging import JsonLog, ProgressLogger, print_rank0
from src.methods.deepcluster import (IGNORE, MemoryBank, WithIndex, cluster_memory, deepcluster_loss,
                                     fill_memory_bank)
from src.methods.swav import LossWatch, SwAVModel, cancel_prototype_grads, normalize_prototypes, uniform_loss
from src.methods.swav_setup import (add_multicrop_args, add_optim_args, add_run_args, launch,
                                    build_multicrop_data, build_optimizer, check_multicrop_args, load_rank_file,
                                    log_model, numbered_epoch, save_rank_file, save_run_checkpoint, wrap_model)
from src.optim import set_lr
from src.runtime import StopSignal, check_ranks_in_sync, gather_rng_states

FREEZE_DEFAULT = {"deepcluster": 10 ** 10, "sela": 313}


def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser("DeepCluster-v2 / SeLa-v2 pretraining", add_help=add_help,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_multicrop_args(parser)
    g = parser.add_argument_group("deepcluster-v2 / sela-v2")
    add_arg(g, "--mode", default="deepcluster", choices=["deepcluster", "sela"],
            help="deepcluster: k-means labels, centroids as frozen prototypes; sela: Sinkhorn labels over the "
                 "whole memory bank, prototypes learned by SGD (SeLa-v2)")
    add_arg(g, "--crops_for_assign", default=[0, 1], type=int, nargs="+",
            help="crops whose embeddings fill the memory banks (0 1); head h clusters bank h mod their number")
    add_arg(g, "--temperature", default=0.1, type=float, help="softmax temperature of the cross-entropy (0.1)")
    add_arg(g, "--feat_dim", default=128, type=int, help="embedding size after the projection head (128)")
    add_arg(g, "--nmb_prototypes", default=[3000, 3000, 3000], type=int, nargs="+",
            help="clusters per head, one value per head (3000 3000 3000)")
    add_arg(g, "--nmb_kmeans_iters", default=10, type=int, help="deepcluster: k-means iterations per epoch (10)")
    add_arg(g, "--epsilon", default=0.05, type=float, help="sela: Sinkhorn entropy regularisation (0.05)")
    add_arg(g, "--sinkhorn_iterations", default=10, type=int,
            help="sela: Sinkhorn iterations over the whole bank (10: balanced labels even when the features crowd a "
                 "few prototypes, where SwAV's online 3 still leave some clusters at twice the size of others)")
    add_optim_args(parser, None, "iterations during which the prototypes get no SGD update (default: 1e10 = never "
                                 "for deepcluster, whose prototypes are the k-means centroids; 313 for sela)")
    add_run_args(parser)
    add_dist_args(parser)
    add_amp_args(parser)  # off by default: the reference trains DeepCluster-v2 in fp32
    add_speed_args(parser)
    return parser


# ==================================================================================================
def main(args):
    check_args(args)
    launch(train, args)


def check_args(args):
    check_multicrop_args(args)
    if args.freeze_prototypes_niters is None:
        args.freeze_prototypes_niters = FREEZE_DEFAULT[args.mode]
    if min(args.nmb_prototypes) < 1 or args.feat_dim < 1 or args.nmb_kmeans_iters < 0:
        raise UserError(f"need --nmb_prototypes >= 1 per head, --feat_dim >= 1 and --nmb_kmeans_iters >= 0, got "
                        f"{args.nmb_prototypes}, {args.feat_dim}, {args.nmb_kmeans_iters}")
    if args.epsilon <= 0 or args.sinkhorn_iterations < 1:
        raise UserError(f"need --epsilon > 0 and --sinkhorn_iterations >= 1, got {args.epsilon}, "
                        f"{args.sinkhorn_iterations}")


def train(args, info):
    """Pretrain; returns the model (unwrapped)."""
    device = info.device
    os.makedirs(args.dump_path, exist_ok=True)
    resume_path = find_resume_checkpoint(args.dump_path, args.resume)
    ckpt = load_checkpoint(resume_path) if resume_path else None
    seed = ckpt["seed"] if ckpt is not None else args.seed
    dist.seed_everything(seed, 0)  # the same initial weights on every rank
    if info.rank == 0:
        with open(os.path.join(args.dump_path, "args.json"), "w") as f:
            json.dump({**vars(args), "seed_used": seed, "world_size_used": info.world_size}, f, indent=2)
        print("args: " + json.dumps(vars(args), sort_keys=True), flush=True)

    # ==== preparing data ====
    loader, sampler, dataset, iters_per_epoch = build_multicrop_data(args, info, seed, wrap=WithIndex)

    # ==== building model ====
    model, ddp_model = wrap_model(SwAVModel(args.arch, args.feat_dim, args.hidden_mlp, list(args.nmb_prototypes),
                                            cifar_stem=args.cifar_stem), args, info)
    dist.seed_everything(seed, info.rank)  # then one RNG stream per rank
    optimizer, lr_schedule = build_optimizer(model, args, iters_per_epoch)
    dtype = autocast_dtype(args, device, info.rank)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    log_model(model, args, info, len(dataset), iters_per_epoch,
              f", {args.mode}: {len(args.nmb_prototypes)} heads of {' '.join(map(str, args.nmb_prototypes))}")

    # ==== resuming ====
    start_epoch, start_iter, assignments = 0, 0, None
    if ckpt is not None:
        load_state_strict(model, ckpt["state_dict"], "state_dict", resume_path)
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, start_iter = ckpt["epoch"], ckpt["iter"]
        assignments = ckpt["assignments"].to(device) if start_iter > 0 else None  # mid-epoch: this epoch's labels
        if len(ckpt.get("rng", [])) == info.world_size:
            set_rng_state(ckpt["rng"][info.rank], device)
        print_rank0(f"=> resumed from '{resume_path}' at epoch {start_epoch}, iteration {start_iter}", rank=info.rank)

    # ==== memory bank: this rank's file if it belongs to the checkpoint, else one pass over the data ====
    bank = MemoryBank(len(args.crops_for_assign), iters_per_epoch * args.batch_size, args.feat_dim, device)
    saved = load_rank_file(args.dump_path, "mb", info.rank, start_epoch, start_iter) if ckpt is not None else None
    if saved is None or not bank.load({k: v.to(device) for k, v in saved.items() if torch.is_tensor(v)}):
        if start_iter > 0:
            mb_path = os.path.join(args.dump_path, f"mb{info.rank}.pth")
            raise UserError(f"resuming mid-epoch needs {mb_path} of the same step (it is missing or stale): "
                            "restore it, or resume from an epoch-end checkpoint")
        sampler.set_epoch(start_epoch)
        dataset.set_epoch(start_epoch)
        print_rank0("=> filling the memory banks (one pass over the data)", rank=info.rank)
        fill_memory_bank(ddp_model, loader, bank, args.crops_for_assign, iters_per_epoch, device, autocast)

    # ==== training ====
    logger = ProgressLogger(iters_per_epoch, args.epochs, args.batch_size * info.world_size, args.print_freq,
                            JsonLog(os.path.join(args.dump_path, "log.txt"), info.rank), info.rank,
                            formats={"Loss": ".4f", "labelled%": "6.2f"})
    watch = LossWatch(uniform_loss(args.nmb_prototypes), device, scaled=scaler.is_enabled())
    stop = StopSignal(device)

    def save(epoch, it, numbered=False):
        watch.check_finite(f"before the checkpoint of epoch {epoch}, iteration {it}")  # never save a NaN model
        save_rank_file(args.dump_path, "mb", info.rank, bank.state(), epoch, it)  # every rank: mb{rank}.pth
        rngs = gather_rng_states(device)  # collective: every rank takes part (and has written its bank)
        if info.rank == 0:
            state = {"arch": args.arch, "epoch": epoch, "iter": it, "args": vars(args), "seed": seed,
                     "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scaler": scaler.state_dict(), "rng": rngs, "world_size": info.world_size,
                     "assignments": assignments.cpu()}
            save_run_checkpoint(args.dump_path, state, epoch - 1, numbered)

    total_done = start_epoch * iters_per_epoch + start_iter
    for epoch in range(start_epoch, args.epochs):
        if start_iter == 0:  # labels from the bank filled during the previous epoch
            normalize_prototypes(model)
            assignments, stats = cluster_memory(model, bank, len(dataset), args.mode, epoch, seed,
                                                args.nmb_kmeans_iters, args.epsilon, args.sinkhorn_iterations)
            log_clusters(stats, args, epoch, info.rank)
        sampler.set_epoch(epoch, start_index=start_iter * args.batch_size)
        dataset.set_epoch(epoch)
        logger.start_epoch(epoch, start_iter)
        watch.start_epoch()
        steps = train_one_epoch(model, ddp_model, bank, assignments, loader, optimizer, scaler, lr_schedule, epoch,
                                start_iter, iters_per_epoch, args, device, autocast, logger, watch)
        for it in steps:  # generator: yields after every step so checkpoints / stops happen here
            total_done += 1
            interrupted = stop.requested(it, args.print_freq)
            if interrupted or (args.max_iters and total_done >= args.max_iters):
                save(*((epoch, it + 1) if it + 1 < iters_per_epoch else (epoch + 1, 0)))
                why = "signal" if interrupted else f"--max_iters {args.max_iters}"
                print_rank0(f"=> stopped by {why} at epoch {epoch}, iteration {it + 1}; checkpoint saved, "
                            "run the same command to resume", rank=info.rank)
                return model
            if args.save_every_iters and (it + 1) % args.save_every_iters == 0 and it + 1 < iters_per_epoch:
                save(epoch, it + 1)
        logger.end_epoch({"lr": float(lr_schedule[(epoch + 1) * iters_per_epoch - 1])})
        warning = watch.end_epoch()
        if warning:
            print_rank0(warning, rank=info.rank)
        check_ranks_in_sync(dict(model.named_parameters()), device, what="weights and prototypes")
        save(epoch + 1, 0, numbered=numbered_epoch(epoch, args.epochs, args.checkpoint_freq))
        start_iter = 0
    return model


def log_clusters(stats, args, epoch, rank):
    """One line per epoch: clusters used and the entropy of cluster sizes per head (ln K when balanced); a
    warning when most images fall into a few clusters (DeepCluster's collapse, swav issue #100)."""
    parts = [f"head {h}: {used}/{k} used, H {ent:.2f}/{torch.tensor(float(k)).log():.2f}"
             for h, ((used, ent), k) in enumerate(zip(stats, args.nmb_prototypes))]
    print_rank0(f"=> epoch {epoch} {args.mode} labels: " + "; ".join(parts), rank=rank)
    if any(ent < 0.5 * float(torch.tensor(float(k)).log()) for (_, ent), k in zip(stats, args.nmb_prototypes)):
        print_rank0("warning: the cluster sizes are very unbalanced (entropy below half of ln K): the features may "
                    "be collapsing; lower --base_lr or use softer augmentations", rank=rank)


def train_one_epoch(model, ddp_model, bank, assignments, loader, optimizer, scaler, lr_schedule, epoch, start_iter,
                    iters_per_epoch, args, device, autocast, logger, watch):
    """One epoch of DeepCluster-v2 / SeLa-v2; a generator yielding the iteration index after each step."""
    model.train()
    bs, n_crops = args.batch_size, sum(args.nmb_crops)
    t_end = time.time()
    for it, (index, crops) in enumerate(loader, start=start_iter):
        if it >= iters_per_epoch:
            break
        t_data = time.time() - t_end
        step = epoch * iters_per_epoch + it
        lr = float(lr_schedule[step])
        set_lr(optimizer, lr)

        # prototypes on the unit sphere, then one trunk pass per resolution
        normalize_prototypes(model)
        index = index.to(device, non_blocking=True)
        crops = [c.to(device, non_blocking=True) for c in crops]
        with autocast:
            embedding, scores = ddp_model(crops)  # (V*B, D), list of (V*B, K_h); crop-major
        embedding = embedding.detach()

        # every crop predicts its image's label of each head (the label repeated for the V crops)
        targets = [assignments[h][index].repeat(n_crops) for h in range(len(scores))]
        loss = deepcluster_loss(scores, targets, args.temperature)

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if step < args.freeze_prototypes_niters:
            cancel_prototype_grads(model)  # DeepCluster-v2: always (the prototypes are the centroids)
        scaler.unscale_(optimizer)  # LARC's trust ratio needs the true gradient norms
        scaler.step(optimizer)
        scaler.update()

        # the bank rows of this iteration now hold this epoch's embeddings of the assignment crops
        bank.write(it * bs, index, [embedding[a * bs:(a + 1) * bs] for a in args.crops_for_assign])

        watch.update(loss)
        known = (targets[0][:bs] != IGNORE).float().mean() * 100
        logger.update(data_time=t_data, step_time=time.time() - t_end, Loss=loss.detach(), **{"labelled%": known})
        logger.maybe_print(it, lr)
        if (it + 1) % args.print_freq == 0:
            watch.check_finite(f"epoch {epoch}, iteration {it + 1}")
        yield it
        t_end = time.time()


if __name__ == "__main__":
    exit_on_user_error(main)(get_args_parser().parse_args())
