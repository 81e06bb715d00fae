#!/usr/bin/env python
"""Semantic segmentation on PASCAL VOC 2012 and Cityscapes (Revisiting-Contrastive-SSL ``evaluation/segmentation``,
Van Gansbeke et al. 2021, wvangansbeke/Revisiting-Contrastive-SSL: ``single_gpu.py`` / ``multi_gpu.py``,
``configs/pascal_voc.yml`` / ``cityscapes.yml``).

The pretrained ResNet with its last stage dilated (output stride 16), an FCN decoder and bilinear upsampling to
the input size (``src.models.segmentation``); the WHOLE network is fine-tuned with cross-entropy (label 255
ignored). ``--recipe`` fills every flag left unset with the reference's values (flags given explicitly win):

    recipe      train split  batch  epochs  optimizer                     lr schedule                 head dilation
    voc         trainaug     16     45      SGD lr 0.003, mom 0.9, wd 1e-4  x0.1 once epoch > 30, > 40  6
    cityscapes  train        8      150     Adam lr 1e-4, wd 1e-4          poly (1 - e/E)^0.9 per epoch  1

Transforms (``src.augment.segmentation``): VOC flip, rotation +-5 deg and zoom 0.75-1.25, resize to 512 x 512;
tested at 512 x 512. Cityscapes scale {0.5 .. 2.0}, 768 crop, flip; tested on the full 2048 x 1024 images. The val
set is scored after every ``--eval_every`` epochs and after the last, in one pass both as the reference scores it:
at the network's input (each mask resized to 512 x 512, nearest: its online score) and at full resolution (the
prediction brought back to each image's own size, against the original mask: its final score). As in the
reference, the best epoch is the one of highest mIoU at the input (``--report best``; ``--report last``: the last
epoch), and the mIoU reported is that epoch's at full resolution; both are printed and written to the JSON (with
``--test_size 0`` the two are the same). The end prints per-class IoU, then ``mIoU: XX.XX`` as the LAST line, and
writes OUTPUT_DIR/segmentation.json. Every mask must have its image's size (refused otherwise). ``--runs N`` repeats
the run with seeds SEED..SEED+N-1 (each in OUTPUT_DIR/run_<i>/, finished runs are not redone) and reports their
mean and std (the paper averages five runs). Runs resume from their checkpoint.pth.tar.

    # CPU smoke run on a small VOC-style folder, a main_moco.py checkpoint
    python eval_segmentation.py /datasets/pascal --recipe voc --pretrained runs/moco/checkpoint.pth.tar \
        --train_split train --crop_size 128 --test_size 128 -b 4 --epochs 1 -j 0 --output_dir runs/seg_smoke
    # one GPU, PASCAL VOC trainaug -> val, a MoCo v2 ResNet-50, five runs (scripts/segmentation_voc.sh)
    python eval_segmentation.py /datasets/pascal --recipe voc --pretrained moco_v2_800ep_pretrain.pth.tar \
        --runs 5 --output_dir runs/segmentation_voc
    # Cityscapes on 2 GPUs (torchrun, torch.distributed.launch, srun or --multiprocessing-distributed)
    torchrun --nproc_per_node=2 eval_segmentation.py /datasets/cityscapes --recipe cityscapes \
        --pretrained moco_v2_800ep_pretrain.pth.tar --output_dir runs/segmentation_cityscapes
"""
import argparse
import copy
import json
import os
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from src.augment.segmentation import CityscapesTrain, SegTest, VOCTrain
from src.data.folders import build_loader, train_loader
from src.data.segmentation import check_pair_sizes, cityscapes_segmentation, collate_eval, voc_segmentation
from src.evaluation.hashes import content_hash
from src.evaluation.pretrained import add_pretrained_args, build_trunk
from src.evaluation.results import SegResults
from src.evaluation.samplers import ShardSampler
from src.evaluation.segmentation import evaluate, iou_lines
from src.metrics import IGNORE_INDEX
from src.models.segmentation import SegmentationFCN
from src.optim import moco_lr_schedule, set_lr
from src.run import dist
from src.run.args import (MOMENTUM, NONNEG, NONNEG_INT, POSITIVE, POSITIVE_INT, ArgumentParser, add_arg, add_run_args,
                          amp_dtype, autocast_dtype, bool_flag)
