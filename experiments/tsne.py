"""t-SNE pictures of a frozen trunk's features: originals and their augmented views.

SSL-small ``experiments/tsne.py`` (docs/evaluation.md) with scikit-learn's t-SNE instead of a
hand-written one. The first ``--num-classes`` classes x ``-s`` images of a static positive-pair set
(``python -m experiments.sample-augs``) are embedded, L2-normalised, and the originals (view 0) and
both augmented views (1, 2) are mapped *together* to 2-D: PCA to ``--pca-dims`` dimensions, then t-SNE
(perplexity ``--perplexity``, ``--tsne-iters`` iterations, PCA initialisation, seeded by ``--seed``).

Written next to ``--pic-name`` (its extension is dropped; call the base NAME):
* ``NAME.png`` / ``NAME.pdf``: every point, coloured by view (original, view 1, view 2);
* ``NAME.Y0.npy``, ``NAME.Y1.npy``, ``NAME.Y2.npy``: (N, 2) coordinates of views 0, 1, 2, and
  ``NAME.labels.npy``: (N,) class ids (the reference names them ``<pic-name>.Y0.npy``);
* with ``--paint``: ``NAME.full_rep.png/.pdf`` (originals coloured by class, jet colours) and
  ``NAME.auged_rep.png/.pdf`` (class 0: each original and its two views joined by a triangle, over
  the other originals in grey; ``--zoomin`` adds an inset magnifying class 0);
* ``NAME.json``: the settings, the files and scikit-learn's final KL divergence.

    # CPU, a main_moco.py checkpoint, the demo pairs at 32 px (10 classes x 20 images)
    python -m experiments.tsne data/demo-pairs --pretrained runs/moco-demo/checkpoint.pth.tar --resize 32 \
        --crop-size 32 -s 20 --pic-name runs/moco-demo/tsne.pdf --paint --zoomin
    # the paper's figure: 10 ImageNet classes x 100 images, one GPU
    python -m experiments.tsne /datasets/auged-imagenet/train -a resnet50 --pretrained ckpt.pth.tar -b 1000 \
        --pic-name tsne.pdf --paint
"""
import argparse
import json
import os

import numpy as np

from src.evaluation.pair_eval import PositivePairDataset, add_pair_eval_args, embed_views
from src.evaluation.pretrained import build_trunk
from src.run import dist
from src.run.args import NONNEG_INT, POSITIVE, POSITIVE_INT, ArgumentParser, add_arg, amp_dtype, number
from src.run.checkpoint import check_writable
from src.run.errors import UserError
from src.run.launch import exit_on_user_error

MIN_TSNE_ITERS = 300  # scikit-learn spends the first 250 iterations on early exaggeration


def get_args_parser(add_help=False):
    """Flags of SSL-small's ``experiments/tsne.py`` plus the t-SNE settings."""
    parser = argparse.ArgumentParser("t-SNE of originals and augmented views", add_help=add_help)
    add_pair_eval_args(parser, 100, "images per class, the first ones in sorted order; 0 takes all (default 100)")
    g = parser.add_argument_group("t-SNE and figures")
    add_arg(g, "--pic-name", default="tsne.pdf",
            help="figure path; NAME.png and NAME.pdf are written, NAME = this without extension (default tsne.pdf)")
    add_arg(g, "--num-classes", default=10, type=NONNEG_INT,
            help="first classes (sorted) to embed; 0 takes all (default 10)")
    g.add_argument("--perplexity", default=30.0, type=POSITIVE,
                   help="t-SNE perplexity, > 0 and below the number of points, 3 per image (default 30; 5-50)")
    add_arg(g, "--tsne-iters", default=1000, type=number(int, low=MIN_TSNE_ITERS),
            help=f"t-SNE iterations (default 1000; >= {MIN_TSNE_ITERS}, the first 250 exaggerate early)")
    add_arg(g, "--pca-dims", default=50, type=POSITIVE_INT, help="PCA dimensions before t-SNE (default 50)")
    g.add_argument("--paint", action="store_true",
                   help="also draw NAME.full_rep (originals by class) and NAME.auged_rep (class 0's view triangles)")
    g.add_argument("--zoomin", action="store_true", help="add an inset magnifying class 0 to NAME.auged_rep")
    return parser


