#!/usr/bin/env python
"""Linear evaluation: a linear classifier trained on the features of a frozen trunk.

The trunk stays in eval mode (BatchNorm running statistics frozen) and runs under no_grad; only
``fc = Linear(D, C)`` (init N(0, 0.01), bias 0) is trained with SGD on RandomResizedCrop + flip views and
tested on Resize + CenterCrop. ``--protocol`` picks the published recipe of each method (flags given
explicitly win over the preset):

    protocol  lr              schedule                  epochs  total batch  wd    norm std  source
    swav      0.3             cosine per epoch to 0     100     256 (32x8)   1e-6  0.228     SwAV eval_linear.py
    moco      30              x0.1 at epochs 60, 80     100     256          0     0.229     MoCo main_lincls.py
    sce       0.1 x batch/256 cosine per iteration to 0 90      1024 (128x8) 0     0.229     eztorch linear yaml

All use momentum 0.9, no Nesterov, RandomResizedCrop(224, scale 0.08-1) + flip and Resize(256) + CenterCrop(224).
Every epoch prints ``Test: ... Acc@1 ... Best Acc@1 so far ...`` (SwAV) and `` * Acc@1 x Acc@5 y`` (MoCo); the end
prints ``Top-1 test accuracy: XX.X`` (SwAV, the best epoch) and ``best Acc@1 .. Acc@5 .. (epoch e); last Acc@1 ..``,
and writes the same numbers to DUMP_PATH/eval_linear.json. Runs resume from DUMP_PATH/checkpoint.pth.tar.

    # CPU, the demo data and a main_moco.py checkpoint (arch and stem are read from it), fast mode
    python eval_linear.py data/demo --pretrained runs/moco-demo/checkpoint.pth.tar --protocol moco --epochs 20 \
        --resize 32 --crop_size 32 -b 128 --precompute_features --dump_path runs/moco-demo/linear
    # one GPU, ImageNet, a SwAV release, SwAV's protocol
    python eval_linear.py --data_path /datasets/imagenet -a resnet50 --pretrained swav_800ep_pretrain.pth.tar \
        --protocol swav --dump_path runs/swav_linear
    # SwAV's other head: the last 2048x7x7 map, AvgPool2d(6, stride 1) -> 8192-d, BatchNorm2d, Linear
    python eval_linear.py --data_path /datasets/imagenet -a resnet50 --pretrained swav_800ep_pretrain.pth.tar \
        --protocol swav --global_pooling False --use_bn True --dump_path runs/swav_linear_bn
    # 8 GPUs (torchrun, torch.distributed.launch, srun or --multiprocessing-distributed), MoCo's protocol
    torchrun --nproc_per_node=8 eval_linear.py /datasets/imagenet -a resnet50 \
        --pretrained moco_v2_800ep_pretrain.pth.tar --protocol moco --dump_path runs/moco_linear
    # SCE's protocol on an eztorch (Lightning) checkpoint: trunk.* keys, batch 1024 -> lr 0.4
    torchrun --nproc_per_node=8 eval_linear.py /datasets/imagenet --pretrained sce.ckpt --trunk_pattern '^(trunk\\.)' \
        --protocol sce --trust_checkpoint
    # video (docs/video.md): an R3D from main_sce.py --modality video on Kinetics train/ and val/ video folders,
    # protocol "video" (lr 2.0 x batch/256, 8 warmup epochs then cosine per iteration, 60 epochs, batch 512), 1
    # random clip to train, 10 clips x 3 crops of 256 px averaged to test; see scripts/video_linear_*.sh
    torchrun --nproc_per_node=8 eval_linear.py /datasets/kinetics400 --modality video --num_frames 8 \
        --pretrained runs/video_sce_r3d50/checkpoint.pth.tar --dump_path runs/video_linear
"""
import argparse
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from src.augment.image import test_transform, train_transform
from src.data.folders import ResumableSampler, SafeImageFolder, build_loader
from src.evaluation.classifier import LinearClassifier, PooledMapClassifier, check_classes, evaluate
from src.evaluation.feature_store import open_split, read_meta, write_cache
from src.evaluation.features import feature_dim, shard_features
from src.evaluation.hashes import content_hash, fingerprint
from src.evaluation.pretrained import add_pretrained_args, build_trunk
from src.evaluation.results import Results
from src.evaluation.samplers import FeatureBatches, ShardSampler
from src.evaluation.video import VideoEval, add_video_eval_args, eval_samples, eval_sets
from src.metrics import topk_rates
from src.models.resnet import FeatureMap, ResNet
from src.optim import cosine_schedule, moco_lr_schedule, set_lr
from src.run import dist
from src.run.args import (MOMENTUM, NONNEG, NONNEG_INT, POSITIVE, POSITIVE_INT, ArgumentParser, add_arg, add_run_args,
                          amp_dtype, autocast_dtype, bool_flag)
