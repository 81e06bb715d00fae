"""The SwAV family's flags (``main_swav.py``, ``main_deepclusterv2.py``): facebookresearch/swav's names and defaults,
the numbered copies its scripts keep, and the checks of the multi-crop flags."""
from src.run.args import NONNEG, NONNEG_INT, POSITIVE, POSITIVE_INT, add_arg, add_run_args, bool_flag, number
from src.run.errors import UserError


def blur_scale_arg(text):
    """``--blur_scale``: a positive number, or ``relative`` (``src.augment.views.resolve_blur_scale``)."""
    if text == "relative":
        return text
    value = number(float, low=0, low_open=True)(text)
    return value


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
            help="PIL Gaussian blur (true, the current reference); false: the fixed 23x23-kernel blur that "
                 "trained the released checkpoints (same sigma range 0.1-2 and p 0.5)")
    add_arg(g, "--blur_scale", default="1", type=blur_scale_arg,
            help="multiplies the blur radius range 0.1-2 px (and the fixed kernel): 1 as the official scripts, at "
                 "every crop size (default); 'relative' scales it by size_crops[0] / 224, for small (CPU) crops")
    add_arg(g, "--workers", default=10, type=NONNEG_INT, help="data loading workers per process (10 per GPU)")
    return g


def add_swav_optim_args(parser, freeze_default, freeze_help):
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


def add_swav_run_args(parser, archs, checkpoint_freq=25):
    """Model, output and checkpoint flags (official) plus ours (``--cifar_stem``, ``--print_freq``,
    ``--max_iters``, ``--save_every_iters``, ``--resume``); ``archs``: the trunk names for the help."""
    g = parser.add_argument_group("model")
    add_arg(g, "--arch", default="resnet50", type=str, help=f"trunk: {', '.join(archs)}")
    add_arg(g, "--hidden_mlp", default=2048, type=NONNEG_INT,
            help="hidden width of the projection head (2048; 8192 for resnet50w2/w4; 0: a single Linear)")
    add_arg(g, "--cifar_stem", action="store_true", help="ResNet 3x3 stride-1 stem, for 32-96 px images (not ImageNet)")
    add_arg(g, "--sync_bn", default="pytorch", type=str,
            help="pytorch: SyncBatchNorm over all processes; apex: over groups of --syncbn_process_group_size "
                 "ranks (torch's SyncBatchNorm, no apex needed); anything else: per-process BN. CUDA only")
    add_arg(g, "--syncbn_process_group_size", default=8, type=POSITIVE_INT,
            help="ranks per BN group with --sync_bn apex (8)")
    add_arg(g, "--seed", default=31, type=int, help="seed for init, sampling and augmentation (31)")
    g = add_run_args(parser, ("--dump_path", "--output_dir"), "experiment folder: checkpoint.pth.tar, "
                     "checkpoints/ckp-E.pth, trunk.pth, args.json, log.txt, per-rank files", print_freq=50)
    add_arg(g, "--checkpoint_freq", default=checkpoint_freq, type=NONNEG_INT,
            help="copy the checkpoint to checkpoints/ckp-E.pth every N epochs and at the last one (25; 0: last only)")
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


def copy_name(epoch, epochs, checkpoint_freq):
    """facebookresearch/swav's numbered copies: ``checkpoints/ckp-{epoch}.pth`` (``epoch`` 0-based, just finished)
    when ``epoch % checkpoint_freq == 0`` or at the last epoch. Returns: the file name, or False."""
    keep = epoch == epochs - 1 or (checkpoint_freq > 0 and epoch % checkpoint_freq == 0)
    return f"checkpoints/ckp-{epoch}.pth" if keep else False
