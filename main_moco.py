#!/usr/bin/env python
"""MoCo v1 / v2 pretraining (He et al. 2020, "Momentum Contrast"; Chen et al. 2020, "Improved Baselines").

Faithful to facebookresearch/moco ``main_moco.py`` (flags, defaults, loss, shuffle-BN, per-epoch lr),
and runnable on one GPU or a CPU (split-BN simulates the per-GPU BN of 8 GPUs), with AMP, atomic
checkpoints and bit-exact resume.

Demo (CPU, a few minutes; builds ./data/demo, pretrains, compares kNN with random init):
    python main_moco.py --demo
MoCo v2, 200 epochs, one node of 8 GPUs (any of these launch styles):
    torchrun --nproc_per_node=8 main_moco.py /path/to/imagenet -a resnet50 --lr 0.03 -b 256 \
        --mlp --moco-t 0.2 --aug-plus --cos --output-dir runs/moco_v2
    python -m torch.distributed.launch --nproc_per_node=8 main_moco.py /path/to/imagenet ...
    python main_moco.py /path/to/imagenet --dist-url tcp://localhost:10001 --multiprocessing-distributed \
        --world-size 1 --rank 0 ...
    sbatch scripts/moco_v2_200ep.sh
One GPU or CPU (split-BN over 8 sub-batches stands in for shuffle-BN):
    python main_moco.py /path/to/data -a resnet18 -b 128 --lr 0.015 --mlp --moco-t 0.2 --aug-plus --cos

Revisiting-Contrastive-SSL (Van Gansbeke et al. 2021) on COCO train2017, a flat folder of images: 2x160 + 4x96
crops, the small ones constrained to overlap the key crop, AutoAugment on crops 0 and 2-5, nearest-neighbour
positives (scripts/ours_coco_200ep.sh):
    torchrun --nproc_per_node=2 main_moco.py /path/to/coco/train2017 --lr 0.3 -b 256 --mlp --moco-t 0.2 \
        --moco-m 0.995 --cos --num_crops 2 4 --size_crops 160 96 --min_scale_crops 0.2 0.05 \
        --max_scale_crops 1.0 0.14 --constrained-cropping --auto-augment 0 2 3 4 5 --aux-topk 20 --aux-weight 0.4 \
        --aux-order enqueue-first
SSL-small (Shi et al. 2021) for mobilenetv3_small / _large, efficientnet_b0, resnet18, deit_tiny, from a
SEED-distilled checkpoint converted with `python -m experiments.convert-seed` (scripts/small_<arch>_800ep.sh):
    python main_moco.py /path/to/imagenet -a mobilenetv3_small --lr 0.06 -b 512 -j 64 --epochs 800 \
        --dist-url env:// --multiprocessing-distributed --world-size 1 --rank 0 --mlp wide --moco-t 0.1 \
        --aug-plus --cj 1. --grey-scale 0.5 --gaussian-blur 0.5 --cos --ckpt-dir runs/small \
        --resume converted_ckpt.pth.tar --restart
"""
import argparse
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn

from src.augment.recipes import moco_multicrop_recipe, moco_recipe, ssl_small_jitter
from src.augment.split import pretrain_loader
from src.augment.views import MOCO_V2_JITTER, relative_blur_scale
from src.data.folders import resolve_split
from src.evaluation import demo
from src.evaluation.monitor import Monitor, add_watch_args, check_watch_args
from src.evaluation.pretrained import TRUST_HELP, read_checkpoint
from src.losses import knn_positive_loss
from src.methods.moco import MoCo, headless, load_for_restart
from src.methods.momentum import check_queue_size, copy_params
from src.metrics import topk_rates
from src.models import KNOWN_ARCHS
from src.models.heads import MOCO_HEADS
from src.optim import moco_lr_schedule, set_lr
from src.run import dist
from src.run.args import (MOMENTUM, NONNEG, NONNEG_INT, POSITIVE, POSITIVE_INT, ArgumentParser, add_arg, add_demo_args,
                          add_run_args, add_speed_args, autocast_dtype)