from src.run.checkpoint import save_checkpoint
from src.run.errors import UserError
from src.run.launch import cli_main, launch
from src.run.logging import print_rank0
from src.run.loop import Flags, Run
from src.run.speed import autocast

# Published recipes (SwAV eval_linear.py, MoCo main_lincls.py, eztorch's linear configs). "lr" None: 0.1 x batch
# / 256 (SCE's scaler).
PROTOCOLS = {
    "swav": dict(lr=0.3, batch_size=256, epochs=100, weight_decay=1e-6, momentum=0.9, nesterov=False,
                 scheduler_type="cosine", decay_epochs=[60, 80], gamma=0.1, final_lr=0.0,
                 norm_std=[0.228, 0.224, 0.225]),
    "moco": dict(lr=30.0, batch_size=256, epochs=100, weight_decay=0.0, momentum=0.9, nesterov=False,
                 scheduler_type="step", decay_epochs=[60, 80], gamma=0.1, final_lr=0.0, norm_std=[0.229, 0.224, 0.225]),
    "sce": dict(lr=None, batch_size=1024, epochs=90, weight_decay=0.0, momentum=0.9, nesterov=False,
                scheduler_type="cosine_iter", decay_epochs=[60, 80], gamma=0.1, final_lr=0.0,
                norm_std=[0.229, 0.224, 0.225]),
    # video (docs/video.md): lr 2.0 x batch / 256, 8 warmup epochs, cosine per iteration; clips normalised 0.45 / 0.225
    "video": dict(lr=None, batch_size=512, epochs=60, weight_decay=0.0, momentum=0.9, nesterov=False,
                  scheduler_type="cosine_iter", decay_epochs=[60, 80], gamma=0.1, final_lr=0.0,
                  norm_std=[0.229, 0.224, 0.225], warmup_epochs=8),
}


