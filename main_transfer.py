#!/usr/bin/env python
"""Transfer to CIFAR-10/100, Caltech-101 or any train/ + test/ image folders (SSL-small ``main_transfer.py``).

Linear (default): the pretrained trunk is frozen and kept in eval mode; its features are L2-normalised and fed
to ``fc = Linear(D, C)`` (init N(0, 0.01), bias 0), the only trained parameters. ``--finetune``: the whole
network trains, in train mode (BatchNorm statistics update), switched to eval mode for each test and back to
train mode after it (the reference never switches back, so from its second epoch it fine-tunes with frozen BN
statistics). SGD, momentum 0.9, lr multiplied by 0.1 (linear) or 0.2 (fine-tune) at each --schedule epoch.

Data (nothing is downloaded): CIFAR from the python-version folders ``DIR/cifar-10-batches-py`` or
``DIR/cifar-100-python``; Caltech-101 and any other set as ``DIR/train`` and ``DIR/test`` class folders (Caltech-101
has no official split: make one). Train: RandomResizedCrop(224, scale 0.6-1 linear / 0.2-1 fine-tune, bicubic) +
flip; test: CIFAR Resize(224), folders Resize(256) + CenterCrop(224), bicubic; ImageNet normalisation.

Defaults are the published runs' commands (SSL-small tools/transfer*.sh), not the script's argparse defaults
(lr 30, 100 epochs, steps 60 80, MoCo's main_lincls values, which the runs override):
    linear:    lr 1.5 (CIFAR) / 2 (Caltech-101 and folders), 60 epochs, step at 40, batch 256
    fine-tune: lr 0.01, 100 epochs, steps at 40 and 70, batch 256
Each test prints `` * Acc@1 xx.xxx Acc@5 xx.xxx`` (MoCo format); the end prints the best and last epochs and
writes them to OUTPUT_DIR/transfer.json. Runs resume from OUTPUT_DIR/checkpoint.pth.tar. A diverged training is an
error line, never a score: a NaN/inf loss, or an epoch whose mean training loss is over 100 x ln(classes) (finite
but far above the ln(classes) of a uniform guess: an lr far too high). A dataset with one class is refused.

    # CPU smoke run on CIFAR-10 at its native 32 px with a main_moco.py checkpoint
    python main_transfer.py /datasets --dataset cifar10 --pretrained runs/moco/checkpoint.pth.tar \
        --crop-size 32 --epochs 2 -b 128 -j 2 --output-dir runs/transfer_c10
    # one GPU, linear transfer of a MoCo v2 ResNet-50 to CIFAR-100
    python main_transfer.py /datasets --dataset cifar100 -a resnet50 --pretrained moco_v2_800ep_pretrain.pth.tar
    # fine-tuning on Caltech-101 (train/ and test/ folders), 4 GPUs
    torchrun --nproc_per_node=4 main_transfer.py /datasets/caltech101 --dataset caltech101 \
        --pretrained ckpt.pth.tar --finetune --output-dir runs/caltech_ft

Video (docs/video.md): ``--modality video --finetune`` fine-tunes an R3D from ``main_sce.py --modality video`` on
UCF101 or HMDB51 with their official split files: head Dropout(0.8) -> Linear, SGD lr 0.1 x batch/256 (0.025 at 64),
wd 0, cosine per iteration without warmup, 200 epochs, 1 random clip (short side 256-320, crop 224, colour jitter,
grey, flip) to train, 10 clips x 3 crops of 256 px with averaged softmax to test (scripts/video_finetune_*.sh):
    torchrun --nproc_per_node=8 main_transfer.py /datasets/UCF-101 --modality video --dataset ucf101 --finetune \
        --splits_dir /datasets/ucfTrainTestlist --split_id 1 --pretrained runs/video_sce_r3d50/checkpoint.pth.tar
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
from src.data.cifar import CifarPickleDataset, find_cifar_folder
from src.data.folders import ResumableSampler, SafeImageFolder, build_loader
from src.evaluation.classifier import LinearClassifier, check_classes, evaluate
from src.evaluation.hashes import content_hash, fingerprint
from src.evaluation.pretrained import add_pretrained_args, build_trunk
from src.evaluation.results import Results
from src.evaluation.samplers import ShardSampler
from src.evaluation.video import VideoEval, add_video_eval_args, eval_samples, eval_sets
from src.metrics import topk_rates
from src.optim import cosine_schedule, moco_lr_schedule, set_lr
from src.run import dist
from src.run.args import (MOMENTUM, NONNEG, NONNEG_INT, POSITIVE_INT, ArgumentParser, add_arg, add_run_args, amp_dtype,
                          autocast_dtype)
from src.run.checkpoint import save_checkpoint
from src.run.errors import UserError
from src.run.launch import cli_main, launch
from src.run.logging import print_rank0
from src.run.loop import Flags, Run
from src.run.speed import autocast

DATASETS = ("cifar10", "cifar100", "caltech101", "folder", "ucf101", "hmdb51")  # the last two: --modality video
# the published commands (SSL-small tools/transfer.sh, transfer_cal101.sh, transfer_finetune.sh)
RECIPES = {"linear": dict(epochs=60, schedule=[40], gamma=0.1, lr={"cifar10": 1.5, "cifar100": 1.5}, lr_other=2.0,
                          min_scale=0.6),
           "finetune": dict(epochs=100, schedule=[40, 70], gamma=0.2, lr={}, lr_other=0.01, min_scale=0.2),
           # docs/video.md (eztorch run/finetuning/resnet3d*): lr 0.1 x batch / 256, cosine per iteration, batch 64
           "video_finetune": dict(epochs=200, schedule=[], gamma=1.0, lr={}, lr_other=None, min_scale=0.2)}


def get_args_parser(add_help=False):
    parser = ArgumentParser("Transfer evaluation", add_help=add_help)
    parser.add_argument("data", metavar="DIR",
                        help="CIFAR: the folder holding cifar-10-batches-py / cifar-100-python; otherwise the folder "
                             "holding train/ and test/ (or val/) class folders")
    g = parser.add_argument_group("data")
    add_arg(g, "--dataset", default="cifar10", choices=DATASETS,
            help="cifar10 | cifar100 (python pickles) | caltech101 | folder (train/ + test/ image folders)")
    add_arg(g, "--crop-size", default=224, type=POSITIVE_INT,
            help="train crop and test side in px (224; CIFAR's native 32 for quick CPU runs)")
    add_arg(g, "--resize", default=256, type=POSITIVE_INT, help="image folders: test shorter side before the centre crop (256)")
    add_arg(g, "-j", "--workers", default=32, type=NONNEG_INT, help="data loading workers per node, split over processes (32)")
    g = parser.add_argument_group("trunk")
    add_pretrained_args(g)
    add_arg(g, "--seed", default=0, type=int, help="seed of the head, sampling, augmentation and a random trunk (0)")
    g = parser.add_argument_group("training (unset values: the published recipe of the mode)")
    add_arg(g, "--finetune", action="store_true",
            help="train the whole network in train mode (default: linear on frozen, L2-normalised features)")
    add_arg(g, "--epochs", default=None, type=POSITIVE_INT, help="epochs (linear 60, fine-tune 100)")
    add_arg(g, "-b", "--batch-size", default=None, type=POSITIVE_INT,
            help="TOTAL batch over all processes (256; video fine-tuning 64)")
    add_arg(g, "--lr", "--learning-rate", default=None, type=float, dest="lr",
            help="initial lr (linear: 1.5 CIFAR, 2 Caltech-101 / folders; fine-tune 0.01). An lr so high that an "
                 "epoch's mean training loss exceeds 100 x ln(classes) (a uniform guess scores ln(classes)) ends "
                 "the run with an error line instead of a score, as a NaN loss does")
    add_arg(g, "--schedule", default=None, type=int, nargs="*",
            help="epochs where the lr drops x0.1 (linear) / x0.2 (fine-tune) (linear 40; fine-tune 40 70)")
    add_arg(g, "--momentum", default=0.9, type=MOMENTUM, help="SGD momentum (0.9)")
    add_arg(g, "--wd", "--weight-decay", default=0.0, type=NONNEG, dest="weight_decay", help="weight decay (0)")
    add_run_args(parser, ("--output-dir",), "checkpoint.pth.tar, model_best.pth.tar, transfer.json, log.txt", dash=True,
                 short_print=True, evaluate="only test the network of the resumed checkpoint")
    add_video_eval_args(parser)
    return parser


# ==================================================================================================
@cli_main
def main(args):
    fill_recipe(args)
    if args.modality == "video":  # before processes start, so a wrong path gives one error line, not one per process
        eval_samples(VideoEval.from_flags(args), args.data)
        return launch(train, args)
    find_test_split(args)  # before processes start, so a wrong path gives one error line, not one per process
    return launch(train, args)


def fill_recipe(args):
    """Unset --epochs / --lr / --schedule from the published recipe of the mode; check values (idempotent)."""
    video = args.modality == "video"
    if video and not args.finetune:
        raise UserError("--modality video is the fine-tuning protocol (add --finetune); for a linear evaluation on "
                        "frozen video features run eval_linear.py --modality video")
    if (args.dataset in ("ucf101", "hmdb51")) != video and not (video and args.dataset == "folder"):
        raise UserError(f"--dataset {args.dataset} with --modality {args.modality}: video datasets are ucf101, hmdb51 "
                        "or folder (train/ and test/ class folders of videos), with --modality video")
    recipe = RECIPES["video_finetune" if video else "finetune" if args.finetune else "linear"]
    args.batch_size = (64 if video else 256) if args.batch_size is None else args.batch_size
    if video and args.lr is None:
        args.lr = 0.1 * args.batch_size / 256
    args.epochs = recipe["epochs"] if args.epochs is None else args.epochs
    args.schedule = list(recipe["schedule"]) if args.schedule is None else args.schedule
    args.lr = recipe["lr"].get(args.dataset, recipe["lr_other"]) if args.lr is None else args.lr
    args.gamma, args.min_scale = recipe["gamma"], recipe["min_scale"]
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or args.crop_size < 1:
        raise UserError(f"need --epochs, -b/--batch-size, --crop-size >= 1 and --lr > 0, got {args.epochs}, "
                        f"{args.batch_size}, {args.crop_size}, {args.lr}")


FLAGS = Flags(output="--output-dir", lr="--lr", max_iters="--max-iters")
# flags a resume may change: those whose effect a require() below checks by content, with its own message (the
# pretrained weights, the dataset, the mode), and the test's batching
SAFE = ("pretrained", "arch", "cifar_stem", "trunk_pattern", "dataset", "finetune", "test_videos_per_batch")
# A classifier that guesses uniformly has a loss of ln(C); an epoch whose mean training loss is DIVERGED times that
# means confidently wrong answers throughout: training diverged (an lr far too high), even when the loss is finite
DIVERGED = 100


def train(args, info):
    """Train and test; returns the :class:`Results` summary dict (None when stopped early)."""
    autocast_dtype(args, info.device, info.rank)  # fp16 without CUDA: fp32 with one warning line; amp_dtype() agrees
    dist.split_batch(args.batch_size, info.world_size)  # refused before the folder is touched
    # -e only tests the saved network: training flags do not matter and test flags (sizes, views) are this test's
    # choice, so any difference is allowed (the warning lists them); the require() checks below still hold
    safe = tuple(vars(args)) if args.evaluate else SAFE
    run = Run(info, args, script="main_transfer.py", flags=FLAGS, safe=safe,
              must_resume="-e/--evaluate needs a trained network" if args.evaluate else None)
    args.seed = run.seed  # a resumed run keeps its checkpoint's seed
    parts = build(args, info)

    # ==== resuming and saving: only from the same pretrained weights, dataset and mode ====
    run.require("pretrained_sha256", parts.trunk_hash, "--pretrained (its weights)")
    run.require("dataset", args.dataset, "--dataset")
    run.require("finetune", args.finetune, "--finetune")
    run.track(state_dict=parts.net, optimizer=parts.optimizer, scaler=parts.scaler, results=parts.results)
    if args.evaluate:
        return test(parts, info, None, run.write_log)

    # ==== training ====
    run.start(parts.iters_per_epoch, args.batch_size, scaled=parts.scaler.is_enabled(),
              formats={"Loss": ".4e", "Acc@1": "6.2f", "Acc@5": "6.2f"})
    for epoch in run.epochs():
        parts.sampler.set_epoch(epoch, start_index=run.start_iter * parts.per_rank_batch)
        parts.train_set.set_epoch(epoch)
        if not run.steps(train_one_epoch(parts, parts.loader, run, epoch)):
            return None  # stopped (signal, --max-iters): checkpoint saved
        if parts.trunk_fp is not None and not torch.equal(fingerprint(parts.trunk), parts.trunk_fp):
            raise RuntimeError("the frozen trunk changed during linear transfer (weights or BN statistics)")
        run.check()  # a NaN network is an error line, not a test score
        check_not_diverged(parts, epoch)  # nor is a finite loss far above chance
        tested = []  # the test's log row follows the epoch's, as the epoch's averages are logged by end_epoch
        is_best = test(parts, info, epoch, tested.append)
        run.end_epoch()
        run.write_log(tested[0])
        if is_best and info.rank == 0:
            save_checkpoint(os.path.join(args.output_dir, "model_best.pth.tar"),
                            {"arch": args.arch, "state_dict": parts.net.state_dict(), **parts.results.best},
                            "--output-dir")
    parts.finished = run.finished
    return report(args, parts.results, info.rank) if run.finished else None


@dataclass
class Parts:
    """What a transfer run trains with (:func:`build`); :func:`step` reads it."""

    args: argparse.Namespace
    device: torch.device
    trunk: nn.Module  # the pretrained trunk: frozen in eval mode (linear) or trained (fine-tune)
    head: nn.Module  # the classifier on its features
    net: nn.Sequential  # trunk then head: what a checkpoint holds
    model: nn.Module  # what the gradients flow through: the head (linear) or net (fine-tune), maybe DDP-wrapped
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    lr_schedule: np.ndarray  # one lr per global step
    amp: object  # autocast dtype (None: fp32)
    loader: object
    sampler: object
    train_set: object
    test_loader: object
    per_rank_batch: int
    iters_per_epoch: int
    num_classes: int
    trunk_hash: str  # content hash of the pretrained weights this run started from
    trunk_fp: object  # linear: the frozen trunk's fingerprint, checked after every epoch; fine-tune: None
    results: Results  # every test, best and last
    epoch_loss: torch.Tensor  # [sum of the step losses, steps] of the epoch so far, on the device (no host sync)
    finished: bool = False  # set by train(): every epoch done

    def trunks(self):
        """The trunk an evaluation of the run reads (linear: the pretrained one; fine-tune: as trained)."""
        return {"online": self.trunk}


def build(args, info):
    """Data, the pretrained trunk with its head, optimizer, scaler and lr schedule, from the flags. ``args.seed``
    seeds the head (the same on every rank), the data order, the augmentations and a random trunk."""
    device, rank = info.device, info.rank
    dist.seed_everything(args.seed, 0)
    per_rank_batch = dist.split_batch(args.batch_size, info.world_size)
    mode = "finetune" if args.finetune else "linear"
    lr_words = (f"lr {args.lr:g} cosine per iteration" if args.modality == "video" else
                f"lr {args.lr:g} x{args.gamma:g} at epochs {' '.join(map(str, args.schedule)) or '-'}")
    print_rank0(f"{mode} transfer to {args.dataset}: {lr_words}, {args.epochs} epochs, batch {args.batch_size} "
                f"({per_rank_batch} x {info.world_size} processes), wd {args.weight_decay:g}", rank=rank)

    # ==== preparing data ====
    train_set, test_set = build_datasets(args)
    num_classes = len(train_set.classes)
    unit = "videos" if args.modality == "video" else "images"
    print_rank0(f"data: {len(train_set)} train / {len(test_set)} test {unit}, {num_classes} classes", rank=rank)
    sampler = ResumableSampler(len(train_set), info.world_size, rank, shuffle=True, seed=args.seed)
    workers = math.ceil(args.workers / dist.local_world_size())
    loader = build_loader(train_set, per_rank_batch, sampler, workers, drop_last=False)
    test_batch = args.test_videos_per_batch if args.modality == "video" else per_rank_batch
    test_loader = build_loader(test_set, test_batch, ShardSampler(len(test_set), info.world_size, rank), workers,
                               drop_last=False)
    iters_per_epoch = math.ceil(sampler.num_samples / per_rank_batch)

    # ==== building the network: trunk -> L2-normalise -> fc ====
    trunk, head = build_model(args, device, num_classes, rank)
    trunk_hash = content_hash(trunk)  # before any fine-tuning: the pretrained weights this run started from
    net = nn.Sequential(trunk, head)
    trainable = list(net.parameters()) if args.finetune else list(head.parameters())
    model = net if args.finetune else head  # what the gradients flow through
    if info.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(trainable, args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(args) == torch.float16)
    if args.modality == "video":  # cosine per iteration to 0, no warmup (docs/video.md)
        schedule = cosine_schedule(args.lr, 0.0, args.epochs, iters_per_epoch)
    else:
        schedule = moco_lr_schedule(args.lr, args.epochs, iters_per_epoch, milestones=args.schedule, gamma=args.gamma)
    trunk_fp = None if args.finetune else fingerprint(trunk)
    return Parts(args, device, trunk, head, net, model, optimizer, scaler, schedule, amp_dtype(args), loader, sampler,
                 train_set, test_loader, per_rank_batch, iters_per_epoch, num_classes, trunk_hash, trunk_fp,
                 Results(), torch.zeros(2, dtype=torch.float64, device=device))


def train_one_epoch(parts, loader, run, epoch):
    """One epoch; yields ``(iteration, stats)`` after each step. Linear: the trunk runs frozen, in eval mode.
    Fine-tune: trunk and head are in train mode, set here at every epoch since testing switched them to eval mode."""
    parts.trunk.train(parts.args.finetune)
    parts.head.train()
    parts.epoch_loss.zero_()
    for it, batch in run.batches(loader):
        stats = step(parts, batch, epoch * parts.iters_per_epoch + it)
        parts.epoch_loss += torch.stack([stats["Loss"].double(), parts.epoch_loss.new_ones(())])
        yield it, stats


def step(parts, batch, it):
    """One SGD step on a batch ``(images, labels)`` at global step ``it``: through the frozen trunk (under no_grad)
    and the head (linear), or through both (fine-tune). Returns: the step's stats (``Loss``, accuracies, ``lr``)."""
    device = parts.device
    lr = set_lr(parts.optimizer, parts.lr_schedule[it])
    images, target = (t.to(device, non_blocking=True) for t in batch)
    with autocast(device, parts.amp):
        if parts.args.finetune:
            logits = parts.model(images).float()  # (B, C) through trunk and head
        else:
            with torch.no_grad():
                feats = parts.trunk(images)  # (B, D) frozen features
            logits = parts.model(feats.float()).float()
    loss = F.cross_entropy(logits, target)
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scaler.scale(loss).backward()
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    return {"Loss": loss.detach(), **topk_rates(logits, target), "lr": lr}


