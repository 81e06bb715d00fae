#!/usr/bin/env python
"""SwAV pretraining: Swapping Assignments between Views (Caron et al., NeurIPS 2020).

Faithful to facebookresearch/swav ``main_swav.py`` (every flag and default, spec ``swav.md`` A.1-A.11): multi-crop
with one trunk pass per resolution, L2-normalised prototypes, codes from a distributed Sinkhorn-Knopp (optionally
over a queue of past embeddings), the swapped-prediction loss, prototypes frozen for the first iterations, SGD +
LARC on every parameter, per-iteration warmup + cosine lr. In plain PyTorch: native AMP instead of apex, any
launcher (or none), CPU or GPU, atomic checkpoints with bit-exact mid-epoch resume.

The SwAV README's 8-GPU command runs as published (``python -m torch.distributed.launch`` or ``torchrun``):
    python -m torch.distributed.launch --nproc_per_node=8 main_swav.py --data_path /path/to/imagenet/train \
        --epochs 400 --base_lr 0.6 --final_lr 0.0006 --warmup_epochs 0 --batch_size 32 --size_crops 224 96 \
        --nmb_crops 2 6 --min_scale_crops 0.14 0.05 --max_scale_crops 1. 0.14 --use_fp16 true \
        --freeze_prototypes_niters 5005 --queue_length 3840 --epoch_queue_starts 15
Published recipes (64 GPUs x 64, 4 GPUs x 64 with the queue, 2x224, RN50-w2/w4): sbatch scripts/swav_*.sh
One GPU, no launcher needed:
    python main_swav.py --data_path /path/to/data --batch_size 64 --base_lr 0.15 --final_lr 0.00015 \
        --warmup_epochs 0 --queue_length 3840 --epoch_queue_starts 15 --size_crops 224 96 --nmb_crops 2 6 \
        --min_scale_crops 0.14 0.05 --max_scale_crops 1 0.14
CPU, two processes, small crops (see README for the demo data):
    python -m torch.distributed.launch --nproc_per_node=2 main_swav.py --data_path data/demo --arch resnet18 \
        --cifar_stem --hidden_mlp 512 --nmb_prototypes 100 --batch_size 32 --size_crops 32 16 --nmb_crops 2 4 \
        --min_scale_crops 0.14 0.05 --max_scale_crops 1 0.14 --base_lr 0.6 --final_lr 0.0006 --warmup_epochs 0 \
        --freeze_prototypes_niters 20 --epochs 2 --workers 1 --use_fp16 false --dump_path runs/swav-cpu
"""
import argparse

import torch

from src.augment.recipes import swav_recipe
from src.augment.views import resolve_blur_scale
from src.data.folders import pretrain_loader, resolve_split
from src.evaluation import demo
from src.losses import distributed_sinkhorn, swav_loss
from src.methods.swav import (LossWatch, SwAVModel, SwAVQueue, cancel_prototype_grads, code_entropies,
                              normalize_prototypes, prepare_model, uniform_loss)
from src.models import KNOWN_ARCHS
from src.optim import set_lr, swav_optimizer
from src.run import dist
from src.run.args import (ArgumentParser, add_arg, add_demo_args, add_multicrop_args, add_speed_args,
                          add_swav_optim_args, add_swav_run_args, autocast_dtype, check_multicrop_args)
from src.run.checkpoint import swav_copy_name
from src.run.errors import UserError
from src.run.launch import cli, launch
from src.run.logging import n_params, print_rank0
from src.run.loop import Run
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
    add_speed_args(parser)
    parser.set_defaults(use_fp16=True)  # the reference's default; a CPU run falls back to fp32 (one note line)
    add_demo_args(parser)
    return parser


# ==================================================================================================
def main(args):
    if args.demo:
        return run_demo(args)
    check_args(args)
    return launch(train, args)


def check_args(args):
    check_multicrop_args(args)
    if args.epsilon <= 0 or args.sinkhorn_iterations < 1 or args.nmb_prototypes < 1 or args.feat_dim < 1:
        raise UserError(f"need --epsilon > 0, --sinkhorn_iterations >= 1, --nmb_prototypes >= 1 and --feat_dim >= 1, "
                        f"got {args.epsilon}, {args.sinkhorn_iterations}, {args.nmb_prototypes}, {args.feat_dim}")
    if args.queue_length < 0:
        raise UserError(f"--queue_length must be >= 0 (0: no queue), got {args.queue_length}")


