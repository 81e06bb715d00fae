#!/usr/bin/env python
"""Semi-supervised evaluation: fine-tune the whole network on 1% or 10% of ImageNet's labels (SwAV ``eval_semisup.py``,
facebookresearch/swav; the subsets are SimCLR's, google-research/simclr ``imagenet_subsets/``).

The labelled images are the lines of ``--labels_file`` (default: ``data_lists/imagenet_{1,10}percent.txt`` shipped
with this repository, 12,811 / 128,116 names; nothing is downloaded), each ``n01440764_10026.JPEG`` read from
``DATA/train/n01440764/`` and labelled with its folder's index among all class folders of ``DATA/train`` (ImageFolder's
order); every image of the list must be there (else one line naming how many are missing and the first few). The
network is the pretrained trunk followed by one ``Linear(D, classes)`` head (PyTorch's default init, as SwAV's
``resnet50(output_dim=1000)`` projection head), all of it trained in train mode (SyncBatchNorm across the processes
on CUDA). SGD, momentum 0.9, weight decay 0, two parameter groups: the trunk at ``--lr``, the head at
``--lr_last_layer``; both multiplied by ``--gamma 0.2`` at epochs 12 and 16 (MultiStepLR), 20 epochs, batch 32 PER
PROCESS (SwAV's 8 GPUs: 256). Train: RandomResizedCrop(224) + flip; test: Resize(256) + CenterCrop(224) of
``DATA/val``; ImageNet mean, std 0.228 0.224 0.225 (SwAV's).

    --labels_perc   --lr   --lr_last_layer   (SwAV README; its argparse defaults are the 10% values)
    10              0.01   0.2
    1               0.02   5

Every epoch prints SwAV's ``Test: Time .. Loss .. Acc@1 .. Best Acc@1 so far ..`` and `` * Acc@1 .. Acc@5 ..``; the
end writes DUMP_PATH/eval_semisup.json, then prints SwAV's ``Fine-tuning with 10% of labels completed.`` /
``Test accuracies: top-1 .., top-5 ..`` (the epoch of best top-1) and the best and last epochs. Runs resume from
DUMP_PATH/checkpoint.pth.tar (same pretrained weights and the same labelled images only).

    # CPU smoke run: a small ImageNet-style folder with its own list, the tiny ResNet at 32 px
    python eval_semisup.py --data_path data/mini --labels_file data/mini/list.txt -a resnet_tiny --cifar_stem \
        --resize 32 --crop_size 32 --batch_size 8 --workers 0 --epochs 2 --dump_path runs/semisup_cpu
    # one GPU, 1% of the labels
    python eval_semisup.py --data_path /datasets/imagenet --pretrained swav_800ep_pretrain.pth.tar --labels_perc 1
    # 8 GPUs (torch.distributed.launch as in SwAV's README, or torchrun / srun / --multiprocessing-distributed)
    python -m torch.distributed.launch --nproc_per_node=8 eval_semisup.py --data_path /datasets/imagenet \
        --pretrained swav_800ep_pretrain.pth.tar --labels_perc 10 --lr 0.01 --lr_last_layer 0.2
"""
import argparse
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from src.augment.image import test_transform, train_transform
from src.data.folders import ResumableSampler, SafeImageFolder, build_loader
from src.data.subsets import LabelledSubset, read_list
from src.evaluation.classifier import evaluate
from src.evaluation.hashes import content_hash
from src.evaluation.pretrained import add_pretrained_args, build_trunk
from src.evaluation.results import Results
from src.evaluation.samplers import ShardSampler
from src.metrics import topk_rates
from src.optim import moco_lr_schedule
from src.run import dist
from src.run.args import (MOMENTUM, NONNEG, NONNEG_INT, POSITIVE, POSITIVE_INT, ArgumentParser, add_arg, add_run_args,
                          amp_dtype, autocast_dtype)
from src.run.checkpoint import atomic_write
from src.run.errors import UserError
from src.run.launch import cli_main, launch
from src.run.logging import print_rank0
from src.run.loop import Flags, Run
from src.run.speed import autocast

LISTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data_lists")
# SwAV README commands; its argparse defaults (0.01 / 0.2) are the 10% ones
RECIPES = {"10": dict(lr=0.01, lr_last_layer=0.2), "1": dict(lr=0.02, lr_last_layer=5.0)}
NORM_STD = (0.228, 0.224, 0.225)  # SwAV's eval scripts (torchvision's is 0.229)


def get_args_parser(add_help=False):
    parser = ArgumentParser("Semi-supervised evaluation", add_help=add_help)
    parser.add_argument("data", nargs="?", default=None, metavar="DIR",
                        help="ImageNet folder holding train/ and val/, one subfolder per class (or --data_path)")
    g = parser.add_argument_group("main")
    add_arg(g, "--labels_perc", default="10", choices=["1", "10"],
            help="fine-tune on 1%% or 10%% of the labels: picks the default --labels_file and --lr / "
                 "--lr_last_layer (10)")
    add_arg(g, "--labels_file", default="",
            help="list of the labelled training images, one name like n01440764_10026.JPEG per line (default: "
                 "data_lists/imagenet_<labels_perc>percent.txt, SimCLR's subsets)")
    add_arg(g, "--data_path", default=None, help="SwAV spelling of DIR")
    add_arg(g, "--seed", default=31, type=int, help="seed of the head init, sampling, augmentation, random trunk (31)")
    add_arg(g, "-j", "--workers", default=10, type=NONNEG_INT, help="data loading workers per process (10)")
    g = parser.add_argument_group("model")
    add_pretrained_args(g, snake=True)
    g = parser.add_argument_group("optim (unset learning rates: SwAV's values for --labels_perc)")
    add_arg(g, "--epochs", default=20, type=POSITIVE_INT, help="fine-tuning epochs (20)")
    add_arg(g, "--batch_size", default=32, type=POSITIVE_INT,
            help="images per process and step, as in SwAV (32; x8 GPUs = 256)")
    add_arg(g, "--lr", default=None, type=POSITIVE, help="initial learning rate of the trunk (10%%: 0.01, 1%%: 0.02)")
    add_arg(g, "--lr_last_layer", default=None, type=POSITIVE,
            help="initial learning rate of the head (10%%: 0.2, 1%%: 5)")
    add_arg(g, "--decay_epochs", default=[12, 16], type=NONNEG_INT, nargs="+",
            help="epochs at which both learning rates are multiplied by --gamma (12 16)")
    add_arg(g, "--gamma", default=0.2, type=POSITIVE, help="learning-rate decay factor (0.2)")
    add_arg(g, "--momentum", default=0.9, type=MOMENTUM, help="SGD momentum (0.9)")
    add_arg(g, "--wd", "--weight_decay", default=0.0, type=NONNEG, dest="weight_decay", help="weight decay (0)")
    g = parser.add_argument_group("images")
    add_arg(g, "--crop_size", default=224, type=POSITIVE_INT,
            help="train crop and test centre crop side in px (224; 32-64 for CPU smoke runs)")
    add_arg(g, "--resize", default=256, type=POSITIVE_INT,
            help="test images: shorter side before the centre crop (256)")
    add_run_args(parser, ("--dump_path", "--output_dir"), "where checkpoint.pth.tar, eval_semisup.json, args.json and "
                 "log.txt go", print_freq=50, short_print=True)
    return parser


# ==================================================================================================
@cli_main
def main(args):
    fill_recipe(args)
    for split in ("train", "val"):  # before processes start, so a typo gives one error line, not one per process
        if not os.path.isdir(os.path.join(args.data, split)):
            raise UserError(f"data folder '{os.path.join(args.data, split)}' does not exist: pass the ImageNet folder "
                            "that holds train/ and val/, one subfolder per class (--data_path)")
    read_list(args.labels_file)  # a malformed list is one line now; its images are checked by every process
    return launch(train, args)


def fill_recipe(args):
    """The dataset folder, the list and the learning rates left unset, from ``--labels_perc`` (idempotent)."""
    args.data = args.data or args.data_path
    if not args.data:
        raise UserError("no dataset given: pass DIR (or --data_path DIR) holding train/ and val/")
    recipe = RECIPES[args.labels_perc]
    args.lr = recipe["lr"] if args.lr is None else args.lr
    args.lr_last_layer = recipe["lr_last_layer"] if args.lr_last_layer is None else args.lr_last_layer
    args.labels_file = args.labels_file or os.path.join(LISTS, f"imagenet_{args.labels_perc}percent.txt")


