"""Many-shot linear transfer on 11 datasets: multinomial logistic regression (L-BFGS) on frozen features, the
protocol of Ericsson et al., "How Well Do Self-Supervised Models Transfer?" (CVPR 2021; linusericsson/ssl-transfer
``linear.py``), which SCE (Denize et al., WACV 2023; juliendenize/eztorch docs) used for its transfer table.

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
import hashlib
import json
import os
import time
import warnings

import numpy as np
import torch
import torchvision.transforms as T
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_curve

from src.augment.views import IMAGENET_MEAN, IMAGENET_STD
from src.data.transfer import DATASETS, METRIC_NAMES, carve_val, check_layout, load_dataset, resolve_names
from src.evaluation.features import extract_features
from src.evaluation.pair_eval import build_trunk
from src.evaluation.pretrained import add_pretrained_args
from src.run import dist
from src.run.args import NONNEG_INT, POSITIVE, POSITIVE_INT, ArgumentParser, add_arg
from src.run.checkpoint import atomic_write, check_writable, save_checkpoint
from src.run.errors import UserError
from src.run.launch import exit_on_user_error


def reference_grid(n=45):
    """ssl-transfer's C values: ``1 / wd`` for ``wd`` in ``torch.logspace(-6, 5, n)`` (float32, as there), so the
    values match its published ones (e.g. 0.3162277621819913); from 1e6 down to 1e-5."""
    return [1.0 / wd for wd in torch.logspace(-6, 5, n).tolist()]


# ==== metrics ====
def top1_accuracy(pred, y):
    """Percent of rows with ``pred == y``."""
    return 100.0 * float(np.mean(np.asarray(pred) == np.asarray(y)))


def mean_per_class_accuracy(pred, y):
    """Mean over the classes present in ``y`` of their recall, in percent (ssl-transfer: the diagonal of the
    confusion matrix over its row sums, averaged)."""
    pred, y = np.asarray(pred), np.asarray(y)
    return 100.0 * float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def ap_11point(scores, positives):
    """VOC2007's 11-point AP as ssl-transfer's ``voc_eval_cls``: scikit-learn's precision-recall curve (which ends
    at recall 0, precision 1), then the mean over t in {0, 0.1, ..., 1} of the best precision at recall >= t.

    Args:
        scores: (N,) decision values. positives: (N,) in {0, 1}.
    Returns:
        float in [0, 1].
    """
    precision, recall, _ = precision_recall_curve(np.asarray(positives), np.asarray(scores, dtype=np.float64))
    return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                          for t in np.linspace(0, 1, 11)]))


# ==== the classifier ====
class LinearProbe:
    """L-BFGS logistic regression on features, refitted for each C from the previous solution (warm start).

    ``metric`` "top1" / "mean_per_class": one multinomial LogisticRegression over the (N,) labels. "map11": one
    binary LogisticRegression per column of the (N, C) 0/1 labels, each fitted with 2C. Why 2C: the reference
    (scikit-learn 0.22, ``multi_class="multinomial"``) fits a binary problem as a 2-row softmax with both rows
    penalised, whose optimum is the binary logistic regression with w = w1 - w0 and twice the C; scikit-learn 1.5+
    has no such mode. Each VOC class keeps its own warm-start chain (the reference passes one object from class to
    class, so each class started from the previous class's weights: an accident of reuse, not kept).

    Stopping rule: scikit-learn 0.22 (the reference's) ran L-BFGS on ``sum(loss) + ||W||^2 / (2C)`` (the sum of the
    rows' cross-entropies, the L2 penalty on the weights, not the intercepts) with ``gtol=tol``; scikit-learn 1.2+
    minimises that objective divided by ``n`` (a mean loss plus ``||W||^2 / (2 C n)``), still with ``gtol=tol``, so
    it would stop when the reference's gradient is ``n`` times larger. ``tol / n`` is passed instead: the
    reference's rule (the same iterations, as L-BFGS steps do not change when the objective is scaled).

    Args:
        metric: "top1", "mean_per_class" or "map11".
        max_iter, tol: L-BFGS iterations and gradient tolerance on the reference's objective, the sum over rows
            (100, 1e-4: the reference's scikit-learn defaults).
    After :meth:`fit`: ``fit_rows`` (rows of the last fit), ``n_iter`` (iterations per classifier), ``models``.
    """

    def __init__(self, metric, max_iter=100, tol=1e-4):
        self.metric, self.max_iter, self.tol = metric, max_iter, tol
        self.models, self.fit_rows, self.n_iter = None, 0, []

    def _targets(self, y):
        return [y[:, j] for j in range(y.shape[1])] if self.metric == "map11" else [y]

    def fit(self, X, y, C):
        """Fit on (N, D) features ``X`` and labels ``y`` with inverse regularisation ``C``; returns self."""
        targets = self._targets(y)
        if self.models is None or any(not np.array_equal(m.classes_, np.unique(t))
                                      for m, t in zip(self.models, targets)):
            self.models = [LogisticRegression(solver="lbfgs", max_iter=self.max_iter, tol=self.tol, warm_start=True)
                           for _ in targets]  # a new label set (or the first fit): cold start
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # as the reference: 100 iterations is the budget
            for model, t in zip(self.models, targets):
                c_fit = 2.0 * C if self.metric == "map11" else C
                model.set_params(C=c_fit, tol=self.tol / X.shape[0])  # the reference's rule on its summed loss
                model.fit(X, t)
        self.fit_rows, self.n_iter = X.shape[0], [int(np.max(m.n_iter_)) for m in self.models]
        return self

    def score(self, X, y):
        """The dataset's metric on (X, y), in percent."""
        if self.metric == "map11":
            return 100.0 * float(np.mean([ap_11point(m.decision_function(X), t)
                                          for m, t in zip(self.models, self._targets(y))]))
        pred = self.models[0].predict(X)
        return top1_accuracy(pred, y) if self.metric == "top1" else mean_per_class_accuracy(pred, y)


def run_protocol(train, val, trainval, test, metric, grid, max_iter=100, tol=1e-4, log=print):
    """C search on (train, val), refit on trainval with the best C, score on test.

    Args:
        train, val, trainval, test: ``(X (N, D), y)`` pairs (fitted in float64); ``val`` unused with a one-value
            grid (the reference's ``--C``: no search, a cold fit on trainval).
        metric: "top1", "mean_per_class" or "map11". grid: C values, tried in order (first best wins).
        max_iter, tol: see :class:`LinearProbe`. log: callable for one line per C.
    Returns:
        dict: ``best_C``, ``val_scores`` (one per C, [] without a search), ``test_score``, ``refit_rows``,
        ``not_converged`` (fits that used all ``max_iter`` iterations) of ``fits``, ``search_seconds``,
        ``refit_seconds``, ``probe`` (the refitted :class:`LinearProbe`).
    """
    # float64, as the reference's scikit-learn 0.22 (its lbfgs cast X to float64): with float32 the line search
    # stalls near the reference's tight tolerance (more evaluations per iteration, earlier stops)
    train, val, trainval, test = [(np.asarray(X, dtype=np.float64), y) for X, y in (train, val, trainval, test)]
    probe, val_scores, capped, fits, t0 = LinearProbe(metric, max_iter, tol), [], 0, 0, time.time()
    if len(grid) > 1:
        for C in grid:
            t_c = time.time()
            val_scores.append(probe.fit(*train, C).score(*val))
            capped, fits = capped + sum(n >= max_iter for n in probe.n_iter), fits + len(probe.n_iter)
            log(f"  C={C:<10.4g} val {METRIC_NAMES[metric]} {val_scores[-1]:6.2f}  "
                f"({max(probe.n_iter)} iterations, {time.time() - t_c:.1f} s)")
    best_C = grid[int(np.argmax(val_scores))] if val_scores else grid[0]  # argmax: the first of equal scores
    t1 = time.time()
    probe.fit(*trainval, best_C)
    capped, fits = capped + sum(n >= max_iter for n in probe.n_iter), fits + len(probe.n_iter)
    return {"best_C": best_C, "val_scores": val_scores, "test_score": probe.score(*test), "refit_rows": probe.fit_rows,
            "not_converged": capped, "fits": fits, "search_seconds": t1 - t0, "refit_seconds": time.time() - t1,
            "probe": probe}


# ==== features ====
def trunk_sha256(model):
    """SHA-256 of a module's state dict (names, dtypes, shapes and bytes): the features' cache key, so a renamed
    checkpoint reuses its cache and an overwritten one does not."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def split_features(model, split, path, batch_size, workers, device, name):
    """(N, D) float32 features of a :class:`src.data.transfer.Split`, read from ``path`` when it holds this split's
    features (same listing key), else extracted (progress lines with images/s) and saved there.

    Raises:
        UserError: non-finite features (nothing is cached or scored).
    """
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True) if os.path.isfile(path) else {}
    except Exception:  # noqa: BLE001 - an unreadable cache is recomputed
        cached = {}
    feats = cached.get("feats") if isinstance(cached, dict) and cached.get("key") == split.key else None
    if torch.is_tensor(feats) and feats.ndim == 2 and feats.shape[0] == len(split.labels):
        print(f"{name}: {feats.shape[0]} cached features from {path}", flush=True)
        return _finite(feats.numpy(), name)
    loader = torch.utils.data.DataLoader(split.dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    feats, _ = extract_features(model, loader, device, progress=f"features {name}")
    feats = _finite(feats.numpy(), name)
    save_checkpoint(path, {"feats": torch.from_numpy(feats), "key": split.key}, "--output_dir")  # whole or absent
    return feats


def _finite(feats, name):
    bad = int((~np.isfinite(feats)).any(axis=1).sum())
    if bad:
        raise UserError(f"{bad} of {feats.shape[0]} feature rows of {name} are not finite (NaN or inf): the trunk's "
                        "weights or its forward pass are broken; no score is computed")
    return feats


def dataset_splits(model, data, cache_dir, args, device):
    """Features and labels of one dataset: dict of ``train``, ``val``, ``trainval``, ``test`` ``(X, y)`` pairs and
    ``val_source`` (how val was obtained)."""
    feats = {s: split_features(model, getattr(data, s), os.path.join(cache_dir, f"{data.name}_{s}.pt"),
                               args.batch_size, args.workers, device, f"{data.name}/{s}")
             for s in ("train", "val", "test") if getattr(data, s) is not None}
    out = {"test": (feats["test"], data.test.labels)}
    if data.val is not None:
        out["train"], out["val"] = (feats["train"], data.train.labels), (feats["val"], data.val.labels)
        out["trainval"] = (np.concatenate([feats["train"], feats["val"]]),
                           np.concatenate([data.train.labels, data.val.labels]))
        out["val_source"] = "the val split"
    else:
        tr, va = carve_val(len(data.train.labels), seed=args.seed)
        out["train"] = (feats["train"][tr], data.train.labels[tr])
        out["val"] = (feats["train"][va], data.train.labels[va])
        out["trainval"] = (feats["train"], data.train.labels)
        out["val_source"] = f"20% of train, seed {args.seed}"
    return out


def check_classes(data, seed):
    """Every fit needs rows of 2 classes or more: refuse a dataset of one class, or whose train (or train + val)
    rows hold one, before any feature is extracted. VOC's binary problems are checked when its splits are read."""
    if data.name == "voc2007":
        return
    if len(data.classes) < 2:
        raise UserError(f"'{data.folder}' holds {len(data.classes)} class ({', '.join(map(str, data.classes))}): "
                        "logistic regression needs at least 2 classes; add the other classes' images (or leave "
                        f"{data.name} out of --datasets)")
    labels = data.train.labels
    rows = {"train": labels[carve_val(len(labels), seed=seed)[0]], "train + val": labels} if data.val is None else \
        {"train": labels, "train + val": np.concatenate([labels, data.val.labels])}
    for part, y in rows.items():
        present = np.unique(y)
        if len(present) < 2:
            raise UserError(f"the {part} rows of {data.name} ({len(y)} images) hold only class "
                            f"{data.classes[present[0]] if len(present) else '-'}: logistic regression needs at least "
                            "2 classes; add training images of the other classes")


# ==== reporting ====
def _write_json(results, path):
    atomic_write(path, lambda f: f.write(json.dumps(results, indent=1).encode()), "--output_dir")


def format_table(method, scores):
    """SCE's transfer table (as markdown): the datasets run, in its column order, and their mean."""
    names = [n for n in DATASETS if n in scores]
    head = ["Method"] + [DATASETS[n][0] for n in names] + ["Avg."]
    row = [method] + [f"{scores[n]:.1f}" for n in names] + [f"{np.mean([scores[n] for n in names]):.1f}"]
    widths = [max(len(h), len(r)) for h, r in zip(head, row)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", line(row)])


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
    mean, std = ((0.0,) * 3, (1.0,) * 3) if args.no_norm else (IMAGENET_MEAN, IMAGENET_STD)
    transform = T.Compose([T.Resize(args.image_size, interpolation=T.InterpolationMode.BICUBIC),
                           T.CenterCrop(args.image_size), T.ToTensor(), T.Normalize(mean, std)])
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