def get_args_parser(add_help=False):
    parser = ArgumentParser("Linear evaluation", add_help=add_help)
    parser.add_argument("data", nargs="?", default=None, metavar="DIR",
                        help="dataset root with train/ and val/, one folder per class (or --data_path)")
    g = parser.add_argument_group("data")
    add_arg(g, "--data_path", default=None, help="SwAV spelling of DIR")
    add_arg(g, "--resize", default=256, type=POSITIVE_INT, help="test images: shorter side before the centre crop (256)")
    add_arg(g, "--crop_size", default=224, type=POSITIVE_INT,
            help="train crop and test centre crop side in px (224; 32-64 on CPU)")
    add_arg(g, "--min_scale", default=0.08, type=float, help="RandomResizedCrop lower area scale (0.08, torchvision's)")
    add_arg(g, "-j", "--workers", default=10, type=NONNEG_INT, help="data loading workers per process (SwAV 10)")
    g = parser.add_argument_group("trunk")
    add_pretrained_args(g, snake=True)
    add_arg(g, "--seed", default=31, type=int, help="seed of the head init, sampling, augmentation, random trunk (31)")
    g = parser.add_argument_group("head (SwAV's RegLog)")
    add_arg(g, "--global_pooling", default=True, type=bool_flag,
            help="True (default): the trunk's global average pooling, then Linear. False: the last feature map "
                 "of a ResNet, AvgPool2d(6, stride 1) (ResNet-50 at 224 px: 2048 x 2 x 2 = 8192-d), then Linear; "
                 "with --precompute_features the cache holds those pooled features")
    add_arg(g, "--use_bn", default=False, type=bool_flag,
            help="with --global_pooling False: BatchNorm2d on the pooled map before the Linear (False). As in "
                 "SwAV, it has no effect with global pooling")
    g = parser.add_argument_group("protocol (each default comes from --protocol)")
    add_arg(g, "--protocol", default=None, choices=sorted(PROTOCOLS),
            help="published recipe filling every flag of this group left unset: swav (lr 0.3, cosine, 100 ep, "
                 "wd 1e-6), moco (lr 30, x0.1 at 60/80, 100 ep, wd 0), sce (lr 0.1 x batch/256, cosine per "
                 "iteration, 90 ep, batch 1024, wd 0), video (lr 2.0 x batch/256, 8 warmup epochs then cosine per "
                 "iteration, 60 ep, batch 512, wd 0); default swav, video with --modality video")
    add_arg(g, "--epochs", default=None, type=POSITIVE_INT, help="training epochs (swav/moco 100, sce 90)")
    add_arg(g, "-b", "--batch_size", default=None, type=POSITIVE_INT,
            help="TOTAL batch over all processes (swav/moco 256, sce 1024). SwAV's script takes it per GPU: its "
                 "--batch_size 32 on 8 GPUs is 256 here")
    add_arg(g, "--lr", "--learning_rate", default=None, type=float, dest="lr",
            help="learning rate actually used (swav 0.3, moco 30, sce 0.1 x batch/256: 0.4 at 1024)")
    add_arg(g, "--wd", "--weight_decay", default=None, type=NONNEG, dest="weight_decay",
            help="weight decay (swav 1e-6, else 0)")
    add_arg(g, "--momentum", default=None, type=MOMENTUM, help="SGD momentum (0.9)")
    add_arg(g, "--nesterov", default=None, type=bool_flag, help="Nesterov momentum, True/False (False)")
    add_arg(g, "--scheduler_type", default=None, choices=["cosine", "cosine_iter", "step"],
            help="cosine: per epoch to --final_lr (swav); cosine_iter: per iteration (sce); step: x --gamma at "
                 "--decay_epochs (moco)")
    add_arg(g, "--decay_epochs", "--schedule", default=None, type=int, nargs="+", help="step epochs (60 80)")
    add_arg(g, "--gamma", default=None, type=float, help="step factor (0.1)")
    add_arg(g, "--final_lr", default=None, type=NONNEG, help="cosine end value (0)")
    add_arg(g, "--warmup_epochs", default=None, type=float,
            help="linear warmup from 0 before the per-iteration cosine (video 8, else 0)")
    add_arg(g, "--norm_std", default=None, type=POSITIVE, nargs=3,
            help="Normalize std per channel, each > 0 (swav 0.228 0.224 0.225, else 0.229 0.224 0.225)")
    g = parser.add_argument_group("fast mode")
    add_arg(g, "--precompute_features", action="store_true",
            help="run the frozen trunk ONCE over train and val with the TEST transform (Resize + CenterCrop), cache "
                 "the features (DUMP_PATH/feature_cache_R-W/: N x D fp16 rows split over ranks, read batch by batch, "
                 "5.2 GB for ImageNet at D 2048) and "
                 "train the head for all epochs on that cache: about --epochs times faster. Protocol difference: "
                 "the training images are never randomly cropped or flipped, so the head sees one fixed view per "
                 "image and overfits sooner; the accuracies are not those of the published protocol (by how much "
                 "is not measured here) and do not belong next to published tables")
    add_run_args(parser, ("--dump_path", "--output_dir"), "where checkpoint.pth.tar, model_best.pth.tar, "
                 "eval_linear.json and log.txt go", short_print=True,
                 evaluate="only test the head of the resumed checkpoint")
    add_video_eval_args(parser)
    return parser


# ==================================================================================================
@cli_main
def main(args):
    args.data = args.data or args.data_path
    if not args.data:
        raise UserError("no dataset given: pass DIR (or --data_path DIR) holding train/ and val/")
    apply_protocol(args)
    if args.modality == "video":  # before processes start, so a typo gives one error line, not one per process
        eval_samples(VideoEval.from_flags(args), args.data)
        return launch(train, args)
    for split in ("train", "val"):  # before processes start, so a typo gives one error line, not one per process
        if not os.path.isdir(os.path.join(args.data, split)):
            raise UserError(f"data folder '{os.path.join(args.data, split)}' does not exist: pass the folder that "
                            "holds train/ and val/, one subfolder per class")
    return launch(train, args)


