#!/usr/bin/env python
"""SCE pretraining: Similarity Contrastive Estimation (Denize et al., WACV 2023), images and videos.

Faithful to the maintained code (juliendenize/eztorch, ``models/siamese/sce.py``, ImageNet configs): online
trunk -> projector -> predictor, momentum trunk -> projector with a cosine momentum 0.99 -> 1 per step, a queue
of 65536 keys, the SCE loss (tau 0.1, tau_m 0.07, lambda 0.5) symmetrised over the two global views and every
local crop, LARS, fp16 AMP, SyncBN. One script from a laptop CPU to 2 nodes. The method's pieces (queue snapshot,
branches, loss, momentum update, enqueue) are in ``src/methods/sce.py``; :func:`step` calls them in order.

Demo (CPU, a few minutes; builds ./data/demo, pretrains, compares kNN with random init):
    python main_sce.py --demo
ImageNet, 200 epochs, 2x224, 8 GPUs x 512 (paper: 72.7 linear top-1); any launcher:
    torchrun --nproc_per_node=8 main_sce.py --data_path /path/to/imagenet --dump_path runs/sce_200ep \
        --epochs 200 --batch_size 512 --use_fp16 true
    python -m torch.distributed.launch --nproc_per_node=8 main_sce.py --data_path /path/to/imagenet ...
    sbatch scripts/sce_200ep.sh            # and sce_100ep / sce_300ep / sce_1000ep / sce_multicrop_200ep
Multi-crop 2x224 + 192 + 160 + 128 + 96 (paper: 75.4), 2 nodes x 8 GPUs x 256:
    sbatch scripts/sce_multicrop_200ep.sh
One GPU (queue a multiple of 2 x batch):
    python main_sce.py --data_path /path/to/data --arch resnet50 --batch_size 256 --use_fp16 true
CPU, two processes, 6 small crops:
    python -m torch.distributed.launch --nproc_per_node=2 main_sce.py --data_path data/demo --arch resnet18 \
        --cifar_stem --batch_size 32 --queue_size 1024 --size_crops 32 16 --nmb_crops 2 4 \
        --min_scale_crops 0.2 0.05 --max_scale_crops 1 0.2 --epochs 1 --warmup_epochs 0 --workers 1 \
        --dump_path runs/sce-cpu
Video SCE (Denize et al., MVAP 2023): --modality video, R3D trunks, 2 clips of 2.56 s per video, VIDEO_DEFAULTS:
    sbatch scripts/video_sce_r3d50_k400_8f.sh       # and video_sce_r3d18_k200.sh / video_sce_r3d50_k400_16f.sh
CPU, the generated moving-shapes videos (docs/video.md has the evaluations that follow):
    python -m src.data.video.demo data/video_demo && python main_sce.py --modality video --data_path data/video_demo \
        --arch r3d18 --num_frames 4 --size_crops 32 --batch_size 8 --queue_size 128 --feat_dim 128 \
        --proj_hidden_dim 512 --pred_hidden_dim 512 --base_lr 0.6 --epochs 3 --warmup_epochs 1 --workers 1 \
        --print_freq 6 --dump_path runs/video-sce-cpu
"""
import argparse
import copy
import sys
from dataclasses import dataclass

import numpy as np

import torch
from torch import nn

from src.augment.recipes import sce_recipe
from src.augment.split import device_loader, pretrain_loader
from src.augment.views import relative_blur_scale
from src.data.folders import resolve_split, train_loader
from src.evaluation import demo
from src.evaluation.monitor import Monitor, add_watch_args, check_watch_args
from src.methods.momentum import check_queue_size
from src.methods.taps import OutputTap, recording
from src.methods.sce import SCE, momentum_schedule
from src.models import KNOWN_ARCHS, VIDEO_ARCHS
from src.optim import LARS, cosine_schedule, set_lr
from src.run import dist
from src.run.args import (MOMENTUM, NONNEG, NONNEG_INT, POSITIVE, POSITIVE_INT, ArgumentParser, add_arg, add_demo_args,
                          add_run_args, add_speed_args, autocast_dtype, bool_flag)
