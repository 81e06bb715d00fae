"""A small generated video dataset: moving shapes encoded to mp4 with PyAV (deterministic, nothing downloaded).

Each class is a shape (circle, square, triangle, cross, ...) of random size, grey level and speed that bounces
around a grey-gradient background with a little noise; what tells the classes apart lives in shape, while position,
motion, brightness and background vary (what the augmentations teach a network to ignore). Layout::

    ROOT/train/<class>/<class>_NNN.mp4      pretraining and linear evaluation (Kinetics-like)
    ROOT/val/<class>/<class>_NNN.mp4
    ROOT/ucf/videos/<Class>/v_<Class>_gGG_cCC.mp4          the same videos, UCF101-style names and
    ROOT/ucf/splits/classInd.txt, trainlist0{1,2,3}.txt,   official-style split files: split s tests
             testlist0{1,2,3}.txt                          groups 2s-1 and 2s of 6 groups

Frame folders (the other input format) are written by :func:`write_frame_folder`.
"""
import json
import math
import os
import shutil

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar")


def _shape_mask(kind, dx, dy, r, angle):
    """Boolean mask of ``kind`` centred at the origin of (dx, dy) pixel offsets, radius r, rotated by angle."""
    c, s = math.cos(angle), math.sin(angle)
    x, y = c * dx + s * dy, -s * dx + c * dy
    if kind == "circle":
        return x ** 2 + y ** 2 < r ** 2
    if kind == "square":
        return (abs(x) < 0.8 * r) & (abs(y) < 0.8 * r)
    if kind == "triangle":
        return (y < 0.7 * r) & (y > -r + 2 * abs(x))
    if kind == "cross":
        return ((abs(x) < r / 3) & (abs(y) < r)) | ((abs(y) < r / 3) & (abs(x) < r))
    if kind == "ring":
        d = x ** 2 + y ** 2
        return (d < r ** 2) & (d > (0.55 * r) ** 2)
    return (abs(x) < r) & (abs(y) < r / 4)  # bar