def apply_protocol(args):
    """Fill every unset protocol flag from ``PROTOCOLS[args.protocol]`` and check the values (idempotent)."""
    args.protocol = args.protocol or ("video" if args.modality == "video" else "swav")
    for key, value in {"warmup_epochs": 0.0, **PROTOCOLS[args.protocol]}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.lr is None:  # SCE: lr = 0.1 x batch / 256; video: 2.0 x batch / 256
        args.lr = (2.0 if args.protocol == "video" else 0.1) * args.batch_size / 256
    if args.modality == "video" and args.precompute_features:
        raise UserError("--precompute_features is for images: a video's training clip is drawn anew every epoch")
    if not 0 <= args.warmup_epochs <= args.epochs:
        raise UserError(f"--warmup_epochs must be in [0, --epochs], got {args.warmup_epochs}")
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or args.crop_size < 1 or args.resize < 1:
        raise UserError(f"need --epochs, -b/--batch_size, --crop_size, --resize >= 1 and --lr > 0, got {args.epochs}, "
                        f"{args.batch_size}, {args.crop_size}, {args.resize}, {args.lr}")
    if not 0 < args.min_scale <= 1:
        raise UserError(f"--min_scale must be in (0, 1], got {args.min_scale}")
    if args.modality == "video" and not args.global_pooling:
        raise UserError("--global_pooling False pools an image trunk's 2D feature map: drop it for --modality video")


FLAGS = Flags(output="--dump_path", lr="--lr", max_iters="--max_iters")
# flags a resume may change: those whose effect a require() below checks by content, with its own message (the
# trunk's weights, the head's kind, the cache mode), and the test's batching
SAFE = ("pretrained", "arch", "cifar_stem", "trunk_pattern", "global_pooling", "use_bn", "precompute_features",
        "test_videos_per_batch")


def train(args, info):
    """Train and test the linear head; returns the :class:`Results` summary dict (None when stopped early)."""
    autocast_dtype(args, info.device, info.rank)  # fp16 without CUDA: fp32 with one warning line; amp_dtype() agrees
    dist.split_batch(args.batch_size, info.world_size, "-b/--batch_size")  # refused before the folder is touched
    # -e only tests the saved head: training flags do not matter and test flags (sizes, views) are this test's
    # choice, so any difference is allowed (the warning lists them); the require() checks below still hold
    safe = tuple(vars(args)) if args.evaluate else SAFE
    run = Run(info, args, script="eval_linear.py", flags=FLAGS, safe=safe,
              must_resume="-e/--evaluate needs a trained head" if args.evaluate else None)
    args.seed = run.seed  # a resumed run keeps its checkpoint's seed
    parts = build(args, info)

    # ==== resuming and saving: a head is resumed only on the trunk it was trained on ====
    run.require("head_kind", parts.head_kind, "--global_pooling / --use_bn")
    run.require("trunk_sha256", parts.trunk_hash, "--pretrained (its weights)")
    if not args.evaluate:
        run.require("precompute_features", args.precompute_features, "--precompute_features")
    run.track(head=parts.head, optimizer=parts.optimizer, results=parts.results)
    build_batches(parts, info)  # after the checks: a feature cache can take hours to compute
    if args.evaluate:
        return test_and_report(parts, info, None, run.write_log, final=True)

    # ==== training ====
    run.start(parts.iters_per_epoch, args.batch_size, formats={"Acc@1": "6.2f", "Acc@5": "6.2f"})
    for epoch in run.epochs():
        parts.set_epoch(epoch, run.start_iter)
        if not run.steps(train_one_epoch(parts, parts.train_batches, run, epoch)):
            return None  # stopped (signal, --max_iters): checkpoint saved
        if not torch.equal(fingerprint(parts.trunk), parts.trunk_fp):  # MoCo's sanity_check: the trunk stays as loaded
            raise RuntimeError("the frozen trunk changed during linear evaluation (weights or BN statistics)")
        run.check()  # a NaN head is an error line, not a test score
        if parts.head_kind.endswith("+bn"):  # without SyncBN (CPU) each rank's running statistics saw its own last
            for buf in parts.head.buffers():  # batch: test with rank 0's, the ones its checkpoint keeps
                dist.broadcast(buf, src=0)
        tested = []  # the test's log row follows the epoch's, as the epoch's averages are logged by end_epoch
        is_best = test_and_report(parts, info, epoch, tested.append)
        run.end_epoch()
        run.write_log(tested[0])
        if is_best and info.rank == 0:
            save_checkpoint(os.path.join(args.dump_path, "model_best.pth.tar"),
                            {"epoch": epoch, "head": parts.head.state_dict(), **parts.results.best, "arch": args.arch})
    parts.finished = run.finished
    return report(args, parts.results, info.rank) if run.finished else None


