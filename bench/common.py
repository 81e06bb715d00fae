"""Helpers shared by the bench commands: peak memory, machine description, table and JSON output."""
import json
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
