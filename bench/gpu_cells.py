"""What one worker process of ``python -m bench.gpu`` runs: a list of cells, one after the other, each printed as
one JSON line when it ends, so that the parent (:mod:`bench.gpu_runner`) turns a crash, a hang or an OOM into one
failed row and restarts a worker for the cells that are left.

    python -m bench.gpu_cells --data IMAGES --video-data VIDEOS CELLS.json     # cells of kind step / ceiling / feed
    torchrun --standalone --nproc_per_node=1 -m bench.gpu_cells --group --data IMAGES --video-data VIDEOS CELLS.json

Cell kinds (dicts, see :func:`bench.gpu.plan`):

* ``step``: ``main_<method>.step`` itself on the parts ``main_<method>.build`` makes (:func:`bench.speed.script_step`:
  a pre-made batch through the loader's device half), warm-up then timed steps; the builds read the folders of
  ``--data`` / ``--video-data`` (``bench.common.step_data``);
* ``ceiling``: the bare trunk's forward + backward on the same crops (:func:`bench.speed.make_backbone_step`),
  plus the crops a momentum encoder only embeds (forward, no grad) when the cell has ``key_nmb``;
* ``feed``: the split pipeline's CPU half (decode, crop, resize to uint8) in a DataLoader with ``workers``
  processes over generated 500x375 JPEGs: the images/s that can reach the device.

With ``--group`` the worker first creates a process group of one (NCCL on CUDA, gloo on the CPU) and every step
cell is built with a ``distributed=True`` DistInfo: the scripts' builds then wrap DDP and convert SyncBatchNorm (CUDA
only) as they do under a real launch; the row counts the SyncBatchNorm layers.
"""
import argparse
import contextlib
import gc
import io
import json
import math
import os
import sys
import time

import torch

from bench.gpu_runner import MARK


def options(config):
    """``"device_aug+channels_last+bf16"`` -> dict of the speed options (``all`` = device_aug + channels_last +
    bf16; ``base`` = fp32 with per-sample augmentation)."""
    opts = set(config.split("+")) - {"base"}
    if "all" in opts:
        opts = (opts - {"all"}) | {"device_aug", "channels_last", "bf16"}
    unknown = opts - {"device_aug", "channels_last", "bf16", "fp16", "compile"}
    if unknown or {"bf16", "fp16"} <= opts:
        raise ValueError(f"bad configuration {config!r}")
    return {"amp": "bf16" if "bf16" in opts else "fp16" if "fp16" in opts else "none",
            "device_aug": "device_aug" in opts, "channels_last": "channels_last" in opts, "compile": "compile" in opts}