from src.run.checkpoint import atomic_write, save_checkpoint
from src.run.errors import UserError
from src.run.launch import cli_main, launch
from src.run.logging import print_rank0
from src.run.loop import Flags, Run
from src.run.speed import autocast

# The reference's configs (configs/pascal_voc.yml, cityscapes.yml) and transforms (utils/common_config.py).
RECIPES = {
    "voc": dict(train_split="trainaug", val_split="val", crop_size=512, test_size=512, scales=[0.75, 1.25],
                max_rotation=5.0, head_dilation=6, epochs=45, batch_size=16, test_batch_size=16, optimizer="sgd",
                lr=0.003, momentum=0.9, weight_decay=1e-4, nesterov=False, scheduler="step", lr_decay_epochs=[30, 40],
                lr_decay_rate=0.1, poly_power=0.9),
    "cityscapes": dict(train_split="train", val_split="val", crop_size=768, test_size=0,
                       scales=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0], max_rotation=0.0, head_dilation=1, epochs=150,
                       batch_size=8, test_batch_size=6, optimizer="adam", lr=1e-4, momentum=None, weight_decay=1e-4,
                       nesterov=False, scheduler="poly", lr_decay_epochs=[], lr_decay_rate=0.1, poly_power=0.9),
}
RESULTS_FILE = "segmentation.json"


