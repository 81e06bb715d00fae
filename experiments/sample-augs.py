"""Write a static positive-pair dataset: each image's original plus frozen augmented views.

For every class folder of SRC (sorted) the first N images (sorted names) are written to DST as
``DST/<class>/<stem>-0.jpeg`` (the original, re-encoded at full resolution) and ``<stem>-1.jpeg``,
``<stem>-2.jpeg``, ... (``--size`` x ``--size`` augmented views; see ``src/augment/pairs.py`` for the modes:
moco, nointer, easy, hard, super-hard). ``eval.instdisc``, ``eval.stats-dist`` and ``experiments.tsne``
read the result (docs/evaluation.md). SSL-small ``experiments/sample-augs.py``, with these changes:
sorted instead of ``os.listdir`` order, each image's views seeded from ``(--seed, class, file name)``
so the output does not depend on ``-j`` or on N, parallel workers with a progress bar, images whose
views all exist are skipped (re-run the command to finish an interrupted job), and a
``sample-augs.json`` manifest in DST.

    # the paper's set: 50 validation images per class, MoCo v2 views at 224 px, 16 processes
    python -m experiments.sample-augs /datasets/imagenet/val /datasets/auged-imagenet/val --aug moco \
        --images-per-class 50 -j 16
    # the demo data (64 px): views at 32 px like the demo's crops
    python -m experiments.sample-augs data/demo/val data/demo-pairs --aug moco --images-per-class 20 --size 32
    # crop pairs with IoU in [0.05, 0.25] and their masked variants (10 views per image)
    python -m experiments.sample-augs data/demo/val data/demo-hard --aug hard --size 32
"""
import argparse
import errno
import io
import json
import os
import sys
import time
import zlib
from multiprocessing import Pool

import numpy as np
from PIL import Image

from src.augment.pairs import MODES, VIEWS_PER_MODE, make_views
from src.data.decode import to_rgb
from src.data.folders import IMG_EXTENSIONS, fork_rng, sample_seed
from src.evaluation.pair_eval import view_name
from src.run.args import NONNEG_INT, POSITIVE_INT, ArgumentParser, add_arg, number
from src.run.checkpoint import atomic_write, check_writable
from src.run.errors import UserError
from src.run.launch import exit_on_user_error


def get_args_parser(add_help=False):
    """Flags (MoCo / SSL-small dash-case; two-word flags also in snake_case)."""
    parser = argparse.ArgumentParser("Static positive-pair dataset", add_help=add_help)
    parser.add_argument("src", metavar="SRC", help="image folder with one subfolder per class (e.g. imagenet/val)")
    parser.add_argument("dst", metavar="DST", help="output folder (created if missing)")
    add_arg(parser, "--aug", default="moco", choices=MODES,
            help="how views are made: moco (2 MoCo v2 views), nointer (2 views from different quadrants), "
                 "easy | hard | super-hard (crop pairs with IoU in [0.25,1] | [0.05,0.25] | [1e-4,0.05] and "
                 "8 masked variants) (default moco)")
    add_arg(parser, "--images-per-class", default=50, type=NONNEG_INT,
            help="first N images (sorted names) of every class; 0 takes all (default 50; the paper: 50 of val)")
    add_arg(parser, "--size", default=224, type=POSITIVE_INT, help="side of the augmented views in pixels (default 224)")
    add_arg(parser, "--min-scale", default=0.2, type=float,
            help="smallest crop area fraction of moco and of the IoU modes' crops (default 0.2)")
    add_arg(parser, "--seed", default=0, type=int, help="seed of all views; same seed, same files (default 0)")
    add_arg(parser, "-j", "--workers", default=1, type=POSITIVE_INT, help="worker processes (default 1; one per core)")
    add_arg(parser, "--quality", default=75, type=number(int, 1, 95), help="JPEG quality 1-95 (default 75, PIL's default)")
    add_arg(parser, "--overwrite", action="store_true", help="rewrite images whose views already exist")
    return parser


# ==== listing ====
def list_images(src, per_class):
    """``[(class, file name)]`` for the first ``per_class`` images of every class folder, both sorted."""
    if not os.path.isdir(src):
        raise UserError(f"source folder '{src}' does not exist: pass an image folder with one subfolder per class")
    classes = sorted(e.name for e in os.scandir(src) if e.is_dir())
    if not classes:
        raise UserError(f"source folder '{src}' has no class subfolders: pass e.g. imagenet/val, not a flat folder")
    todo = []
    for cls in classes:
        names = sorted(n for n in os.listdir(os.path.join(src, cls)) if n.lower().endswith(IMG_EXTENSIONS))
        if not names:  # a class without images would still count as a class in the summary and the pairs
            raise UserError(f"class folder '{os.path.join(src, cls)}' has no images (extensions "
                            f"{' '.join(IMG_EXTENSIONS)}): add images or remove the folder")
        stems = [os.path.splitext(n)[0] for n in names]
        if len(set(stems)) != len(stems):
            raise UserError(f"class folder '{os.path.join(src, cls)}' has two images with one name stem "
                            "(e.g. a.jpg and a.png): their views would overwrite each other")
        todo += [(cls, n) for n in (names[:per_class] if per_class else names)]
    if not todo:
        raise UserError(f"no images (extensions {' '.join(IMG_EXTENSIONS)}) in the class folders of '{src}'")
    return classes, todo


