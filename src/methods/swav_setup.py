"""What ``main_swav.py`` and ``main_deepclusterv2.py`` share around the method: the official flags, the
multi-crop loader, SGD + LARC with the per-iteration schedule, the wrapped model, and the rule for numbered
checkpoint copies (launching, resuming and saving are the run skeleton's, ``src.run``).

Kept out of the scripts so the two stay short (the reference repository repeats 176 lines between them);
the method itself stays in the scripts' ``train_one_epoch`` and in ``src/methods/{swav,deepcluster}.py``.
"""
import math

import torch
from torch import nn

from src.run.args import NONNEG, NONNEG_INT, POSITIVE, POSITIVE_INT, add_arg, bool_flag
from src.augment.image import swav_multicrop_transform
from src.data.folders import ResumableSampler, build_dataset, build_loader, resolve_split
from src.run.errors import UserError
from src.run.logging import print_rank0
from src.models import KNOWN_ARCHS
from src.optim import LARC, cosine_schedule
from src.run.speed import fused_kwargs, maybe_compile, to_channels_last
from src.augment.split import device_loader, swav_split_transform
from src.methods.swav import convert_sync_bn


# ==== flags (spec A.10: names and defaults of facebookresearch/swav) ====
def add_multicrop_args(parser):
    """``--data_path --nmb_crops --size_crops --min_scale_crops --max_scale_crops --workers``."""
    g = parser.add_argument_group("data and multi-crop")
    add_arg(g, "--data_path", default="/path/to/imagenet", type=str,
            help="dataset root: DIR/train (or DIR itself) with one folder per class, or a flat folder of images")
    add_arg(g, "--nmb_crops", default=[2], type=POSITIVE_INT, nargs="+",
            help="crops per resolution group (2 6 for 2x224+6x96; the first group holds the assignment crops)")
    add_arg(g, "--size_crops", default=[224], type=POSITIVE_INT, nargs="+", help="crop side per group, pixels (224 96)")
    add_arg(g, "--min_scale_crops", default=[0.14], type=float, nargs="+",
            help="RandomResizedCrop min area per group (0.14 0.05; 0.08 for the 2x224 recipe)")
    add_arg(g, "--max_scale_crops", default=[1.0], type=float, nargs="+",
            help="RandomResizedCrop max area per group (1 0.14)")
    add_arg(g, "--use_pil_blur", default=True, type=bool_flag,
            help="PIL Gaussian blur (true, the reference since April 2021); false: the older fixed 23x23-kernel blur "
                 "that trained the released checkpoints (same sigma range 0.1-2 and p 0.5)")
    add_arg(g, "--workers", default=10, type=NONNEG_INT, help="data loading workers per process (10 per GPU)")
    return g


def add_optim_args(parser, freeze_default, freeze_help):
    """``--epochs --batch_size --base_lr --final_lr --freeze_prototypes_niters --wd --warmup_epochs --start_warmup``."""
    g = parser.add_argument_group("optimization (SGD + LARC, per-iteration warmup then cosine)")
    add_arg(g, "--epochs", default=100, type=POSITIVE_INT, help="number of total epochs (100-800)")
    add_arg(g, "--batch_size", default=64, type=POSITIVE_INT,
            help="images per PROCESS (64 x 64 GPUs = 4096; 64 x 4 = 256 for the small-batch recipe)")
    add_arg(g, "--base_lr", default=4.8, type=POSITIVE,
            help="peak lr, NOT rescaled by the batch (4.8 at 4096, 0.6 at 256)")
    add_arg(g, "--final_lr", default=0.0, type=NONNEG,
            help="lr at the end of the cosine (0.0048 / 0.0006 in the recipes)")
    add_arg(g, "--freeze_prototypes_niters", default=freeze_default, type=NONNEG_INT, help=freeze_help)
    add_arg(g, "--wd", default=1e-6, type=NONNEG, help="weight decay, on every parameter through LARC (1e-6)")
    add_arg(g, "--warmup_epochs", default=10, type=NONNEG_INT, help="linear warmup epochs (10 at 4096, 0 at 256)")
    add_arg(g, "--start_warmup", default=0.0, type=NONNEG, help="lr at the first warmup step (0; 0.3 in the recipes)")
    return g