def get_args_parser(add_help=False):
    parser = ArgumentParser("Semantic segmentation", add_help=add_help)
    parser.add_argument("data", nargs="?", default=None, metavar="DIR",
                        help="VOC: the folder holding VOCdevkit/VOC2012 (or VOC2012/ itself); Cityscapes: the folder "
                             "holding leftImg8bit/ and gtFine/ (or --data_path)")
    g = parser.add_argument_group("recipe (each unset flag below comes from it)")
    add_arg(g, "--recipe", required=True, choices=sorted(RECIPES),
            help="voc: PASCAL VOC 2012, SGD 0.003, 45 epochs, batch 16; cityscapes: 19 classes, Adam 1e-4, 150 "
                 "epochs, batch 8 (the reference's configs)")
    g = parser.add_argument_group("data")
    add_arg(g, "--data_path", default=None, help="spelling of DIR as a flag")
    add_arg(g, "--train_split", default=None, help="VOC trainaug (SBD-augmented, 10,582 images) or train; "
                                                   "Cityscapes train")
    add_arg(g, "--val_split", default=None, help="the split scored (val)")
    add_arg(g, "--crop_size", default=None, type=POSITIVE_INT,
            help="training input side in px: VOC resize to 512 x 512, Cityscapes crop 768 x 768 (64-128 on a CPU)")
    add_arg(g, "--test_size", default=None, type=NONNEG_INT,
            help="test images resized to this square side before the network; predictions scored at each image's "
                 "own size (reported) and, against masks resized to it, at this size (picks the best epoch) (VOC 512; "
                 "Cityscapes 0: the images as they are, one score)")
    add_arg(g, "--scales", default=None, type=float, nargs="+",
            help="VOC: the zoom range LOW HIGH (0.75 1.25); Cityscapes: the factors one is drawn from "
                 "(0.5 0.75 1 1.25 1.5 1.75 2)")
    add_arg(g, "--max_rotation", default=None, type=NONNEG, help="VOC: rotation in [-R, R] degrees (5)")
    add_arg(g, "-j", "--workers", default=4, type=NONNEG_INT, help="data loading workers per process (4)")
    g = parser.add_argument_group("network")
    add_pretrained_args(g, snake=True)
    add_arg(g, "--head_dilation", default=None, type=POSITIVE_INT,
            help="dilation of the decoder's two 3x3 convs (VOC 6, Cityscapes 1)")
    add_arg(g, "--sync_bn", default=None, type=bool_flag,
            help="SyncBatchNorm over the processes, True/False (default: on for several CUDA processes, as the "
                 "reference's multi_gpu.py; not available on CPU)")
    g = parser.add_argument_group("training")
    add_arg(g, "--epochs", default=None, type=POSITIVE_INT, help="epochs (VOC 45, Cityscapes 150)")
    add_arg(g, "-b", "--batch_size", default=None, type=POSITIVE_INT,
            help="TOTAL batch over all processes (VOC 16, Cityscapes 8); the last incomplete batch is dropped")
    add_arg(g, "--optimizer", default=None, choices=["sgd", "adam"], help="VOC sgd, Cityscapes adam")
    add_arg(g, "--lr", "--learning_rate", default=None, type=POSITIVE, dest="lr", help="VOC 0.003, Cityscapes 1e-4")
    add_arg(g, "--momentum", default=None, type=MOMENTUM, help="SGD momentum (0.9)")
    add_arg(g, "--nesterov", default=None, type=bool_flag, help="SGD Nesterov momentum, True/False (False)")
    add_arg(g, "--wd", "--weight_decay", default=None, type=NONNEG, dest="weight_decay",
            help="L2 weight decay on every parameter (1e-4)")
    add_arg(g, "--scheduler", default=None, choices=["step", "poly"],
            help="per epoch e (0-based): step: lr x RATE for each of --lr_decay_epochs that e exceeds (VOC); poly: "
                 "lr x (1 - e / epochs) ** POWER (Cityscapes)")
    add_arg(g, "--lr_decay_epochs", default=None, type=NONNEG_INT, nargs="*",
            help="step milestones M: the rate applies from epoch M+1 on, 0-based, as the reference's 'epoch > M' "
                 "(VOC 30 40)")
    add_arg(g, "--lr_decay_rate", default=None, type=POSITIVE, help="step factor (0.1)")
    add_arg(g, "--poly_power", default=None, type=POSITIVE, help="poly exponent (0.9)")
    add_arg(g, "--seed", default=0, type=int, help="seed of the decoder init, data order and augmentation (0)")
    add_arg(g, "--runs", default=1, type=POSITIVE_INT,
            help="repeat with seeds SEED..SEED+N-1, each in OUTPUT_DIR/run_<i>, and report mean and std (1; the "
                 "paper averages 5)")
    g = parser.add_argument_group("evaluation")
    add_arg(g, "--test_batch_size", default=None, type=POSITIVE_INT, help="test images per process (VOC 16, "
                                                                          "Cityscapes 6)")
    add_arg(g, "--eval_every", default=1, type=POSITIVE_INT,
            help="score the val set after every N epochs (the reference: 1); the last epoch is always scored")
    add_arg(g, "--report", default="best", choices=["best", "last"],
            help="the epoch whose full-resolution mIoU is reported: best (highest mIoU at the network's input, "
                 "the reference's choice of the model it keeps) or last")
    add_run_args(parser, ("--output_dir", "--dump_path"), "checkpoint.pth.tar, model_best.pth.tar, segmentation.json, "
                 "log.txt (with --runs: one run_<i>/ folder per run; --max_iters then bounds each run)",
                 short_print=True)
    return parser


# ==================================================================================================
@cli_main
def main(args):
    args.data = args.data or args.data_path
    if not args.data:
        raise UserError("no dataset given: pass DIR (or --data_path DIR)")
    fill_recipe(args)
    # before processes start, so a missing file or a mask of another size is one error line, not one per process
    name = "VOC" if args.recipe == "voc" else "Cityscapes"
    for dataset, split in zip(build_datasets(args), (args.train_split, args.val_split)):
        check_pair_sizes(dataset, f"{name} {split}")
    return launch(segment, args)