# ==== t-SNE ====
def run_tsne(x, perplexity=30.0, iters=1000, pca_dims=50, seed=0):
    """PCA then scikit-learn t-SNE.

    Args:
        x: (M, D) float array. perplexity: < M. iters: >= ``MIN_TSNE_ITERS``. pca_dims: PCA output size (capped
            by M, D).
        seed: random state of PCA and t-SNE.
    Returns:
        ``(Y (M, 2) float array, final KL divergence)``.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if not 0 < perplexity < len(x):
        raise UserError(f"--perplexity must be within (0, {len(x)}) for {len(x)} points, got {perplexity}")
    if iters < MIN_TSNE_ITERS:
        raise UserError(f"--tsne-iters must be >= {MIN_TSNE_ITERS}, got {iters}")
    dims = min(pca_dims, x.shape[0], x.shape[1])
    if dims < x.shape[1]:
        x = PCA(n_components=dims, random_state=seed).fit_transform(x)
    tsne = TSNE(n_components=2, perplexity=perplexity, max_iter=iters, init="pca", learning_rate="auto",
                random_state=seed)
    y = tsne.fit_transform(x)
    return y, float(tsne.kl_divergence_)


# ==== figures ====
def _save(fig, base):
    paths = [f"{base}.png", f"{base}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    return paths


def plot_views(plt, y0, y1, y2, base):
    """All points, coloured by view."""
    fig, ax = plt.subplots(figsize=(6, 6))
    for y, name, marker, colour in ((y1, "view 1 (SD)", "^", "tab:orange"), (y2, "view 2 (SD)", "v", "tab:green"),
                                    (y0, "original (D)", "o", "tab:blue")):
        ax.scatter(y[:, 0], y[:, 1], s=8, marker=marker, c=colour, label=name, alpha=0.7, linewidths=0)
    ax.legend(loc="best", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("t-SNE of originals and augmented views")
    paths = _save(fig, base)
    plt.close(fig)
    return paths


def plot_full_rep(plt, y0, labels, classes, base):
    """Originals coloured by class (jet colours)."""
    fig, ax = plt.subplots(figsize=(6, 6))
    n = max(len(classes), 1)
    for c in range(len(classes)):
        pts = y0[labels == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=10, color=plt.cm.jet(c / max(n - 1, 1)), label=classes[c], linewidths=0)
    if len(classes) <= 20:
        ax.legend(loc="best", fontsize=7, markerscale=1.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("originals, coloured by class")
    paths = _save(fig, f"{base}.full_rep")
    plt.close(fig)
    return paths


def _draw_triangles(ax, y0, y1, y2, idx, scale=1.0):
    for i in idx:
        tri = np.stack([y0[i], y1[i], y2[i], y0[i]])
        ax.plot(tri[:, 0], tri[:, 1], color="tab:red", linewidth=0.5 * scale, alpha=0.6)
    ax.scatter(y0[idx, 0], y0[idx, 1], s=14 * scale, marker="o", c="tab:blue", label="original", zorder=3)
    ax.scatter(y1[idx, 0], y1[idx, 1], s=14 * scale, marker="^", c="tab:orange", label="view 1", zorder=3)
    ax.scatter(y2[idx, 0], y2[idx, 1], s=14 * scale, marker="v", c="tab:green", label="view 2", zorder=3)


def plot_auged_rep(plt, y0, y1, y2, labels, class_name, base, zoomin=False):
    """Class 0: each original and its two views joined by a triangle, over all originals in grey."""
    idx = np.flatnonzero(labels == 0)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.scatter(y0[:, 0], y0[:, 1], s=6, c="lightgrey", linewidths=0, label="other originals")
    _draw_triangles(ax, y0, y1, y2, idx)
    ax.legend(loc="best", fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"class '{class_name}': originals and their augmented views")
    if zoomin and len(idx):
        pts = np.concatenate([y0[idx], y1[idx], y2[idx]])
        lo, hi = pts.min(0), pts.max(0)
        pad = 0.05 * (hi - lo).max() + 1e-6
        inset = ax.inset_axes([1.04, 0.45, 0.55, 0.55])  # right of the plot: hides no point
        inset.scatter(y0[:, 0], y0[:, 1], s=4, c="lightgrey", linewidths=0)
        _draw_triangles(inset, y0, y1, y2, idx, scale=0.6)
        inset.set_xlim(lo[0] - pad, hi[0] + pad)
        inset.set_ylim(lo[1] - pad, hi[1] + pad)
        inset.set_xticks([])
        inset.set_yticks([])
        ax.indicate_inset_zoom(inset, edgecolor="black")
    paths = _save(fig, f"{base}.auged_rep")
    plt.close(fig)
    return paths


@exit_on_user_error
def main(args):
    """Embed, run t-SNE, save the coordinates, the figures and a JSON summary."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    base = os.path.splitext(args.pic_name)[0] if args.pic_name.lower().endswith((".pdf", ".png")) else args.pic_name
    check_writable(os.path.dirname(os.path.abspath(base)), "--pic-name")  # before the embedding, not after
    # ==== preparing data ====
    pairs = PositivePairDataset(args.data, args.dataset_mode, resize=args.resize, crop_size=args.crop_size,
                                per_class=args.sample_per_class, max_classes=args.num_classes)
    views = pairs.views[:3]
    print(f"data: {len(pairs)} images of {len(pairs.classes)} classes, views {views}", flush=True)

    # ==== building the trunk and embedding ====
    model, args.arch, _ = build_trunk(args.pretrained, args.arch, args.cifar_stem, args.trunk_pattern,
                                      args.trust_checkpoint, args.seed, args.crop_size,
                                      log=lambda line: print(line, flush=True))
    n_points = len(pairs) * len(views)
    if not args.perplexity < n_points:  # known now, before the embedding
        raise UserError(f"--perplexity must be below the number of points ({n_points}: {len(pairs)} images x "
                        f"{len(views)} views), got {args.perplexity}: lower it or raise -s / --num-classes")
    feats, labels = embed_views(model, pairs, views, args.batch_size, args.workers,
                                dist.pick_device(args.device, args.gpu), amp_dtype(args))

    # ==== t-SNE ====
    x = np.concatenate([feats[v].numpy() for v in views]).astype(np.float64)
    y, kl = run_tsne(x, args.perplexity, args.tsne_iters, args.pca_dims, args.seed)
    n = len(pairs)
    y0, y1, y2 = y[:n], y[n:2 * n], y[2 * n:]
    labels = labels.numpy()
    print(f"t-SNE of {len(x)} points: KL divergence {kl:.4f}", flush=True)

    # ==== saving ====
    files = []
    for i, yi in enumerate((y0, y1, y2)):
        np.save(f"{base}.Y{i}.npy", yi)
        files.append(f"{base}.Y{i}.npy")
    np.save(f"{base}.labels.npy", labels)
    files.append(f"{base}.labels.npy")
    files += plot_views(plt, y0, y1, y2, base)
    if args.paint:
        files += plot_full_rep(plt, y0, labels, pairs.classes, base)
        files += plot_auged_rep(plt, y0, y1, y2, labels, pairs.classes[0], base, zoomin=args.zoomin)
    res = {"pretrained": args.pretrained, "data": args.data, "arch": args.arch, "n_images": n,
           "classes": pairs.classes, "views": list(views), "perplexity": args.perplexity,
           "tsne_iters": args.tsne_iters, "pca_dims": args.pca_dims, "seed": args.seed, "kl_divergence": kl,
           "files": files}
    with open(f"{base}.json", "w") as f:
        json.dump(res, f, indent=2)
    print("wrote " + ", ".join(files + [f"{base}.json"]), flush=True)
    return res


if __name__ == "__main__":
    main(ArgumentParser("t-SNE of originals and augmented views", parents=[get_args_parser()]).parse_args())