FLAGS = Flags(output="--dump_path", lr="--lr / --lr_last_layer", max_iters="--max_iters")
# flags a resume may change: those whose effect a require() below checks by content, with its own message (the
# pretrained weights, the labelled images)
SAFE = ("pretrained", "arch", "cifar_stem", "trunk_pattern", "labels_file", "labels_perc")


def train(args, info):
    """Fine-tune and test; returns the :class:`Results` summary dict (None when stopped early)."""
    autocast_dtype(args, info.device, info.rank)  # fp16 without CUDA: fp32 with one warning line; amp_dtype() agrees
    run = Run(info, args, script="eval_semisup.py", flags=FLAGS, safe=SAFE)
    args.seed = run.seed  # a resumed run keeps its checkpoint's seed
    parts = build(args, info)

    # ==== resuming: only from the same pretrained weights and the same labelled images ====
    run.require("pretrained_sha256", parts.trunk_hash, "--pretrained (its weights)")
    run.require("labels_sha256", parts.train_set.digest, "--labels_file / --labels_perc (the labelled images)")
    run.track(state_dict=parts.net, optimizer=parts.optimizer, scaler=parts.scaler, results=parts.results)

    # ==== fine-tuning ====
    run.start(parts.iters_per_epoch, args.batch_size * info.world_size, scaled=parts.scaler.is_enabled(),
              formats={"Loss": ".4f", "Acc@1": "6.2f", "Acc@5": "6.2f", "lr_head": ".5f"})
    for epoch in run.epochs():
        parts.sampler.set_epoch(epoch, start_index=run.start_iter * args.batch_size)
        parts.train_set.set_epoch(epoch)
        if not run.steps(train_one_epoch(parts, parts.loader, run, epoch)):
            return None  # stopped (signal, --max_iters): checkpoint saved
        run.check()  # a diverged network is an error line, not a test score
        tested = []  # the test's log row follows the epoch's, as the epoch's averages are logged by end_epoch
        test(parts, info, epoch, tested.append)
        run.end_epoch()
        run.write_log(tested[0])
    parts.finished = run.finished
    return report(args, parts.results, parts.train_set, info.rank) if run.finished else None


@dataclass
class Parts:
    """What a semi-supervised fine-tuning trains with (:func:`build`); :func:`step` reads it."""

    args: argparse.Namespace
    device: torch.device
    net: nn.Module  # FineTuneNet: the trunk and the Linear head, all trained (what a checkpoint holds)
    model: nn.Module  # the network the step calls (DDP-wrapped under a process group)
    optimizer: torch.optim.Optimizer  # two groups: trunk, head
    scaler: torch.amp.GradScaler
    lr_schedules: list  # [trunk, head]: one lr per global step each
    amp: object  # autocast dtype (None: fp32)
    loader: object
    sampler: object
    train_set: object  # the labelled subset
    val_loader: object
    iters_per_epoch: int
    trunk_hash: str  # content hash of the pretrained weights this run started from
    results: Results  # every test, best and last
    finished: bool = False  # set by train(): every epoch done

    def trunks(self):
        """The trunk an evaluation of the run reads (as fine-tuned)."""
        return {"online": self.net.trunk}