def check_not_diverged(parts, epoch):
    """Refuse to test a network whose training diverged: the epoch's mean training loss (over every rank) above
    ``DIVERGED`` x ln(classes), the loss of a uniform guess. A collective (every rank calls it).

    Raises:
        UserError: naming the loss, the bound and the learning rate."""
    total = dist.all_reduce(parts.epoch_loss.clone())  # [loss sum, steps] over the ranks
    if total[1] == 0:
        return
    mean, chance = float(total[0] / total[1]), math.log(parts.num_classes)
    if mean > DIVERGED * chance:
        raise UserError(f"training diverged in epoch {epoch}: its mean training loss {mean:.4g} is over {DIVERGED} x "
                        f"ln({parts.num_classes} classes) = {DIVERGED * chance:.4g} (a uniform guess scores "
                        f"{chance:.3g}), so no score is reported: --lr {parts.args.lr:g} is far too high; lower it "
                        "(the recipes: linear 1.5 CIFAR / 2 folders, fine-tune 0.01) and run in a new --output-dir",
                        collective=True)


# ==================================================================================================
def build_datasets(args):
    """Train set (random crops, seeded per sample) and test set of ``--dataset``.

    Raises:
        UserError: train/ and test/ have different class folders, or fewer than 2 (a classifier needs 2).
    """
    if args.modality == "video":  # 1 random clip with colour / 10 clips x 3 crops of every video (src.evaluation.video)
        train_set, test_set = eval_sets(VideoEval.from_flags(args), args.data, args.resize, args.crop_size, args.seed,
                                        finetune=True)
        check_classes(train_set.classes, args.data)
        return train_set, test_set
    train_tf = train_transform(args.crop_size, (args.min_scale, 1.0), interpolation="bicubic")
    if args.dataset.startswith("cifar"):
        test_tf = test_transform(args.crop_size, None, interpolation="bicubic")  # square 32 px images: no crop
        return (CifarPickleDataset(args.data, args.dataset, train=True, transform=train_tf, seed=args.seed),
                CifarPickleDataset(args.data, args.dataset, train=False, transform=test_tf))
    test_folder = find_test_split(args)
    train_set = SafeImageFolder(os.path.join(args.data, "train"), train_tf, seed=args.seed)
    test_set = SafeImageFolder(test_folder, test_transform(args.resize, args.crop_size, interpolation="bicubic"),
                               skip_unreadable=True)
    if train_set.classes != test_set.classes:
        raise UserError(f"train/ and {os.path.basename(test_folder)}/ of '{args.data}' have different class folders "
                        f"({len(train_set.classes)} vs {len(test_set.classes)}): labels would not match",
                        collective=True)
    check_classes(train_set.classes, os.path.join(args.data, "train"))
    return train_set, test_set