def _clear(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2 ** 20
    from bench.speed import reset_peak_rss
    return reset_peak_rss()


def _peak(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    from bench.speed import peak_rss_mb
    return peak_rss_mb()


def cell_device(name):
    """The cell's device; a bare ``cuda`` is ``cuda:LOCAL_RANK`` (DDP and NCCL need an index)."""
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def group_info(device, init_method="env://"):
    """Create a process group of one (NCCL on CUDA, gloo otherwise) and return the DistInfo a launched script
    would see for it (``distributed=True``)."""
    import torch.distributed as tdist

    from src.run.dist import DistInfo

    device = cell_device(str(device))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        tdist.init_process_group(backend, init_method=init_method, world_size=1, rank=0,
                                 device_id=device if backend == "nccl" else None)
    return DistInfo(rank=0, world_size=1, local_rank=0, device=device, distributed=True, backend=backend,
                    launcher="bench")


def build(cell, device, info=None, data=None):
    """The callable of a step or ceiling cell: ``step(it)``, one training step at global step ``it`` (or one trunk
    pass). ``data``: the folders a script's build reads, ``{"images", "videos"}`` (step cells only)."""
    from bench.speed import make_backbone_step, script_step

    o = options(cell["config"])
    if cell["kind"] == "ceiling":
        return make_backbone_step(cell["arch"], cell["batch_size"], cell["sizes"], cell["nmb"], device, o["amp"],
                                  o["channels_last"], o["compile"], frames=cell.get("frames", 0),
                                  key_nmb=cell.get("key_nmb"))
    if data is None:
        raise ValueError("a step cell needs the data folders its script's build reads (--data, --video-data)")
    return script_step(cell["method"], cell["arch"], cell["batch_size"], cell["sizes"], cell["nmb"], device,
                       o["device_aug"], o["amp"], o["channels_last"], o["compile"], data,
                       frames=cell.get("frames", 0), extra_args=cell.get("extra_args", ()), info=info)


def time_steps(cell, info=None, data=None):
    """Build a step / ceiling cell, run ``warmup`` then ``steps`` calls (global steps 0, 1, ...); returns the cell's
    result fields."""
    device = info.device if info is not None else cell_device(cell["device"])
    base_mib = _clear(device)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    step = build(cell, device, info, data)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    out = None
    for it in range(cell["warmup"]):
        out = step(it)
    sync()
    t1 = time.perf_counter()
    for it in range(cell["warmup"], cell["warmup"] + cell["steps"]):
        out = step(it)
    sync()
    dt = time.perf_counter() - t1
    row = {"images_per_s": cell["batch_size"] * cell["steps"] / dt, "ms_per_step": 1000 * dt / cell["steps"],
           "build_and_warmup_s": t1 - t0, "peak_mib": _peak(device) - base_mib}
    if out is not None:  # a training step returns the script's stats
        row["loss"] = float(out["Loss"])
        if not math.isfinite(row["loss"]):
            row["error"] = f"non-finite loss {row['loss']}"
    if info is not None:
        row.update(world_size=torch.distributed.get_world_size(), backend=str(torch.distributed.get_backend()),
                   syncbn_layers=sum(isinstance(m, torch.nn.SyncBatchNorm) for m in step.model.modules()))
        if cell.get("expect_syncbn") and device.type == "cuda" and not row["syncbn_layers"]:
            row["error"] = "the script did not convert BatchNorm to SyncBatchNorm under a CUDA process group"
    del step, out
    _clear(device)
    return row


def feed(cell):
    """The split pipeline's CPU half in a DataLoader of ``workers`` processes: images/s after every worker has
    delivered its first batch, over ``seconds`` of wall time."""
    from bench.speed import make_jpegs
    from src.augment.recipes import moco_recipe, sce_recipe, swav_recipe
    from src.augment.views import relative_blur_scale
    from src.data.folders import build_dataset, build_loader

    folder = os.path.join(cell["jpegs"], "c0")
    if not os.path.isdir(folder):
        os.makedirs(folder + ".tmp", exist_ok=True)
        make_jpegs(folder + ".tmp", cell["n_images"])
        os.replace(folder + ".tmp", folder)
    sizes, nmb, lo, hi = cell["sizes"], cell["nmb"], cell["min_scale"], cell["max_scale"]
    if cell["pipeline"] == "moco":
        transform = moco_recipe(sizes[0], min_scale=lo[0]).split()  # MoCo v2's two views
    elif cell["pipeline"] == "sce":
        transform = sce_recipe(sizes, nmb, lo, hi, blur_scale=relative_blur_scale(sizes[0])).split()
    else:
        transform = swav_recipe(sizes, nmb, lo, hi).split()  # the official blur (main_swav's default)
    dataset = build_dataset(cell["jpegs"], transform, seed=0)
    workers, bs = cell["workers"], cell["batch_size"]
    repeats = math.ceil((workers + 2) * bs * 200 / len(dataset))  # more batches than the time allows
    loader = build_loader(dataset, bs, list(range(len(dataset))) * repeats, workers, drop_last=True,
                          persistent=False)
    it = iter(loader)
    t0 = time.perf_counter()
    wave = max(workers, 1)  # the workers start together, so batches arrive in waves of `workers`
    for _ in range(2 * wave):  # start-up and the prefetched second batch of every worker are not throughput
        next(it)
    t1, n, batches = time.perf_counter(), 0, 0
    while time.perf_counter() - t1 < cell["seconds"] or batches % wave:  # whole waves only
        crops, _ = next(it)
        n, batches = n + crops[0].shape[0], batches + 1
    dt = time.perf_counter() - t1
    del it, loader
    return {"images_per_s": n / dt, "images": n, "startup_s": t1 - t0}


class _Tee(io.TextIOBase):
    """Writes through to ``out`` and keeps a copy (the cell's own lines, e.g. a --compile fallback warning)."""

    def __init__(self, out):
        self.out, self.copy = out, io.StringIO()

    def write(self, text):
        self.copy.write(text)
        return self.out.write(text)

    def flush(self):
        self.out.flush()


def run_cell(cell, info=None, data=None):
    """One cell -> its row (the cell's fields plus results, or plus ``error``: one line, the exception's). A
    compile cell whose ``torch.compile`` fell back to eager keeps its figures but is an error row (they are not
    compiled figures)."""
    tee = _Tee(sys.stdout)
    try:
        with contextlib.redirect_stdout(tee):
            result = feed(cell) if cell["kind"] == "feed" else time_steps(cell, info, data)
        fallback = [line for line in tee.copy.getvalue().splitlines() if "--compile failed" in line]
        if fallback:
            result["error"] = "torch.compile fell back to eager: " + fallback[0][:200]
    except Exception as exc:  # noqa: BLE001 (an OOM or a script error is this cell's row, not the worker's end)
        first = (str(exc).strip().splitlines() or [""])[0][:240]
        result = {"error": f"{type(exc).__name__}: {first}"}
        _clear(cell_device(cell.get("device", "cpu")))
    return {**cell, **result}


def main(argv=None):
    p = argparse.ArgumentParser(description="one worker of python -m bench.gpu (see the module docstring)")
    p.add_argument("cells", help="JSON file: a list of cells")
    p.add_argument("--group", action="store_true", help="create a 1-process group first (under torchrun)")
    p.add_argument("--skip", type=int, default=0, help="start at this cell (the parent restarts after a crash)")
    p.add_argument("--data", default=None, help="image folder the step cells' builds read (bench.common.step_data)")
    p.add_argument("--video-data", default=None, help="video folder the sce_video builds read")
    a = p.parse_args(argv)
    data = {"images": a.data, "videos": a.video_data} if a.data else None
    with open(a.cells) as f:
        cells = json.load(f)
    if cells and cells[0].get("threads"):
        torch.set_num_threads(cells[0]["threads"])
    import main_deepclusterv2  # noqa: F401 (imported once, before any cell's memory baseline)
    import main_moco  # noqa: F401
    import main_sce  # noqa: F401
    import main_swav  # noqa: F401

    info = group_info(cells[0]["device"]) if a.group and cells else None
    for i, cell in enumerate(cells[a.skip:], start=a.skip):
        print(MARK + json.dumps({"start": i}), flush=True)
        print(MARK + json.dumps({"row": i, "result": run_cell(cell, info, data)}), flush=True)
    if info is not None:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