from src.run.errors import UserError
from src.run.launch import cli, launch
from src.run.logging import print_rank0
from src.run.loop import Flags, Run
from src.run.speed import autocast, fused_kwargs, maybe_compile, to_channels_last


def get_args_parser(add_help=True):
    parser = ArgumentParser("MoCo v1/v2 pretraining", add_help=add_help,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("data", nargs="?", default=None, metavar="DIR",
                        help="dataset root: DIR/train (or DIR itself) with one folder per class, or a flat folder")
    g = parser.add_argument_group("training (MoCo's flags and defaults)")
    add_arg(g, "-a", "--arch", default="resnet50", help=f"backbone: {', '.join(KNOWN_ARCHS)}")
    add_arg(g, "-j", "--workers", default=32, type=NONNEG_INT, help="data loading workers per node (split over processes)")
    add_arg(g, "--epochs", default=200, type=POSITIVE_INT, help="total epochs (200 / 800 in the papers)")
    add_arg(g, "--start-epoch", default=0, type=NONNEG_INT, help="manual epoch number (useful on restarts)")
    add_arg(g, "-b", "--batch-size", default=256, type=POSITIVE_INT,
            help="TOTAL batch over all processes (256 in the papers; scale --lr linearly: 0.03 per 256)")
    add_arg(g, "--lr", "--learning-rate", default=0.03, type=POSITIVE, dest="lr", help="initial lr (0.03 for batch 256)")
    add_arg(g, "--schedule", default=[120, 160], nargs="*", type=int, help="epochs where lr drops x0.1 (without --cos)")
    add_arg(g, "--momentum", default=0.9, type=MOMENTUM, help="SGD momentum")
    add_arg(g, "--wd", "--weight-decay", default=1e-4, type=NONNEG, dest="weight_decay", help="weight decay (1e-4)")
    add_arg(g, "--restart", action="store_true",
            help="with --resume: load the weights only (SSL-small): tensors whose shape differs from this model "
                 "are dropped with a warning, encoder_k is copied from encoder_q, optimizer and epoch start "
                 "afresh (epoch --start-epoch, 0); once OUTPUT_DIR/checkpoint.pth.tar exists the run resumes "
                 "from it instead (pre-emption)")
    add_arg(g, "--trust-checkpoint", action="store_true",
            help=TRUST_HELP)
    add_arg(g, "--seed", default=None, type=int, help="seed for init, sampling and augmentation (default: random)")

    g = parser.add_argument_group("moco")
    add_arg(g, "--moco-dim", default=128, type=POSITIVE_INT, help="feature dimension")
    add_arg(g, "--moco-k", default=65536, type=POSITIVE_INT, help="queue size; a multiple of the total batch")
    add_arg(g, "--moco-m", default=0.999, type=MOMENTUM, help="momentum of the key encoder (0.99-0.9999)")
    add_arg(g, "--moco-t", default=0.07, type=POSITIVE, help="softmax temperature (0.07 v1, 0.2 v2)")
    add_arg(g, "--mlp", nargs="?", const="simple", default=None, metavar="KIND",
            help="projection head: --mlp alone is MoCo v2's 2-layer MLP (simple); SSL-small's deep | dropout | "
                 "wide; bn adds BatchNorm (hidden and output, MoCo v3 style); without the flag: MoCo v1's Linear")
    add_arg(g, "--aug-plus", action="store_true", help="MoCo v2: stronger augmentation with blur")
    add_arg(g, "--cj", default=None, type=float,
            help="SSL-small colour-jitter strength s: ColorJitter(0.8s, 0.8s, 0.8s, min(0.5, 0.4s)) with p 0.8 "
                 "(recipe 1.0; implies the v2 pipeline; default: MoCo v2's 0.4, 0.4, 0.4, 0.1)")
    add_arg(g, "--grey-scale", default=0.2, type=float,
            help="RandomGrayscale probability (MoCo 0.2; SSL-small recipe 0.5)")
    add_arg(g, "--gaussian-blur", default=None, type=float,
            help="probability of the v2 Gaussian blur, sigma U[0.1, 2] (default 0.5; SSL-small recipe 0.5; "
                 "implies the v2 pipeline)")
    add_arg(g, "--cos", action="store_true", help="MoCo v2: cosine lr schedule (per epoch)")
    add_arg(g, "--bn-splits", default=0, type=NONNEG_INT,
            help="split-BN sub-batches on a single process (0 = auto: 8 with one process, off under DDP)")
    add_arg(g, "--crop-size", default=224, type=POSITIVE_INT, help="side of the random resized crops (224; 32-96 on CPU)")
    add_arg(g, "--min-scale", default=0.2, type=float, help="RandomResizedCrop lower area scale (0.2)")
    add_arg(g, "--cifar-stem", action="store_true", help="ResNet 3x3 stride-1 stem without max-pool (small images)")

    g = parser.add_argument_group("multi-crop, AutoAugment, nearest-neighbour positives (Van Gansbeke et al. 2021)")
    add_arg(g, "--num_crops", default=None, type=POSITIVE_INT, nargs="+",
            help="crops per group, large group first: 2 4 = query + key crop, then 4 small query crops; every "
                 "query crop is contrasted with the one key (default: MoCo's two views at --crop-size)")
    add_arg(g, "--size_crops", default=None, type=POSITIVE_INT, nargs="+",
            help="side of each group's crops in px (paper 160 96; default 224 96). Multi-crop blurs with sigma "
                 "0.1-2.0 px at every size, as the reference (the two-view path scales it by --crop-size/224)")
    add_arg(g, "--min_scale_crops", default=None, type=float, nargs="+",
            help="lowest area fraction per group (paper 0.2 0.05; default 0.14 0.05)")
    add_arg(g, "--max_scale_crops", default=None, type=float, nargs="+",
            help="highest area fraction per group (paper 1.0 0.14; default 1.0 0.14)")
    add_arg(g, "--constrained-cropping", action="store_true",
            help="draw each small crop (up to 10 tries) to overlap the KEY crop by at least --min-overlap of its "
                 "area; if no try does, an unconstrained crop")
    add_arg(g, "--min-overlap", default=0.1, type=float,
            help="constrained cropping: required intersection with the key crop / small-crop area (0.1)")
    add_arg(g, "--auto-augment", default=[], type=int, nargs="*", metavar="CROP",
            help="crop indices (0 query, 1 key, 2.. small) that take, 50/50 per sample, HFlip + AutoAugment "
                 "(torchvision ImageNet policy) instead of the MoCo v2 colour augmentation (paper: 0 2 3 4 5)")
    add_arg(g, "--aux-weight", default=0.0, type=float,
            help="weight of the nearest-neighbour loss (paper 0.4; 0 = off, plain MoCo). The topk keys nearest "
                 "to a query in BACKBONE space (a second queue of pooled features) count as extra positives "
                 "in head space; --aux-order says whether this step's keys can be among them")
    add_arg(g, "--aux-order", default="neighbours-first", choices=["neighbours-first", "enqueue-first"],
            help="when this step's key features enter the backbone-feature queue, relative to picking the "
                 "neighbours. neighbours-first (default): after, so neighbours are earlier steps' keys only "
                 "(the reference's builder/builder_ours_warmup.py, main_ours_warmup.py). enqueue-first: before, "
                 "so an image's own key feature is usually its nearest neighbour, while the head-space logit of "
                 "that slot is still the key it replaces (builder/builder_ours.py, main_ours.py: the "
                 "ours_coco_{200,800}ep recipes). The head-space logits always use the queue before the enqueue")
    add_arg(g, "--aux-topk", default=50, type=int, help="neighbours per query for --aux-weight (paper scripts 20)")
    add_arg(g, "--warmup-epochs", default=0, type=int,
            help="epochs without the nearest-neighbour loss while the feature queue fills (paper 5 / 20 for "
                 "200 / 800 epochs)")

    g = add_run_args(parser, ("--output-dir", "--dump-path", "--ckpt-dir"),
                     "where checkpoints, trunk.pth, args.json and the JSON log go (MoCo writes to the working directory; "
                     "--ckpt-dir is SSL-small's name)", dash=True, short_print=True)
    add_arg(g, "--save-freq", default=1, type=NONNEG_INT,
            help="keep a numbered checkpoint_EEEE.pth.tar every N epochs (0: never)")
    add_watch_args(parser, dash=True)
    add_speed_args(parser)
    add_demo_args(parser, dash=True)
    return parser


# ==================================================================================================
def main(args):
    if isinstance(args.mlp, str) and args.mlp not in MOCO_HEADS:
        if args.data is None and os.path.isdir(args.mlp):  # "--mlp /data": the folder was taken as the head kind
            args.data, args.mlp = args.mlp, "simple"
        else:
            raise UserError(f"--mlp {args.mlp}: unknown head; choose one of {', '.join(MOCO_HEADS)} (or --mlp alone)")
    if args.demo:
        return run_demo(args)
    if not args.data:
        raise UserError("no dataset given: pass DIR (with train/ and one folder per class) or use --demo")
    check_recipe_args(args)
    check_watch_args(args)
    return launch(train, args)


FLAGS = Flags(output="--output-dir", lr="--lr", max_iters="--max-iters")


def train(args, info):
    """Pretrain: :func:`build` the parts, then the loop. Returns the parts (``parts.finished``: every epoch done)."""
    # --resume CKPT --restart seeds the weights only; a pre-empted restarted run continues from its own checkpoint
    run = Run(info, args, script="main_moco.py", flags=FLAGS, start_epoch=args.start_epoch,
              weights_only_resume=args.restart)
    args.seed = run.seed  # a resumed run keeps its checkpoint's seed (None drew one)
    parts = build(args, info)
    if args.restart and run.ckpt is None:  # weights only: new optimizer, epoch --start-epoch (0), this run's seed
        restart_from_weights(parts.model, args.resume, args.trust_checkpoint, info.rank)

    # ==== resuming and saving: what a checkpoint holds ====
    run.track(state_dict=parts.model, optimizer=parts.optimizer, scaler=parts.scaler)
    run.export("trunk.pth", parts.model.trunk_state)  # the query trunk, torchvision names, no head

    # ==== training ====
    monitor = Monitor.from_args(args, info, parts.trunks, parts.crop_size, args.epochs * parts.iters_per_epoch,
                                args.output_dir)
    run.start(parts.iters_per_epoch, args.batch_size, scaled=parts.scaler.is_enabled(), monitor=monitor,
              formats={"Loss": ".4e", "CE": ".4e", "Aux": ".4e", "Acc@1": "6.2f", "Acc@5": "6.2f"})
    for epoch in run.epochs():
        parts.sampler.set_epoch(epoch, start_index=run.start_iter * parts.per_rank_batch)
        parts.dataset.set_epoch(epoch)
        if not run.steps(train_one_epoch(parts, parts.loader, run, epoch)):
            break  # stopped (signal, --max-iters): checkpoint saved
        run.end_epoch(replicated_state(parts.model), extra={"lr": parts.lr_at((epoch + 1) * parts.iters_per_epoch - 1),
                                                            "momentum": args.moco_m},
                      numbered=bool(args.save_freq) and (epoch + 1) % args.save_freq == 0)
    parts.finished = run.finished
    return parts


@dataclass
class Parts:
    """What a MoCo run trains with (:func:`build`); :func:`step` reads it."""

    args: argparse.Namespace
    device: torch.device
    model: MoCo  # query and key encoders, queues: what a checkpoint holds
    encoder_q: nn.Module  # the query encoder the step calls (DDP-wrapped under a process group, maybe compiled)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    lr_schedule: np.ndarray  # one lr per global step
    amp: object  # the autocast context of the forwards
    loader: object
    sampler: object
    dataset: object
    per_rank_batch: int
    iters_per_epoch: int
    crop_size: int  # side of the query and key crops
    finished: bool = False  # set by train(): every epoch done

    def lr_at(self, step):
        return float(self.lr_schedule[step])

    def trunks(self):
        """The trunks an evaluation of the run reads: the query trunk (online) and the key trunk (momentum)."""
        return self.model.trunks()


def build(args, info):
    """Everything a MoCo run trains with, from the flags: data, model, optimizer, scaler, lr schedule.

    Called by :func:`train`, the benches and the tests alike; ``args.seed`` seeds the initial weights (the same on
    every rank), then every rank draws from its own stream."""
    device = info.device
    check_recipe_args(args)
    dist.seed_everything(args.seed, 0)

    # ==== preparing data ====
    per_rank_batch = dist.split_batch(args.batch_size, info.world_size)
    # a class-folder tree, or a flat folder of images (COCO train2017); -j is per node, split over its processes;
    # the loader's worker seeds come from its own generator, so the RNG stream of shuffle-BN never shifts
    loader, sampler, dataset, iters_per_epoch = pretrain_loader(
        resolve_split(args.data, "train"), build_transform(args), per_rank_batch,
        math.ceil(args.workers / dist.local_world_size()), info, args.seed, channels_last=args.channels_last,
        flag="-b/--batch-size")

    # ==== building model ====
    model, encoder_q, bn_splits = build_model(args, info, per_rank_batch)
    dist.seed_everything(args.seed, info.rank)  # then one RNG stream per rank
    optimizer = torch.optim.SGD(encoder_q.parameters(), args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay, **fused_kwargs(device))
    dtype = autocast_dtype(args, device, info.rank)  # fp16 without CUDA: fp32 and one warning line (args updated)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    lr_schedule = moco_lr_schedule(args.lr, args.epochs, iters_per_epoch, cos=args.cos, milestones=args.schedule)
    print_rank0(f"=> {args.arch}: {len(dataset)} images, {iters_per_epoch} iterations/epoch, batch "
                f"{per_rank_batch} x {info.world_size} processes, queue {args.moco_k}, bn-splits {bn_splits}",
                rank=info.rank)
    return Parts(args, device, model, encoder_q, optimizer, scaler, lr_schedule, autocast(device, dtype), loader,
                 sampler, dataset, per_rank_batch, iters_per_epoch, args.size_crops[0] if args.num_crops
                 else args.crop_size)


def build_transform(args):
    """Per-image (or, with ``--device-aug``, split) transform of the recipe the flags describe: MoCo's two views of one
    augmentation (default), or the multi-crop geometry of Van Gansbeke et al. 2021 followed by one colour
    augmentation per crop (MoCo v2's, or 50/50 with AutoAugment for the ``--auto-augment`` crop indices)."""
    jitter = ssl_small_jitter(args.cj) if args.cj is not None else MOCO_V2_JITTER
    blur_p = 0.5 if args.gaussian_blur is None else args.gaussian_blur
    if args.num_crops:
        recipe = moco_multicrop_recipe(args.size_crops, args.num_crops, args.min_scale_crops, args.max_scale_crops,
                                       constrained=args.constrained_cropping, min_overlap=args.min_overlap,
                                       jitter=jitter, grey_p=args.grey_scale, blur_p=blur_p,
                                       auto_augment=args.auto_augment)
    else:
        # SSL-small's flags always mean its v2-style pipeline (its script has no --aug-plus); the blur sigma
        # (0.1-2.0 px at 224) follows the crop so small crops are not wiped out (MoCo v2's at --crop-size 224)
        recipe = moco_recipe(args.crop_size, aug_plus=args.aug_plus or args.cj is not None or
                             args.gaussian_blur is not None, min_scale=args.min_scale, jitter=jitter,
                             grey_p=args.grey_scale, blur_p=blur_p, blur_scale=relative_blur_scale(args.crop_size))
    return recipe.transform(split=args.device_aug)


def build_model(args, info, per_rank_batch):
    """MoCo model on the device; the query encoder wrapped in DDP when distributed."""
    bn_splits = args.bn_splits or (8 if info.world_size == 1 else 1)
    if per_rank_batch % bn_splits != 0:
        raise UserError(f"per-process batch {per_rank_batch} is not divisible by --bn-splits {bn_splits}: "
                        "change -b or pass --bn-splits 1")
    if per_rank_batch // bn_splits < 2:
        raise UserError(f"per-process batch {per_rank_batch} over --bn-splits {bn_splits} leaves 1 image per BatchNorm "
                        "split (it needs at least 2): raise -b or lower --bn-splits")
    check_queue_size(args.moco_k, per_rank_batch * info.world_size)
    image_size = args.size_crops[0] if args.num_crops else args.crop_size
    model = MoCo(args.arch, dim=args.moco_dim, K=args.moco_k, m=args.moco_m, T=args.moco_t, head=moco_head(args),
                 bn_splits=bn_splits, cifar_stem=args.cifar_stem, image_size=image_size,
                 feature_queue=args.aux_weight > 0, tap_features=args.online_linear).to(info.device)
    model = to_channels_last(model, args.channels_last)
    encoder_q = model.encoder_q
    if info.distributed:
        encoder_q = dist.wrap_ddp(encoder_q, info.device)
        copy_params(model.encoder_q, model.encoder_k)  # DDP broadcast rank 0's weights: keys start from them too
    return model, maybe_compile(encoder_q, args.compile, info.rank), bn_splits


def train_one_epoch(parts, loader, run, epoch):
    """One epoch of MoCo; yields ``(iteration, stats)`` after each optimizer step."""
    parts.model.train()
    for it, batch in run.batches(loader):
        yield it, step(parts, batch, epoch * parts.iters_per_epoch + it)


def step(parts, batch, it):
    """One MoCo step on a loader batch ``(crops, labels)`` at global step ``it``: crop 1 is the key and every other
    crop a query (MoCo's two views: one query; multi-crop: the first large crop and all small ones). With
    ``--aux-weight`` the nearest-neighbour loss is added from epoch ``--warmup-epochs`` on.
    Returns: the step's stats (``Loss``, ``lr``, instance accuracies, ...)."""
    args, model, device = parts.args, parts.model, parts.device
    lr = set_lr(parts.optimizer, parts.lr_schedule[it])
    images = [im.to(device, non_blocking=True) for im in batch[0]]
    im_k, crops_q = images[1], [images[0]] + images[2:]

    # momentum update of the key encoder, then queries (with grad) and shuffled keys (no grad)
    model.momentum_update()
    with parts.amp:
        q, h_q = model.queries(parts.encoder_q, crops_q)  # (V*B, dim), crop-major; h_q (V*B, F) or None
        k, h_k = model.keys(im_k)  # (B, dim): shuffle-BN across processes (or split-BN on one)

    # InfoNCE in fp32: every query crop against its image's one key and the shared queue,
    # logits (V*B, 1+K), the positive key in column 0, cross-entropy averaged over the V*B rows
    logits = model.logits(q, k)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=device)
    loss = F.cross_entropy(logits, labels)
    extra = {}
    if model.queue_backbone is not None:  # nearest neighbours (backbone space) as extra positives (head space)
        if args.aux_order == "enqueue-first":  # builder_ours: this step's key features go in first, so an
            # image's own key feature (similarity ~1) is among its neighbours; the logits above were taken from
            # the head queue before its enqueue, so that slot's logit is still the oldest key, being replaced
            model.enqueue_features(h_k)
        # neighbours-first (builder_ours_warmup): chosen among earlier steps' keys, enqueued after the step
        use_aux = it // parts.iters_per_epoch >= args.warmup_epochs
        aux = torch.zeros((), device=device)
        if use_aux:
            aux = knn_positive_loss(logits[:, 1:], F.normalize(h_q, dim=1), model.queue_backbone.queue, args.aux_topk)
        extra = {"CE": loss.detach(), "Aux": aux.detach()}
        loss = loss + args.aux_weight * aux

    parts.optimizer.zero_grad(set_to_none=True)
    parts.scaler.scale(loss).backward()
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()

    # enqueue the keys of the whole global batch (after the loss: a key is never its own negative)
    model.enqueue(k)
    if h_k is not None and args.aux_order == "neighbours-first":  # their backbone features, same rows
        model.enqueue_features(h_k)

    # (K+1)-way instance accuracy, as MoCo prints it: the positive is column 0
    stats = {"Loss": loss.detach(), **extra, **topk_rates(logits, labels), "lr": lr}
    if args.online_linear:  # the query crop's backbone features, for the online linear probe
        stats["features"] = h_q[:im_k.shape[0]]
    return stats


