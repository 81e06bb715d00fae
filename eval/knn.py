"""Best-NN: nearest-neighbour classification accuracy of a frozen trunk (SCE / SSL-small ``eval/knn.py``).

A thin CLI: the search is ``src.evaluation.knn`` (which a training run's monitor calls too, so its figure equals
this command's); this module reads the flags, the folders and the checkpoint, runs the shards and reports.

Protocol (docs/knn.md): both splits go through Resize(256) -> CenterCrop(224) -> Normalize. The splits are read as a
training run's ``--monitor_data`` (``src.data.folders.resolve_split``): DIR/train and DIR/val class folders, or the
train and test splits of an extracted CIFAR / STL-10 archive.
The training set is cut into ``-g`` contiguous shards, one process each (one per GPU on CUDA). Every
shard process embeds the whole val set (in order), then streams its training shard batch by batch
through an exact Euclidean top-k (``src.metrics.StreamingKNN``); the features can first be mapped
to another space (``--rep-space norm | shift-norm``). The parent merges the g*k candidates of each
val image and, for every odd k' <= k, takes a plain majority vote of the k' nearest labels (ties ->
smallest class id); Best-NN is the best accuracy over k'. The InstDisc / DINO weighted kNN (cosine,
k=20, T=0.07) is reported as well, from a second streaming top-k over the same batches (cosine, the
largest similarities), so no process keeps the training features: memory per shard is the val
features (three copies of N_val x D) plus a few (N_val x batch) blocks, whatever the training set size.

``shift-norm`` centres each split by the mean of the WHOLE split, then L2-normalises: the reference's per-batch
mean estimates that only because its loaders shuffle, and ours keep the class-sorted folder order (docs/knn.md).
The training mean costs one extra forward pass over the training set.

The results file (``--output-json``, default knn.json next to the checkpoint) is checked for writability
before any work, and written before anything is printed. Non-finite features (a diverged trunk) stop
the run with one ``error:`` line instead of a score, and so does a training set of one class (every
neighbour would vote for it: 100% whatever the trunk).

Last line of the output: ``best-NN=XX.XX%, k=K.``; the numbers also go to ``--output-json``.

    # CPU, a checkpoint of main_moco.py (arch and stem are read from it), two shard processes
    python -m eval.knn data/demo --pretrained runs/moco-demo/checkpoint.pth.tar --resize 48 --crop-size 48 -g 2
    # one GPU, ImageNet, a MoCo release (module.encoder_q.* keys are found automatically)
    python -m eval.knn /datasets/imagenet -a resnet50 --pretrained moco_v2_800ep_pretrain.pth.tar -b 512
    # paper setting: 8 GPUs, one shard each, max k 101
    python -m eval.knn /datasets/imagenet -a resnet50 --pretrained ckpt.pth.tar -b 1024 -g 8 -k 101
    # random-init baseline (seeded by --seed)
    python -m eval.knn data/demo -a resnet18 --cifar-stem --resize 48 --crop-size 48
"""
import argparse
import os
import re
import tempfile

import torch
import torch.multiprocessing as mp

from src.augment.image import eval_transform
from src.data.folders import ArraySplit, SafeImageFolder, array_layout, build_dataset, require_folder, resolve_split
from src.evaluation.knn import SHIFT, bank_mean, bank_sum, search_shard, shard_bounds, summarize
from src.evaluation.pretrained import TRUST_HELP, checkpoint_arch, load_trunk, read_checkpoint
from src.evaluation.results import results_file, write_json
from src.metrics import REP_SPACES
from src.models import KNOWN_ARCHS, build_backbone
from src.run import dist
from src.run.args import NONNEG_INT, POSITIVE, POSITIVE_INT, ArgumentParser, add_amp_args, add_arg, amp_dtype
from src.run.errors import UserError
from src.run.launch import exit_on_user_error


