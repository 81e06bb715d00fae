"""Best-NN: nearest-neighbour classification accuracy of a frozen trunk (SCE / SSL-small ``eval/knn.py``).

Protocol (``spec/evals.md`` D.8): both splits go through Resize(256) -> CenterCrop(224) -> Normalize.
The training set is cut into ``-g`` contiguous shards, one process each (one per GPU on CUDA). Every
shard process embeds the whole val set (in order), then streams its training shard batch by batch
through an exact Euclidean top-k (``src.metrics.knn_candidates``); the features can first be mapped
to another space (``--rep-space norm | shifted-norm``, applied per batch). The parent merges the
g*k candidates of each val image and, for every odd k' <= k, takes a plain majority vote of the k'
nearest labels (ties -> smallest class id); Best-NN is the best accuracy over k'. The InstDisc / DINO
weighted kNN (cosine, k=20, T=0.07) is reported as well; it needs all training features, which the
shards return to the parent, which holds them in CPU memory and runs the vote on the first device
(about 10 GB for ImageNet with a ResNet-50; skip it with ``--no-weighted`` for very large banks).
Shifted-norm subtracts a per-batch mean, so its numbers depend on -b and -g, as in the reference.

Last line of the output: ``best-NN=XX.XX%, k=K.``; the numbers also go to ``--output-json``.

    # CPU, a checkpoint of main_moco.py (arch and stem are read from it), two shard processes
    python -m eval.knn data/demo --pretrained runs/moco-demo/checkpoint.pth.tar --resize 48 --crop-size 48 -g 2
    # one GPU, ImageNet, a MoCo release (module.encoder_q.* keys are found automatically)
    python -m eval.knn /datasets/imagenet -a resnet50 --pretrained moco_v2_800ep_pretrain.pth.tar -b 512
    # paper setting: 8 GPUs, one shard each, max k 101 (about 10-15 min)
    python -m eval.knn /datasets/imagenet -a resnet50 --pretrained ckpt.pth.tar -b 1024 -g 8 -k 101
    # random-init baseline (seeded by --seed)
    python -m eval.knn data/demo -a resnet18 --cifar-stem --resize 48 --crop-size 48
"""
import argparse
import json
import os
import re
import tempfile

import torch
import torch.multiprocessing as mp

from src.args import add_amp_args, add_arg, amp_dtype
from src.augment import eval_transform
from src.data import SafeImageFolder
from src.errors import UserError, exit_on_user_error
from src.features import iter_features
from src.metrics import (REP_SPACES, best_nn_from_candidates, knn_candidates, merge_candidates, transform_rep,
                         weighted_knn)
from src.models import KNOWN_ARCHS, build_backbone
from src.pretrained import checkpoint_arch, load_trunk, read_checkpoint