@dataclass
class Parts:
    """What a linear evaluation trains with (:func:`build`, then :func:`build_batches`); :func:`step` reads it."""

    args: argparse.Namespace
    device: torch.device
    trunk: nn.Module  # the pretrained trunk, frozen: eval mode, no gradients
    trunk_hash: str  # content hash of its weights: a head is resumed only on the same trunk
    trunk_fp: torch.Tensor  # its fingerprint, checked after every epoch (it must never change)
    frozen: nn.Module  # images -> the head's input: the trunk, or its last map pooled 6x6 for SwAV's other head
    head: nn.Module  # the trained classifier (what a checkpoint holds)
    head_ddp: nn.Module  # the head the step calls (DDP-wrapped under a process group)
    head_kind: str  # "linear", "avgpool6" or "avgpool6+bn"
    optimizer: torch.optim.Optimizer
    lr_schedule: np.ndarray  # one lr per global step
    amp: object  # autocast dtype of the frozen forward (None: fp32)
    train_set: object
    val_set: object
    per_rank_batch: int
    iters_per_epoch: int
    results: Results  # every test, best and last
    # set by build_batches: images (``features`` the frozen module) or cached features (``features`` None)
    train_batches: object = None
    val_batches: object = None
    features: object = None
    set_epoch: object = None  # set_epoch(epoch, start_iter) before an epoch's batches
    finished: bool = False  # set by train(): every epoch done

    def trunks(self):
        """The trunk an evaluation of the run reads (frozen: the pretrained one)."""
        return {"online": self.trunk}


def build(args, info):
    """The frozen trunk, the head, its optimizer and lr schedule, and the datasets, from the flags (the batches come
    from :func:`build_batches`). ``args.seed`` seeds the head (the same on every rank) and a random trunk."""
    device, rank = info.device, info.rank
    dist.seed_everything(args.seed, 0)
    per_rank_batch = dist.split_batch(args.batch_size, info.world_size, "-b/--batch_size")
    print_rank0(f"protocol {args.protocol}: lr {args.lr:g}, {args.scheduler_type} schedule, {args.epochs} epochs, "
                f"batch {args.batch_size} ({per_rank_batch} x {info.world_size} processes), wd {args.weight_decay:g}, "
                f"momentum {args.momentum:g}" + (f", warmup {args.warmup_epochs:g} epochs" if args.warmup_epochs else "")
                + (", features precomputed (no train augmentation)" if args.precompute_features else ""), rank=rank)

    # ==== preparing data ====
    train_set, val_set = build_datasets(args)
    unit = "videos" if args.modality == "video" else "images"
    print_rank0(f"data: {len(train_set)} train / {len(val_set)} val {unit}, {len(train_set.classes)} classes",
                rank=rank)
    iters_per_epoch = math.ceil(math.ceil(len(train_set) / info.world_size) / per_rank_batch)

    # ==== building the frozen trunk and the head ====
    trunk, dim = build_frozen_trunk(args, device, rank)
    trunk_hash = content_hash(trunk)
    dist.seed_everything(args.seed, 0)  # the same head on every rank
    head, frozen, head_kind = build_head(args, trunk, dim, len(train_set.classes), device, rank)
    if info.distributed and head_kind.endswith("+bn") and device.type == "cuda":
        head = nn.SyncBatchNorm.convert_sync_batchnorm(head)  # SwAV: statistics over the global batch (CUDA only)
    head_ddp = dist.wrap_ddp(head, device)
    optimizer = torch.optim.SGD(head.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay, nesterov=args.nesterov)
    return Parts(args, device, trunk, trunk_hash, fingerprint(trunk), frozen, head, head_ddp, head_kind, optimizer,
                 lr_schedule(args, iters_per_epoch), amp_dtype(args), train_set, val_set, per_rank_batch,
                 iters_per_epoch, Results())