def find_test_split(args):
    """The test folder of an image-folder dataset (``test/``, else ``val/``); for CIFAR, checks its files.

    Raises:
        UserError: naming the expected files or folders.
    """
    if args.dataset.startswith("cifar"):
        return find_cifar_folder(args.data, args.dataset)
    folder = os.path.join(args.data, "test")
    if not os.path.isdir(folder) and os.path.isdir(os.path.join(args.data, "val")):
        folder = os.path.join(args.data, "val")
    if not os.path.isdir(os.path.join(args.data, "train")) or not os.path.isdir(folder):
        raise UserError(f"--dataset {args.dataset} reads '{args.data}/train' and '{args.data}/test' (one folder per "
                        "class; Caltech-101 has no official split, so make one): at least one is missing")
    return folder


def build_model(args, device, num_classes, rank):
    """Pretrained trunk (arch / stem from the checkpoint unless given) and the normalised linear head, on device."""
    trunk, args.arch, args.cifar_stem = build_trunk(
        args.pretrained, args.arch, args.cifar_stem, args.trunk_pattern, args.trust_checkpoint, args.seed,
        image_size=args.crop_size, log=lambda line: print_rank0(line, rank=rank))
    trunk = trunk.to(device)
    frozen = {id(p) for p in trunk.parameters() if not p.requires_grad}  # e.g. deit_tiny's fixed patch projection
    for p in trunk.parameters():
        p.requires_grad_(args.finetune and id(p) not in frozen)
    frames = (args.num_frames,) if args.modality == "video" else ()  # a clip is (B, 3, T, H, W)
    with torch.no_grad():
        dim = trunk.eval()(torch.zeros(1, 3, *frames, args.crop_size, args.crop_size, device=device)).shape[1]
    dist.seed_everything(args.seed, 0)  # the same head on every rank
    if args.modality == "video":  # pool -> Dropout(0.8) -> Linear, features not normalised (docs/video.md)
        return trunk, LinearClassifier(dim, num_classes, dropout=0.8).to(device)
    return trunk, LinearClassifier(dim, num_classes, normalize=True).to(device)