def get_args_parser(add_help=False):
    """Flags of the Best-NN evaluation (MoCo dash-case; every two-word flag also in snake_case)."""
    parser = argparse.ArgumentParser("Best-NN evaluation", add_help=add_help)
    parser.add_argument("data", metavar="DIR", help="dataset root holding train/ and val/ class folders")
    g = parser.add_argument_group("model")
    add_arg(g, "-a", "--arch", default=None,
            help=f"trunk architecture (default: the checkpoint's, else resnet50); one of {', '.join(KNOWN_ARCHS)}")
    add_arg(g, "--cifar-stem", action=argparse.BooleanOptionalAction, default=None,
            help="ResNet 3x3 stride-1 stem for small images; --no-cifar-stem forces the ImageNet stem "
                 "(default: as recorded in the checkpoint, else off)")
    add_arg(g, "--pretrained", default="", help="checkpoint to evaluate (default empty: random init seeded by --seed)")
    add_arg(g, "--trunk-pattern", default=None,
            help="regex cut out of the checkpoint keys to get trunk keys, e.g. '^module\\.trunk\\.' "
                 "(default: detect the prefix automatically)")
    add_arg(g, "--trust-checkpoint", action="store_true",
            help="allow pickled Python objects in the checkpoint (runs code from the file: trusted files only)")
    add_arg(g, "--seed", default=0, type=int, help="seed of the random init when --pretrained is empty (default 0)")
    g = parser.add_argument_group("evaluation")
    add_arg(g, "-b", "--batch-size", default=512, type=int,
            help="images per batch and per shard process (default 512; 1024 in the paper setting)")
    add_arg(g, "-j", "--num-workers", "--workers", default=8, type=int,
            help="data loading workers per shard process (default 8)")
    add_arg(g, "-g", "--gpus", default=1, type=int,
            help="number of train-set shards, one process each: one per GPU on CUDA, CPU processes otherwise "
                 "(default 1; 8 in the paper setting)")
    add_arg(g, "-k", "--k", default=5, type=int, help="largest k for Best-NN; every odd k' <= k is tried "
                                                       "(default 5; 101 in the paper setting)")
    add_arg(g, "--rep-space", default="original", choices=REP_SPACES,
            help="feature space: original, norm (L2), shifted-norm / shift-norm (minus the batch mean, then L2)")
    add_arg(g, "--resize", default=256, type=int, help="shorter side after resizing, pixels (default 256)")
    add_arg(g, "--crop-size", default=224, type=int, help="centre crop side, pixels (default 224)")
    add_arg(g, "--knn-k", default=20, type=int, help="neighbours of the weighted kNN (default 20; 10-200)")
    add_arg(g, "--knn-t", default=0.07, type=float, help="temperature of the weighted kNN (default 0.07)")
    add_arg(g, "--no-weighted", action="store_true",
            help="skip the weighted kNN, which keeps all training features in memory")
    add_arg(g, "--device", default="", help="cpu, cuda (default: cuda when available)")
    add_arg(g, "--output-json", default=None,
            help="results file (default: knn.json next to the checkpoint, or in the current folder)")
    add_amp_args(parser)
    return parser


# ==== embedding and search ====
def embed_queries(model, val_loader, device, rep_space, amp=None, progress=None):
    """Embed the val set in order and map it to ``rep_space`` batch by batch.

    Returns:
        ``(query (N, D) on device, raw feats (N, D) CPU, labels (N,) CPU)``.
    """
    query, raw, labels = [], [], []
    for f, y in iter_features(model, val_loader, device, amp, progress=progress):
        query.append(transform_rep(f, rep_space))
        raw.append(f.cpu())
        labels.append(y.cpu())
    return torch.cat(query), torch.cat(raw), torch.cat(labels)


def search_bank(model, train_loader, query, device, max_k, rep_space, keep_feats=True, amp=None, progress=None):
    """Stream the training images through the trunk and keep every query's ``max_k`` nearest ones.

    Returns:
        dict with ``dists``, ``labels`` (N_val, max_k) CPU candidates and, if ``keep_feats``,
        ``train_feats`` (N_train, D) / ``train_labels`` (N_train,) on the CPU (else None).
    """
    kept = []

    def bank():
        for f, y in iter_features(model, train_loader, device, amp, progress=progress):
            if keep_feats:
                kept.append((f.cpu(), y.cpu()))
            yield f, y

    dists, labels = knn_candidates(query, bank(), max_k, rep_space)
    feats = torch.cat([f for f, _ in kept]) if kept else None
    train_labels = torch.cat([y for _, y in kept]) if kept else None
    return {"dists": dists.cpu(), "labels": labels.cpu(), "train_feats": feats, "train_labels": train_labels}


def summarize(parts, val_feats, val_labels, max_k, knn_k=20, knn_t=0.07, weighted=True, device="cpu"):
    """Merge shard candidates into Best-NN and (optionally) the weighted kNN top-1.

    Args:
        parts: list of :func:`search_bank` results, in shard order.
        val_feats: (N_val, D) raw val features; val_labels: (N_val,).
        device: where the weighted kNN runs (the training features are moved there).
    Returns:
        dict with ``best_nn``, ``best_k``, ``acc_by_k`` and ``weighted_knn_top1`` (None if skipped).
    """
    dists, labels = merge_candidates([(p["dists"], p["labels"]) for p in parts], k=max_k)
    best, best_k, acc_by_k = best_nn_from_candidates(dists, labels, val_labels, max_k)
    wknn = None
    if weighted:
        train_feats = torch.cat([p["train_feats"] for p in parts]).to(device)
        train_labels = torch.cat([p["train_labels"] for p in parts]).to(device)
        wknn = weighted_knn(train_feats, train_labels, val_feats, val_labels, k=knn_k, temperature=knn_t)
    return {"best_nn": best, "best_k": best_k, "acc_by_k": acc_by_k, "weighted_knn_top1": wknn}


