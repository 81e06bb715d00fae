#!/usr/bin/env python
"""DeepCluster-v2 and SeLa-v2 pretraining (Caron et al., NeurIPS 2020, "SwAV" paper, sec. 4 and appendix).

DeepCluster-v2 (``--mode deepcluster``, the default) follows facebookresearch/swav ``main_deepclusterv2.py``
(flags and defaults): a memory bank per process of the two large crops' embeddings; at each epoch start,
distributed spherical k-means with 3 heads of 3000 clusters; the centroids become the (frozen) prototypes; every
crop of an image predicts its cluster (cross-entropy, T = 0.1), averaged over the heads.

SeLa-v2 (``--mode sela``) has no public training code (only checkpoints); this is the maintainer's recipe (swav
issue #59): the same script with the k-means labels replaced by an offline Sinkhorn-Knopp equipartition of the
whole memory bank against the prototypes, which SGD learns as in SwAV (docs/sela.md).

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
from dataclasses import dataclass

import numpy as np

import torch
from torch import nn

from src.augment.recipes import swav_recipe
from src.augment.split import pretrain_loader
from src.augment.views import resolve_blur_scale
from src.data.folders import resolve_split
from src.methods.deepcluster import (IGNORE, MemoryBank, WithIndex, cluster_memory, cluster_stats, deepcluster_loss,
                                     fill_memory_bank)
from src.evaluation.monitor import Monitor, add_watch_args, check_watch_args
from src.methods.taps import OutputTap, recording
from src.methods.swav import (LossWatch, SwAVModel, cancel_prototype_grads, normalize_prototypes, prepare_model,
                              uniform_loss)
from src.methods.swav_args import (add_multicrop_args, add_swav_optim_args, add_swav_run_args, check_multicrop_args,
                                   copy_name)
from src.models import KNOWN_ARCHS
from src.optim import set_lr, swav_optimizer
from src.run import dist
from src.run.args import NONNEG, POSITIVE, POSITIVE_INT, ArgumentParser, add_arg, add_speed_args, autocast_dtype
from src.run.errors import UserError
from src.run.launch import cli, launch
from src.run.logging import n_params, print_rank0
from src.run.loop import Flags, Run
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
    add_watch_args(parser)
    add_speed_args(parser)
    return parser


# ==================================================================================================
def main(args):
    check_args(args)
    check_watch_args(args)
    return launch(train, args)


def check_args(args):
    check_multicrop_args(args)
    if args.freeze_prototypes_niters is None:
        args.freeze_prototypes_niters = FREEZE_DEFAULT[args.mode]
    if min(args.nmb_prototypes) < 1 or args.feat_dim < 1 or args.nmb_kmeans_iters < 0:
        raise UserError(f"need --nmb_prototypes >= 1 per head, --feat_dim >= 1 and --nmb_kmeans_iters >= 0, got "
                        f"{args.nmb_prototypes}, {args.feat_dim}, {args.nmb_kmeans_iters}")


FLAGS = Flags(output="--dump_path", lr="--base_lr", max_iters="--max_iters")


def train(args, info):
    """Pretrain: :func:`build` the parts, then the loop. Returns the parts (``parts.finished``: every epoch done)."""
    run = Run(info, args, script="main_deepclusterv2.py", flags=FLAGS)
    args.seed = run.seed  # a resumed run keeps its checkpoint's seed
    parts = build(args, info)
    model, bank, device = parts.model, parts.bank, parts.device

    # ==== resuming and saving: what a checkpoint holds ====
    run.track(state_dict=model, optimizer=parts.optimizer, scaler=parts.scaler, assignments=parts.labels)
    run.export("trunk.pth", lambda: model.backbone.state_dict())  # torchvision names, no head
    saved = run.track_rank_state("mb", bank.state)  # every rank: mb{rank}.pth, as the reference
    run.start(parts.iters_per_epoch, args.batch_size * info.world_size, scaled=parts.scaler.is_enabled(),
              formats={"Loss": ".4f", "labelled%": "6.2f"},
              monitor=Monitor.from_args(args, info, parts.trunks, args.size_crops[0],
                                        args.epochs * parts.iters_per_epoch, args.dump_path))

    # ==== memory bank: this rank's file if it belongs to the checkpoint, else one pass over the data ====
    if saved is None or not bank.load({k: v.to(device) for k, v in saved.items() if torch.is_tensor(v)}):
        if run.start_iter > 0:
            raise UserError(f"resuming mid-epoch needs mb{info.rank}.pth of the same step in '{args.dump_path}' "
                            "(it is missing or stale): restore it, or resume from an epoch-end checkpoint")
        parts.sampler.set_epoch(run.start_epoch)
        parts.dataset.set_epoch(run.start_epoch)
        print_rank0("=> filling the memory banks (one pass over the data)", rank=info.rank)
        fill_memory_bank(parts.ddp_model, parts.loader, bank, args.crops_for_assign, parts.iters_per_epoch, device,
                         parts.amp)

    # ==== training ====
    for epoch in run.epochs():
        if run.start_iter == 0:  # labels from the bank filled during the previous epoch
            normalize_prototypes(model)
            labels, stats, sinkhorn = cluster_memory(
                model, bank, len(parts.dataset), args.mode, epoch, run.seed, args.nmb_kmeans_iters, args.epsilon,
                args.sinkhorn_iterations, args.sinkhorn_tolerance, args.sela_rounding == "balanced",
                return_sinkhorn=True)
            parts.labels.value = labels
            log_clusters(stats, sinkhorn, args, epoch, info.rank)
        parts.sampler.set_epoch(epoch, start_index=run.start_iter * args.batch_size)
        parts.dataset.set_epoch(epoch)
        parts.watch.start_epoch()
        if not run.steps(train_one_epoch(parts, parts.loader, run, epoch)):
            break  # stopped (signal, --max_iters): checkpoint saved
        parts.watch.end_epoch(info.rank)  # a warning line when the codes collapsed
        run.end_epoch(dict(model.named_parameters()), what="weights and prototypes",
                      extra={"lr": parts.lr_at((epoch + 1) * parts.iters_per_epoch - 1),
                             **cluster_use(parts.labels.value, args.nmb_prototypes)},
                      numbered=copy_name(epoch, args.epochs, args.checkpoint_freq))
    parts.finished = run.finished
    return parts


@dataclass
class Parts:
    """What a DeepCluster-v2 / SeLa-v2 run trains with (:func:`build`); :func:`step` reads it."""

    args: argparse.Namespace
    device: torch.device
    model: SwAVModel  # trunk, projection head, one prototype layer per head: what a checkpoint holds
    ddp_model: nn.Module  # what the step calls (DDP-wrapped under a process group, maybe compiled)
    optimizer: torch.optim.Optimizer  # SGD wrapped in LARC, on every parameter
    scaler: torch.amp.GradScaler
    lr_schedule: np.ndarray  # one lr per global step: warmup, then cosine
    amp: object  # the autocast context of the forwards
    loader: object  # batches (crops, labels, dataset index)
    sampler: object
    dataset: object
    iters_per_epoch: int
    bank: MemoryBank  # this rank's embeddings of the last epoch, row it * B + b
    labels: "Labels"  # the epoch's cluster label of every image, per head
    watch: LossWatch  # the collapse guard (loss at the uniform value all epoch)
    tap: OutputTap = None  # the trunk's outputs, for the online linear probe (--online_linear)
    finished: bool = False  # set by train(): every epoch done

    def lr_at(self, step):
        return float(self.lr_schedule[step])

    def trunks(self):
        """The trunk an evaluation of the run reads (live, not a copy): the backbone, pooled features."""
        return {"online": self.model.backbone}


def build(args, info):
    """Everything a DeepCluster-v2 / SeLa-v2 run trains with, from the flags: data, model, LARC optimizer, scaler, lr
    schedule, an empty memory bank and labels.

    Called by :func:`train`, the benches and the tests alike; ``args.seed`` seeds the initial weights (the same on
    every rank), then every rank draws from its own stream."""
    device = info.device
    check_args(args)
    dist.seed_everything(args.seed, 0)

    # ==== preparing data: SwAV's multi-crop, each item with its index (the memory bank's rows) ====
    recipe = swav_recipe(args.size_crops, args.nmb_crops, args.min_scale_crops, args.max_scale_crops,
                         blur_scale=resolve_blur_scale(args.blur_scale, args.size_crops[0]), pil_blur=args.use_pil_blur)
    loader, sampler, dataset, iters_per_epoch = pretrain_loader(
        resolve_split(args.data_path, "train"), recipe.transform(split=args.device_aug), args.batch_size, args.workers,
        info, args.seed, channels_last=args.channels_last, wrap=WithIndex)

    # ==== building model: prototype heads; SyncBN (CUDA), channels-last, DDP, torch.compile ====
    model, ddp_model = prepare_model(SwAVModel(args.arch, args.feat_dim, args.hidden_mlp, list(args.nmb_prototypes),
                                               cifar_stem=args.cifar_stem), info, args.sync_bn,
                                     args.syncbn_process_group_size, args.channels_last, args.compile)
    dtype = autocast_dtype(args, device, info.rank)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    dist.seed_everything(args.seed, info.rank)  # then one RNG stream per rank
    optimizer, lr_schedule = swav_optimizer(model.parameters(), args.base_lr, args.final_lr, args.wd, args.epochs,
                                            iters_per_epoch, args.warmup_epochs, args.start_warmup, device)
    print_rank0(f"=> {args.arch} ({n_params(model)}M parameters): {len(dataset)} images, {iters_per_epoch} "
                f"iterations/epoch, batch {args.batch_size} x {info.world_size} processes, crops {recipe.describe()}, "
                f"{args.mode}: {len(args.nmb_prototypes)} heads of {' '.join(map(str, args.nmb_prototypes))}",
                rank=info.rank)
    bank = MemoryBank(len(args.crops_for_assign), iters_per_epoch * args.batch_size, args.feat_dim, device)
    return Parts(args, device, model, ddp_model, optimizer, scaler, lr_schedule, autocast(device, dtype), loader,
                 sampler, dataset, iters_per_epoch, bank, Labels(device),
                 LossWatch(uniform_loss(args.nmb_prototypes), device),
                 OutputTap(model.backbone) if args.online_linear else None)


class Labels:
    """The epoch's cluster labels, (heads, N) long on the training device, saved with the checkpoint as
    ``assignments`` (a mid-epoch resume must reuse them)."""

    def __init__(self, device):
        self.device = device
        self.value = torch.zeros(0, dtype=torch.long, device=device)

    def state_dict(self):
        return self.value.cpu()

    def load_state_dict(self, value):
        self.value = value.to(self.device)


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


def cluster_use(labels, nmb_prototypes):
    """The epoch's labels per head as log values: clusters used and the entropy of the cluster sizes (nats)."""
    out = {}
    for h, k in enumerate(nmb_prototypes):
        out[f"clusters_used_{h}"], out[f"cluster_entropy_{h}"] = cluster_stats(labels[h], k)
    return out