def fill_recipe(args):
    """Fill every unset recipe flag from ``RECIPES[args.recipe]`` and check the combination."""
    explicit = {key for key in RECIPES[args.recipe] if getattr(args, key) is not None}
    for key, value in RECIPES[args.recipe].items():
        if key not in explicit:
            setattr(args, key, copy.deepcopy(value))
    if args.optimizer == "adam" and ("momentum" in explicit or "nesterov" in explicit):
        raise UserError("--momentum / --nesterov are SGD settings: Adam uses its default betas (0.9, 0.999); drop "
                        "them or pass --optimizer sgd")
    if args.optimizer == "sgd" and args.momentum is None:  # --recipe cityscapes --optimizer sgd
        args.momentum = 0.9
    if args.recipe == "voc" and len(args.scales) != 2 or min(args.scales) <= 0:
        raise UserError(f"--scales: VOC takes a zoom range LOW HIGH and every scale must be > 0, got {args.scales}")
    if args.recipe == "voc" and args.scales[0] > args.scales[1]:
        raise UserError(f"--scales LOW HIGH needs LOW <= HIGH, got {args.scales}")
    if args.runs > 1 and args.resume:
        raise UserError("--resume names one checkpoint, --runs several runs: each run resumes from its own "
                        "OUTPUT_DIR/run_<i>/checkpoint.pth.tar, so drop --resume")


def build_datasets(args, seed=None):
    """``(train, val)`` datasets of the recipe; ``seed`` seeds the training augmentation (None: unseeded)."""
    if args.recipe == "voc":
        train_tf = VOCTrain(args.crop_size, args.max_rotation, args.scales)
        reader = voc_segmentation
    else:
        train_tf = CityscapesTrain(args.crop_size, args.scales)
        reader = cityscapes_segmentation
    train = reader(args.data, args.train_split, train_tf, seed=seed, train=True)
    val = reader(args.data, args.val_split, SegTest(args.test_size), train=False)
    return train, val


def segment(args, info):
    """Every run of ``--runs``; returns the summary dict (None when a run stopped early)."""
    cv2.setNumThreads(1)  # as the reference: loader workers resample in parallel already
    if args.runs == 1:
        return train(args, info)
    summaries = []
    for i in range(args.runs):
        sub = argparse.Namespace(**{**vars(args), "seed": args.seed + i, "runs": 1,
                                    "output_dir": os.path.join(args.output_dir, f"run_{i}")})
        print_rank0(f"=> run {i + 1} of {args.runs} (seed {sub.seed}) in {sub.output_dir}", rank=info.rank)
        summary = train(sub, info)
        if summary is None:
            return None  # stopped (signal, --max_iters): the same command resumes this run
        summaries.append(summary)
    return report_runs(args, summaries, info.rank)


FLAGS = Flags(output="--output_dir", lr="--lr", max_iters="--max_iters")
# flags a resume may change: those whose effect a require() below checks by content, with its own message (the
# pretrained weights, the recipe), and those that change no number of the run (which epoch is reported, the test's
# batching)
SAFE = ("pretrained", "arch", "cifar_stem", "trunk_pattern", "recipe", "report", "test_batch_size")


def train(args, info):
    """Fine-tune and score one run in ``args.output_dir``; returns its summary (None when stopped early)."""
    autocast_dtype(args, info.device, info.rank)  # fp16 without CUDA: fp32 with one warning line; amp_dtype() agrees
    dist.split_batch(args.batch_size, info.world_size, "-b/--batch_size")  # refused before the folder is touched
    run = Run(info, args, script="eval_segmentation.py", flags=FLAGS, safe=SAFE)
    args.seed = run.seed  # a resumed run keeps its checkpoint's seed
    parts = build(args, info)

    # ==== resuming and saving: only from the same pretrained weights and data ====
    run.require("pretrained_sha256", parts.trunk_hash, "--pretrained (its weights)")
    run.require("recipe", args.recipe, "--recipe")
    run.track(state_dict=parts.net, optimizer=parts.optimizer, scaler=parts.scaler, results=parts.results)

    # ==== training ====
    run.start(parts.iters_per_epoch, args.batch_size, scaled=parts.scaler.is_enabled(), formats={"Loss": ".4e"})
    for epoch in run.epochs():
        parts.sampler.set_epoch(epoch, start_index=run.start_iter * parts.per_rank_batch)
        parts.train_set.set_epoch(epoch)
        if not run.steps(train_one_epoch(parts, parts.loader, run, epoch)):
            return None  # stopped (signal, --max_iters): checkpoint saved
        run.check()  # a diverged network is an error line, not a score
        tested = None
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            tested = score(parts, info, epoch)
        run.end_epoch()
        if tested is not None:  # after the epoch's row, which end_epoch logs
            run.write_log(tested)
    parts.finished = run.finished
    return report(args, parts.results, info.rank) if run.finished else None