def run_knn(model, train_loader, val_loader, device, max_k=5, rep_space="original", knn_k=20, knn_t=0.07,
            weighted=True, amp=None):
    """Best-NN and weighted kNN in this process (no sharding), e.g. from a training script.

    Args:
        model: trunk mapping images to (B, D) features, on ``device``.
        train_loader, val_loader: loaders of ``(images, labels)``, not shuffled.
        device: the model's device. max_k, rep_space: Best-NN settings. knn_k, knn_t: weighted kNN.
        weighted: also compute the weighted kNN. amp: optional autocast dtype.
    Returns:
        dict as :func:`summarize`.
    """
    query, val_feats, val_labels = embed_queries(model, val_loader, device, rep_space, amp)
    part = search_bank(model, train_loader, query, device, max_k, rep_space, keep_feats=weighted, amp=amp)
    return summarize([part], val_feats, val_labels, max_k, knn_k, knn_t, weighted, device)


# ==== data, model and shards ====
def build_datasets(args):
    """(train, val) image folders with the evaluation transform; UserError if a split is missing."""
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(args.data, split)):
            raise UserError(f"data folder '{os.path.join(args.data, split)}' does not exist: pass the dataset "
                            "root that holds train/ and val/ (one subfolder per class in each)")
    tf = eval_transform(resize=args.resize, crop_size=args.crop_size)
    train_set = SafeImageFolder(os.path.join(args.data, "train"), transform=tf)
    val_set = SafeImageFolder(os.path.join(args.data, "val"), transform=tf)
    if train_set.classes != val_set.classes:
        raise UserError(f"train/ and val/ of '{args.data}' have different class folders "
                        f"({len(train_set.classes)} vs {len(val_set.classes)}): labels would not match")
    return train_set, val_set


def build_model(args):
    """Trunk with the pretrained (or seeded random) weights, on the CPU. Sets ``args.arch`` / ``args.cifar_stem``."""
    ckpt = read_checkpoint(args.pretrained, trust=args.trust_checkpoint) if args.pretrained else {}
    ckpt_arch, ckpt_stem = checkpoint_arch(ckpt)
    args.arch = args.arch or ckpt_arch or "resnet50"
    args.cifar_stem = ckpt_stem if args.cifar_stem is None else args.cifar_stem
    torch.manual_seed(args.seed)
    model, _ = build_backbone(args.arch, cifar_stem=args.cifar_stem, image_size=args.crop_size)
    if ckpt:
        load_trunk(model, ckpt, trunk_pattern=args.trunk_pattern, arch=args.arch, source=args.pretrained,
                   log=lambda line: print(line, flush=True))
    else:
        print(f"no --pretrained: evaluating a random-init {args.arch} (seed {args.seed})", flush=True)
    return model