def get_args_parser(add_help=False):
    """Flags of the Best-NN evaluation (MoCo dash-case; every two-word flag also in snake_case)."""
    parser = ArgumentParser("Best-NN evaluation", add_help=add_help)
    parser.add_argument("data", metavar="DIR", help="dataset root holding train/ and val/ class folders, or an "
                        "extracted CIFAR-10 / CIFAR-100 / STL-10 archive (its train and test splits)")
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
            help=TRUST_HELP)
    add_arg(g, "--seed", default=0, type=int, help="seed of the random init when --pretrained is empty (default 0)")
    g = parser.add_argument_group("evaluation")
    add_arg(g, "-b", "--batch-size", default=512, type=POSITIVE_INT,
            help="images per batch and per shard process (default 512; 1024 in the paper setting)")
    add_arg(g, "-j", "--num-workers", "--workers", default=8, type=NONNEG_INT,
            help="data loading workers per shard process (default 8)")
    add_arg(g, "-g", "--gpus", default=1, type=POSITIVE_INT,
            help="number of train-set shards, one process each: one per GPU on CUDA, CPU processes otherwise "
                 "(default 1; 8 in the paper setting)")
    add_arg(g, "-k", "--k", default=5, type=POSITIVE_INT, help="largest k for Best-NN; every odd k' <= k is tried "
                                                       "(default 5; 101 in the paper setting)")
    add_arg(g, "--rep-space", default="original", choices=REP_SPACES,
            help="feature space: original, norm (L2), shift-norm / shifted-norm (train features minus the training-set "
                 "mean, val features minus the val-set mean, then L2; one extra pass over the training set)")
    add_arg(g, "--resize", default=256, type=POSITIVE_INT, help="shorter side after resizing, pixels (default 256)")
    add_arg(g, "--crop-size", default=224, type=POSITIVE_INT, help="centre crop side, pixels (default 224)")
    add_arg(g, "--knn-k", default=20, type=POSITIVE_INT, help="neighbours of the weighted kNN (default 20; 10-200)")
    add_arg(g, "--knn-t", default=0.07, type=POSITIVE,
            help="temperature of the weighted kNN, > 0 (default 0.07; 0.05-0.2)")
    add_arg(g, "--no-weighted", action="store_true",
            help="skip the weighted kNN (a second streaming top-k over the same batches: one more matrix product "
                 "per batch, no training features kept)")
    add_arg(g, "--device", default="", help="cpu, cuda (default: cuda when available)")
    add_arg(g, "--output-json", default=None,
            help="results file (default: knn.json next to the checkpoint, or in the current folder)")
    add_amp_args(parser)
    return parser


# ==== data, model and shards ====
def build_datasets(args):
    """(train, val) with the evaluation transform, read as the training monitor reads ``--monitor_data``
    (``src.data.folders.resolve_split`` / ``build_dataset``): ``DIR/train`` and ``DIR/val`` class folders, or the
    train and test splits of the CIFAR-10 / CIFAR-100 pickles or STL-10 binaries DIR holds (STL-10's train: its
    labelled images).

    Raises:
        UserError: a missing split (or a file in its place), fewer than 2 classes, or other classes in val/.
    """
    array = array_layout(args.data) if os.path.isdir(args.data) else None
    if array is None:  # class folders: both splits, never DIR itself for both (val would be the training images)
        hint = "pass the dataset root that holds train/ and val/ (one subfolder per class in each)"
        for split in ("train", "val"):
            require_folder(os.path.join(args.data, split), hint)
    tf = eval_transform(resize=args.resize, crop_size=args.crop_size)
    train_split, val_split = (resolve_split(args.data, s, labelled=True) for s in ("train", "val"))
    train_set = _open(train_split, tf)
    if len(train_set.classes) < 2:  # every neighbour would vote for the one class: 100% whatever the trunk
        where = train_split if array else os.path.join(args.data, "train")
        raise UserError(f"'{where}' has {len(train_set.classes)} class folder "
                        f"({train_set.classes[0]}): kNN classification needs at least 2 classes; add class folders")
    val_set = _open(val_split, tf)
    if train_set.classes != val_set.classes:
        raise UserError(f"train/ and val/ of '{args.data}' have different class folders "
                        f"({len(train_set.classes)} vs {len(val_set.classes)}): labels would not match")
    return train_set, val_set


def _open(split, transform):
    """A split of :func:`build_datasets`: an archive's reader (``build_dataset``), or the class folders (a flat folder
    of images is refused: its images have no labels to vote with)."""
    return build_dataset(split, transform) if isinstance(split, ArraySplit) else SafeImageFolder(split, transform)


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


def _shard_setup(rank, args, bounds):
    """Device, (train shard, val) loaders in folder order and the log tag of one shard process."""
    device = dist.pick_device(args.device, local_rank=rank)
    if device.type == "cpu" and len(bounds) > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // len(bounds)))
    train_set, val_set = build_datasets(args)
    lo, hi = bounds[rank]

    def loader(ds):  # in order: val rows must line up across shards
        return torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=False,
                                           num_workers=args.num_workers, pin_memory=device.type == "cuda")

    return device, loader(torch.utils.data.Subset(train_set, range(lo, hi))), loader(val_set), \
        f"[shard {rank + 1}/{len(bounds)}]"