def build(args, info):
    """Data (the labelled subset and the val set), the network, its optimizer, scaler and lr schedules, from the flags.
    ``args.seed`` seeds the head (the same on every rank), the data order, the augmentations and a random trunk."""
    device, rank = info.device, info.rank
    dist.seed_everything(args.seed, 0)
    print_rank0(f"semi-supervised fine-tuning, {args.labels_perc}% labels: lr {args.lr:g} trunk / "
                f"{args.lr_last_layer:g} head, x{args.gamma:g} at epochs {' '.join(map(str, args.decay_epochs))}, "
                f"{args.epochs} epochs, batch {args.batch_size} x {info.world_size} processes, momentum "
                f"{args.momentum:g}, wd {args.weight_decay:g}", rank=rank)

    # ==== preparing data ====
    train_set, val_set = build_datasets(args, args.seed)
    print_rank0(f"data: {len(train_set)} labelled train images from '{args.labels_file}' "
                f"({len({t for t in train_set.targets})} classes) / {len(val_set)} val images, "
                f"{len(train_set.classes)} classes", rank=rank)
    sampler = ResumableSampler(len(train_set), info.world_size, rank, shuffle=True, seed=args.seed)
    loader = build_loader(train_set, args.batch_size, sampler, args.workers, drop_last=False)
    val_loader = build_loader(val_set, args.batch_size, ShardSampler(len(val_set), info.world_size, rank),
                              args.workers, drop_last=False)
    iters_per_epoch = math.ceil(sampler.num_samples / args.batch_size)

    # ==== building the network: trunk -> Linear head, all trained ====
    net = build_model(args, device, len(train_set.classes), args.seed, info)
    trunk_hash = content_hash(net.trunk)  # the pretrained weights this run started from
    model = nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None) if info.distributed else net
    optimizer = build_optimizer(net, args)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(args) == torch.float16)
    # MultiStepLR stepped once per epoch, as one value per iteration: [trunk group, head group]
    schedules = [moco_lr_schedule(base, args.epochs, iters_per_epoch, milestones=args.decay_epochs, gamma=args.gamma)
                 for base in (args.lr, args.lr_last_layer)]
    return Parts(args, device, net, model, optimizer, scaler, schedules, amp_dtype(args), loader, sampler, train_set,
                 val_loader, iters_per_epoch, trunk_hash, Results())


def train_one_epoch(parts, loader, run, epoch):
    """One epoch of fine-tuning; yields ``(iteration, stats)`` after each step. The whole network is in train mode
    (BatchNorm statistics update), set at every epoch since testing switched it to eval mode."""
    parts.model.train()
    for it, batch in run.batches(loader):
        yield it, step(parts, batch, epoch * parts.iters_per_epoch + it)


def step(parts, batch, it):
    """One SGD step of the whole network on a batch ``(images, labels)`` at global step ``it``; the learning rate of
    parameter group ``g`` (trunk, head) is ``parts.lr_schedules[g][it]``. Returns: the step's stats (``Loss``,
    accuracies, ``lr_head``, and ``lr``: the trunk's)."""
    device, optimizer = parts.device, parts.optimizer
    for group, schedule in zip(optimizer.param_groups, parts.lr_schedules):
        group["lr"] = float(schedule[it])
    images, target = (t.to(device, non_blocking=True) for t in batch)
    with autocast(device, parts.amp):
        logits = parts.model(images).float()  # (B, C)
    loss = F.cross_entropy(logits, target)
    optimizer.zero_grad(set_to_none=True)
    parts.scaler.scale(loss).backward()
    parts.scaler.step(optimizer)
    parts.scaler.update()
    return {"Loss": loss.detach(), **topk_rates(logits, target), "lr_head": optimizer.param_groups[1]["lr"],
            "lr": optimizer.param_groups[0]["lr"]}


# ==================================================================================================
def build_datasets(args, seed):
    """The labelled subset of ``DATA/train`` (train transform, seeded per sample) and ``DATA/val`` (test transform)."""
    try:  # every process sees the same files: the same error everywhere, said once
        names = read_list(args.labels_file)
        train_set = LabelledSubset(os.path.join(args.data, "train"), names,
                                   train_transform(args.crop_size, (0.08, 1.0), NORM_STD), seed=seed,
                                   source=f"--labels_file '{args.labels_file}'")
        val_set = SafeImageFolder(os.path.join(args.data, "val"),
                                  test_transform(args.resize, args.crop_size, NORM_STD), skip_unreadable=True)
    except UserError as exc:
        exc.collective = True
        raise
    if train_set.classes != val_set.classes:
        raise UserError(f"train/ and val/ of '{args.data}' have different class folders ({len(train_set.classes)} "
                        f"vs {len(val_set.classes)}): labels would not match", collective=True)
    return train_set, val_set