def render_video(kind, rng, height=64, width=80, num_frames=80):
    """(num_frames, height, width, 3) uint8 frames of one shape moving over a background."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    g = rng.uniform(-1, 1, 2)
    lo, hi = sorted(rng.uniform(40, 215, 2))
    ramp = (g[0] * xx / width + g[1] * yy / height)
    background = lo + (hi - lo) * (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    r = rng.uniform(0.14, 0.22) * min(height, width)
    level = rng.uniform(0, 255)
    if abs(level - background.mean()) < 60:  # keep the shape visible
        level = (level + 128) % 256
    pos = np.array([rng.uniform(r, width - r), rng.uniform(r, height - r)])
    speed = rng.uniform(0.8, 2.0)
    heading = rng.uniform(0, 2 * math.pi)
    vel = speed * np.array([math.cos(heading), math.sin(heading)])
    angle, spin = rng.uniform(0, 2 * math.pi), rng.uniform(-0.05, 0.05)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        img = background.copy()
        img[_shape_mask(kind, xx - pos[0], yy - pos[1], r, angle)] = level
        img += rng.normal(0, 4, img.shape)
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)[..., None]
        pos += vel
        for k, limit in ((0, width), (1, height)):  # bounce off the borders
            if not r <= pos[k] <= limit - r:
                vel[k] = -vel[k]
                pos[k] = min(max(pos[k], r), limit - r)
        angle += spin
    return frames


def write_video(path, frames, fps=25):
    """Encode (T, H, W, 3) uint8 frames to ``path`` as MPEG-4 part 2 (FFmpeg's own encoder, fixed quantiser 3).

    Not H.264: libx264 did not write the same bytes for the same frames within one process; FFmpeg's MPEG-4
    encoder does, and every decoder reads it.
    """
    import av

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.mp4"
    with av.open(tmp, mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps, options={"qscale": "3"})
        stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        stream.thread_count = 1
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        container.mux(stream.encode())
    os.replace(tmp, path)


def write_frame_folder(folder, frames):
    """Write (T, H, W, 3) uint8 frames as ``folder/img_00001.jpg`` ... (a frame-folder video)."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(os.path.join(folder, f"img_{i + 1:05d}.jpg"), quality=95)


def make_video_demo(root, num_classes=4, train_per_class=12, val_per_class=4, height=64, width=80, fps=25,
                    seconds=4.0, seed=0):
    """Write the demo video dataset under ``root`` once (a marker records the settings; a change rebuilds it).

    Args:
        root: output folder. num_classes: up to 6 shapes. train_per_class, val_per_class: videos per class.
        height, width: frame size (landscape, so the 3 test crops differ). fps, seconds: frame rate and length.
        seed: everything is drawn from it (same files for the same settings).
    Returns:
        ``root`` as a string.
    """
    settings = dict(num_classes=num_classes, train_per_class=train_per_class, val_per_class=val_per_class,
                    height=height, width=width, fps=fps, seconds=seconds, seed=seed, version=2)
    marker = os.path.join(root, "demo_video.json")
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) == settings:
                return str(root)
    for sub in ("train", "val", "ucf"):
        shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
    rng = np.random.default_rng(seed)
    num_frames = int(round(seconds * fps))
    classes = SHAPES[:num_classes]
    ucf_train, ucf_test = {s: [] for s in (1, 2, 3)}, {s: [] for s in (1, 2, 3)}
    for label, kind in enumerate(classes):
        for i in range(train_per_class + val_per_class):
            split = "train" if i < train_per_class else "val"
            path = os.path.join(root, split, kind, f"{kind}_{i:03d}.mp4")
            write_video(path, render_video(kind, rng, height, width, num_frames), fps)
            cls = kind.capitalize()
            group, clip = i % 6 + 1, i // 6 + 1
            rel = f"{cls}/v_{cls}_g{group:02d}_c{clip:02d}.mp4"
            dest = os.path.join(root, "ucf", "videos", rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(path, dest)
            for s in (1, 2, 3):
                (ucf_test if group in (2 * s - 1, 2 * s) else ucf_train)[s].append((rel, label + 1))
    splits = os.path.join(root, "ucf", "splits")
    os.makedirs(splits, exist_ok=True)
    with open(os.path.join(splits, "classInd.txt"), "w") as f:
        f.writelines(f"{i + 1} {c.capitalize()}\n" for i, c in enumerate(classes))
    for s in (1, 2, 3):
        with open(os.path.join(splits, f"trainlist0{s}.txt"), "w") as f:
            f.writelines(f"{rel} {lab}\n" for rel, lab in ucf_train[s])
        with open(os.path.join(splits, f"testlist0{s}.txt"), "w") as f:
            f.writelines(f"{rel}\n" for rel, _ in ucf_test[s])
    with open(marker, "w") as f:
        json.dump(settings, f)
    return str(root)


def main(argv=None):
    """``python -m src.data.video.demo ROOT [--num_classes N --train_per_class N --val_per_class N --seed S]``."""
    import argparse

    parser = argparse.ArgumentParser("Write the moving-shapes demo video dataset")
    parser.add_argument("root", help="output folder (train/, val/, ucf/videos, ucf/splits)")
    parser.add_argument("--num_classes", default=4, type=int, help="shapes, 2-6 (4)")
    parser.add_argument("--train_per_class", default=12, type=int, help="training videos per class (12)")
    parser.add_argument("--val_per_class", default=4, type=int, help="validation videos per class (4)")
    parser.add_argument("--seed", default=0, type=int, help="seed of every draw (0)")
    args = parser.parse_args(argv)
    root = make_video_demo(args.root, args.num_classes, args.train_per_class, args.val_per_class, seed=args.seed)
    print(f"demo videos in {root}: {args.num_classes} classes x ({args.train_per_class} train + "
          f"{args.val_per_class} val), UCF101-style copy and split files in {os.path.join(root, 'ucf')}", flush=True)


if __name__ == "__main__":
    main()