def _finish(result, rank, out_dir):
    """Return a shard's result (one shard, in this process) or save it for the parent (spawned shards)."""
    if out_dir is None:
        return result
    torch.save(result, os.path.join(out_dir, f"part{rank}.pt"))


def shard_sum(rank, model, args, bounds, out_dir=None):
    """shift-norm's first pass on one shard: float64 sum and count of its training features (see bank_sum)."""
    device, train_loader, _, tag = _shard_setup(rank, args, bounds)
    lo, hi = bounds[rank]
    result = bank_sum(model.to(device), train_loader, device, amp_dtype(args), progress=f"{tag} train mean {lo}-{hi}")
    return _finish(result, rank, out_dir)


def run_shard(rank, model, args, bounds, out_dir=None, mean=None):
    """One shard: :func:`src.evaluation.knn.search_shard` on train[bounds[rank]]; the result is returned, or saved
    under ``out_dir``. ``mean`` is the (D,) mean of the whole training set (shift-norm only)."""
    device, train_loader, val_loader, tag = _shard_setup(rank, args, bounds)
    lo, hi = bounds[rank]
    part = search_shard(model.to(device), train_loader, val_loader, device, args.k, args.rep_space, mean, args.knn_k,
                        not args.no_weighted, amp_dtype(args), progress=(f"{tag} val", f"{tag} train {lo}-{hi}"))
    return _finish(part, rank, out_dir)


def _in_shards(fn, model, args, bounds, *extra):
    """``fn(rank, model, args, bounds, out_dir, *extra)`` for every shard: in this process when there is one,
    else one spawned process each; the list of their results in shard order."""
    g = len(bounds)
    if g == 1:
        return [fn(0, model, args, bounds, None, *extra)]
    with tempfile.TemporaryDirectory(prefix="knn-shards-") as out_dir:
        try:
            mp.spawn(fn, args=(model, args, bounds, out_dir, *extra), nprocs=g, join=True)
        except mp.ProcessRaisedException as exc:  # a UserError in a shard stays one line
            found = re.search(r"UserError: (.+)", str(exc))
            if found:
                raise UserError(found.group(1)) from None
            raise
        return [torch.load(os.path.join(out_dir, f"part{i}.pt"), weights_only=True) for i in range(g)]


def run_shards(model, args, n_train):
    """Run the ``-g`` shards (shift-norm: a first round for the training mean); their search results."""
    g = min(args.gpus, n_train)
    if dist.pick_device(args.device).type == "cuda" and g > torch.cuda.device_count():
        raise UserError(f"-g {g} needs {g} GPUs but {torch.cuda.device_count()} are visible: lower -g")
    bounds = shard_bounds(n_train, g)
    mean = None
    if args.rep_space in SHIFT:
        mean = bank_mean(_in_shards(shard_sum, model, args, bounds),
                         what=f"the trunk ({args.pretrained or 'random init'})")
    return _in_shards(run_shard, model, args, bounds, mean)


# ==== reporting ====
@exit_on_user_error
def main(args):
    """Evaluate Best-NN (and the weighted kNN) of a checkpoint; prints ``best-NN=XX.XX%, k=K.`` last."""
    out = results_file(args.output_json, args.pretrained, "knn.json")  # writable: checked before any work
    # ==== preparing data ====
    train_set, val_set = build_datasets(args)
    print(f"data: {len(train_set)} train / {len(val_set)} val images, {len(train_set.classes)} classes", flush=True)

    # ==== building the trunk ====
    model = build_model(args)

    # ==== embedding and searching ====
    parts = run_shards(model, args, len(train_set))
    res = summarize(parts, parts[0]["val_labels"], args.k, args.knn_k, args.knn_t, weighted=not args.no_weighted)

    # ==== reporting ====
    res.update(pretrained=args.pretrained, arch=args.arch, rep_space=args.rep_space, n_train=len(train_set),
               n_val=len(val_set))
    write_json({**res, "acc_by_k": {str(k): v for k, v in res["acc_by_k"].items()}}, out)
    print("accuracy by k: " + "  ".join(f"k={k}: {v:.2f}%" for k, v in res["acc_by_k"].items()), flush=True)
    print(f"results written to {out}", flush=True)
    if res["weighted_knn_top1"] is not None:
        print(f"weighted kNN (k={args.knn_k}, T={args.knn_t:g}, cosine) top-1: {res['weighted_knn_top1']:.2f}%")
    print(f"best-NN={res['best_nn']:.2f}%, k={res['best_k']}.", flush=True)
    return res


if __name__ == "__main__":
    main(ArgumentParser("Best-NN evaluation", parents=[get_args_parser()]).parse_args())