# ==================================================================================================
def replicated_state(model):
    """What must be identical on every rank (checked once per epoch): the parameters of both encoders and the
    queue buffers (queue, and queue_backbone with nearest-neighbour positives); BN running statistics
    legitimately differ (per-rank batches)."""
    return {**dict(model.named_parameters()), **{n: b for n, b in model.named_buffers() if n.startswith("queue")}}


def check_recipe_args(args):
    """Fill the multi-crop defaults and reject inconsistent recipe flags with one clear message (idempotent).

    Without ``--num_crops``, ``--auto-augment`` or ``--constrained-cropping`` MoCo's two-view path is
    used; with ``--auto-augment`` alone it becomes two crops at ``--crop-size``, scale (``--min-scale``, 1).
    """
    if args.num_crops is None and (args.auto_augment or args.constrained_cropping):
        args.num_crops, args.size_crops = [2], args.size_crops or [args.crop_size]
        args.min_scale_crops = args.min_scale_crops or [args.min_scale]
        args.max_scale_crops = args.max_scale_crops or [1.0]
    if args.num_crops:
        n = len(args.num_crops)
        args.size_crops = args.size_crops or [224, 96][:n]
        args.min_scale_crops = args.min_scale_crops or [0.14, 0.05][:n]
        args.max_scale_crops = args.max_scale_crops or [1.0, 0.14][:n]
        lists = {"--size_crops": args.size_crops, "--min_scale_crops": args.min_scale_crops,
                 "--max_scale_crops": args.max_scale_crops}
        for name, values in lists.items():
            if len(values) != n:
                raise UserError(f"{name} has {len(values)} values for the {n} groups of --num_crops "
                                f"{' '.join(map(str, args.num_crops))}: give one per group")
        if args.num_crops[0] != 2:
            raise UserError(f"--num_crops {args.num_crops[0]} ...: the first group is the query and the key crop, "
                            "so it must be 2 (add small crops as further groups, e.g. --num_crops 2 4)")
        if args.constrained_cropping and n < 2:
            raise UserError("--constrained-cropping constrains small crops to the key crop: add a group of "
                            "small crops, e.g. --num_crops 2 4 --size_crops 160 96")
        bad = [i for i in args.auto_augment if not 0 <= i < sum(args.num_crops)]
        if bad:
            raise UserError(f"--auto-augment {' '.join(map(str, bad))}: crop indices go from 0 to "
                            f"{sum(args.num_crops) - 1} with --num_crops {' '.join(map(str, args.num_crops))}")
        if args.arch == "vit_tiny" and len(set(args.size_crops)) > 1:  # deit_tiny slices its table, as SSL-small
            raise UserError("vit_tiny (torchvision) has a fixed position embedding: give every group the same "
                            "--size_crops")
    if args.aux_weight > 0 and not 0 < args.aux_topk <= args.moco_k:
        raise UserError(f"--aux-topk {args.aux_topk} must be between 1 and the queue size --moco-k {args.moco_k}")
    if args.device_aug and args.auto_augment:
        raise UserError("--auto-augment runs per sample on the CPU: drop --device-aug (or --auto-augment)")
    if args.restart and not args.resume:
        raise UserError("--restart starts from the weights of --resume CKPT: pass that checkpoint too")


