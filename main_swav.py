#!/usr/bin/env python
"""SwAV pretraining: Swapping Assignments between Views (Caron et al., NeurIPS 2020).

Faithful to facebookresearch/swav ``main_swav.py`` (every flag and default; its ``scripts/swav_*.sh`` recipes):
multi-crop with one trunk pass per resolution, L2-normalised prototypes, codes from a distributed Sinkhorn-Knopp
(optionally over a queue of past embeddings), the swapped-prediction loss, prototypes frozen for the first
iterations, SGD + LARC on every parameter, per-iteration warmup + cosine lr. In plain PyTorch: native AMP instead of
apex, any launcher (or none), CPU or GPU, atomic checkpoints with bit-exact mid-epoch resume.

The facebookresearch/swav README's 8-GPU command runs as published (``python -m torch.distributed.launch`` or
``torchrun``):
    python -m torch.distributed.launch --nproc_per_node=8 main_swav.py --data_path /path/to/imagenet/train \
        --epochs 400 --base_lr 0.6 --final_lr 0.0006 --warmup_epochs 0 --batch_size 32 --size_crops 224 96 \
        --nmb_crops 2 6 --min_scale_crops 0.14 0.05 --max_scale_crops 1. 0.14 --use_fp16 true \
        --freeze_prototypes_niters 5005 --queue_length 3840 --epoch_queue_starts 15
Published recipes (64 GPUs x 64, 4 GPUs x 64 with the queue, 2x224, RN50-w2/w4): sbatch scripts/swav_*.sh
One GPU, no launcher needed:
    python main_swav.py --data_path /path/to/data --batch_size 64 --base_lr 0.15 --final_lr 0.00015 \
        --warmup_epochs 0 --queue_length 3840 --epoch_queue_starts 15 --size_crops 224 96 --nmb_crops 2 6 \
        --min_scale_crops 0.14 0.05 --max_scale_crops 1 0.14
CPU, two processes, small crops (``python main_swav.py --demo`` builds data/demo):
    python -m torch.distributed.launch --nproc_per_node=2 main_swav.py --data_path data/demo --arch resnet18 \
        --cifar_stem --hidden_mlp 512 --nmb_prototypes 100 --batch_size 32 --size_crops 32 16 --nmb_crops 2 4 \
        --min_scale_crops 0.14 0.05 --max_scale_crops 1 0.14 --base_lr 0.6 --final_lr 0.0006 --warmup_epochs 0 \
        --freeze_prototypes_niters 20 --epochs 2 --workers 1 --use_fp16 false --dump_path runs/swav-cpu
"""
import argparse
from dataclasses import dataclass
from typing import Optional

import numpy as np

import torch
from torch import nn

from src.augment.recipes import swav_recipe
from src.augment.split import pretrain_loader
from src.augment.views import resolve_blur_scale
from src.data.folders import resolve_split
from src.evaluation import demo
from src.losses import distributed_sinkhorn, swav_loss
from src.evaluation.monitor import Monitor, add_watch_args, check_watch_args
from src.methods.taps import OutputTap, recording
from src.methods.swav import (LossWatch, SwAVModel, SwAVQueue, cancel_prototype_grads, code_entropies,
                              normalize_prototypes, prepare_model, uniform_loss)
from src.methods.swav_args import (add_multicrop_args, add_swav_optim_args, add_swav_run_args, check_multicrop_args,
                                   copy_name)
from src.models import KNOWN_ARCHS
from src.optim import set_lr, swav_optimizer
from src.run import dist
from src.run.args import ArgumentParser, add_arg, add_demo_args, add_speed_args, autocast_dtype
from src.run.errors import UserError
from src.run.launch import cli, launch
from src.run.logging import n_params, print_rank0
from src.run.loop import Flags, Run
from src.run.speed import autocast


