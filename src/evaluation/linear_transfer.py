"""The linear transfer protocol of ``python -m eval.linear_transfer`` (ssl-transfer ``linear.py``;
docs/linear-transfer.md), without its flags: the C grid (:func:`reference_grid`), the metrics (:func:`top1_accuracy`,
:func:`mean_per_class_accuracy`, VOC2007's :func:`ap_11point`), the L-BFGS logistic regression warm-started along
the grid (:class:`LinearProbe`), the C search, refit and test (:func:`run_protocol`, which ``bench.linear_transfer``
times too), the cached features of each split (:func:`split_features`, :func:`dataset_splits`), the class checks and
SCE's transfer table (:func:`format_table`).
"""
import os
import time
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_curve

from src.data.transfer import DATASETS, METRIC_NAMES, carve_val
from src.evaluation.features import extract_features
from src.run.checkpoint import save_checkpoint
from src.run.errors import UserError


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
def format_table(method, scores):
    """SCE's transfer table (as markdown): the datasets run, in its column order, and their mean."""
    names = [n for n in DATASETS if n in scores]
    head = ["Method"] + [DATASETS[n][0] for n in names] + ["Avg."]
    row = [method] + [f"{scores[n]:.1f}" for n in names] + [f"{np.mean([scores[n] for n in names]):.1f}"]
    widths = [max(len(h), len(r)) for h, r in zip(head, row)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", line(row)])