def train_one_epoch(parts, loader, run, epoch):
    """One epoch of SGD on the head; yields ``(iteration, stats)`` after each step. The trunk stays in eval mode:
    BatchNorm uses its running statistics and never updates them."""
    parts.head_ddp.train()
    parts.frozen.eval()
    for it, batch in run.batches(loader):
        yield it, step(parts, batch, epoch * parts.iters_per_epoch + it)


def step(parts, batch, it):
    """One SGD step of the head on a batch ``(x, labels)`` at global step ``it``: ``x`` holds images (embedded here by
    the frozen trunk under no_grad) or cached features. Returns: the step's stats (``Loss``, accuracies, ``lr``)."""
    device = parts.device
    lr = set_lr(parts.optimizer, parts.lr_schedule[it])
    x, y = (t.to(device, non_blocking=True) for t in batch)
    if x.ndim >= 4:  # images (B, 3, H, W) or clips (B, 3, T, H, W): frozen features (B, D)
        with torch.no_grad(), autocast(device, parts.amp):
            x = parts.frozen(x)
    logits = parts.head_ddp(x.float())  # (B, C)
    loss = F.cross_entropy(logits, y)
    parts.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    parts.optimizer.step()
    return {"Loss": loss.detach(), **topk_rates(logits, y), "lr": lr}


# ==================================================================================================
def build_head(args, trunk, dim, num_classes, device, rank):
    """The trained head and the frozen module that feeds it (SwAV's ``--global_pooling`` / ``--use_bn``).

    Returns:
        ``(head, frozen, kind)``: with global pooling (default) ``LinearClassifier(dim, C)`` on the trunk
        itself, kind "linear"; else a :class:`PooledMapClassifier` (AvgPool2d(6, stride 1), BatchNorm2d with
        ``--use_bn``, Linear) and ``trunk map -> its pooling -> flatten``, kind "avgpool6" or "avgpool6+bn".
        The pooling has no parameters, so it runs with the frozen trunk (and into a feature cache) while the
        head's BatchNorm and Linear train on its output.
    """
    if args.global_pooling:
        if args.use_bn:  # SwAV's RegLog only builds its BatchNorm without global pooling
            print_rank0("note: --use_bn has no effect with --global_pooling True (as in SwAV's RegLog)", rank=rank)
        return LinearClassifier(dim, num_classes).to(device), trunk, "linear"
    if not isinstance(trunk, ResNet):
        raise UserError(f"--global_pooling False takes the last feature map of a ResNet (SwAV: resnet50), not "
                        f"{args.arch}: drop the flag or pick a ResNet", collective=True)
    fmap = FeatureMap(trunk)
    with torch.no_grad():
        shape = fmap(torch.zeros(1, 3, args.crop_size, args.crop_size, device=device)).shape  # (1, C, H, W)
    head = PooledMapClassifier(shape[1], tuple(shape[2:]), num_classes, use_bn=args.use_bn).to(device)
    print_rank0(f"head: {args.arch} map {shape[1]}x{shape[2]}x{shape[3]} -> AvgPool2d(6, stride 1) -> "
                f"{head.in_dim}-d" + (" -> BatchNorm2d" if args.use_bn else "") + " -> Linear", rank=rank)
    frozen = nn.Sequential(fmap, head.pool, nn.Flatten(1)).eval()  # = head.pool_features(trunk map)
    return head, frozen, "avgpool6+bn" if args.use_bn else "avgpool6"


def build_datasets(args):
    """``DIR/train`` with the train transform (seeded per sample) and ``DIR/val`` with the test transform.

    Raises:
        UserError: train/ and val/ have different class folders, or fewer than 2 (a classifier needs 2).
    """
    if args.modality == "video":  # 1 random clip / 10 clips x 3 crops of every video (src.evaluation.video)
        train_set, val_set = eval_sets(VideoEval.from_flags(args), args.data, args.resize, args.crop_size, args.seed)
        check_classes(train_set.classes, args.data)
        return train_set, val_set
    tf_train = train_transform(args.crop_size, (args.min_scale, 1.0), args.norm_std)
    tf_test = test_transform(args.resize, args.crop_size, args.norm_std)
    # --precompute_features: the training images go through the test transform, once
    train_set = SafeImageFolder(os.path.join(args.data, "train"), tf_test if args.precompute_features else tf_train,
                                seed=args.seed, skip_unreadable=args.precompute_features)
    val_set = SafeImageFolder(os.path.join(args.data, "val"), tf_test, skip_unreadable=True)
    if train_set.classes != val_set.classes:
        raise UserError(f"train/ and val/ of '{args.data}' have different class folders ({len(train_set.classes)} "
                        f"vs {len(val_set.classes)}): labels would not match", collective=True)
    check_classes(train_set.classes, os.path.join(args.data, "train"))
    return train_set, val_set