def get_args_parser(add_help=True):
    parser = ArgumentParser("SwAV pretraining", add_help=add_help,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_multicrop_args(parser)
    g = parser.add_argument_group("swav")
    add_arg(g, "--crops_for_assign", default=[0, 1], type=int, nargs="+",
            help="crop ids whose codes are predicted by the other crops (0 1: the two large crops)")
    add_arg(g, "--temperature", default=0.1, type=float, help="softmax temperature of the predictions (0.1)")
    add_arg(g, "--epsilon", default=0.05, type=float,
            help="Sinkhorn entropy regularisation (0.05; 0.03 against collapse; lower overflows)")
    add_arg(g, "--sinkhorn_iterations", default=3, type=int, help="Sinkhorn-Knopp iterations (3)")
    add_arg(g, "--feat_dim", default=128, type=int, help="embedding size after the projection head (128)")
    add_arg(g, "--nmb_prototypes", default=3000, type=int, help="number of prototypes K (3000 for ImageNet)")
    add_arg(g, "--queue_length", default=0, type=int,
            help="embeddings kept to enlarge the Sinkhorn problem, over all processes; rounded down to a multiple "
                 "of the global batch (0: none; 3840 at batch 256)")
    add_arg(g, "--epoch_queue_starts", default=15, type=int, help="epoch from which the queue is used (15)")
    add_swav_optim_args(parser, 313, "iterations during which the prototypes get no update (313 = 1 epoch at "
                                "batch 4096; 5005 at batch 256)")
    add_swav_run_args(parser, KNOWN_ARCHS)
    add_watch_args(parser)
    add_speed_args(parser)
    parser.set_defaults(use_fp16=True)  # the reference's default; a CPU run falls back to fp32 (one note line)
    add_demo_args(parser)
    return parser


# ==================================================================================================
def main(args):
    if args.demo:
        return run_demo(args)
    check_args(args)
    check_watch_args(args)
    return launch(train, args)


def check_args(args):
    check_multicrop_args(args)
    if args.epsilon <= 0 or args.sinkhorn_iterations < 1 or args.nmb_prototypes < 1 or args.feat_dim < 1:
        raise UserError(f"need --epsilon > 0, --sinkhorn_iterations >= 1, --nmb_prototypes >= 1 and --feat_dim >= 1, "
                        f"got {args.epsilon}, {args.sinkhorn_iterations}, {args.nmb_prototypes}, {args.feat_dim}")
    if args.queue_length < 0:
        raise UserError(f"--queue_length must be >= 0 (0: no queue), got {args.queue_length}")


FLAGS = Flags(output="--dump_path", lr="--base_lr", max_iters="--max_iters")
NAN_HINT = "lower --base_lr, raise --epsilon (Sinkhorn) or turn AMP off (--use_fp16 false)"


def train(args, info):
    """Pretrain: :func:`build` the parts, then the loop. Returns the parts (``parts.finished``: every epoch done)."""
    run = Run(info, args, script="main_swav.py", flags=FLAGS, nan_hint=NAN_HINT)
    args.seed = run.seed  # a resumed run keeps its checkpoint's seed
    parts = build(args, info)

    # ==== resuming and saving: what a checkpoint holds ====
    run.track(state_dict=parts.model, optimizer=parts.optimizer, scaler=parts.scaler)
    run.export("trunk.pth", lambda: parts.model.backbone.state_dict())  # torchvision names, no head
    # every rank keeps its own queue in queue{rank}.pth, as the reference
    saved = run.track_rank_state("queue", lambda: None if parts.queue is None else {"queue": parts.queue.queue.cpu()})
    if saved is not None and parts.queue_rows and saved["queue"].shape[1] == parts.queue_rows:
        parts.queue = parts.new_queue()
        parts.queue.load(saved["queue"].to(parts.device))

    # ==== training ====
    run.start(parts.iters_per_epoch, args.batch_size * info.world_size, scaled=parts.scaler.is_enabled(),
              formats={"Loss": ".4f", "H(avg code)": ".3f", "H(code)": ".3f"},
              note=", queue restored" if parts.queue is not None else "",
              monitor=Monitor.from_args(args, info, parts.trunks, args.size_crops[0],
                                        args.epochs * parts.iters_per_epoch, args.dump_path))
    for epoch in run.epochs():
        parts.sampler.set_epoch(epoch, start_index=run.start_iter * args.batch_size)
        parts.dataset.set_epoch(epoch)
        if parts.queue is None and parts.queue_rows and epoch >= args.epoch_queue_starts:
            parts.queue = parts.new_queue()
        if parts.queue is not None:
            parts.queue.in_use = False  # the reference's use_the_queue, reset every epoch (true again once full)
        parts.watch.start_epoch()
        if not run.steps(train_one_epoch(parts, parts.loader, run, epoch)):
            break  # stopped (signal, --max_iters): checkpoint saved
        parts.watch.end_epoch(info.rank)  # a warning line when the codes collapsed
        run.end_epoch(dict(parts.model.named_parameters()), what="weights and prototypes",
                      extra={"lr": parts.lr_at((epoch + 1) * parts.iters_per_epoch - 1),
                             "queue_in_use": bool(parts.queue is not None and parts.queue.in_use)},
                      numbered=copy_name(epoch, args.epochs, args.checkpoint_freq))
    parts.finished = run.finished
    return parts


@dataclass
class Parts:
    """What a SwAV run trains with (:func:`build`); :func:`step` reads it."""

    args: argparse.Namespace
    device: torch.device
    model: SwAVModel  # trunk, projection head, prototypes: what a checkpoint holds
    ddp_model: nn.Module  # what the step calls (DDP-wrapped under a process group, maybe compiled)
    optimizer: torch.optim.Optimizer  # SGD wrapped in LARC, on every parameter
    scaler: torch.amp.GradScaler
    lr_schedule: np.ndarray  # one lr per global step: warmup, then cosine
    amp: object  # the autocast context of the forward
    loader: object
    sampler: object
    dataset: object
    iters_per_epoch: int
    queue_rows: int  # this rank's queue length (--queue_length over the processes, whole batches; 0: no queue)
    watch: LossWatch  # the collapse guard (loss at ln K all epoch)
    queue: Optional[SwAVQueue] = None  # made by train() from --epoch_queue_starts on (or restored)
    tap: Optional[OutputTap] = None  # the trunk's outputs, for the online linear probe (--online_linear)
    finished: bool = False  # set by train(): every epoch done

    def lr_at(self, step):
        return float(self.lr_schedule[step])

    def new_queue(self):
        """An empty queue: this rank's rows for every assignment crop."""
        return SwAVQueue(len(self.args.crops_for_assign), self.queue_rows, self.args.feat_dim, self.device)

    def trunks(self):
        """The trunk an evaluation of the run reads (live, not a copy): the backbone, pooled features."""
        return {"online": self.model.backbone}


def build(args, info):
    """Everything a SwAV run trains with, from the flags: data, model, LARC optimizer, scaler, lr schedule.

    Called by :func:`train`, the benches and the tests alike; ``args.seed`` seeds the initial weights (the same on
    every rank), then every rank draws from its own stream."""
    device = info.device
    check_args(args)
    dist.seed_everything(args.seed, 0)

    # ==== preparing data: SwAV's multi-crop ====
    recipe = swav_recipe(args.size_crops, args.nmb_crops, args.min_scale_crops, args.max_scale_crops,
                         blur_scale=resolve_blur_scale(args.blur_scale, args.size_crops[0]), pil_blur=args.use_pil_blur)
    loader, sampler, dataset, iters_per_epoch = pretrain_loader(
        resolve_split(args.data_path, "train"), recipe.transform(split=args.device_aug), args.batch_size, args.workers,
        info, args.seed, channels_last=args.channels_last)

    # ==== building model: SyncBN (CUDA), channels-last, DDP, torch.compile ====
    model, ddp_model = prepare_model(SwAVModel(args.arch, args.feat_dim, args.hidden_mlp, args.nmb_prototypes,
                                               cifar_stem=args.cifar_stem), info, args.sync_bn,
                                     args.syncbn_process_group_size, args.channels_last, args.compile)
    dist.seed_everything(args.seed, info.rank)  # then one RNG stream per rank
    optimizer, lr_schedule = swav_optimizer(model.parameters(), args.base_lr, args.final_lr, args.wd, args.epochs,
                                            iters_per_epoch, args.warmup_epochs, args.start_warmup, device)
    dtype = autocast_dtype(args, device, info.rank)  # fp16 without CUDA: fp32 and one note line
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    global_batch = args.batch_size * info.world_size
    queue_length = args.queue_length - args.queue_length % global_batch  # whole batches only (reference)
    print_rank0(f"=> {args.arch} ({n_params(model)}M parameters): {len(dataset)} images, {iters_per_epoch} "
                f"iterations/epoch, batch {args.batch_size} x {info.world_size} processes, crops {recipe.describe()}"
                + (f", queue {queue_length} from epoch {args.epoch_queue_starts}" if queue_length else ", no queue"),
                rank=info.rank)
    return Parts(args, device, model, ddp_model, optimizer, scaler, lr_schedule, autocast(device, dtype), loader,
                 sampler, dataset, iters_per_epoch, queue_length // info.world_size,
                 LossWatch(uniform_loss(args.nmb_prototypes), device),
                 tap=OutputTap(model.backbone) if args.online_linear else None)


def train_one_epoch(parts, loader, run, epoch):
    """One epoch of SwAV; yields ``(iteration, stats)`` after each optimizer step (the loss also feeds the collapse
    guard)."""
    parts.model.train()
    for it, batch in run.batches(loader):
        stats = step(parts, batch, epoch * parts.iters_per_epoch + it)
        parts.watch.update(stats["Loss"])
        yield it, stats


def step(parts, batch, it):
    """One SwAV step on a loader batch ``(crops, labels)`` (labels unused) at global step ``it``, in the order of
    facebookresearch/swav ``main_swav.py``'s ``train``.
    Returns: the step's stats (``Loss``, the entropies of the codes, ``lr``)."""
    args, model, optimizer, scaler = parts.args, parts.model, parts.optimizer, parts.scaler
    bs = args.batch_size
    lr = set_lr(optimizer, parts.lr_schedule[it])

    # prototypes back on the unit sphere (frozen or not), then one trunk pass per resolution
    normalize_prototypes(model)
    crops = [c.to(parts.device, non_blocking=True) for c in batch[0]]  # V crops, each (B, 3, s, s)
    with parts.amp, recording(parts.tap):
        embedding, scores = parts.ddp_model(crops)  # (V*B, D) unit rows, (V*B, K); crop-major
    embedding = embedding.detach()

    # codes of the assignment crops, without gradient and in fp32: Sinkhorn over the global batch,
    # enlarged by the queue's embeddings (scored with the current prototypes) once the queue is full
    codes, queue = [], parts.queue
    with torch.no_grad():
        for i, a in enumerate(args.crops_for_assign):
            s = scores[a * bs:(a + 1) * bs].detach().float()  # (B, K)
            if queue is not None:
                s = queue.scores(i, s, model.prototypes.weight)  # (L + B, K) once in use
                queue.push(i, embedding[a * bs:(a + 1) * bs])
            codes.append(distributed_sinkhorn(s, args.epsilon, args.sinkhorn_iterations)[-bs:])  # (B, K)

    # swapped prediction: every other crop predicts each assignment crop's code
    loss = swav_loss(scores, codes, args.crops_for_assign, args.temperature)

    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if it < args.freeze_prototypes_niters:
        cancel_prototype_grads(model)  # no update, no weight decay, no momentum for the prototypes
    scaler.unscale_(optimizer)  # LARC's trust ratio needs the true gradient norms
    scaler.step(optimizer)  # skipped (LARC included) when an fp16 gradient is inf / NaN
    scaler.update()

    h_avg, h_code = code_entropies(codes)  # collapse indicators, in nats (ln K at most)
    stats = {"Loss": loss.detach(), "H(avg code)": h_avg, "H(code)": h_code, "lr": lr}
    if parts.tap is not None:  # the two large crops' trunk features, for the online linear probe
        stats["features"] = parts.tap.take(2 * bs)
    return stats


# ==================================================================================================
def run_demo(args):
    """Build the demo data, pretrain resnet_tiny with SwAV on the CPU for a few minutes, compare kNN top-1 of the
    pretrained trunk with the same trunk at its random initialisation (src.evaluation.demo)."""
    def trunks(model, args):
        init = SwAVModel(args.arch, args.feat_dim, args.hidden_mlp, args.nmb_prototypes, cifar_stem=args.cifar_stem)
        return model.backbone, init.backbone

    return demo.run_demo(args, DEMO, train, trunks, "data_path", "dump_path", "runs/swav-demo", check=check_args)


# Demo recipe for 2 CPU cores (a few minutes): resnet_tiny (standard stem) on 2x64 + 4x32 crops of the 64-px demo
# images (scales 0.5-1 and 0.14-0.5), 30 prototypes, epsilon 0.03 (0.05 with smaller crops collapsed to uniform
# codes on this data), prototypes frozen for 2 epochs, a queue of 8 batches from epoch 3, LARC base lr 0.6,
# 15 epochs. The blur follows the 64-px crops (--blur_scale relative). docs/swav.md has its figures.
DEMO = dict(arch="resnet_tiny", cifar_stem=False, hidden_mlp=512, feat_dim=128, nmb_prototypes=30, epochs=15,
            batch_size=128, base_lr=0.6, final_lr=0.0006, warmup_epochs=0, start_warmup=0.0,
            freeze_prototypes_niters=46, size_crops=[64, 32], nmb_crops=[2, 4], min_scale_crops=[0.5, 0.14],
            max_scale_crops=[1.0, 0.5], queue_length=1024, epoch_queue_starts=3, epsilon=0.03, use_fp16=False,
            workers=1, print_freq=23, checkpoint_freq=0, max_iters=0, eval_size=64, blur_scale="relative")


if __name__ == "__main__":
    cli(main, get_args_parser().parse_args)
