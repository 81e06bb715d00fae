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
"""
import argparse
import copy
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from src import dist
from src.args import add_amp_args, add_arg, add_dist_args, amp_dtype
from src.augment import MultiViewTransform, eval_transform, moco_transform
from src.checkpoint import (find_resume_checkpoint, load_checkpoint, load_state_strict, rng_state,
                            save_checkpoint, set_rng_state)
from src.data import ResumableSampler, build_dataset, build_loader, resolve_split
from src.errors import UserError, exit_on_user_error
from src.logging import JsonLog, ProgressLogger, print_rank0
from src.losses import infonce_logits
from src.methods.common import check_queue_size, copy_params, momentum_update
from src.methods.moco import MoCo
from src.models import KNOWN_ARCHS
from src.models.heads import MOCO_HEADS
from src.optim import moco_lr_schedule, set_lr


def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser("MoCo v1/v2 pretraining", add_help=add_help,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("data", nargs="?", default=None, metavar="DIR",
                        help="dataset root: DIR/train (or DIR itself) with one folder per class, or a flat folder")
    g = parser.add_argument_group("training (MoCo's flags and defaults)")
    add_arg(g, "-a", "--arch", default="resnet50", help=f"backbone: {', '.join(KNOWN_ARCHS)}")
    add_arg(g, "-j", "--workers", default=32, type=int, help="data loading workers per node (split over processes)")
    add_arg(g, "--epochs", default=200, type=int, help="total epochs (200 / 800 in the papers)")
    add_arg(g, "--start-epoch", default=0, type=int, help="manual epoch number (useful on restarts)")
    add_arg(g, "-b", "--batch-size", default=256, type=int,
            help="TOTAL batch over all processes (256 in the papers; scale --lr linearly: 0.03 per 256)")
    add_arg(g, "--lr", "--learning-rate", default=0.03, type=float, dest="lr", help="initial lr (0.03 for batch 256)")
    add_arg(g, "--schedule", default=[120, 160], nargs="*", type=int, help="epochs where lr drops x0.1 (without --cos)")
    add_arg(g, "--momentum", default=0.9, type=float, help="SGD momentum")
    add_arg(g, "--wd", "--weight-decay", default=1e-4, type=float, dest="weight_decay", help="weight decay (1e-4)")
    add_arg(g, "-p", "--print-freq", default=10, type=int, help="print / log every N iterations")
    add_arg(g, "--resume", default="", type=str,
            help="checkpoint to resume from (default: OUTPUT_DIR/checkpoint.pth.tar if it exists)")
    add_arg(g, "--seed", default=None, type=int, help="seed for init, sampling and augmentation (default: random)")

    g = parser.add_argument_group("moco")
    add_arg(g, "--moco-dim", default=128, type=int, help="feature dimension")
    add_arg(g, "--moco-k", default=65536, type=int, help="queue size; a multiple of the total batch")
    add_arg(g, "--moco-m", default=0.999, type=float, help="momentum of the key encoder (0.99-0.9999)")
    add_arg(g, "--moco-t", default=0.07, type=float, help="softmax temperature (0.07 v1, 0.2 v2)")
    add_arg(g, "--mlp", nargs="?", const="simple", default=None, metavar="KIND",
            help="projection head: --mlp alone is MoCo v2's 2-layer MLP (simple); SSL-small's deep | dropout | "
                 "wide; bn adds BatchNorm (hidden and output, MoCo v3 style); without the flag: MoCo v1's Linear")
    add_arg(g, "--aug-plus", action="store_true", help="MoCo v2: stronger augmentation with blur")
    add_arg(g, "--cos", action="store_true", help="MoCo v2: cosine lr schedule (per epoch)")
    add_arg(g, "--bn-splits", default=0, type=int,
            help="split-BN sub-batches on a single process (0 = auto: 8 with one process, off under DDP)")
    add_arg(g, "--crop-size", default=224, type=int, help="side of the random resized crops (224; 32-96 on CPU)")
    add_arg(g, "--min-scale", default=0.2, type=float, help="RandomResizedCrop lower area scale (0.2)")
    add_arg(g, "--cifar-stem", action="store_true", help="ResNet 3x3 stride-1 stem without max-pool (small images)")

    g = parser.add_argument_group("output and checkpoints")
    add_arg(g, "--output-dir", "--dump-path", default=".", type=str, dest="output_dir",
            help="where checkpoints, args.json and the JSON log go (MoCo writes to the working directory)")
    add_arg(g, "--save-freq", default=1, type=int, help="keep a numbered checkpoint_EEEE.pth.tar every N epochs (0: never)")
    add_arg(g, "--save-every-iters", default=0, type=int,
            help="also refresh checkpoint.pth.tar every N iterations inside an epoch (0: epoch ends only)")
    add_arg(g, "--max-iters", default=0, type=int,
            help="stop (with a checkpoint) after this many iterations in total; for smoke tests (0: off)")
    add_dist_args(parser)
    add_amp_args(parser)
    g = parser.add_argument_group("demo")
    add_arg(g, "--demo", action="store_true", help="build the demo dataset, pretrain on CPU, report kNN vs random init")
    add_arg(g, "--demo-dir", default="./data/demo", type=str, help="where the demo dataset is written")
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
    if args.multiprocessing_distributed:
        nprocs = args.nproc_per_node or max(torch.cuda.device_count(), 1)
        nodes = max(args.world_size, 1)
        dist.spawn_workers(worker, nprocs, max(args.rank, 0), nodes, args.dist_url, (args,))
    else:
        worker(None, None, None, None, args)


def worker(local_rank, rank, world_size, dist_url, args):
    """One training process: set up the process group (any launcher), train, tear down."""
    if rank is None:  # not spawned here: torchrun / launch / srun / plain python / MoCo-style manual ranks
        local_rank, rank, world_size = args.local_rank, args.rank, args.world_size
        dist_url = args.dist_url if args.dist_url != "env://" else None
    info = dist.init_distributed(dist_url=dist_url, world_size=world_size, rank=rank, local_rank=local_rank,
                                 backend=args.dist_backend or None, device=device_arg(args))
    try:
        return train(args, info)
    finally:
        dist.cleanup()


def device_arg(args):
    if args.device:
        return args.device
    if args.gpu is not None:
        return f"cuda:{args.gpu}"
    return None


def train(args, info):
    """Pretrain; returns the MoCo model (unwrapped)."""
    device = info.device
    os.makedirs(args.output_dir, exist_ok=True)
    resume_path = find_resume_checkpoint(args.output_dir, args.resume)
    ckpt = load_checkpoint(resume_path) if resume_path else None
    seed = ckpt["seed"] if ckpt is not None else (args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little") % 2**31)
    dist.seed_everything(seed, 0)  # the same initial weights on every rank, as MoCo seeds
    if info.rank == 0:
        with open(os.path.join(args.output_dir, "args.json"), "w") as f:
            json.dump({**vars(args), "seed_used": seed, "world_size_used": info.world_size}, f, indent=2)
        print("args: " + json.dumps({**vars(args), "seed_used": seed}, sort_keys=True), flush=True)

    # ==== preparing data ====
    loader, sampler, dataset, per_rank_batch, iters_per_epoch = build_data(args, info, seed)

    # ==== building model ====
    model, encoder_q, bn_splits = build_model(args, info, per_rank_batch)
    dist.seed_everything(seed, info.rank)  # then one RNG stream per rank
    optimizer = torch.optim.SGD(encoder_q.parameters(), args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(args) == torch.float16)
    lr_schedule = moco_lr_schedule(args.lr, args.epochs, iters_per_epoch, cos=args.cos, milestones=args.schedule)
    print_rank0(f"=> {args.arch}: {len(dataset)} images, {iters_per_epoch} iterations/epoch, batch "
                f"{per_rank_batch} x {info.world_size} processes, queue {args.moco_k}, bn-splits {bn_splits}",
                rank=info.rank)

    # ==== resuming ====
    start_epoch, start_iter = args.start_epoch, 0
    if ckpt is not None:
        load_state_strict(model, ckpt["state_dict"], "state_dict", resume_path)
        optimizer.load_state_dict(ckpt["optimizer"])
        if "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, start_iter = ckpt["epoch"], ckpt.get("iter", 0)
        rngs = ckpt.get("rng")
        if rngs is not None and len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank], device)
        print_rank0(f"=> resumed from '{resume_path}' at epoch {start_epoch}, iteration {start_iter}", rank=info.rank)

    # ==== training ====
    logger = ProgressLogger(iters_per_epoch, args.epochs, per_rank_batch * info.world_size, args.print_freq,
                            JsonLog(os.path.join(args.output_dir, "log.txt"), info.rank), info.rank,
                            formats={"Loss": ".4e", "Acc@1": "6.2f", "Acc@5": "6.2f"})
    stop = StopSignal(device)

    def save(epoch, it, numbered=False):
        rngs = gather_rng_states(device)  # collective: every rank takes part
        if info.rank != 0:
            return
        state = {"arch": args.arch, "epoch": epoch, "iter": it, "args": vars(args), "seed": seed,
                 "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict(), "rng": rngs, "world_size": info.world_size}
        save_checkpoint(os.path.join(args.output_dir, "checkpoint.pth.tar"), state)
        if numbered:
            save_checkpoint(os.path.join(args.output_dir, f"checkpoint_{epoch - 1:04d}.pth.tar"), state)

    total_done = start_epoch * iters_per_epoch + start_iter
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch, start_index=start_iter * per_rank_batch)
        dataset.set_epoch(epoch)
        logger.start_epoch(epoch, start_iter)
        last = train_one_epoch(model, encoder_q, loader, optimizer, scaler, lr_schedule, epoch, start_iter,
                               iters_per_epoch, args, device, logger)
        for it in last:  # generator: yields after every step so checkpoints/stops happen here
            total_done += 1
            interrupted = stop.requested(it, args.print_freq)
            if interrupted or (args.max_iters and total_done >= args.max_iters):
                if it + 1 < iters_per_epoch:
                    save(epoch, it + 1)
                else:  # the epoch is complete: resume at the start of the next one
                    save(epoch + 1, 0)
                why = "signal" if interrupted else f"--max-iters {args.max_iters}"
                print_rank0(f"=> stopped by {why} at epoch {epoch}, iteration {it + 1}; checkpoint saved, "
                            "run the same command to resume", rank=info.rank)
                return model
            if args.save_every_iters and (it + 1) % args.save_every_iters == 0 and it + 1 < iters_per_epoch:
                save(epoch, it + 1)
        logger.end_epoch({"lr": float(lr_schedule[(epoch + 1) * iters_per_epoch - 1])})
        check_ranks_in_sync(model, info)
        save(epoch + 1, 0, numbered=bool(args.save_freq) and (epoch + 1) % args.save_freq == 0)
        start_iter = 0
    return model


def build_data(args, info, seed):
    """Two views of the same MoCo augmentation per image; a resumable, per-rank sampler."""
    if args.batch_size % info.world_size != 0:
        raise UserError(f"-b/--batch-size {args.batch_size} is the TOTAL batch and must be divisible by the "
                        f"{info.world_size} processes")
    per_rank_batch = args.batch_size // info.world_size
    root = resolve_split(args.data, "train")
    # blur sigma is defined for 224-px crops (0.1-2.0 px): scale it with the crop so small crops are not
    # wiped out (identical to MoCo v2 at --crop-size 224)
    sigma = (0.1 * args.crop_size / 224, 2.0 * args.crop_size / 224)
    view = moco_transform(args.crop_size, aug_plus=args.aug_plus, min_scale=args.min_scale, blur_sigma=sigma)
    dataset = build_dataset(root, MultiViewTransform([view, view]), seed=seed)
    per_rank_samples = math.ceil(len(dataset) / info.world_size)
    iters_per_epoch = per_rank_samples // per_rank_batch  # drop_last, as MoCo
    if iters_per_epoch == 0:
        raise UserError(f"{len(dataset)} images in '{root}' is fewer than one batch of {args.batch_size}: "
                        "lower -b/--batch-size")
    sampler = ResumableSampler(len(dataset), num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", info.world_size)))
    workers = math.ceil(args.workers / max(local_world, 1))
    loader = build_loader(dataset, per_rank_batch, sampler, workers, drop_last=True)
    # the loader draws its workers' base seed from this generator, not from the global RNG, so that
    # starting an epoch (or resuming) does not shift the RNG stream that shuffle-BN uses
    loader.generator = torch.Generator().manual_seed(seed)
    return loader, sampler, dataset, per_rank_batch, iters_per_epoch


def build_model(args, info, per_rank_batch):
    """MoCo model on the device; the query encoder wrapped in DDP when distributed."""
    bn_splits = args.bn_splits or (8 if info.world_size == 1 else 1)
    if per_rank_batch % bn_splits != 0:
        raise UserError(f"per-process batch {per_rank_batch} is not divisible by --bn-splits {bn_splits}: "
                        "change -b or pass --bn-splits 1")
    check_queue_size(args.moco_k, per_rank_batch * info.world_size)
    model = MoCo(args.arch, dim=args.moco_dim, K=args.moco_k, head=moco_head(args),
                 bn_splits=bn_splits, cifar_stem=args.cifar_stem, image_size=args.crop_size).to(info.device)
    encoder_q = model.encoder_q
    if info.distributed:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        encoder_q = nn.parallel.DistributedDataParallel(encoder_q, device_ids=device_ids)
        copy_params(model.encoder_q, model.encoder_k)  # DDP broadcast rank 0's weights: keys start from them too
    return model, encoder_q, bn_splits


def train_one_epoch(model, encoder_q, loader, optimizer, scaler, lr_schedule, epoch, start_iter, iters_per_epoch,
                    args, device, logger):
    """One epoch of MoCo; a generator that yields the iteration index after each optimizer step."""
    model.train()
    dtype = amp_dtype(args)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    t_end = time.time()
    for it, (images, _) in enumerate(loader, start=start_iter):
        if it >= iters_per_epoch:
            break
        t_data = time.time() - t_end
        lr = float(lr_schedule[epoch * iters_per_epoch + it])
        set_lr(optimizer, lr)
        im_q = images[0].to(device, non_blocking=True)
        im_k = images[1].to(device, non_blocking=True)

        # momentum update of the key encoder, then queries (with grad) and shuffled keys (no grad)
        momentum_update(model.encoder_q, model.encoder_k, args.moco_m)
        with autocast:
            q = F.normalize(encoder_q(im_q), dim=1)  # (B, dim)
            with torch.no_grad():
                k = model.key(im_k)  # (B, dim): shuffle-BN across processes (or split-BN on one)

        # InfoNCE in fp32: logits (B, 1+K), the positive key in column 0
        logits = infonce_logits(q, k, model.queue.queue, args.moco_t)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=device)
        loss = F.cross_entropy(logits, labels)

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        # enqueue the keys of the whole global batch (after the loss: a key is never its own negative)
        model.queue.enqueue(dist.concat_all_gather(k.float()))

        with torch.no_grad():  # (K+1)-way instance accuracy, as MoCo prints it
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            acc1 = (top5[:, 0] == 0).float().mean() * 100
            acc5 = (top5 == 0).any(dim=1).float().mean() * 100
        logger.update(data_time=t_data, step_time=time.time() - t_end, Loss=loss.detach(), **{"Acc@1": acc1, "Acc@5": acc5})
        logger.maybe_print(it, lr)
        if (it + 1) % args.print_freq == 0 and not math.isfinite(logger.last["Loss"]):
            raise UserError(f"loss became {float(logger.last['Loss'])} at epoch {epoch}, iteration {it + 1}: "
                            "lower --lr or disable --amp; the last checkpoint is kept")
        yield it
        t_end = time.time()


# ==================================================================================================
class StopSignal:
    """SIGTERM / SIGUSR1 (SLURM pre-emption) ask for a checkpoint and a clean exit at the next log step."""

    def __init__(self, device):
        self.flag, self.device = False, device
        for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
            if sig is not None:
                try:
                    signal.signal(sig, self._handler)
                except ValueError:  # not the main thread
                    pass

    def _handler(self, signum, frame):
        self.flag = True

    def requested(self, it, every):
        """All ranks agree (one all-reduce every ``every`` iterations) so they stop at the same step."""
        if (it + 1) % max(every, 1) != 0:
            return False
        flag = torch.tensor([float(self.flag)], device=self.device)
        return bool(dist.all_reduce(flag, op="sum").item() > 0)


def check_ranks_in_sync(model, info):
    """Runtime sanity check (one small all-gather per epoch): the parameters of both encoders and the
    queue must be identical on every rank; BN running statistics legitimately differ (per-rank batches)."""
    if info.world_size == 1:
        return
    with torch.no_grad():
        tensors = [p for p in model.parameters()] + [model.queue.queue, model.queue.ptr]
        fp = torch.stack([torch.stack([t.double().sum(), t.double().square().sum()]).sum() for t in tensors])
        all_fp = dist.concat_all_gather(fp[None].to(info.device))
    if not bool((all_fp == all_fp[0]).all()):
        names = [n for n, _ in model.named_parameters()] + ["queue.queue", "queue.ptr"]
        bad = [names[i] for i in range(len(names)) if not bool((all_fp[:, i] == all_fp[0, i]).all())]
        raise RuntimeError(f"ranks diverged: {', '.join(bad[:5])} differ between processes")
    print_rank0(f"ranks in sync: encoder weights and queue identical on {info.world_size} processes", rank=info.rank)


def gather_rng_states(device):
    """Every rank's torch RNG state (rank order), so each resumes its own stream."""
    state = rng_state(device)
    torch_states = dist.concat_all_gather(state["torch"].to(device)[None]).cpu()
    out = []
    for r in range(torch_states.shape[0]):
        s = dict(state)
        s["torch"] = torch_states[r].to(torch.uint8)
        out.append(s)
    return out