def train_one_epoch(parts, loader, run, epoch):
    """One epoch of DeepCluster-v2 / SeLa-v2; yields ``(iteration, stats)`` after each optimizer step (the loss also
    feeds the collapse guard)."""
    parts.model.train()
    for it, batch in run.batches(loader):
        stats = step(parts, batch, epoch * parts.iters_per_epoch + it)
        parts.watch.update(stats["Loss"])
        yield it, stats


def step(parts, batch, it):
    """One step on a loader batch ``(crops, labels, index)`` (labels unused; index: the images' dataset positions)
    at global step ``it``: every crop predicts its image's cluster label of each head, then the embeddings of the
    assignment crops overwrite this iteration's rows of the memory bank.
    Returns: the step's stats (``Loss``, ``labelled%``: images of the batch with a label, ``lr``)."""
    args, model, optimizer, scaler = parts.args, parts.model, parts.optimizer, parts.scaler
    bs, n_crops = args.batch_size, sum(args.nmb_crops)
    lr = set_lr(optimizer, parts.lr_schedule[it])

    # prototypes on the unit sphere, then one trunk pass per resolution
    normalize_prototypes(model)
    crops, _, index = batch
    index = index.to(parts.device, non_blocking=True)
    crops = [c.to(parts.device, non_blocking=True) for c in crops]
    with parts.amp, recording(parts.tap):
        embedding, scores = parts.ddp_model(crops)  # (V*B, D), list of (V*B, K_h); crop-major
    embedding = embedding.detach()

    # every crop predicts its image's label of each head (the label repeated for the V crops)
    assignments = parts.labels.value  # (heads, N)
    targets = [assignments[h][index].repeat(n_crops) for h in range(len(scores))]
    loss = deepcluster_loss(scores, targets, args.temperature)

    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if it < args.freeze_prototypes_niters:
        cancel_prototype_grads(model)  # DeepCluster-v2: always (the prototypes are the centroids)
    scaler.unscale_(optimizer)  # LARC's trust ratio needs the true gradient norms
    scaler.step(optimizer)
    scaler.update()

    # the bank rows of this iteration now hold this epoch's embeddings of the assignment crops
    row = it % parts.iters_per_epoch * bs
    parts.bank.write(row, index, [embedding[a * bs:(a + 1) * bs] for a in args.crops_for_assign])

    known = (targets[0][:bs] != IGNORE).float().mean() * 100
    stats = {"Loss": loss.detach(), "labelled%": known, "lr": lr}
    if parts.tap is not None:  # the two large crops' trunk features, for the online linear probe
        stats["features"] = parts.tap.take(2 * bs)
    return stats


if __name__ == "__main__":
    cli(main, get_args_parser().parse_args)