def train(args, info):
    """Pretrain; returns the SwAV model (unwrapped)."""
    device = info.device
    run = Run(info, output_dir=args.dump_path, script="main_swav.py", config=vars(args), resume=args.resume,
              seed=args.seed, lr_flag="--base_lr",
              nan_hint="lower --base_lr, raise --epsilon (Sinkhorn) or turn AMP off (--use_fp16 false)")

    # ==== preparing data: SwAV's multi-crop ====
    recipe = swav_recipe(args.size_crops, args.nmb_crops, args.min_scale_crops, args.max_scale_crops,
                         blur_scale=resolve_blur_scale(args.blur_scale, args.size_crops[0]), pil_blur=args.use_pil_blur)
    loader, sampler, dataset, iters_per_epoch = pretrain_loader(
        resolve_split(args.data_path, "train"), recipe.transform(split=args.device_aug), args.batch_size, args.workers,
        info, run.seed, channels_last=args.channels_last)

    # ==== building model: SyncBN (CUDA), channels-last, DDP, torch.compile ====
    model, ddp_model = prepare_model(SwAVModel(args.arch, args.feat_dim, args.hidden_mlp, args.nmb_prototypes,
                                               cifar_stem=args.cifar_stem), info, args.sync_bn,
                                     args.syncbn_process_group_size, args.channels_last, args.compile)
    dist.seed_everything(run.seed, info.rank)  # then one RNG stream per rank
    optimizer, lr_schedule = swav_optimizer(model.parameters(), args.base_lr, args.final_lr, args.wd, args.epochs,
                                            iters_per_epoch, args.warmup_epochs, args.start_warmup, device)
    dtype = autocast_dtype(args, device, info.rank)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    global_batch = args.batch_size * info.world_size
    queue_length = args.queue_length - args.queue_length % global_batch  # whole batches only (reference)
    print_rank0(f"=> {args.arch} ({n_params(model)}M parameters): {len(dataset)} images, {iters_per_epoch} "
                f"iterations/epoch, batch {args.batch_size} x {info.world_size} processes, crops {recipe.describe()}"
                + (f", queue {queue_length} from epoch {args.epoch_queue_starts}" if queue_length else ", no queue"),
                rank=info.rank)

    # ==== resuming and saving: what a checkpoint holds ====
    run.track(state_dict=model, optimizer=optimizer, scaler=scaler)
    run.export("trunk.pth", lambda: model.backbone.state_dict())  # torchvision names, no head
    queue = None  # every rank keeps its own queue in queue{rank}.pth, as the reference
    saved = run.track_rank_state("queue", lambda: None if queue is None else {"queue": queue.queue.cpu()})
    if saved is not None and queue_length and saved["queue"].shape[1] == queue_length // info.world_size:
        queue = SwAVQueue(len(args.crops_for_assign), queue_length // info.world_size, args.feat_dim, device)
        queue.load(saved["queue"].to(device))

    # ==== training ====
    logger = run.progress(iters_per_epoch, args.epochs, global_batch, args.print_freq, max_iters=args.max_iters,
                          save_every=args.save_every_iters, scaled=scaler.is_enabled(),
                          formats={"Loss": ".4f", "H(avg code)": ".3f", "H(code)": ".3f"},
                          note=", queue restored" if queue is not None else "")
    watch = LossWatch(uniform_loss(args.nmb_prototypes), device)
    for epoch in run.epochs():
        sampler.set_epoch(epoch, start_index=run.start_iter * args.batch_size)
        dataset.set_epoch(epoch)
        if queue is None and queue_length > 0 and epoch >= args.epoch_queue_starts:
            queue = SwAVQueue(len(args.crops_for_assign), queue_length // info.world_size, args.feat_dim, device)
        if queue is not None:
            queue.in_use = False  # the reference's use_the_queue, reset every epoch (true again once full)
        logger.start_epoch(epoch, run.start_iter)
        watch.start_epoch()
        if not run.steps(train_one_epoch(model, ddp_model, queue, loader, optimizer, scaler, lr_schedule, epoch,
                                         run.start_iter, iters_per_epoch, args, device, dtype, logger, watch)):
            break  # stopped (signal, --max_iters): checkpoint saved
        logger.end_epoch({"lr": float(lr_schedule[(epoch + 1) * iters_per_epoch - 1]),
                          "queue_in_use": bool(queue is not None and queue.in_use)})
        watch.end_epoch(info.rank)  # a warning line when the codes collapsed
        run.end_epoch(dict(model.named_parameters()), what="weights and prototypes",
                      numbered=swav_copy_name(epoch, args.epochs, args.checkpoint_freq))
    return model


def train_one_epoch(model, ddp_model, queue, loader, optimizer, scaler, lr_schedule, epoch, start_iter,
                    iters_per_epoch, args, device, dtype, logger, watch):
    """One epoch of SwAV (spec A.3b); a generator that yields ``(iteration, loss)`` after each optimizer step."""
    model.train()
    amp = autocast(device, dtype)
    bs = args.batch_size
    for it, (crops, _) in logger.batches(loader, start_iter):
        step = epoch * iters_per_epoch + it
        lr = set_lr(optimizer, lr_schedule[step])

        # prototypes back on the unit sphere (frozen or not), then one trunk pass per resolution
        normalize_prototypes(model)
        crops = [c.to(device, non_blocking=True) for c in crops]  # V crops, each (B, 3, s, s)
        with amp:
            embedding, scores = ddp_model(crops)  # (V*B, D) unit rows, (V*B, K); crop-major
        embedding = embedding.detach()

        # codes of the assignment crops, without gradient and in fp32: Sinkhorn over the global batch,
        # enlarged by the queue's embeddings (scored with the current prototypes) once the queue is full
        codes = []
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
        if step < args.freeze_prototypes_niters:
            cancel_prototype_grads(model)  # no update, no weight decay, no momentum for the prototypes
        scaler.unscale_(optimizer)  # LARC's trust ratio needs the true gradient norms
        scaler.step(optimizer)  # skipped (LARC included) when an fp16 gradient is inf / NaN
        scaler.update()

        h_avg, h_code = code_entropies(codes)
        watch.update(loss)
        logger.update(Loss=loss.detach(),
                      **{"H(avg code)": h_avg, "H(code)": h_code})
        logger.maybe_print(it, lr)
        yield it, loss.detach()


# ==================================================================================================
def run_demo(args):
    """Build the demo data, pretrain resnet_tiny with SwAV on the CPU for a few minutes, compare kNN top-1 of the
    pretrained trunk with the same trunk at its random initialisation (src.evaluation.demo)."""
    def trunks(model, args):
        init = SwAVModel(args.arch, args.feat_dim, args.hidden_mlp, args.nmb_prototypes, cifar_stem=args.cifar_stem)
        return model.backbone, init.backbone

    return demo.run_demo(args, DEMO, train, trunks, "data_path", "dump_path", "runs/swav-demo", check=check_args)


# Demo recipe for 2 CPU cores (about 6 minutes): resnet_tiny (0.4M parameters with the head, standard stem) on
# 2x64 + 4x32 crops of the 64-px demo images (scales 0.5-1 and 0.14-0.5), 30 prototypes, epsilon 0.03, prototypes
# frozen for 2 epochs, a queue of 8 batches from epoch 3, LARC base lr 0.6, 15 epochs. The 2026-11-22 recipe
# (resnet18, 2x32 + 4x16, epsilon 0.05, 5 epochs) collapsed to uniform codes on this data. README "Demo" has both.
# The blur follows the 64-px crops (--blur_scale relative), as when these figures were measured.
DEMO = dict(arch="resnet_tiny", cifar_stem=False, hidden_mlp=512, feat_dim=128, nmb_prototypes=30, epochs=15,
            batch_size=128, base_lr=0.6, final_lr=0.0006, warmup_epochs=0, start_warmup=0.0,
            freeze_prototypes_niters=46, size_crops=[64, 32], nmb_crops=[2, 4], min_scale_crops=[0.5, 0.14],
            max_scale_crops=[1.0, 0.5], queue_length=1024, epoch_queue_starts=3, epsilon=0.03, use_fp16=False,
            workers=1, print_freq=23, checkpoint_freq=0, max_iters=0, eval_size=64, blur_scale="relative")


if __name__ == "__main__":
    cli(main, get_args_parser().parse_args)