# ==== one image ====
def write_views(task):
    """Write view 0 and the augmented views of one image; returns ``(status, message)``.

    ``task``: (src, dst, class, file name, mode, size, min_scale, seed, quality, overwrite). The seed of
    the image's views is a hash of (seed, class, file name), so the files do not depend on the order
    or the worker that makes them.
    """
    src, dst, cls, name, mode, size, min_scale, seed, quality, overwrite = task
    stem = os.path.splitext(name)[0]
    out_dir = os.path.join(dst, cls)
    n_views = VIEWS_PER_MODE[mode]
    paths = [os.path.join(out_dir, view_name(stem, v)) for v in range(n_views + 1)]
    if not overwrite and all(os.path.exists(p) for p in paths):
        return "existing", None
    try:
        with open(os.path.join(src, cls, name), "rb") as f:
            img = to_rgb(Image.open(f))
    except Exception as exc:  # any decoder failure: skip the image, say so
        return "unreadable", f"{os.path.join(src, cls, name)} ({type(exc).__name__}: {exc})"
    image_seed = sample_seed(seed, zlib.crc32(cls.encode()), zlib.crc32(name.encode()))
    try:
        with fork_rng(image_seed):
            views = make_views(img, mode, size, np.random.default_rng(image_seed), min_scale=min_scale)
    except ValueError as exc:  # e.g. no crop pair of the IoU range fits a tiny image
        return "unreadable", f"{os.path.join(src, cls, name)} ({exc})"
    path = out_dir
    try:
        os.makedirs(out_dir, exist_ok=True)
        for path, view in zip(paths, [img] + views):
            buf = io.BytesIO()  # encoded in memory: PIL's own file writes lose the errno of a full disk
            view.save(buf, format="JPEG", quality=quality)
            with open(path + ".tmp", "wb") as f:
                f.write(buf.getvalue())
            os.replace(path + ".tmp", path)  # a killed job leaves no half-written view
    except OSError as exc:  # a full or read-only disk: stop the job rather than skip every image after
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
        if exc.errno in (errno.EEXIST, errno.ENOTDIR):
            raise UserError(f"cannot create the class folder '{out_dir}': a file is in the way; remove it or pass "
                            "another DST") from None
        reason = os.strerror(exc.errno) if exc.errno else f"{exc}; a full disk?"
        raise UserError(f"cannot write '{path}' ({reason}): free some space or pass another DST; the views "
                        "written so far are kept and the same command goes on from them") from None
    return "written", None


def _init_worker():
    import torch

    torch.set_num_threads(1)  # one core per worker: -j processes fill the machine


class _InProcess:
    """A Pool stand-in for -j 1: same ``imap_unordered``, no extra process."""

    def __enter__(self):
        _init_worker()
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap_unordered(fn, tasks, chunksize=1):
        return map(fn, tasks)


@exit_on_user_error
def main(args):
    if args.images_per_class < 0 or args.size < 1 or args.workers < 1 or not 0 < args.min_scale <= 1:
        raise UserError(f"need --images-per-class >= 0, --size >= 1, -j >= 1 and 0 < --min-scale <= 1; got "
                        f"{args.images_per_class}, {args.size}, {args.workers}, {args.min_scale}")
    if not 1 <= args.quality <= 95:
        raise UserError(f"--quality must be within 1-95, got {args.quality}")
    classes, todo = list_images(args.src, args.images_per_class)
    if os.path.abspath(args.dst) == os.path.abspath(args.src):
        raise UserError("DST must differ from SRC")
    if os.path.exists(args.dst) and not os.path.isdir(args.dst):
        raise UserError(f"DST '{args.dst}' is a file, not a folder: pass a folder (it is created if missing)")
    check_writable(args.dst, "DST")  # a read-only or full disk says so before the first image
    n_views = VIEWS_PER_MODE[args.aug]
    print(f"{len(todo)} images of {len(classes)} classes from {args.src} -> {args.dst}: view 0 (original) and "
          f"{n_views} '{args.aug}' views of {args.size} px each, seed {args.seed}, -j {args.workers}", flush=True)
    tasks = [(args.src, args.dst, cls, name, args.aug, args.size, args.min_scale, args.seed, args.quality,
              args.overwrite) for cls, name in todo]
    from tqdm import tqdm

    t0 = time.time()
    counts = {"written": 0, "existing": 0, "unreadable": 0}
    first_skip = None
    with Pool(args.workers, initializer=_init_worker) if args.workers > 1 else _InProcess() as pool:
        for status, message in tqdm(pool.imap_unordered(write_views, tasks, chunksize=4), total=len(tasks),
                                    desc="sample-augs", unit="img", file=sys.stderr, mininterval=1.0):
            counts[status] += 1
            if message:
                first_skip = first_skip or message
                print(f"warning: skipped {message}", file=sys.stderr, flush=True)
    if counts["unreadable"] == len(tasks):  # a set without a single pair is no result
        raise UserError(f"none of the {len(tasks)} images of '{args.src}' could be read or cut into views (e.g. "
                        f"{first_skip}): pass a folder of images PIL can open, each larger than a few pixels")
    manifest = {"src": os.path.abspath(args.src), "aug": args.aug, "images_per_class": args.images_per_class,
                "size": args.size, "min_scale": args.min_scale, "seed": args.seed, "quality": args.quality,
                "views_per_image": n_views + 1, "classes": len(classes), "images": len(todo), **counts,
                "seconds": round(time.time() - t0, 2)}
    atomic_write(os.path.join(args.dst, "sample-augs.json"), lambda f: f.write(json.dumps(manifest, indent=2).encode()),
                 "DST")
    print(f"wrote {counts['written']} images x {n_views + 1} views in {manifest['seconds']:.1f} s "
          f"({counts['existing']} already there, {counts['unreadable']} skipped); manifest "
          f"{os.path.join(args.dst, 'sample-augs.json')}", flush=True)
    return manifest


if __name__ == "__main__":
    main(ArgumentParser("Static positive-pair dataset", parents=[get_args_parser()]).parse_args())