def add_run_args(parser, checkpoint_freq=25):
    """Model, output and checkpoint flags (official) plus ours (``--cifar_stem``, ``--print_freq``,
    ``--max_iters``, ``--save_every_iters``, ``--resume``)."""
    g = parser.add_argument_group("model")
    add_arg(g, "--arch", default="resnet50", type=str, help=f"trunk: {', '.join(KNOWN_ARCHS)}")
    add_arg(g, "--hidden_mlp", default=2048, type=NONNEG_INT,
            help="hidden width of the projection head (2048; 8192 for resnet50w2/w4; 0: a single Linear)")
    add_arg(g, "--cifar_stem", action="store_true", help="ResNet 3x3 stride-1 stem, for 32-96 px images (not ImageNet)")
    add_arg(g, "--sync_bn", default="pytorch", type=str,
            help="pytorch: SyncBatchNorm over all processes; apex: over groups of --syncbn_process_group_size "
                 "ranks (torch's SyncBatchNorm, no apex needed); anything else: per-process BN. CUDA only")
    add_arg(g, "--syncbn_process_group_size", default=8, type=POSITIVE_INT, help="ranks per BN group with --sync_bn apex (8)")
    add_arg(g, "--seed", default=31, type=int, help="seed for init, sampling and augmentation (31)")
    g = parser.add_argument_group("output and checkpoints")
    add_arg(g, "--dump_path", "--output_dir", default=".", type=str, dest="dump_path",
            help="experiment folder: checkpoint.pth.tar, checkpoints/ckp-E.pth, args.json, log.txt, per-rank files")
    add_arg(g, "--checkpoint_freq", default=checkpoint_freq, type=NONNEG_INT,
            help="copy the checkpoint to checkpoints/ckp-E.pth every N epochs and at the last one (25; 0: last only)")
    add_arg(g, "--print_freq", default=50, type=POSITIVE_INT, help="log every N iterations (50, as the reference)")
    add_arg(g, "--save_every_iters", default=0, type=NONNEG_INT,
            help="also refresh checkpoint.pth.tar every N iterations inside an epoch (0: epoch ends only)")
    add_arg(g, "--max_iters", default=0, type=NONNEG_INT,
            help="stop (with a checkpoint) after this many iterations in total; for smoke tests (0: off)")
    add_arg(g, "--resume", default="", type=str,
            help="checkpoint to resume from (default: DUMP_PATH/checkpoint.pth.tar if it exists: auto-resume)")
    return g


def check_multicrop_args(args):
    """Flag values that cannot work, as one UserError line (before any process group or data)."""
    groups = [args.size_crops, args.nmb_crops, args.min_scale_crops, args.max_scale_crops]
    if len({len(x) for x in groups}) != 1:
        raise UserError(f"--size_crops, --nmb_crops, --min_scale_crops and --max_scale_crops need one value per "
                        f"crop group each, got {' / '.join(str(len(x)) for x in groups)} values")
    if min(args.nmb_crops) < 1:
        raise UserError(f"--nmb_crops {' '.join(map(str, args.nmb_crops))}: every group needs at least 1 crop")
    for lo, hi in zip(args.min_scale_crops, args.max_scale_crops):
        if not 0 < lo <= hi <= 1:
            raise UserError(f"crop scales must satisfy 0 < min <= max <= 1, got min {lo} max {hi}")
    n_crops = sum(args.nmb_crops)
    if not args.crops_for_assign or any(not 0 <= c < n_crops for c in args.crops_for_assign):
        raise UserError(f"--crops_for_assign {' '.join(map(str, args.crops_for_assign))}: crop ids must lie in "
                        f"[0, {n_crops - 1}] (there are {n_crops} crops)")
    if args.batch_size < 1 or args.epochs < 1 or not 0 <= args.warmup_epochs <= args.epochs:
        raise UserError(f"need --batch_size >= 1, --epochs >= 1 and 0 <= --warmup_epochs <= --epochs, got "
                        f"{args.batch_size}, {args.epochs}, {args.warmup_epochs}")
    if args.temperature <= 0:
        raise UserError(f"--temperature must be > 0 (0.1), got {args.temperature}")