from src.run.errors import UserError
from src.run.launch import cli, launch
from src.run.logging import print_rank0
from src.run.loop import Flags, Run
from src.run.speed import autocast, maybe_compile, to_channels_last


def get_args_parser(add_help=True):
    parser = ArgumentParser("SCE pretraining", add_help=add_help,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = parser.add_argument_group("data and multi-crop (SwAV's flags)")
    add_arg(g, "--data_path", default=None, type=str,
            help="dataset root: DIR/train (or DIR itself) with one folder per class, or a flat folder of images")
    add_arg(g, "--size_crops", default=[224], type=POSITIVE_INT, nargs="+",
            help="crop side per group, pixels (2x224: 224; 5-crop recipe: 224 192 160 128 96)")
    add_arg(g, "--nmb_crops", default=[2], type=POSITIVE_INT, nargs="+",
            help="crops per group; the first group's first two crops are the global views (5-crop: 2 1 1 1 1)")
    add_arg(g, "--min_scale_crops", default=[0.2], type=float, nargs="+",
            help="RandomResizedCrop min area per group (0.2; 5-crop: 0.2 0.172 0.143 0.114 0.086)")
    add_arg(g, "--max_scale_crops", default=[1.0], type=float, nargs="+",
            help="RandomResizedCrop max area per group (1.0; 5-crop: 1 0.86 0.715 0.571 0.429)")
    add_arg(g, "--blur_prob", default=[1.0, 0.1, 0.5], type=float, nargs=3,
            help="Gaussian blur probability of global view 1, global view 2, each local crop (1.0 0.1 0.5)")
    add_arg(g, "--solarize_prob", default=[0.0, 0.2, 0.2], type=float, nargs=3,
            help="solarize probability of global view 1, global view 2, each local crop (0 0.2 0.2)")
    add_arg(g, "--workers", default=10, type=NONNEG_INT, help="data loading workers per process (8-12 per GPU)")

    g = parser.add_argument_group("sce")
    add_arg(g, "--arch", default="resnet50", type=str, help=f"backbone: {', '.join(KNOWN_ARCHS)}")
    add_arg(g, "--cifar_stem", action="store_true",
            help="ResNet 3x3 stride-1 stem without max-pool, for 32-96 px images (off for ImageNet)")
    add_arg(g, "--feat_dim", default=256, type=POSITIVE_INT, help="projection / queue feature size (256)")
    add_arg(g, "--proj_hidden_dim", default=4096, type=POSITIVE_INT, help="projector hidden width (4096 for ResNet-50)")
    add_arg(g, "--pred_hidden_dim", default=4096, type=POSITIVE_INT, help="predictor hidden width (4096 for ResNet-50)")
    add_arg(g, "--temperature", default=0.1, type=float, help="tau of the online distribution (0.1)")
    add_arg(g, "--temperature_m", default=0.07, type=float,
            help="tau_m of the target distribution (0.07 ImageNet configs; 0.05 video; 0.03-0.1)")
    add_arg(g, "--coeff", default=0.5, type=float,
            help="lambda, weight of the one-hot positive in the target (0.5; 1 = MoCo's InfoNCE, 0 = relational)")
    add_arg(g, "--mask_positive", default=False, type=bool_flag, nargs="?", const=True,
            help="paper's strict mask: probability 0 on the positive in the relational target (default false: "
                 "the reference code's logit 0, whose effect is tiny)")
    add_arg(g, "--queue_size", default=65536, type=POSITIVE_INT,
            help="K, keys in the queue; a multiple of 2 x global batch (65536; 2 views enqueued per step)")
    add_arg(g, "--momentum_start", default=0.99, type=float,
            help="EMA momentum at step 0, cosine to 1.0 at the last step (0.99; 0.99-0.999)")
    add_arg(g, "--mutual_pass", default=False, type=bool_flag, nargs="?", const=True,
            help="one forward for the crops of the same resolution (faster; default false: one forward per "
                 "crop, per-view BN statistics, as the reference)")

    g = parser.add_argument_group("optimization (LARS)")
    add_arg(g, "--epochs", default=200, type=POSITIVE_INT, help="total epochs (100 / 200 / 300 / 1000 in the paper)")
    add_arg(g, "--batch_size", default=512, type=POSITIVE_INT,
            help="images per process (global 4096: 8 GPUs x 512 for 2 crops, 16 x 256 for multi-crop)")
    add_arg(g, "--base_lr", default=0.3, type=POSITIVE,
            help="lr per 256 images: lr = base_lr * global batch / 256 (0.3; 0.6 for the 100-epoch run)")
    add_arg(g, "--final_lr", default=0.0, type=NONNEG, help="lr at the end of the cosine (0)")
    add_arg(g, "--warmup_epochs", default=10, type=float, help="linear warmup from --start_warmup (10)")
    add_arg(g, "--start_warmup", default=0.0, type=NONNEG, help="lr at step 0 of the warmup (0)")
    add_arg(g, "--wd", "--weight_decay", default=1e-6, type=NONNEG, dest="wd",
            help="weight decay of weights with ndim > 1 (1e-6; 1.5e-6 for 1000 epochs)")
    add_arg(g, "--lars_momentum", default=0.9, type=MOMENTUM, help="LARS heavy-ball momentum (0.9)")
    add_arg(g, "--trust_coefficient", default=1e-3, type=POSITIVE, help="LARS eta (1e-3)")
    add_arg(g, "--sync_bn", default=True, type=bool_flag, nargs="?", const=True,
            help="SyncBatchNorm across processes (true, as the reference; CUDA only, disabled with a warning "
                 "on a CPU run with several processes)")
    add_arg(g, "--seed", default=42, type=int, help="seed for init, sampling and augmentation (42)")

    g = add_run_args(parser, ("--dump_path", "--output_dir"),
                     "where checkpoint.pth.tar, trunk.pth (torchvision layout), args.json and log.txt go")
    add_arg(g, "--checkpoint_freq", default=25, type=NONNEG_INT,
            help="keep a numbered checkpoint_EEEE.pth.tar every N epochs (0: never)")
    add_watch_args(parser)
    add_speed_args(parser)
    add_demo_args(parser)
    g = parser.add_argument_group("video (Denize et al., MVAP 2023)")
    add_arg(g, "--modality", default="image", choices=["image", "video"],
            help="image, or video: --data_path holds videos (files decoded with PyAV, or folders of frames) in "
                 "class folders, the trunk is an R3D (--arch r3d18 / r3d50 / r3d_tiny), each video gives 2 random "
                 "clips as the 2 views, and every flag left unset takes the video recipe's value (VIDEO_DEFAULTS: "
                 "r3d50, batch 64 per process, base_lr 2.4, warmup 35, tau_m 0.05, crop scale 0.2-0.766, queue "
                 "32768 for r3d18, heads 1024 wide for r3d18)")
    add_arg(g, "--num_frames", default=8, type=POSITIVE_INT,
            help="frames per clip, uniformly spaced over the clip (8 or 16 in the paper; 4 on a CPU)")
    add_arg(g, "--clip_duration", default=2.56, type=float, help="clip length in seconds (2.56)")
    add_arg(g, "--temporal_diff_prob", default=0.2, type=float,
            help="probability per clip of the temporal-difference augmentation (0.2)")
    add_arg(g, "--frames_fps", default=30.0, type=POSITIVE,
            help="frame rate of videos given as folders of frames (30 for Kinetics frames; ignored for files)")
    return parser


# the paper's Kinetics recipes: the values a --modality video run takes for the flags it was not given
VIDEO_DEFAULTS = dict(arch="r3d50", batch_size=64, base_lr=2.4, warmup_epochs=35, epochs=200, temperature_m=0.05,
                      size_crops=[224], nmb_crops=[2], min_scale_crops=[0.2], max_scale_crops=[0.766], wd=1e-6)
VIDEO_ARCH_DEFAULTS = {"r3d18": dict(queue_size=32768, proj_hidden_dim=1024, pred_hidden_dim=1024),
                       "r3d50": dict(queue_size=65536, proj_hidden_dim=4096, pred_hidden_dim=4096),
                       "r3d_tiny": dict(queue_size=1024, proj_hidden_dim=512, pred_hidden_dim=512)}


def parse_args(argv=None):
    """Parse the command line; with --modality video, every flag not given takes its VIDEO_DEFAULTS value."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.modality == "video":
        apply_video_defaults(args, given_dests(parser, sys.argv[1:] if argv is None else argv))
    return args


def given_dests(parser, argv):
    """The ``dest`` of every flag present in ``argv`` (parsed again with every default suppressed)."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def apply_video_defaults(args, given):
    """Set the video recipe's value of every flag whose dest is not in ``given`` (idempotent)."""
    for key, value in VIDEO_DEFAULTS.items():
        if key not in given:
            setattr(args, key, copy.copy(value))
    for key, value in VIDEO_ARCH_DEFAULTS.get(args.arch, {}).items():
        if key not in given:
            setattr(args, key, value)
    return args


# ==================================================================================================
def main(args):
    if args.demo:
        return run_demo(args)
    check_args(args)
    check_watch_args(args)
    if not args.data_path:
        raise UserError("no dataset given: pass --data_path DIR (with train/ and one folder per class) or use --demo")
    return launch(train, args)


def check_args(args):
    """Flag values that cannot work, as one UserError line (before any process group or data)."""
    groups = [args.size_crops, args.nmb_crops, args.min_scale_crops, args.max_scale_crops]
    if len({len(x) for x in groups}) != 1:
        raise UserError(f"--size_crops, --nmb_crops, --min_scale_crops and --max_scale_crops need one value per "
                        f"crop group each, got {' / '.join(str(len(x)) for x in groups)} values")
    if args.nmb_crops[0] < 2 or min(args.nmb_crops) < 1:
        raise UserError(f"--nmb_crops {' '.join(map(str, args.nmb_crops))}: the first group holds the 2 global "
                        "views (at least 2) and every group at least 1 crop")
    for lo, hi in zip(args.min_scale_crops, args.max_scale_crops):
        if not 0 < lo <= hi <= 1:
            raise UserError(f"crop scales must satisfy 0 < min <= max <= 1, got min {lo} max {hi}")
    if args.temperature <= 0 or args.temperature_m <= 0:
        raise UserError(f"--temperature and --temperature_m must be > 0, got {args.temperature} and "
                        f"{args.temperature_m}")
    if not 0 <= args.coeff <= 1:
        raise UserError(f"--coeff must be in [0, 1] (lambda; 0.5 in the paper), got {args.coeff}")
    if not 0 <= args.momentum_start <= 1:
        raise UserError(f"--momentum_start must be in [0, 1] (0.99), got {args.momentum_start}")
    if args.batch_size < 1 or args.epochs < 1 or not 0 <= args.warmup_epochs <= args.epochs:
        raise UserError(f"need --batch_size >= 1, --epochs >= 1 and 0 <= --warmup_epochs <= --epochs, got "
                        f"{args.batch_size}, {args.epochs}, {args.warmup_epochs}")
    if not all(0 <= p <= 1 for p in args.blur_prob + args.solarize_prob):
        raise UserError("--blur_prob and --solarize_prob are probabilities in [0, 1]")
    if (args.modality == "video") != (args.arch in VIDEO_ARCHS):
        raise UserError(f"--arch {args.arch} with --modality {args.modality}: video needs a video trunk "
                        f"({', '.join(VIDEO_ARCHS)}), images an image trunk")
    if args.modality == "video" and (args.nmb_crops != [2] or len(args.size_crops) != 1):
        raise UserError(f"--modality video takes 2 clips per video (--nmb_crops 2, one --size_crops value), got "
                        f"--nmb_crops {' '.join(map(str, args.nmb_crops))}")
    if args.modality == "video" and (args.num_frames < 1 or args.clip_duration <= 0 or
                                     not 0 <= args.temporal_diff_prob <= 1):
        raise UserError(f"need --num_frames >= 1, --clip_duration > 0 and --temporal_diff_prob in [0, 1], got "
                        f"{args.num_frames}, {args.clip_duration}, {args.temporal_diff_prob}")


FLAGS = Flags(output="--dump_path", lr="--base_lr", max_iters="--max_iters")


def train(args, info):
    """Pretrain: :func:`build` the parts, then the loop. Returns the parts (``parts.finished``: every epoch done)."""
    run = Run(info, args, script="main_sce.py", flags=FLAGS)
    args.seed = run.seed  # a resumed run keeps its checkpoint's seed
    parts = build(args, info)

    # ==== resuming and saving: what a checkpoint holds ====
    run.track(state_dict=parts.model, optimizer=parts.optimizer, scaler=parts.scaler)
    run.export("trunk.pth", parts.model.trunk_state)  # the online trunk alone, torchvision names

    # ==== training ====
    monitor = Monitor.from_args(args, info, parts.trunks, args.size_crops[0], args.epochs * parts.iters_per_epoch,
                                args.dump_path, modality=args.modality)
    run.start(parts.iters_per_epoch, args.batch_size * info.world_size, scaled=parts.scaler.is_enabled(),
              formats={"Loss": ".4f", "m": ".5f"}, monitor=monitor)
    for epoch in run.epochs():
        parts.sampler.set_epoch(epoch, start_index=run.start_iter * args.batch_size)
        parts.dataset.set_epoch(epoch)
        if not run.steps(train_one_epoch(parts, parts.loader, run, epoch)):
            break  # stopped (signal, --max_iters): checkpoint saved
        last = (epoch + 1) * parts.iters_per_epoch - 1
        run.end_epoch(replicated_state(parts.model), extra={"lr": parts.lr_at(last), "momentum": parts.m_at(last)},
                      numbered=bool(args.checkpoint_freq) and (epoch + 1) % args.checkpoint_freq == 0)
    parts.finished = run.finished
    return parts


@dataclass
class Parts:
    """What an SCE run trains with (:func:`build`); :func:`step` reads it."""

    args: argparse.Namespace
    device: torch.device
    model: SCE  # online and momentum networks, queue: what a checkpoint holds
    online: nn.Module  # crops -> queries, the branch the step calls (DDP-wrapped under a process group, maybe compiled)
    target: nn.Module  # global crops -> keys (momentum trunk and projector)
    optimizer: torch.optim.Optimizer  # LARS over the online parameters
    scaler: torch.amp.GradScaler
    lr_schedule: np.ndarray  # one lr per global step
    m_schedule: np.ndarray  # one EMA momentum per global step
    amp: object  # the autocast context of the forwards
    loader: object
    sampler: object
    dataset: object
    iters_per_epoch: int
    tap: OutputTap = None  # the online trunk's outputs, for the online linear probe (--online_linear)
    finished: bool = False  # set by train(): every epoch done

    def lr_at(self, step):
        return float(self.lr_schedule[step])

    def m_at(self, step):
        return float(self.m_schedule[step])

    def trunks(self):
        """The trunks an evaluation of the run reads: the online trunk and the momentum trunk (copies)."""
        return self.model.trunks()


def build(args, info):
    """Everything an SCE run trains with, from the flags: data, model and branches, LARS, scaler, lr and momentum
    schedules, the autocast context.

    Called by :func:`train`, the bench and the tests alike; ``args.seed`` seeds the initial weights (the same on
    every rank), then every rank draws from its own stream."""
    device = info.device
    check_args(args)
    dist.seed_everything(args.seed, 0)

    # ==== preparing data ====
    loader, sampler, dataset, iters_per_epoch = build_data(args, info)

    # ==== building model ====
    model, online, target = build_model(args, info)
    dist.seed_everything(args.seed, info.rank)  # then one RNG stream per rank
    global_batch = args.batch_size * info.world_size
    lr = args.base_lr * global_batch / 256
    optimizer = LARS(model.online_params(), lr=lr, weight_decay=args.wd, momentum=args.lars_momentum,
                     trust_coefficient=args.trust_coefficient)
    dtype = autocast_dtype(args, device, info.rank)  # fp16 without CUDA: fp32 and one warning line (args updated)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    lr_schedule = cosine_schedule(lr, args.final_lr * global_batch / 256, args.epochs, iters_per_epoch,
                                  warmup_epochs=args.warmup_epochs, start_warmup_value=args.start_warmup)
    m_schedule = momentum_schedule(args.momentum_start, args.epochs, iters_per_epoch)
    print_rank0(f"=> {args.arch}: {len(dataset)} {'videos' if args.modality == 'video' else 'images'}, "
                f"{iters_per_epoch} iterations/epoch, batch {args.batch_size} x {info.world_size} processes, crops "
                f"{crop_list(args)}" + (f" x {args.num_frames} frames" if args.modality == "video" else "") +
                f", queue {args.queue_size}, lr {lr:g}", rank=info.rank)
    return Parts(args, device, model, online, target, optimizer, scaler, lr_schedule, m_schedule,
                 autocast(device, dtype), loader, sampler, dataset, iters_per_epoch,
                 OutputTap(model.trunk) if args.online_linear else None)