def shard_bounds(n, g):
    """Contiguous [lo, hi) index ranges of g shards of n items (sizes differ by at most one)."""
    return [(i * n // g, (i + 1) * n // g) for i in range(g)]


def _pick_device(args, rank):
    if args.device == "cpu" or (not args.device and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", rank % max(torch.cuda.device_count(), 1))


def run_shard(rank, model, args, bounds, out_dir=None):
    """One shard: embed val, stream train[bounds[rank]]; the result is returned, or saved under ``out_dir``."""
    device = _pick_device(args, rank)
    if device.type == "cpu" and len(bounds) > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // len(bounds)))
    train_set, val_set = build_datasets(args)
    lo, hi = bounds[rank]

    def loader(ds):  # in order: val rows must line up across shards
        return torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=False,
                                           num_workers=args.num_workers, pin_memory=device.type == "cuda")

    model = model.to(device)
    tag = f"[shard {rank + 1}/{len(bounds)}]"
    query, val_feats, val_labels = embed_queries(model, loader(val_set), device, args.rep_space, amp_dtype(args),
                                                 progress=f"{tag} val")
    part = search_bank(model, loader(torch.utils.data.Subset(train_set, range(lo, hi))), query, device, args.k,
                       args.rep_space, keep_feats=not args.no_weighted, amp=amp_dtype(args),
                       progress=f"{tag} train {lo}-{hi}")
    if rank == 0:
        part.update(val_feats=val_feats, val_labels=val_labels)
    if out_dir is None:
        return part
    torch.save(part, os.path.join(out_dir, f"shard{rank}.pt"))


def run_shards(model, args, n_train):
    """Run the ``-g`` shards (in this process when g is 1, else one spawned process each); their results."""
    g = min(args.gpus, n_train)
    if g < 1:
        raise UserError(f"-g/--gpus must be >= 1, got {args.gpus}")
    if _pick_device(args, 0).type == "cuda" and g > torch.cuda.device_count():
        raise UserError(f"-g {g} needs {g} GPUs but {torch.cuda.device_count()} are visible: lower -g")
    bounds = shard_bounds(n_train, g)
    if g == 1:
        return [run_shard(0, model, args, bounds)]
    with tempfile.TemporaryDirectory(prefix="knn-shards-") as out_dir:
        try:
            mp.spawn(run_shard, args=(model, args, bounds, out_dir), nprocs=g, join=True)
        except mp.ProcessRaisedException as exc:  # a UserError in a shard stays one line
            found = re.search(r"UserError: (.+)", str(exc))
            if found:
                raise UserError(found.group(1)) from None
            raise
        return [torch.load(os.path.join(out_dir, f"shard{i}.pt"), weights_only=True) for i in range(g)]


@exit_on_user_error
def main(args):
    """Evaluate Best-NN (and the weighted kNN) of a checkpoint; prints ``best-NN=XX.XX%, k=K.`` last."""
    if args.k < 1 or args.batch_size < 1:
        raise UserError(f"-k/--k and -b/--batch-size must be >= 1, got {args.k} and {args.batch_size}")
    # ==== preparing data ====
    train_set, val_set = build_datasets(args)
    print(f"data: {len(train_set)} train / {len(val_set)} val images, {len(train_set.classes)} classes", flush=True)

    # ==== building the trunk ====
    model = build_model(args)

    # ==== embedding and searching ====
    parts = run_shards(model, args, len(train_set))
    res = summarize(parts, parts[0]["val_feats"], parts[0]["val_labels"], args.k, args.knn_k, args.knn_t,
                    weighted=not args.no_weighted, device=_pick_device(args, 0))

    # ==== reporting ====
    res.update(pretrained=args.pretrained, arch=args.arch, rep_space=args.rep_space, n_train=len(train_set),
               n_val=len(val_set))
    out = args.output_json or os.path.join(
        os.path.dirname(os.path.abspath(args.pretrained)) if args.pretrained else os.getcwd(), "knn.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump({**res, "acc_by_k": {str(k): v for k, v in res["acc_by_k"].items()}}, f, indent=2)
    print("accuracy by k: " + "  ".join(f"k={k}: {v:.2f}%" for k, v in res["acc_by_k"].items()), flush=True)
    print(f"results written to {out}", flush=True)
    if res["weighted_knn_top1"] is not None:
        print(f"weighted kNN (k={args.knn_k}, T={args.knn_t:g}, cosine) top-1: {res['weighted_knn_top1']:.2f}%")
    print(f"best-NN={res['best_nn']:.2f}%, k={res['best_k']}.", flush=True)
    return res


if __name__ == "__main__":
    main(argparse.ArgumentParser("Best-NN evaluation", parents=[get_args_parser()]).parse_args())