@dataclass
class Parts:
    """What a segmentation fine-tuning trains with (:func:`build`); :func:`step` reads it."""

    args: argparse.Namespace
    device: torch.device
    net: nn.Module  # SegmentationFCN: dilated trunk, FCN decoder, upsampling (what a checkpoint holds)
    model: nn.Module  # the network the step calls (DDP-wrapped under a process group)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    lr_schedule: np.ndarray  # one lr per global step, constant within an epoch
    amp: object  # autocast dtype (None: fp32)
    loader: object
    sampler: object
    train_set: object
    val_loader: object
    val_set: object
    per_rank_batch: int
    iters_per_epoch: int
    trunk_hash: str  # content hash of the pretrained weights this run started from
    results: SegResults  # every scored epoch, best and last
    finished: bool = False  # set by train(): every epoch done

    def trunks(self):
        """The trunk an evaluation of the run reads (as fine-tuned, dilated)."""
        return {"online": self.net.backbone}


def build(args, info):
    """Data, the network, its optimizer, scaler and lr schedule, from the flags. ``args.seed`` seeds the decoder,
    the data order, every augmentation and a random trunk."""
    device, rank = info.device, info.rank
    dist.seed_everything(args.seed, 0)
    per_rank_batch = dist.split_batch(args.batch_size, info.world_size, "-b/--batch_size")
    sched = (f"x{args.lr_decay_rate:g} after epochs {' '.join(map(str, args.lr_decay_epochs)) or '-'}"
             if args.scheduler == "step" else f"poly {args.poly_power:g}")
    print_rank0(f"recipe {args.recipe}: {args.optimizer} lr {args.lr:g} {sched}, wd {args.weight_decay:g}, "
                f"{args.epochs} epochs, batch {args.batch_size} ({per_rank_batch} x {info.world_size} processes), "
                f"seed {args.seed}", rank=rank)

    # ==== preparing data ====
    train_set, val_set = build_datasets(args, seed=args.seed)
    loader, sampler, iters_per_epoch = train_loader(train_set, per_rank_batch, args.workers, info.world_size, rank,
                                                    args.seed, flag="-b/--batch_size")  # drop_last, as the reference
    val_loader = build_loader(val_set, args.test_batch_size, ShardSampler(len(val_set), info.world_size, rank),
                              args.workers, drop_last=False, collate_fn=collate_eval)
    print_rank0(f"data: {len(train_set)} {args.train_split} / {len(val_set)} {args.val_split} images, "
                f"{len(train_set.classes)} classes, {iters_per_epoch} iterations per epoch", rank=rank)

    # ==== building the network: dilated trunk -> FCN decoder -> upsampling ====
    net, trunk_hash = build_model(args, len(train_set.classes), device, info)
    model = dist.wrap_ddp(net, device)
    optimizer = build_optimizer(args, net)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(args) == torch.float16)
    return Parts(args, device, net, model, optimizer, scaler, lr_schedule(args, iters_per_epoch), amp_dtype(args),
                 loader, sampler, train_set, val_loader, val_set, per_rank_batch, iters_per_epoch, trunk_hash,
                 SegResults(train_set.classes, input_size=args.test_size))


def train_one_epoch(parts, loader, run, epoch):
    """One epoch; yields ``(iteration, stats)`` after each step. The whole network trains, in train mode (BatchNorm
    statistics update), set here at every epoch since scoring switched it to eval mode."""
    parts.model.train()
    for it, batch in run.batches(loader):
        yield it, step(parts, batch, epoch * parts.iters_per_epoch + it)