def crop_list(args):
    """The crop sides in batch order, e.g. [224, 224, 192, 160, 128, 96]."""
    return [s for s, n in zip(args.size_crops, args.nmb_crops) for _ in range(n)]


def build_data(args, info):
    """Every crop of SCE's asymmetric multi-crop augmentation per image (video: the two clips of each video); a
    resumable, per-rank sampler seeded with ``args.seed``. Returns ``(loader, sampler, dataset, iters_per_epoch)``."""
    seed = args.seed
    if args.modality == "video":
        from src.augment.video import pretrain_set
        dataset = pretrain_set(args.data_path, args.size_crops[0], args.num_frames, args.clip_duration,
                               args.temporal_diff_prob, (args.min_scale_crops[0], args.max_scale_crops[0]),
                               args.blur_prob[:2], args.solarize_prob[:2],
                               blur_scale=relative_blur_scale(args.size_crops[0]), seed=seed,
                               frames_fps=args.frames_fps, split=args.device_aug)
        loader, sampler, iters_per_epoch = train_loader(dataset, args.batch_size, args.workers, info.world_size,
                                                        info.rank, seed)
        loader = device_loader(loader, dataset.transform, info.device, seed=seed, rank=info.rank,
                               channels_last=args.channels_last)  # --device-aug / --channels-last on clips
        return loader, sampler, dataset, iters_per_epoch
    # blur kernel 23 and sigma 0.1-2 px are defined for 224-px global crops: scaled by size/224, which is the
    # reference at 224 and keeps small (CPU) crops from being erased
    recipe = sce_recipe(args.size_crops, args.nmb_crops, args.min_scale_crops, args.max_scale_crops,
                        blur_probs=args.blur_prob, solarize_probs=args.solarize_prob,
                        blur_scale=relative_blur_scale(args.size_crops[0]))
    return pretrain_loader(resolve_split(args.data_path, "train"), recipe.transform(split=args.device_aug),
                           args.batch_size, args.workers, info, seed, channels_last=args.channels_last)


