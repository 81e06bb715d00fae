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
import math

import torch

from src.augment.recipes import swav_recipe
from src.augment.views import resolve_blur_scale
from src.data.folders import pretrain_loader, resolve_split
from src.methods.deepcluster import IGNORE, MemoryBank, WithIndex, cluster_memory, deepcluster_loss, fill_memory_bank
from src.methods.swav import (LossWatch, SwAVModel, cancel_prototype_grads, normalize_prototypes, prepare_model,
                              uniform_loss)
from src.models import KNOWN_ARCHS
from src.optim import set_lr, swav_optimizer
from src.run import dist
from src.run.args import (NONNEG, POSITIVE, POSITIVE_INT, ArgumentParser, add_arg, add_multicrop_args, add_speed_args,
                          add_swav_optim_args, add_swav_run_args, autocast_dtype, check_multicrop_args)
from src.run.checkpoint import swav_copy_name
from src.run.errors import UserError
from src.run.launch import cli, launch
from src.run.logging import n_params, print_rank0
from src.run.loop import Run
from src.run.speed import autocast

FREEZE_DEFAULT = {"deepcluster": 10 ** 10, "sela": 313}


def get_args_parser(add_help=True):
    parser = ArgumentParser("DeepCluster-v2 / SeLa-v2 pretraining", add_help=add_help,
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
    add_arg(g, "--epsilon", default=0.05, type=POSITIVE,
            help="sela: Sinkhorn entropy regularisation (0.05; at least about 0.025, lower overflows)")
    add_arg(g, "--sinkhorn_iterations", default=1000, type=POSITIVE_INT,
            help="sela: at most this many Sinkhorn-Knopp iterations over the whole memory bank; stops earlier once "
                 "every prototype's share is within --sinkhorn_tolerance of N/K (1000; 2-25 are typically needed)")
    add_arg(g, "--sinkhorn_tolerance", default=1e-3, type=NONNEG,
            help="sela: stop Sinkhorn when every prototype's soft share of the bank is within this relative tolerance "
                 "of N/K (1e-3; about 1e-5 is float32's floor)")
    add_arg(g, "--sela_rounding", default="balanced", choices=["balanced", "argmax"],
            help="sela: hard labels from the transport plan: balanced (every cluster gets floor/ceil(N/K) images, "
                 "SeLa's equipartition) or argmax (per image, as SeLa's code; not balanced)")
    add_swav_optim_args(parser, None, "iterations during which the prototypes get no SGD update (default: 1e10 = never "
                                 "for deepcluster, whose prototypes are the k-means centroids; 313 for sela)")
    add_swav_run_args(parser, KNOWN_ARCHS)  # with --amp off by default: the reference trains it in fp32
    add_speed_args(parser)
    return parser


# ==================================================================================================
def main(args):
    check_args(args)
    return launch(train, args)


def check_args(args):
    check_multicrop_args(args)
    if args.freeze_prototypes_niters is None:
        args.freeze_prototypes_niters = FREEZE_DEFAULT[args.mode]
    if min(args.nmb_prototypes) < 1 or args.feat_dim < 1 or args.nmb_kmeans_iters < 0:
        raise UserError(f"need --nmb_prototypes >= 1 per head, --feat_dim >= 1 and --nmb_kmeans_iters >= 0, got "
                        f"{args.nmb_prototypes}, {args.feat_dim}, {args.nmb_kmeans_iters}")


def train(args, info):
    """Pretrain; returns the model (unwrapped)."""
    device = info.device
    run = Run(info, output_dir=args.dump_path, script="main_deepclusterv2.py", config=vars(args),
              resume=args.resume, seed=args.seed, lr_flag="--base_lr")

    # ==== preparing data: SwAV's multi-crop, each item with its index (the memory bank's rows) ====
    recipe = swav_recipe(args.size_crops, args.nmb_crops, args.min_scale_crops, args.max_scale_crops,
                         blur_scale=resolve_blur_scale(args.blur_scale, args.size_crops[0]), pil_blur=args.use_pil_blur)
    loader, sampler, dataset, iters_per_epoch = pretrain_loader(
        resolve_split(args.data_path, "train"), recipe.transform(split=args.device_aug), args.batch_size, args.workers,
        info, run.seed, channels_last=args.channels_last, wrap=WithIndex)

    # ==== building model: prototype heads; SyncBN (CUDA), channels-last, DDP, torch.compile ====
    model, ddp_model = prepare_model(SwAVModel(args.arch, args.feat_dim, args.hidden_mlp, list(args.nmb_prototypes),
                                               cifar_stem=args.cifar_stem), info, args.sync_bn,
                                     args.syncbn_process_group_size, args.channels_last, args.compile)
    dtype = autocast_dtype(args, device, info.rank)
    amp = autocast(device, dtype)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    dist.seed_everything(run.seed, info.rank)  # then one RNG stream per rank
    optimizer, lr_schedule = swav_optimizer(model.parameters(), args.base_lr, args.final_lr, args.wd, args.epochs,
                                            iters_per_epoch, args.warmup_epochs, args.start_warmup, device)
    print_rank0(f"=> {args.arch} ({n_params(model)}M parameters): {len(dataset)} images, {iters_per_epoch} "
                f"iterations/epoch, batch {args.batch_size} x {info.world_size} processes, crops {recipe.describe()}, "
                f"{args.mode}: {len(args.nmb_prototypes)} heads of {' '.join(map(str, args.nmb_prototypes))}",
                rank=info.rank)

    # ==== resuming and saving: what a checkpoint holds ====
    labels = Labels()  # this epoch's cluster labels (a mid-epoch resume must reuse them)
    run.track(state_dict=model, optimizer=optimizer, scaler=scaler, assignments=labels)
    run.export("trunk.pth", lambda: model.backbone.state_dict())  # torchvision names, no head
    bank = MemoryBank(len(args.crops_for_assign), iters_per_epoch * args.batch_size, args.feat_dim, device)
    saved = run.track_rank_state("mb", bank.state)  # every rank: mb{rank}.pth, as the reference
    logger = run.progress(iters_per_epoch, args.epochs, args.batch_size * info.world_size, args.print_freq,
                          max_iters=args.max_iters, save_every=args.save_every_iters, scaled=scaler.is_enabled(),
                          formats={"Loss": ".4f", "labelled%": "6.2f"})

    # ==== memory bank: this rank's file if it belongs to the checkpoint, else one pass over the data ====
    if saved is None or not bank.load({k: v.to(device) for k, v in saved.items() if torch.is_tensor(v)}):
        if run.start_iter > 0:
            raise UserError(f"resuming mid-epoch needs mb{info.rank}.pth of the same step in '{args.dump_path}' "
                            "(it is missing or stale): restore it, or resume from an epoch-end checkpoint")
        sampler.set_epoch(run.start_epoch)
        dataset.set_epoch(run.start_epoch)
        print_rank0("=> filling the memory banks (one pass over the data)", rank=info.rank)
        fill_memory_bank(ddp_model, loader, bank, args.crops_for_assign, iters_per_epoch, device, amp)

    # ==== training ====
    watch = LossWatch(uniform_loss(args.nmb_prototypes), device)
    for epoch in run.epochs():
        if run.start_iter == 0:  # labels from the bank filled during the previous epoch
            normalize_prototypes(model)
            labels.value, stats, sinkhorn = cluster_memory(
                model, bank, len(dataset), args.mode, epoch, run.seed, args.nmb_kmeans_iters, args.epsilon,
                args.sinkhorn_iterations, args.sinkhorn_tolerance, args.sela_rounding == "balanced",
                return_sinkhorn=True)
            log_clusters(stats, sinkhorn, args, epoch, info.rank)
        sampler.set_epoch(epoch, start_index=run.start_iter * args.batch_size)
        dataset.set_epoch(epoch)
        logger.start_epoch(epoch, run.start_iter)
        watch.start_epoch()
        if not run.steps(train_one_epoch(model, ddp_model, bank, labels.value.to(device), loader, optimizer, scaler,
                                         lr_schedule, epoch, run.start_iter, iters_per_epoch, args, device, amp,
                                         logger, watch)):
            break  # stopped (signal, --max_iters): checkpoint saved
        logger.end_epoch({"lr": float(lr_schedule[(epoch + 1) * iters_per_epoch - 1])})
        watch.end_epoch(info.rank)  # a warning line when the codes collapsed
        run.end_epoch(dict(model.named_parameters()), what="weights and prototypes",
                      numbered=swav_copy_name(epoch, args.epochs, args.checkpoint_freq))
    return model


class Labels:
    """The epoch's cluster labels, (heads, N) long, saved with the checkpoint as ``assignments``."""

    def __init__(self):
        self.value = torch.zeros(0, dtype=torch.long)

    def state_dict(self):
        return self.value.cpu()

    def load_state_dict(self, value):
        self.value = value


def log_clusters(stats, sinkhorn, args, epoch, rank):
    """One line per epoch: clusters used and the entropy of cluster sizes per head (ln K when balanced), and for
    SeLa-v2 the Sinkhorn iterations and marginal error; a warning when most images fall into a few clusters
    (DeepCluster's collapse, swav issue #100) or when Sinkhorn stopped at its cap before the tolerance."""
    parts = []
    for h, ((used, ent), k, sk) in enumerate(zip(stats, args.nmb_prototypes, sinkhorn)):
        part = f"head {h}: {used}/{k} used, H {ent:.2f}/{math.log(k):.2f}"
        parts.append(part + (f", Sinkhorn {sk[0]} it, error {sk[1]:.1e}" if sk is not None else ""))
    print_rank0(f"=> epoch {epoch} {args.mode} labels: " + "; ".join(parts), rank=rank)
    if any(ent < 0.5 * math.log(k) for (_, ent), k in zip(stats, args.nmb_prototypes)):
        print_rank0("warning: the cluster sizes are very unbalanced (entropy below half of ln K): the features may "
                    "be collapsing; lower --base_lr or use softer augmentations", rank=rank)
    if any(sk is not None and sk[1] > args.sinkhorn_tolerance for sk in sinkhorn):
        print_rank0(f"warning: Sinkhorn reached --sinkhorn_iterations {args.sinkhorn_iterations} before "
                    f"--sinkhorn_tolerance {args.sinkhorn_tolerance:g}: raise the cap or --epsilon", rank=rank)


def train_one_epoch(model, ddp_model, bank, assignments, loader, optimizer, scaler, lr_schedule, epoch, start_iter,
                    iters_per_epoch, args, device, amp, logger, watch):
    """One epoch of DeepCluster-v2 / SeLa-v2; a generator yielding ``(iteration, loss)`` after each step."""
    model.train()
    bs, n_crops = args.batch_size, sum(args.nmb_crops)
    for it, (index, crops) in logger.batches(loader, start_iter):
        step = epoch * iters_per_epoch + it
        lr = set_lr(optimizer, lr_schedule[step])

        # prototypes on the unit sphere, then one trunk pass per resolution
        normalize_prototypes(model)
        index = index.to(device, non_blocking=True)
        crops = [c.to(device, non_blocking=True) for c in crops]
        with amp:
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
        logger.update(Loss=loss.detach(), **{"labelled%": known})
        logger.maybe_print(it, lr)
        yield it, loss.detach()


if __name__ == "__main__":
    cli(main, get_args_parser().parse_args)