# ==== data ====
def build_multicrop_data(args, info, seed, wrap=None):
    """Multi-crop dataset, resumable per-rank sampler and loader (drop_last, as the reference).

    Args:
        args: the script's flags; info: DistInfo; seed: run seed (sampling and per-sample augmentation).
        wrap: optional callable dataset -> dataset (DeepCluster-v2 adds the index to each item).
    Returns:
        (loader, sampler, dataset, iters_per_epoch).
    """
    root = resolve_split(args.data_path, "train")
    # the blur radius (0.1-2 px) is defined for 224-px crops: scaled by size/224 for small images (1 at 224)
    make = swav_split_transform if args.device_aug else swav_multicrop_transform  # split: colour etc. on the device
    transform = make(args.size_crops, args.nmb_crops, args.min_scale_crops, args.max_scale_crops,
                     blur_scale=args.size_crops[0] / 224, pil_blur=args.use_pil_blur)
    dataset = build_dataset(root, transform, seed=seed)
    if wrap is not None:
        dataset = wrap(dataset)
    iters_per_epoch = math.ceil(len(dataset) / info.world_size) // args.batch_size
    if iters_per_epoch == 0:
        raise UserError(f"{len(dataset)} images in '{root}' is fewer than one batch of {args.batch_size} x "
                        f"{info.world_size} processes: lower --batch_size")
    sampler = ResumableSampler(len(dataset), num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
    loader = build_loader(dataset, args.batch_size, sampler, args.workers, drop_last=True)
    loader.generator = torch.Generator().manual_seed(seed)  # worker seeds do not touch the global RNG
    loader = device_loader(loader, transform, info.device, seed=seed, rank=info.rank, channels_last=args.channels_last)
    return loader, sampler, dataset, iters_per_epoch


# ==== model and optimizer ====
def wrap_model(model, args, info):
    """SyncBN (CUDA, ``--sync_bn``), move to the device (channels-last with ``--channels-last``), DDP when
    distributed, ``torch.compile`` with ``--compile``.

    Returns: (model, ddp_model): the module whose state is saved, and what the step calls (the same module
    without a process group or compilation).
    """
    model = convert_sync_bn(model, args.sync_bn, args.syncbn_process_group_size, info).to(info.device)
    model = to_channels_last(model, args.channels_last)
    step_model = model
    if info.distributed:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        step_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return model, maybe_compile(step_model, args.compile, info.rank)


def build_optimizer(model, args, iters_per_epoch):
    """SGD(momentum 0.9, wd) on ALL parameters wrapped in LARC(eta 1e-3, no clipping), and the lr of every
    iteration: linear warmup from ``--start_warmup`` then cosine to ``--final_lr`` (spec A.7).

    Returns: (optimizer, lr_schedule array of length epochs * iters_per_epoch).
    """
    sgd = torch.optim.SGD(model.parameters(), lr=args.base_lr, momentum=0.9, weight_decay=args.wd,
                          **fused_kwargs(next(model.parameters()).device))
    optimizer = LARC(sgd, trust_coefficient=0.001, clip=False, eps=1e-8)
    schedule = cosine_schedule(args.base_lr, args.final_lr, args.epochs, iters_per_epoch,
                               warmup_epochs=args.warmup_epochs, start_warmup_value=args.start_warmup)
    return optimizer, schedule


# ==== checkpoints ====
def numbered_copy(epoch, epochs, checkpoint_freq):
    """The reference's rule for ``checkpoints/ckp-{epoch}.pth`` (``epoch`` 0-based, just finished): a copy when
    ``epoch % checkpoint_freq == 0`` or at the last epoch. Returns: the file name, or False."""
    keep = epoch == epochs - 1 or (checkpoint_freq > 0 and epoch % checkpoint_freq == 0)
    return f"checkpoints/ckp-{epoch}.pth" if keep else False


def log_model(model, args, info, n_images, iters_per_epoch, extra=""):
    """One line on rank 0 describing the run."""
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    crops = " + ".join(f"{n}x{s}" for n, s in zip(args.nmb_crops, args.size_crops))
    print_rank0(f"=> {args.arch} ({n_params:.1f}M parameters): {n_images} images, {iters_per_epoch} iterations/epoch, "
                f"batch {args.batch_size} x {info.world_size} processes, crops {crops}{extra}", rank=info.rank)
