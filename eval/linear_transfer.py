"""Many-shot linear transfer on 11 datasets: multinomial logistic regression (L-BFGS) on frozen features, the
protocol of Ericsson et al., "How Well Do Self-Supervised Models Transfer?" (CVPR 2021; linusericsson/ssl-transfer
``linear.py``), which SCE (Denize et al., WACV 2023; juliendenize/eztorch docs) used for its transfer table.

A thin CLI: the protocol is ``src.evaluation.linear_transfer`` (which ``bench.linear_transfer`` times too); this
module reads the flags, the datasets and the trunk, runs the protocol on each dataset and reports.

Protocol, per dataset (docs/linear-transfer.md has the details and the folder layouts):

1. The trunk (head dropped, eval mode) embeds train, val and test after Resize(224, bicubic) -> CenterCrop(224) ->
   ImageNet normalisation (``--no_norm``: none, as the reference does for SimCLR). The raw pooled features (not
   normalised) are cached under ``--output_dir/features/<hash of the trunk's weights>``.
2. Validation: the official val split of Aircraft, DTD, Flowers and VOC2007; for the 7 others, 20% of train drawn
   with numpy's RNG seeded 0 (``src.data.transfer.carve_val``), from train listed in the reference's order (Food-101,
   SUN397, Cars, Pets and Caltech-101 read from their archives' metadata files, ``src.data.transfer.STANDARD``).
3. C search: ``sklearn.linear_model.LogisticRegression(solver="lbfgs")``, multinomial, L2, ``max_iter=100``,
   ``tol=1e-4`` (scikit-learn 0.22's stopping rule: L-BFGS on ``sum(loss) + ||W||^2 / (2C)`` to a gradient of
   ``tol``, on float64 features), fitted on train and scored on val for
   each C of ``1 / torch.logspace(-6, 5, 45)`` (C from 1e6 down to 1e-5), one classifier reused with
   ``warm_start=True`` so each fit starts from the previous C's solution; the first C with the best val score wins.
4. Refit on train + val with that C (warm-started from the search's last model, as the reference reuses it) and
   score the test split: top-1 (Food101, CIFAR10/100, SUN397, Cars, DTD), mean per-class accuracy (Aircraft, Pets,
   Caltech101, Flowers), or for VOC2007 the mean over the 20 classes of a binary classifier's 11-point AP.

Why not ``main_transfer.py --protocol lbfgs``: main_transfer is SSL-small's protocol, SGD that trains a head through
epochs with a launcher, checkpoints and resumption. This one fits a convex problem on cached features to
convergence (or 100 L-BFGS iterations) for each of 45 regularisation values: no epochs, no optimiser state, no
launcher, and its own data readers for 11 datasets; sharing a script would give each protocol the other's flags.

Prints one line per C and per dataset, then SCE's transfer table (Food101, CIFAR10, CIFAR100, SUN397, Cars,
Aircraft, VOC2007, DTD, Pets, Caltech101, Flowers, Avg.; juliendenize/eztorch ``docs/source/contributions/sce_wacv.md``);
everything also goes to ``<output_dir>/linear_transfer.json``.

    # CPU, two datasets, a main_sce.py checkpoint (arch read from it)
    python -m eval.linear_transfer --data_root /datasets/transfer --datasets cifar10 dtd \\
        --pretrained runs/sce/checkpoint.pth --output_dir runs/linear_transfer
    # one GPU, all 11, an SCE release; the C search runs on the CPU cores (scikit-learn)
    python -m eval.linear_transfer --data_root /datasets/transfer --datasets all --pretrained sce_1000ep.pth \\
        --arch resnet50 --batch_size 64 --workers 10 --output_dir runs/linear_transfer_sce
    # a published C instead of the search (ssl-transfer's --C): a one-value grid
    python -m eval.linear_transfer --data_root /datasets/transfer --datasets cifar10 --C_grid 0.316 ...
"""
import json
import os
import time

import numpy as np

from src.augment.image import transfer_transform
from src.data.transfer import DATASETS, METRIC_NAMES, check_layout, load_dataset, resolve_names
from src.evaluation.hashes import trunk_sha256
from src.evaluation.linear_transfer import check_classes, dataset_splits, format_table, reference_grid, run_protocol
from src.evaluation.pretrained import add_pretrained_args, build_trunk
from src.run import dist
from src.run.args import NONNEG_INT, POSITIVE, POSITIVE_INT, ArgumentParser, add_arg
from src.run.checkpoint import atomic_write, check_writable
from src.run.errors import UserError
from src.run.launch import exit_on_user_error


def _write_json(results, path):
    atomic_write(path, lambda f: f.write(json.dumps(results, indent=1).encode()), "--output_dir")