def test(parts, info, epoch, log):
    """Test in eval mode, print `` * Acc@1 .. Acc@5 ..`` and ``log`` the numbers; returns whether the epoch is the
    best so far (``epoch`` None: only test, return the numbers)."""
    args, net = parts.args, parts.net
    net.eval()
    res = evaluate(net[1], parts.test_loader, info.device, features=net[0], amp_dtype=parts.amp)
    if info.rank == 0:
        unit = ("videos", "videos/s") if args.modality == "video" else ("images", "img/s")
        rate = res['n'] / max(res['seconds'], 1e-9)
        print(f"Test: {res['n']} {unit[0]}, loss {res['loss']:.4e}, {rate:.1f} {unit[1]}", flush=True)
        print(f" * Acc@1 {res['top1']:.3f} Acc@5 {res['top5']:.3f}", flush=True)
        if res["skipped"]:
            print(f"skipped {res['skipped']} unreadable test {unit[0]} (warnings above): the accuracies are over the "
                  "rest", flush=True)
    log({"type": "test", "epoch": epoch, **res})
    return res if epoch is None else parts.results.add(epoch, res)


def report(args, results, rank):
    """Final lines and OUTPUT_DIR/transfer.json (rank 0); returns the summary dict."""
    summary = {**results.summary(), "dataset": args.dataset, "mode": "finetune" if args.finetune else "linear",
               "pretrained": args.pretrained, "arch": args.arch, "args": vars(args)}
    if rank == 0 and results.best is not None:
        out = os.path.join(args.output_dir, "transfer.json")
        with open(out, "w") as f:
            json.dump(summary, f, indent=2)
        print(f"{summary['mode']} transfer to {args.dataset}: {results.final_line()}", flush=True)
        print(f"results written to {out}", flush=True)
    return summary


if __name__ == "__main__":
    main(ArgumentParser("Transfer evaluation", parents=[get_args_parser()]).parse_args())