def step(parts, batch, it):
    """One optimizer step of the whole network on a batch ``(images, masks)`` at global step ``it``: per-pixel
    cross-entropy, label 255 ignored. Returns: the step's stats (``Loss``, ``lr``)."""
    device = parts.device
    lr = set_lr(parts.optimizer, parts.lr_schedule[it])
    images, masks = (t.to(device, non_blocking=True) for t in batch)
    with autocast(device, parts.amp):
        logits = parts.model(images)  # (B, C, H, W), upsampled to the input size
    loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX)
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scaler.scale(loss).backward()
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    return {"Loss": loss.detach(), "lr": lr}


def score(parts, info, epoch):
    """Score the val set after ``epoch``, print the test line and, when the epoch is the best so far, save
    ``model_best.pth.tar`` (rank 0). Returns: the test's log row."""
    # DDP hands rank 0's BatchNorm statistics to the others at each forward, then every rank updates its own: score
    # (and save) rank 0's network on every shard
    for buf in parts.net.buffers():
        dist.broadcast(buf)
    res = evaluate(parts.net, parts.val_loader, len(parts.val_set.classes), parts.device, parts.amp)
    results = parts.results
    is_best = results.add(epoch, res)
    print_rank0(results.test_line(), rank=info.rank)
    if is_best and info.rank == 0:  # the reference keeps the best model on val
        best = {"arch": parts.args.arch, "epoch": epoch, "miou": res["miou"], "miou_input": res["miou_input"],
                "state_dict": parts.net.state_dict()}
        save_checkpoint(os.path.join(parts.args.output_dir, "model_best.pth.tar"), best, "--output_dir")
    return {"type": "test", "epoch": epoch, **results.last}


# ==================================================================================================
def build_model(args, num_classes, device, info):
    """The pretrained trunk (arch / stem from the checkpoint unless given), dilated, with the FCN decoder, on
    ``device``; SyncBatchNorm when asked (default: several CUDA processes). Returns ``(net, trunk content hash)``."""
    trunk, args.arch, args.cifar_stem = build_trunk(
        args.pretrained, args.arch, args.cifar_stem, args.trunk_pattern, args.trust_checkpoint, args.seed,
        log=lambda line: print_rank0(line, rank=info.rank))
    trunk_hash = content_hash(trunk)  # the pretrained weights this run starts from (dilation changes no weight)
    net = SegmentationFCN(trunk, num_classes, head_dilation=args.head_dilation)
    sync = args.sync_bn if args.sync_bn is not None else (info.distributed and device.type == "cuda")
    if sync and info.distributed:
        if device.type != "cuda":
            raise UserError("--sync_bn True needs CUDA processes (SyncBatchNorm does not run on CPU): drop it",
                            collective=True)
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return net.to(device), trunk_hash


def build_optimizer(args, net):
    """SGD (momentum, Nesterov off) or Adam (default betas), weight decay on every parameter, as the reference."""
    if args.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                               nesterov=args.nesterov)
    return torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)


def lr_schedule(args, iters_per_epoch):
    """One learning rate per iteration, constant within an epoch (the reference sets it once per epoch e, 0-based):
    step ``lr * rate ** #{M : e > M}`` or poly ``lr * (1 - e / epochs) ** power``."""
    if args.scheduler == "step":  # "e > M" is MoCo's "e >= M + 1"
        return moco_lr_schedule(args.lr, args.epochs, iters_per_epoch,
                                milestones=[m + 1 for m in args.lr_decay_epochs], gamma=args.lr_decay_rate)
    per_epoch = [args.lr * (1.0 - e / args.epochs) ** args.poly_power for e in range(args.epochs)]
    return np.repeat(np.array(per_epoch, dtype=np.float64), iters_per_epoch)


def write_results(summary, output_dir):
    """``output_dir/segmentation.json``, written atomically (before any result line is printed). Returns its path."""
    out = os.path.join(output_dir, RESULTS_FILE)
    atomic_write(out, lambda f: f.write(json.dumps(summary, indent=2).encode()), "--output_dir")
    return out