def get_args_parser(add_help=False):
    parser = ArgumentParser("Linear transfer (ssl-transfer protocol)", add_help=add_help)
    g = parser.add_argument_group("data")
    add_arg(g, "--data_root", default=None, help="folder holding one folder per dataset: " + ", ".join(DATASETS))
    add_arg(g, "--datasets", nargs="+", default=["all"],
            help="'all' (the 11, in the table's order) or some of: " + ", ".join(DATASETS) + " (default all)")
    add_arg(g, "--image_size", default=224, type=POSITIVE_INT,
            help="resize (shorter side, bicubic) and centre crop, px (224)")
    add_arg(g, "--no_norm", action="store_true",
            help="no ImageNet mean/std normalisation (the reference's --no-norm, for SimCLR trunks; default off)")
    add_arg(g, "--batch_size", default=64, type=POSITIVE_INT, help="images per forward pass (64, the reference's)")
    add_arg(g, "--workers", default=4, type=NONNEG_INT, help="data loading workers (4)")
    add_arg(g, "--device", default="", help="cpu, cuda, cuda:1 (default: cuda when available, else cpu)")
    g = parser.add_argument_group("trunk")
    add_pretrained_args(g, snake=True)
    add_arg(g, "--seed", default=0, type=int,
            help="seed of a random-init trunk and of the 20%% validation draw (0, the reference's)")
    g = parser.add_argument_group("logistic regression")
    add_arg(g, "--C_grid", nargs="+", type=POSITIVE, default=None,
            help="C values tried, in order (default: ssl-transfer's 45, 1 / logspace(-6, 5, 45)); one value skips "
                 "the search (a published C, the reference's --C)")
    add_arg(g, "--max_iter", default=100, type=POSITIVE_INT,
            help="L-BFGS iterations per fit (100, scikit-learn's default)")
    add_arg(g, "--tol", default=1e-4, type=POSITIVE,
            help="L-BFGS gradient tolerance on sum(loss) + |W|^2 / (2C), the reference's objective (1e-4, "
                 "scikit-learn's default); passed to scikit-learn, which divides that objective by n, as tol / n")
    add_arg(g, "--output_dir", default="./linear_transfer",
            help="feature caches (features/<trunk hash>/) and linear_transfer.json (default ./linear_transfer)")
    return parser


@exit_on_user_error
def main(args):
    """Run the protocol on each dataset, print the table last; returns the results dict."""
    if not args.data_root:
        raise UserError("no --data_root: pass the folder holding one folder per dataset (docs/linear-transfer.md)")
    grid = args.C_grid or reference_grid()
    names = resolve_names(args.datasets)
    for name in names:  # every folder checked before hours of feature extraction
        check_layout(args.data_root, name)

    # ==== the datasets, all listed (and checked) before any feature is extracted ====
    transform = transfer_transform(args.image_size, normalise=not args.no_norm)
    datasets = {}
    for name in names:
        datasets[name] = load_dataset(args.data_root, name, transform)
        check_classes(datasets[name], args.seed)

    # ==== the trunk ====
    device = dist.pick_device(args.device)
    model, args.arch, _ = build_trunk(args.pretrained, args.arch, args.cifar_stem, args.trunk_pattern,
                                      args.trust_checkpoint, args.seed, image_size=args.image_size,
                                      log=lambda line: print(line, flush=True))
    model, sha = model.to(device), trunk_sha256(model)
    cache_dir = os.path.join(args.output_dir, "features", f"{sha[:16]}-{args.image_size}px" + "-nonorm" * args.no_norm)
    method = os.path.splitext(os.path.basename(args.pretrained))[0] if args.pretrained else "random-init"
    results = {"method": method, "pretrained": args.pretrained, "arch": args.arch, "trunk_sha256": sha,
               "image_size": args.image_size, "normalised": not args.no_norm, "C_grid": grid,
               "max_iter": args.max_iter, "tol": args.tol, "datasets": {}}
    check_writable(args.output_dir, "--output_dir")
    out_json = os.path.join(args.output_dir, "linear_transfer.json")

    # ==== one dataset at a time ====
    for name in names:
        data, metric = datasets[name], DATASETS[name][1]
        if data.note:
            print(f"note: {data.note}", flush=True)
        t0 = time.time()
        splits = dataset_splits(model, data, cache_dir, args, device)
        extract_s = time.time() - t0
        (Xtr, _), (Xva, _), (Xte, _) = splits["train"], splits["val"], splits["test"]
        print(f"{name}: {len(Xtr)} train / {len(Xva)} val ({splits['val_source']}) / {len(Xte)} test rows, "
              f"{Xtr.shape[1]}-d features, {len(data.classes)} classes, metric {METRIC_NAMES[metric]}; "
              f"{'C search over ' + str(len(grid)) + ' values' if len(grid) > 1 else 'C fixed'}", flush=True)
        res = run_protocol(splits["train"], splits["val"], splits["trainval"], splits["test"], metric, grid,
                           args.max_iter, args.tol, log=lambda line: print(line, flush=True))
        res.pop("probe")
        res.update(metric=metric, val_source=splits["val_source"], train_order=data.order, n_train=len(Xtr),
                   n_val=len(Xva), n_test=len(Xte), n_classes=len(data.classes), feat_dim=int(Xtr.shape[1]),
                   extract_seconds=extract_s, folder=data.folder)
        results["datasets"][name] = res
        print(f"{name}: test {METRIC_NAMES[metric]} {res['test_score']:.2f} (C={res['best_C']:.4g}"
              + (f", val {max(res['val_scores']):.2f}" if res["val_scores"] else "")
              + f"; refit on {res['refit_rows']} train+val rows; {res['not_converged']} of {res['fits']} fits used "
              f"all {args.max_iter} iterations)", flush=True)
        _write_json(results, out_json)  # after each dataset: a long run keeps what it has done

    # ==== the table ====
    scores = {n: r["test_score"] for n, r in results["datasets"].items()}
    results["average"] = float(np.mean(list(scores.values())))
    _write_json(results, out_json)
    print(f"results written to {out_json}", flush=True)
    if len(scores) < len(DATASETS):
        print(f"note: Avg. is the mean of {len(scores)} of the {len(DATASETS)} datasets", flush=True)
    print(format_table(method, scores), flush=True)
    return results


if __name__ == "__main__":
    main(ArgumentParser("Linear transfer (ssl-transfer protocol)", parents=[get_args_parser()]).parse_args())