def build_frozen_trunk(args, device, rank):
    """The pretrained trunk (arch / stem from the checkpoint unless given) on ``device``, eval mode, no grads."""
    trunk, args.arch, args.cifar_stem = build_trunk(
        args.pretrained, args.arch, args.cifar_stem, args.trunk_pattern, args.trust_checkpoint, args.seed,
        image_size=args.crop_size, log=lambda line: print_rank0(line, rank=rank))
    trunk = trunk.to(device).eval()
    for p in trunk.parameters():
        p.requires_grad_(False)
    frames = (args.num_frames,) if args.modality == "video" else ()  # a clip is (B, 3, T, H, W)
    with torch.no_grad():
        dim = trunk(torch.zeros(1, 3, *frames, args.crop_size, args.crop_size, device=device)).shape[1]
    return trunk, dim


def build_batches(parts, info):
    """``parts``' training and test batches: images (``parts.features`` = the frozen module) or cached features
    (``parts.features`` None), and ``parts.set_epoch(epoch, start_iter)``."""
    args, train_set, val_set, per_rank_batch = parts.args, parts.train_set, parts.val_set, parts.per_rank_batch
    samples_per_rank = math.ceil(len(train_set) / info.world_size)
    if not args.precompute_features or args.evaluate:  # -e: the val images are all that is needed
        sampler = ResumableSampler(len(train_set), info.world_size, info.rank, shuffle=True, seed=args.seed)
        parts.train_batches = build_loader(train_set, per_rank_batch, sampler, args.workers, drop_last=False)
        val_batch = args.test_videos_per_batch if args.modality == "video" else per_rank_batch
        parts.val_batches = build_loader(val_set, val_batch, ShardSampler(len(val_set), info.world_size, info.rank),
                                         args.workers, drop_last=False)
        parts.features = parts.frozen

        def set_epoch(epoch, start_iter):
            sampler.set_epoch(epoch, start_index=start_iter * per_rank_batch)
            train_set.set_epoch(epoch)
        parts.set_epoch = set_epoch
        return
    # a cache of locally pooled features is keyed apart from one of the same trunk's global features
    key = parts.trunk_hash if parts.head_kind == "linear" else f"{parts.trunk_hash}+{parts.head_kind}"
    (tr_f, tr_y), (va_f, va_y) = cached_features(parts, info, key)
    batches = FeatureBatches(tr_f, tr_y, per_rank_batch, samples_per_rank, seed=args.seed, rank=info.rank)
    parts.train_batches, parts.features, parts.set_epoch = batches, None, batches.set_epoch
    parts.val_batches = FeatureBatches(va_f, va_y, per_rank_batch, len(va_y), shuffle=False)  # in order, batch by batch


