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
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"title": title, "rows": rows}, f, indent=2)
    print(f"written {path}")


def _fmt(v):
    return f"{v:.1f}" if isinstance(v, float) else str(v)