def build_model(args, info):
    """SCE on the device; the online branch wrapped in DDP when distributed, SyncBN on CUDA.

    Returns:
        (model, online, target): the SCE module (what checkpoints hold), the online branch (list of crops ->
        list of queries; DDP-wrapped under a process group) and the target branch (list of global crops ->
        list of keys).
    """
    check_queue_size(args.queue_size, 2 * args.batch_size * info.world_size)  # both views are enqueued
    model = SCE(args.arch, dim=args.feat_dim, proj_hidden_dim=args.proj_hidden_dim,
                pred_hidden_dim=args.pred_hidden_dim, queue_size=args.queue_size, cifar_stem=args.cifar_stem,
                image_size=args.size_crops[0], temperature=args.temperature, temperature_m=args.temperature_m,
                coeff=args.coeff, mask_positive=args.mask_positive)
    if args.sync_bn and info.distributed:
        if info.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # both branches, as Lightning's sync_batchnorm
        else:
            print_rank0("warning: --sync_bn needs CUDA (gloo cannot sync BN on a CPU): disabled, each process "
                        "normalises its own batch", rank=info.rank)
    model = to_channels_last(model.to(info.device), args.channels_last)
    online = model.online_branch(args.mutual_pass)
    if info.distributed:
        online = dist.wrap_ddp(online, info.device)
        model.sync_target()  # DDP broadcast rank 0's weights: the target starts from them too
    return model, maybe_compile(online, args.compile, info.rank), model.target_branch(args.mutual_pass)