class FineTuneNet(nn.Module):
    """``head(trunk(x))``: (B, 3, H, W) -> (B, C) logits. State-dict keys ``trunk.*`` and ``head.*``, so the
    fine-tuned trunk can be given back to any evaluation as ``--pretrained`` (its ``trunk.`` prefix is found)."""

    def __init__(self, trunk, head):
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, x):
        return self.head(self.trunk(x))


def build_model(args, device, num_classes, seed, info):
    """Pretrained trunk (arch / stem from the checkpoint unless given) and a ``Linear(D, C)`` head, on ``device``;
    SyncBatchNorm when several CUDA processes train (gloo on a CPU cannot sync BN: each process keeps its own)."""
    trunk, args.arch, args.cifar_stem = build_trunk(
        args.pretrained, args.arch, args.cifar_stem, args.trunk_pattern, args.trust_checkpoint, seed,
        image_size=args.crop_size, log=lambda line: print_rank0(line, rank=info.rank))
    trunk = trunk.to(device)
    with torch.no_grad():
        dim = trunk.eval()(torch.zeros(1, 3, args.crop_size, args.crop_size, device=device)).shape[1]
    dist.seed_everything(seed, 0)  # the same head on every rank
    net = FineTuneNet(trunk, nn.Linear(dim, num_classes)).to(device)  # PyTorch's default init, as SwAV's head
    if info.distributed and device.type == "cuda":
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return net


def build_optimizer(net, args):
    """SGD with SwAV's two parameter groups: the trunk at ``--lr``, the head at ``--lr_last_layer``. (SwAV picks the
    head as the parameters whose name contains "head"; here it is the head module, so a trunk with a "head" in a
    parameter name stays in the trunk group.) Parameters a trunk keeps frozen (deit_tiny's patch projection) stay
    out."""
    return torch.optim.SGD([{"params": [p for p in net.trunk.parameters() if p.requires_grad]},
                            {"params": list(net.head.parameters()), "lr": args.lr_last_layer}],
                           lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def test(parts, info, epoch, log):
    """Test in eval mode, print SwAV's and MoCo's lines and ``log`` the numbers."""
    net, results = parts.net, parts.results
    net.eval()
    res = evaluate(net.head, parts.val_loader, info.device, features=net.trunk, amp_dtype=parts.amp)
    results.add(epoch, res)
    if info.rank == 0:
        print(f"Test:\tTime {res['seconds'] / max(len(parts.val_loader), 1):.3f}\tLoss {res['loss']:.4f}\t"
              f"Acc@1 {res['top1']:.3f}\tBest Acc@1 so far {results.best['top1']:.1f}\t({res['n']} images, "
              f"{res['n'] / max(res['seconds'], 1e-9):.1f} img/s)", flush=True)
        print(f" * Acc@1 {res['top1']:.3f} Acc@5 {res['top5']:.3f}", flush=True)
        if res["skipped"]:
            print(f"skipped {res['skipped']} unreadable test images (warnings above): the accuracies are over the "
                  "rest", flush=True)
    log({"type": "test", "epoch": epoch, **res})


def report(args, results, train_set, rank):
    """DUMP_PATH/eval_semisup.json, then the final lines (rank 0); returns the summary dict."""
    summary = {**results.summary(), "labels_perc": args.labels_perc, "labels_file": args.labels_file,
               "labelled_images": len(train_set), "labels_sha256": train_set.digest, "pretrained": args.pretrained,
               "arch": args.arch, "args": vars(args)}
    if rank == 0 and results.best is not None:
        out = os.path.join(args.dump_path, "eval_semisup.json")
        atomic_write(out, lambda f: f.write(json.dumps(summary, indent=2).encode()), "--dump_path")
        print(f"Fine-tuning with {args.labels_perc}% of labels completed.", flush=True)
        print(f"Test accuracies: top-1 {results.best['top1']:.1f}, top-5 {results.best['top5']:.1f}", flush=True)
        print(results.final_line(), flush=True)
        print(f"results written to {out}", flush=True)
    return summary


if __name__ == "__main__":
    main(ArgumentParser("Semi-supervised evaluation", parents=[get_args_parser()]).parse_args())