def restart_from_weights(model, path, trust, rank):
    """``--resume PATH --restart``: load the weights that fit (see ``load_for_restart``) and say what was
    dropped, left at initialisation or ignored."""
    ckpt = read_checkpoint(path, trust=trust)
    state = ckpt["state_dict"] if isinstance(ckpt.get("state_dict"), dict) else ckpt
    report = load_for_restart(model, state)
    print_rank0(f"=> restarted from the weights of '{path}' at epoch 0: {len(report['loaded'])} tensors loaded, "
                "encoder_k copied from encoder_q, new optimizer", rank=rank)
    if report["mismatched"]:
        listed = ", ".join(f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in report["mismatched"])
        print_rank0(f"warning: --restart dropped {len(report['mismatched'])} checkpoint tensors whose shape differs "
                    f"from this model (checkpoint vs model): {listed}", rank=rank, file=sys.stderr)
    if report["missing"]:
        print_rank0(f"=> left at initialisation ({len(report['missing'])}): " + ", ".join(report["missing"][:8])
                    + (" ..." if len(report["missing"]) > 8 else ""), rank=rank)
    if report["ignored"]:
        print_rank0(f"=> ignored {len(report['ignored'])} checkpoint tensors that this model does not have, e.g. "
                    + ", ".join(report["ignored"][:3]), rank=rank)