def cached_features(parts, info, trunk_hash):
    """This rank's train and val features of ``parts.frozen``, read batch by batch from its cache folder
    (``feature_store``: fp16 rows on disk, never loaded whole) when that was made from the same trunk weights
    (``trunk_hash``, a content hash, not the file's path) and transform (and every rank has its folder), else computed
    once and streamed there. The head trains on the stored values in both cases, so a resumed run equals an
    uninterrupted one."""
    args, trunk, train_set, val_set = parts.args, parts.frozen, parts.train_set, parts.val_set
    folder = os.path.join(args.dump_path, f"feature_cache_{info.rank}-{info.world_size}")
    key = {"trunk_sha256": trunk_hash, "arch": args.arch, "cifar_stem": bool(args.cifar_stem),
           "resize": args.resize, "crop_size": args.crop_size, "norm_std": list(args.norm_std),
           "n_train": len(train_set), "n_val": len(val_set), "seed": args.seed}
    meta = read_meta(folder)  # None: no complete cache (missing, interrupted, truncated)
    ok = torch.tensor([float(meta is not None and meta["key"] == json.loads(json.dumps(key)))], device=info.device)
    if dist.all_reduce(ok, op="min").item() == 1:  # all ranks agree, or all recompute (collectives inside)
        print_rank0(f"=> features read from {folder} (and the other ranks' folders)", rank=info.rank)
    else:
        amp, stats = amp_dtype(args), {}

        def shard(dataset, name, counts=None):  # a split's batches, made again if fp16 overflows (then fp32)
            def make():
                if counts is not None:
                    counts.clear()
                return shard_features(trunk, dataset, parts.per_rank_batch, args.workers, info.device, amp,
                                      progress=f"features {name}", stats=counts)
            return make
        meta = write_cache(folder, key, {"train": shard(train_set, "train", stats), "val": shard(val_set, "val")},
                           dim_if_empty=lambda: feature_dim(trunk, train_set, info.device),
                           log=lambda line: print(f"rank {info.rank}: {line}", flush=True))
        if stats.get("skipped"):
            print(f"rank {info.rank}: {stats['skipped']} unreadable training images left out of the cache", flush=True)
    return open_split(folder, "train", meta), open_split(folder, "val", meta)


def lr_schedule(args, iters_per_epoch):
    """One learning rate per iteration: SwAV's per-epoch cosine, SCE's per-iteration cosine, or MoCo's steps."""
    if args.scheduler_type == "cosine":  # CosineAnnealingLR(T_max=epochs, eta_min=final_lr), stepped per epoch
        return args.final_lr + moco_lr_schedule(args.lr - args.final_lr, args.epochs, iters_per_epoch, cos=True)
    if args.scheduler_type == "cosine_iter":
        return cosine_schedule(args.lr, args.final_lr, args.epochs, iters_per_epoch, warmup_epochs=args.warmup_epochs)
    return moco_lr_schedule(args.lr, args.epochs, iters_per_epoch, milestones=args.decay_epochs, gamma=args.gamma)


def test_and_report(parts, info, epoch, log, final=False):
    """Test the head; print SwAV's and MoCo's lines and ``log`` the numbers. Returns whether this epoch is the best
    so far (or, with ``final``, the summary after printing it)."""
    args, results = parts.args, parts.results
    parts.head.eval()
    res = evaluate(parts.head, parts.val_batches, info.device, features=parts.features, amp_dtype=parts.amp)
    if epoch is not None:
        is_best = results.add(epoch, res)
        best = results.best["top1"]
    else:
        is_best, best = False, max([res["top1"]] + [e["top1"] for e in results.history])
    if info.rank == 0:
        unit = "videos" if args.modality == "video" else "images"
        n_batches = max(len(parts.val_batches), 1)
        print(f"Test:\tTime {res['seconds'] / n_batches:.3f}\tLoss {res['loss']:.4f}\tAcc@1 {res['top1']:.3f}\t"
              f"Best Acc@1 so far {best:.1f}\t({res['n']} {unit}, "
              f"{res['n'] / max(res['seconds'], 1e-9):.1f} {'videos' if args.modality == 'video' else 'img'}/s)",
              flush=True)
        print(f" * Acc@1 {res['top1']:.3f} Acc@5 {res['top5']:.3f}", flush=True)
        if res["skipped"]:
            print(f"skipped {res['skipped']} unreadable test {unit} (warnings above): the accuracies are over the rest",
                  flush=True)
    log({"type": "test", "epoch": epoch, **res})
    return res if final else is_best


def report(args, results, rank):
    """Final lines and DUMP_PATH/eval_linear.json (rank 0); returns the summary dict."""
    summary = {**results.summary(), "protocol": args.protocol, "pretrained": args.pretrained, "arch": args.arch,
               "precompute_features": args.precompute_features, "args": vars(args)}
    if rank == 0 and results.best is not None:
        out = os.path.join(args.dump_path, "eval_linear.json")
        with open(out, "w") as f:
            json.dump(summary, f, indent=2)
        print("Training of the supervised linear classifier on frozen features completed.", flush=True)
        print(f"Top-1 test accuracy: {results.best['top1']:.1f}", flush=True)
        print(results.final_line(), flush=True)
        print(f"results written to {out}", flush=True)
    return summary


if __name__ == "__main__":
    main(ArgumentParser("Linear evaluation", parents=[get_args_parser()]).parse_args())