def replicated_state(model):
    """What must be identical on every rank: all parameters (online and target) and the queue."""
    return {**dict(model.named_parameters()), "queue.queue": model.queue.queue, "queue.ptr": model.queue.ptr}


def train_one_epoch(parts, loader, run, epoch):
    """One epoch of SCE; yields ``(iteration, stats)`` after each optimizer step."""
    parts.model.train()  # the target branch too: its BN uses batch statistics, as in the reference
    for it, batch in run.batches(loader):
        yield it, step(parts, batch, epoch * parts.iters_per_epoch + it)


def step(parts, batch, it):
    """One SCE step on a loader batch ``(crops, labels)`` at global step ``it``: the 2 global crops are the keys'
    views, every crop a query for the key of each global view but its own.
    Returns: the step's stats (``Loss``, ``m``, ``lr``)."""
    model, device = parts.model, parts.device
    lr = set_lr(parts.optimizer, parts.lr_schedule[it])
    m = parts.m_at(it)
    crops = [c.to(device, non_blocking=True) for c in batch[0]]  # [g1, g2, l1, ..., lL], each (B, 3, s, s)
    # (video: the 2 clips, each (B, 3, T, s, s))

    # one queue snapshot for every pair of this step; queries for every crop, keys for the 2 global crops
    queue = model.queue_snapshot()  # (K, D)
    with parts.amp, recording(parts.tap):
        queries = parts.online(crops)  # list of (B, D), unit norm
        with torch.no_grad():
            keys = parts.target(crops[:2])  # list of 2 (B, D), unit norm

    # SCE loss in fp32, summed over (global i, crop j != i) / (2 * (num_crops - 1))
    loss = model.loss(queries, keys, queue)

    parts.optimizer.zero_grad(set_to_none=True)
    parts.scaler.scale(loss).backward()
    parts.scaler.unscale_(parts.optimizer)  # LARS's trust ratio needs the true gradient norms
    parts.scaler.step(parts.optimizer)  # skipped when an fp16 gradient is inf / NaN
    parts.scaler.update()

    # EMA of the online weights (parameters only), then both views' keys of the global batch into the queue
    model.momentum_update(m)
    model.enqueue(keys)
    stats = {"Loss": loss.detach(), "m": m, "lr": lr}
    if parts.tap is not None:  # the global crops' trunk features, for the online linear probe
        stats["features"] = parts.tap.take(2 * crops[0].shape[0])
    return stats


