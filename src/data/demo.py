"""A procedurally drawn, labelled ImageFolder whose class lives only in the *shape* of one object.

Every image shows one upright shape (circle, square, triangle, star, ...) with a random grey level,
area, aspect and position, over a random grey-level gradient with pixel noise. Those nuisance factors
are drawn from the same distributions for every class, and the shape's *area* is drawn independently
of its class, so brightness, position and the fraction of pixels covered carry no class information:
the class is recoverable only from the shape.

Only nuisances that the pretraining augmentations (crop, jitter, blur, flip) can undo are drawn: colour,
rotation, texture and distractors (the ``v2`` values of the constants below) are cues no augmentation removes,
and a few CPU minutes of pretraining learn them instead of the shape (docs/sce.md "Demo").

Output layout (an ``ImageFolder`` twice, plus a marker written last)::

    root/train/<shape>/<i>.png   root/val/<shape>/<i>.png   root/.complete (JSON of the parameters)

Each image is a pure function of ``(seed, split, class, index)``, so the files do not depend on the
number of worker processes. Run::

    python -m src.data.demo data/demo                       # 10 classes, 300 + 100 per class, 64 px
    python -m src.data.demo data/demo --size 96 --train-per-class 500 --workers 2
"""
import argparse
import json
import math
import os
import pathlib
import shutil
from functools import lru_cache
from multiprocessing import Pool

import numpy as np
from PIL import Image, ImageDraw

from src.run.errors import UserError
from src.run.launch import exit_on_user_error

GENERATOR_VERSION = 3  # bump when the drawing changes: cached builds are then redrawn
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "crescent", "arrow",
          "heart", "tee", "chevron")
_SPLITS = {"train": 0, "val": 1}
_SUPERSAMPLE = 4            # shapes are drawn at 4x and box-filtered down: anti-aliased edges
_AREA_RANGE = (0.10, 0.20)  # shape area as a fraction of the image, the same for every class
_ASPECT_RANGE = (0.8, 1.25)
_TEXTURE_ALPHA = (0.0, 0.0)   # strength of the background pattern over its gradient (v2: 0.15-0.5)
_FILL_TEXTURE = 0.0           # probability that the shape's fill is itself faintly textured (v2: 0.25)
_MAX_DISTRACTORS = 0      # small ellipses drawn under the shape (0 to this many; v2: 2)
_GREY = True              # draw in grey levels only (colour carries no instance identity; v2: False)
_ROTATION = 0.0             # shapes are rotated by an angle drawn in [0, this) (v2: 2 pi)
_MIN_CONTRAST = 0.6           # RGB distance between the fill and the mean background under the shape
_MIN_GREY_CONTRAST = 0.0      # with _GREY: minimum grey-level distance between the fill and that background. Off:
                              # low contrast is a nuisance that jitter covers; a floor makes the random-init
                              # trunk hard to beat (docs/sce.md "Demo")


def _ngon(n, radius=1.0, phase=0.0):
    t = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], 1)