def moco_head(args):
    """The head kind from ``--mlp`` (None: MoCo v1's Linear; True from old args.json files: v2's MLP)."""
    if args.mlp is True:
        return "simple"
    return args.mlp or "none"


# ==================================================================================================
def run_demo(args):
    """Build the demo data, pretrain a ResNet-18 on the CPU for a few minutes, compare kNN top-1 of the
    pretrained trunk with the same trunk at its random initialisation."""
    from src.demo_data import make_demo_dataset
    from src.features import extract_features
    from src.metrics import best_nn, weighted_knn

    t0 = time.time()
    root = make_demo_dataset(args.demo_dir)
    demo = dict(data=str(root), arch="resnet18", epochs=DEMO["epochs"], batch_size=DEMO["batch_size"],
                lr=DEMO["lr"], moco_k=DEMO["moco_k"], moco_t=DEMO["moco_t"], moco_m=DEMO["moco_m"],
                mlp=DEMO["mlp"], aug_plus=True, cos=True, crop_size=DEMO["crop_size"], workers=DEMO["workers"],
                seed=args.seed if args.seed is not None else 0, print_freq=DEMO["print_freq"],
                weight_decay=DEMO["weight_decay"], bn_splits=DEMO["bn_splits"], min_scale=DEMO["min_scale"],
                save_freq=0, max_iters=0)
    if args.output_dir == ".":
        demo["output_dir"] = "runs/moco-demo"
    for k, v in demo.items():
        setattr(args, k, v)
    print(f"demo: data in {root}, run in {args.output_dir}", flush=True)
    info = dist.init_distributed(device=device_arg(args))
    model = train(args, info)

    # the same trunk at random init: rebuilding with the run's seed reproduces the initial weights
    dist.seed_everything(args.seed, 0)
    init = MoCo(args.arch, dim=args.moco_dim, K=args.moco_k, head=moco_head(args)).encoder_q
    results = {}
    tf = eval_transform(resize=DEMO["eval_size"], crop_size=DEMO["eval_size"])
    train_set = build_dataset(os.path.join(root, "train"), tf)
    val_set = build_dataset(os.path.join(root, "val"), tf)
    loaders = [torch.utils.data.DataLoader(s, batch_size=256, shuffle=False, num_workers=1) for s in (train_set, val_set)]
    for name, enc in (("pretrained", model.encoder_q), ("random-init", init)):
        trunk = copy.deepcopy(enc).to(info.device)
        trunk.fc = nn.Identity()
        (ftr, ltr), (fva, lva) = [extract_features(trunk, ld, info.device) for ld in loaders]
        results[name] = {"weighted_knn_top1": weighted_knn(ftr, ltr, fva, lva, k=20, temperature=0.07),
                         "best_nn": best_nn(ftr, ltr, fva, lva, max_k=5)[0]}
        print(f"demo {name}: weighted kNN {results[name]['weighted_knn_top1']:.2f}%, "
              f"best-NN {results[name]['best_nn']:.2f}%", flush=True)
    results["seconds"] = time.time() - t0
    with open(os.path.join(args.output_dir, "demo.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"demo finished in {results['seconds']:.0f} s; evaluate the checkpoint again with: python -m eval.knn "
          f"{root} --pretrained {os.path.join(args.output_dir, 'checkpoint.pth.tar')} --resize {DEMO['eval_size']} "
          f"--crop-size {DEMO['eval_size']}", flush=True)
    print(f"demo kNN top-1 pretrained: {results['pretrained']['weighted_knn_top1']:.2f}%", flush=True)
    print(f"demo kNN top-1 random-init: {results['random-init']['weighted_knn_top1']:.2f}%", flush=True)
    dist.cleanup()
    return results


# Demo recipe for 2 CPU cores (about 3 minutes): MoCo v2 at 32 px with a queue small next to the dataset.
# README "Demo" lists what was measured with other settings (none yet beats random init by 5 points).
DEMO = dict(epochs=8, batch_size=128, lr=0.06, moco_k=1024, moco_t=0.2, moco_m=0.99, crop_size=32, eval_size=32,
            workers=1, print_freq=10, weight_decay=1e-4, bn_splits=8, min_scale=0.2, mlp="simple")


if __name__ == "__main__":
    exit_on_user_error(main)(get_args_parser().parse_args())