def moco_head(args):
    """The head kind from ``--mlp`` (None: MoCo v1's Linear; True from old args.json files: v2's MLP)."""
    if args.mlp is True:
        return "simple"
    return args.mlp or "none"


# ==================================================================================================
def run_demo(args):
    """Build the demo data, pretrain resnet_tiny on the CPU for a few minutes, compare kNN top-1 of the
    pretrained trunk with the same trunk at its random initialisation (src.evaluation.demo)."""
    def trunks(model, args):
        init = MoCo(args.arch, dim=args.moco_dim, K=args.moco_k, head=moco_head(args))
        return headless(model.encoder_q), headless(init.encoder_q)  # the trunks without the projection head

    args.seed = 0 if args.seed is None else args.seed
    return demo.run_demo(args, DEMO, train, trunks, "data", "output_dir", "runs/moco-demo")


# Demo recipe for 2 CPU cores: MoCo v2 (MLP head, T 0.2, blur, cosine lr) with resnet_tiny (0.3M parameters) on
# 2 x 64-px crops of at least half the image, a queue of 1024 small next to the 3,000 training images, 6 epochs
# (docs/moco.md "Demo" has its figures).
DEMO = dict(arch="resnet_tiny", cifar_stem=False, epochs=6, batch_size=128, lr=0.06, moco_k=1024, moco_t=0.2,
            moco_m=0.99, crop_size=64, eval_size=64, workers=1, print_freq=10, weight_decay=1e-4, bn_splits=8,
            min_scale=0.5, mlp="simple", aug_plus=True, cos=True, save_freq=0, max_iters=0)


if __name__ == "__main__":
    cli(main, get_args_parser().parse_args)