# ==================================================================================================
def run_demo(args):
    """Build the demo data, pretrain resnet_tiny with SCE on the CPU for a few minutes, compare kNN top-1 of
    the pretrained trunk with the same trunk at its random initialisation (src.evaluation.demo)."""
    def trunks(model, args):
        init = SCE(args.arch, dim=args.feat_dim, proj_hidden_dim=args.proj_hidden_dim,
                   pred_hidden_dim=args.pred_hidden_dim, queue_size=args.queue_size, cifar_stem=args.cifar_stem)
        return model.trunk, init.trunk

    return demo.run_demo(args, DEMO, train, trunks, "data_path", "dump_path", "runs/sce-demo", check=check_args)


# Demo recipe for 2 CPU cores: resnet_tiny (0.3M parameters) on 2 x 64-px crops of at least half of the demo
# shapes, a queue small next to the 3,000 training images, the momentum schedule starting at 0.9 and softer
# temperatures so that a few hundred steps move the trunk (docs/sce.md has the measured figures).
DEMO = dict(arch="resnet_tiny", cifar_stem=False, epochs=6, batch_size=128, base_lr=4.8, final_lr=0.0,
            warmup_epochs=1, wd=1e-5, feat_dim=128, proj_hidden_dim=512, pred_hidden_dim=512, queue_size=1024,
            temperature=0.2, temperature_m=0.1, coeff=0.5, momentum_start=0.9, size_crops=[64], nmb_crops=[2],
            min_scale_crops=[0.5], max_scale_crops=[1.0], workers=1, print_freq=10, checkpoint_freq=0, max_iters=0,
            eval_size=64)


if __name__ == "__main__":
    cli(main, parse_args)