def _shape_parts(name):
    """Polygons of a shape in unit coordinates: a list of ``(points (N, 2), paint)`` drawn in order.

    ``paint`` is True to fill and False to cut a hole (ring, crescent).
    """
    if name == "circle":
        return [(_ngon(64), True)]
    if name == "square":
        return [(_ngon(4, phase=math.pi / 4), True)]
    if name == "triangle":
        return [(_ngon(3, phase=math.pi / 2), True)]
    if name == "hexagon":
        return [(_ngon(6), True)]
    if name == "star":
        pts = np.concatenate([_ngon(5, 1.0, math.pi / 2), _ngon(5, 0.48, math.pi / 2 + math.pi / 5)], 1)
        return [(pts.reshape(-1, 2), True)]
    if name == "cross":
        a, w = 1.0, 0.32
        pts = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w),
               (-a, -w), (-w, -w)]
        return [(np.array(pts), True)]
    if name == "ring":
        return [(_ngon(64), True), (_ngon(64, 0.58), False)]
    if name == "crescent":
        return [(_ngon(64), True), (_ngon(64, 0.72) + [0.5, 0.0], False)]
    if name == "arrow":
        pts = [(-0.8, -0.28), (0.05, -0.28), (0.05, -0.7), (0.9, 0), (0.05, 0.7), (0.05, 0.28), (-0.8, 0.28)]
        return [(np.array(pts, dtype=float), True)]
    if name == "heart":
        t = np.linspace(0, 2 * math.pi, 80, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return [(np.stack([x, y], 1) / 16.0, True)]
    if name == "tee":
        pts = [(-0.85, -0.8), (0.85, -0.8), (0.85, -0.3), (0.27, -0.3), (0.27, 0.8), (-0.27, 0.8),
               (-0.27, -0.3), (-0.85, -0.3)]
        return [(np.array(pts), True)]
    if name == "chevron":
        pts = [(-0.6, -0.75), (-0.05, -0.75), (0.65, 0.0), (-0.05, 0.75), (-0.6, 0.75), (0.1, 0.0)]
        return [(np.array(pts), True)]
    raise ValueError(name)


@lru_cache(maxsize=None)
def _unit_shape(name):
    """Shape parts re-centred on their centroid and scaled to unit area, measured on a fine raster."""
    parts, res = _shape_parts(name), 512
    mask = _raster(parts, np.eye(2) * res / 4, np.array([res / 2, res / 2]), res)
    ys, xs = np.nonzero(mask)
    centre = (np.array([xs.mean(), ys.mean()]) - res / 2) / (res / 4)
    scale = 1.0 / math.sqrt(len(xs) / (res / 4) ** 2)
    return [((pts - centre) * scale, paint) for pts, paint in parts]


def _raster(parts, matrix, offset, side):
    """Draw parts mapped by ``p @ matrix.T + offset`` into a ``side``-px mask (uint8 array, 0/255)."""
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    for pts, paint in parts:
        xy = pts @ matrix.T + offset
        draw.polygon([tuple(p) for p in xy], fill=255 if paint else 0)
    return np.asarray(canvas)


def _shape_mask(rng, name, size):
    """Random area/aspect/rotation/position of one shape -> anti-aliased alpha mask (size, size) in [0, 1]."""
    parts = _unit_shape(name)
    area = rng.uniform(*_AREA_RANGE) * size * size
    aspect = math.exp(rng.uniform(*np.log(_ASPECT_RANGE)))
    angle = rng.uniform(0, _ROTATION)
    c, s = math.cos(angle), math.sin(angle)
    matrix = math.sqrt(area) * np.array([[c, -s], [s, c]]) @ np.diag([math.sqrt(aspect), 1 / math.sqrt(aspect)])
    filled = np.concatenate([p for p, paint in parts if paint]) @ matrix.T
    lo, hi = filled.min(0), filled.max(0)
    margin = 0.03 * size
    shrink = min(1.0, (size - 2 * margin) / float((hi - lo).max()))  # rare: keep the shape inside
    matrix, lo, hi = matrix * shrink, lo * shrink, hi * shrink
    u = rng.uniform(0, 1, 2)
    offset = margin - lo + u * np.maximum(size - 2 * margin - (hi - lo), 0)
    big = _raster(parts, matrix * _SUPERSAMPLE, offset * _SUPERSAMPLE, size * _SUPERSAMPLE)
    small = Image.fromarray(big).resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _texture(rng, size):
    """A random texture: (size, size, 3) colours in [0, 1]. Gradient base plus one pattern."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    t = rng.uniform(0, 2 * math.pi)
    ramp = ((x - 0.5) * math.cos(t) + (y - 0.5) * math.sin(t) + 0.71) / 1.42
    c1, c2 = rng.uniform(0, 1, (2, 3)).astype(np.float32)
    img = c1 + ramp[..., None] * (c2 - c1)
    kind = rng.integers(4)
    colour = rng.uniform(0, 1, 3).astype(np.float32)
    alpha = rng.uniform(*_TEXTURE_ALPHA)
    if kind == 0:    # stripes at a random angle and period
        t, period = rng.uniform(0, math.pi), rng.uniform(0.08, 0.35)
        wave = np.sin(2 * math.pi * (x * math.cos(t) + y * math.sin(t)) / period + rng.uniform(0, 6.3))
        pattern = (wave > rng.uniform(-0.5, 0.5)).astype(np.float32)
    elif kind == 1:  # checkerboard with a random cell size and phase
        cell = rng.uniform(0.06, 0.25)
        px, py = rng.uniform(0, 1, 2)
        pattern = ((np.floor(x / cell + px) + np.floor(y / cell + py)) % 2).astype(np.float32)
    elif kind == 2:  # soft blobs of several colours
        for _ in range(rng.integers(3, 8)):
            cx, cy, sigma = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.06, 0.25)
            blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2))[..., None]
            img = img + alpha * blob * (rng.uniform(0, 1, 3).astype(np.float32) - img)
        pattern = np.zeros_like(x)
    else:            # smooth value noise: a coarse random grid upsampled bilinearly
        coarse = rng.uniform(0, 1, (int(rng.integers(3, 9)),) * 2).astype(np.float32)
        pattern = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR))
    img = img + alpha * pattern[..., None] * (colour - img)
    return img + rng.normal(0, rng.uniform(0, 0.04), img.shape).astype(np.float32)


def render_image(seed, split, class_index, index, size=64):
    """Draw one demo image; a pure function of its arguments.

    Args:
        seed: dataset seed (int).
        split: "train" or "val".
        class_index: index into ``SHAPES``.
        index: image number within (split, class).
        size: side in pixels.

    Returns:
        PIL.Image in RGB mode, ``size`` x ``size``.
    """
    rng = np.random.default_rng([seed, _SPLITS[split], class_index, index])
    img = _texture(rng, size)
    for _ in range(rng.integers(0, _MAX_DISTRACTORS + 1)):  # distractors: small ellipses under the shape
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.03, 0.09, 2) * size
        x, y = np.mgrid[0:size, 0:size][::-1]
        inside = (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1)[..., None]
        img = np.where(inside, rng.uniform(0, 1, 3).astype(np.float32), img)
    mask = _shape_mask(rng, SHAPES[class_index], size)[..., None]
    background = (img * mask).sum((0, 1)) / max(mask.sum(), 1e-6)
    for _ in range(20):  # fill colour far enough from the background under it to stay visible
        fill = rng.uniform(0, 1, 3).astype(np.float32)
        if _GREY and _MIN_GREY_CONTRAST:  # the distance that survives the conversion to grey
            if abs(fill.mean() - background.mean()) > _MIN_GREY_CONTRAST:
                break
        elif np.linalg.norm(fill - background) > _MIN_CONTRAST:
            break
    fill = fill + (rng.uniform(0.1, 0.35) * (_texture(rng, size) - fill) if rng.uniform() < _FILL_TEXTURE else 0)
    img = img * (1 - mask) + fill * mask
    if _GREY:
        img = np.repeat(img.mean(-1, keepdims=True), 3, -1)
    return Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")


def _write_one(task):
    seed, split, class_index, index, size, path = task
    render_image(seed, split, class_index, index, size).save(path)


def _check_folder(root):
    """Refuse a root that is a file or lies under one (the build would fail half-way with NotADirectoryError)."""
    for path in (root, *root.parents):
        if path.exists():
            if not path.is_dir():
                where = "is a file" if path == root else f"lies under '{path}', which is a file"
                raise UserError(f"demo data folder '{root}' {where}: pass a folder path (a new folder, or one that "
                                "holds an earlier demo build)")
            return


def _check_replaceable(root):
    """Refuse to delete folders that do not look like an earlier (interrupted) demo build."""
    for split in _SPLITS:
        folder = root / split
        if folder.exists() and any(p.name not in SHAPES for p in folder.iterdir()):
            raise UserError(f"folder '{root}' holds a '{split}/' that is not a demo dataset: "
                            "pass an empty or new folder to the demo generator")


def make_demo_dataset(root, num_classes=10, train_per_class=300, val_per_class=100, size=64, seed=0,
                      workers=2):
    """Write (or reuse) the demo ImageFolder under ``root``.

    Idempotent: when ``root/.complete`` records the same parameters it returns at once; a folder
    without that marker (an interrupted build) or with other parameters is rebuilt.

    Args:
        root: output folder (created if missing).
        num_classes: number of shape classes, 2 to ``len(SHAPES)`` (12).
        train_per_class: images per class in ``train/``.
        val_per_class: images per class in ``val/``.
        size: image side in pixels (at least 16).
        seed: dataset seed; the images depend only on it and the three counts above.
        workers: processes used to draw; does not change the output.

    Returns:
        pathlib.Path of ``root``.
    Raises:
        UserError: ``root`` is (or lies under) a file, holds a non-demo ``train/`` or ``val/``, or a count is out of
            range.
    """
    root = pathlib.Path(root)
    _check_folder(root)
    if not 2 <= num_classes <= len(SHAPES):
        raise UserError(f"demo dataset: num_classes={num_classes} is out of range: use 2 to {len(SHAPES)}")
    if size < 16 or train_per_class < 1 or val_per_class < 0:
        raise UserError("demo dataset: size must be >= 16, train_per_class >= 1 and val_per_class >= 0")
    params = dict(version=GENERATOR_VERSION, num_classes=num_classes, train_per_class=train_per_class,
                  val_per_class=val_per_class, size=size, seed=seed)
    marker = root / ".complete"
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == params:
                return root
        except ValueError:
            pass
    _check_replaceable(root)
    marker.unlink(missing_ok=True)
    tasks = []
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        shutil.rmtree(root / split, ignore_errors=True)
        for c in range(num_classes):
            (root / split / SHAPES[c]).mkdir(parents=True)
            tasks += [(seed, split, c, i, size, str(root / split / SHAPES[c] / f"{i}.png")) for i in range(count)]
    if workers > 1:
        with Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_one, tasks, chunksize=64):
                pass
    else:
        for task in tasks:
            _write_one(task)
    tmp = root / ".complete.tmp"
    tmp.write_text(json.dumps(params, indent=1))
    os.replace(tmp, marker)  # written last: its presence means every image is on disk
    return root


def get_args_parser():
    """Command-line flags of ``python -m src.data.demo`` (dash and underscore spellings both work).

    Returns:
        argparse.ArgumentParser.
    """
    p = argparse.ArgumentParser("demo dataset", description="Write the shape demo ImageFolder.")
    p.add_argument("root", help="output folder; gets train/, val/ and a .complete marker")
    p.add_argument("--num-classes", "--num_classes", type=int, default=10, help="shape classes, 2-12 (default 10)")
    p.add_argument("--train-per-class", "--train_per_class", type=int, default=300,
                   help="training images per class (default 300)")
    p.add_argument("--val-per-class", "--val_per_class", type=int, default=100,
                   help="validation images per class (default 100)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64; 32-224 sensible)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--workers", type=int, default=2, help="drawing processes (default 2); output is the same")
    return p


@exit_on_user_error
def main(argv=None):
    """CLI entry point: build the dataset and print where it is.

    Args:
        argv: argument list (None: ``sys.argv[1:]``).
    """
    a = get_args_parser().parse_args(argv)
    out = make_demo_dataset(a.root, a.num_classes, a.train_per_class, a.val_per_class, a.size, a.seed, a.workers)
    print(f"demo dataset ready: {out}")


if __name__ == "__main__":
    main()
