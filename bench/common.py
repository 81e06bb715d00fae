"""Helpers shared by the bench commands: peak memory, machine description, table and JSON output, and what a bench
needs to call a training script's own ``build`` and ``step``: the data folders its build reads, the DistInfo of one
process, and its loader's device half for pre-made batches."""
import json
import math
import os
import platform
import resource
import sys

import torch


def peak_memory_mb(device):
    """Peak CUDA memory allocated on ``device`` or, on the CPU, the process's peak resident set (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def machine(device):
    """One-line description of where the numbers were taken."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}"


def report(title, rows, path):
    """Print ``rows`` (list of dicts with the same keys) as a table and write them to ``path`` as JSON."""
    keys = list(rows[0])
    widths = [max(len(k), *(len(_fmt(r[k])) for r in rows)) for k in keys]
    print(title)
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for r in rows:
        print("  ".join(_fmt(r[k]).ljust(w) for k, w in zip(keys, widths)))
    write_json(path, {"title": title, "rows": rows})


def write_json(path, obj, indent=2):
    """``obj`` as JSON at ``path``, atomically (``src.run.checkpoint.atomic_write``: its folder is created, an
    interrupted write leaves the previous file), then ``written PATH``."""
    from src.run.checkpoint import atomic_write

    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=indent).encode()), "--output")
    print(f"written {path}")


def _fmt(v):
    return f"{v:.1f}" if isinstance(v, float) else str(v)


DEMO_TRAIN = "./data/demo/train"


def add_io_args(p, name, data_samples):
    """The flags every per-method bench shares: ``--amp --device --data --data-samples --output``."""
    p.add_argument("--amp", default="none", choices=["none", "fp16", "bf16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", default=DEMO_TRAIN, help="images for the data-pipeline measurement")
    p.add_argument("--data-samples", type=int, default=data_samples)
    p.add_argument("--output", default=f"bench/results/{name}.json")


def per_arch(values, archs):
    """One value per architecture: the list itself, or its first value repeated."""
    return values if len(values) == len(archs) else [values[0]] * len(archs)


def ensure_demo_data(path):
    """Build the demo images when the default ``--data`` is asked for and missing."""
    if path == DEMO_TRAIN and not os.path.isdir(path):
        from src.data.demo import make_demo_dataset
        make_demo_dataset(os.path.dirname(DEMO_TRAIN))


BENCH_VIDEO = "./data/bench_video"


def generated_videos(path, clips):
    """Moving-shapes videos (``src.data.video.demo``: 2 classes, 32x40 px, 3 s) with at least ``clips`` training
    videos, written under ``path`` (again only when the count changed). Returns ``path`` as a string."""
    from src.data.video.demo import make_video_demo

    return make_video_demo(path, num_classes=2, train_per_class=max(2, math.ceil(clips / 2)), val_per_class=1,
                           height=32, width=40, seconds=3.0)


def ensure_video_data(path, clips):
    """Build the generated videos when the default folder ``BENCH_VIDEO`` is asked for; any other folder is read as
    given. Returns ``path``."""
    if path == BENCH_VIDEO:
        generated_videos(path, clips)
    return path


def step_data(root, batch_size, clips):
    """Generated folders under ``root`` for a bench that feeds a script's step pre-made batches (its ``build`` still
    reads a data folder: it sizes the loader, the schedules and DeepCluster's memory bank): 16 batches of 32-px
    shapes images (``src.data.demo``), so that the few steps a bench runs stay early in the scripts' warmups (counted
    in epochs) as a real run's first steps do, and :func:`generated_videos` for one batch of ``clips``.
    Returns ``{"images": the images' train folder, "videos": the videos' root}``."""
    from src.data.demo import make_demo_dataset

    images = make_demo_dataset(os.path.join(root, "images"), num_classes=4, train_per_class=4 * batch_size,
                               val_per_class=1, size=32, seed=0, workers=2)
    return {"images": os.path.join(str(images), "train"), "videos": generated_videos(os.path.join(root, "videos"),
                                                                                     clips)}


def local_info(device):
    """The DistInfo of one process without a process group: what ``python main_<method>.py`` sees."""
    from src.run.dist import DistInfo

    return DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device(device), distributed=False, backend=None,
                    launcher="none")


def loader_feed(loader, batch):
    """A callable that returns ``batch`` (pre-made, in the loader's format) as the script's ``loader`` hands it to
    the step: through the loader's device half when the flags gave it one (copy to the device, batched augmentation
    of uint8 crops, memory format: ``src.augment.split.DeviceLoader.move``), else as is (the step copies it)."""
    from src.augment.split import DeviceLoader

    if isinstance(loader, DeviceLoader):
        return lambda: loader.move(batch)
    return lambda: batch


def time_steps(step, steps, device, warmup=2):
    """Seconds taken by ``steps`` calls of ``step(it)`` after ``warmup`` untimed calls (CUDA synchronised)."""
    import time

    for it in range(warmup):
        step(it)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.time()
    for it in range(warmup, warmup + steps):
        step(it)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.time() - t


def time_per_sample(root, transform, n):
    """The per-sample data pipeline on one worker: ``(samples, seconds)`` for up to ``n`` images of the folder
    ``root`` through ``transform``, after one warm-up sample."""
    import time

    from src.data.folders import build_dataset

    ds = build_dataset(root, transform, seed=0)
    n = min(n, len(ds))
    ds[0]
    t = time.time()
    for i in range(n):
        ds[i]
    return n, time.time() - t