def report(args, results, rank):
    """JSON first, then per-class IoU and ``mIoU: XX.XX`` as the last line (rank 0); returns the summary. The mIoU
    reported is at full resolution, of the epoch ``--report`` chooses (best: on the mIoU at the network's input)."""
    chosen = results.best if args.report == "best" else results.last
    summary = {"recipe": args.recipe, "report": args.report, "epoch": chosen["epoch"], "miou": chosen["miou"],
               "classes": results.classes, "iou": chosen["iou"], "skipped": chosen["skipped"], "n": chosen["n"],
               "miou_input": chosen["miou_input"], "iou_input": chosen["iou_input"], "test_size": args.test_size,
               "best_by": results.metric, "best": results.best, "last": results.last, "history": results.history,
               "seed": args.seed, "pretrained": args.pretrained, "arch": args.arch, "args": vars(args)}
    if rank == 0:
        out = write_results(summary, args.output_dir)
        skipped = f", {chosen['skipped']} unreadable left out" if chosen["skipped"] else ""
        print(f"segmentation {args.recipe} {args.val_split}: {args.report} epoch {chosen['epoch']} of {args.epochs} "
              f"({chosen['n']} images{skipped}; best {results.best['miou']:.2f} at epoch {results.best['epoch']}, "
              f"last {results.last['miou']:.2f})", flush=True)
        if results.input_size:  # the two figures of the reference: the one that picks, the one reported
            print(f"{args.report} epoch {chosen['epoch']}: mIoU {chosen['miou_input']:.2f} {results.input_words()} "
                  f"(the reference's online score, which picks the best epoch), {chosen['miou']:.2f} at full "
                  "resolution (reported)", flush=True)
        print(f"results written to {out}", flush=True)
        print("\n".join(iou_lines(results.classes, chosen["iou"])), flush=True)
        print(f"mIoU: {chosen['miou']:.2f}", flush=True)
    return summary


def report_runs(args, summaries, rank):
    """Mean and sample std (n - 1) over the runs: JSON, per-run and per-class lines, ``mIoU: XX.XX`` last."""
    mious = np.array([s["miou"] for s in summaries], dtype=np.float64)
    inputs = np.array([s["miou_input"] for s in summaries], dtype=np.float64)
    per_class = [[s["iou"][c] for s in summaries if s["iou"][c] is not None] for c in range(len(summaries[0]["iou"]))]
    mean_iou = [float(np.mean(v)) if v else None for v in per_class]
    std = float(mious.std(ddof=1)) if len(mious) > 1 else 0.0
    summary = {"recipe": args.recipe, "report": args.report, "runs": len(summaries), "miou_mean": float(mious.mean()),
               "miou_std": std, "miou_runs": mious.tolist(), "miou_input_mean": float(inputs.mean()),
               "miou_input_runs": inputs.tolist(), "test_size": args.test_size, "seeds": [s["seed"] for s in summaries],
               "classes": summaries[0]["classes"], "iou_mean": mean_iou, "pretrained": args.pretrained,
               "args": vars(args)}
    if rank == 0:
        out = write_results(summary, args.output_dir)
        at_input = f" at the {args.test_size}x{args.test_size} input" if args.test_size else ""
        for i, s in enumerate(summaries):
            extra = f", {s['miou_input']:.2f}{at_input}" if at_input else ""
            print(f"run {i} (seed {s['seed']}): mIoU {s['miou']:.2f} ({args.report} epoch {s['epoch']}{extra})",
                  flush=True)
        print(f"mIoU over {len(summaries)} runs: mean {mious.mean():.2f}, std {std:.2f} (sample std)", flush=True)
        print(f"results written to {out}", flush=True)
        print("\n".join(iou_lines(summary["classes"], mean_iou)), flush=True)
        print(f"mIoU: {mious.mean():.2f}", flush=True)
    return summary


if __name__ == "__main__":
    main(ArgumentParser("Semantic segmentation", parents=[get_args_parser()]).parse_args())
