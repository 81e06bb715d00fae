"""Speed, side by side in one run (issue "Speed"): input pipeline, training steps with each option, backbone ceiling.

    python -m bench.speed                                  # CPU-sized: resnet18, batch 16, 2x64 + 6x32 crops
    python -m bench.speed --arch resnet50 --batch-size 64 --sizes 224 96 --steps 20   # one GPU, the paper's crops
    python -m bench.speed --configs base compile all+compile                          # include torch.compile

(a) CPU time per sample, one thread, on generated 500x375 JPEGs (ImageNet's typical size): a re-creation of the
official SwAV per-sample PIL pipeline (facebookresearch/swav ``src/multicropdataset.py``: RandomResizedCrop ->
HFlip -> ColorJitter(0.8, 0.8, 0.8, 0.2) p 0.8 -> RandomGrayscale 0.2 -> PIL GaussianBlur p 0.5 -> ToTensor ->
Normalize, 2x224 + 6x96) and of the MoCo v2 pipeline (facebookresearch/moco ``main_moco.py --aug-plus``, two
224 views), against the CPU half of our split pipeline (decode, crop, resize to uint8) for the same crops; for SCE's
video clips (2 clips x 8 frames at 224 from decoded 256x340 frames), our per-clip path (every op on the CPU worker)
against the split path's CPU half (crop to uint8); plus, for reference, what the device half costs when the "device"
is this CPU.
(b) Training-step images/s and peak memory of each method: ``main_<method>.step`` itself on the parts
``main_<method>.build`` makes from the script's own flags (:func:`script_argv`), fed with a batch made once in the
loader's format (``(crops, labels)``; DeepCluster-v2 ``(crops, labels, index)``) and passed through the loader's
device half as the loader would, so data loading does not count. Configurations: ``base`` (fp32, per-sample path: the
step receives augmented float crops), ``device_aug`` (``--device-aug``: uint8 crops, augmented on the device in each
step), ``channels_last``, ``bf16``, ``fp16``, ``compile``, and ``a+b`` combinations; ``sce_video`` is
``main_sce.py --modality video`` (``--video-arch`` on 2 clips of ``--frames`` frames at the global crop side). The
builds read ``--data`` (default: the demo images, ./data/demo/train, built when missing) and, for ``sce_video``,
``--video-data`` (default: tiny generated videos, ./data/bench_video); the data only sizes the loader, the schedules
and DeepCluster's memory bank. Each cell runs in its own process, so its peak memory is its own (CUDA: max
allocated; CPU: peak resident set minus the process's after importing torch and the scripts). (c) The bare backbone
forward+backward on the same crops and batch (the ceiling).
Prints a table with ratios and writes JSON (``--output``).
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from bench.common import (BENCH_VIDEO, DEMO_TRAIN, ensure_demo_data, ensure_video_data, loader_feed, local_info,
                          machine, peak_memory_mb, write_json)

METHODS = ("swav", "deepclusterv2", "sce", "moco", "sce_video")
OPTIONS = {"device_aug", "channels_last", "bf16", "fp16", "compile"}


# ==== (a) input pipelines ====
def official_swav_transform(size_crops=(224, 96), nmb_crops=(2, 6), min_scale=(0.14, 0.05), max_scale=(1.0, 0.14)):
    """The official SwAV multi-crop transform, re-created with torchvision (v1) and PIL as its repository uses."""
    import random

    from PIL import ImageFilter
    from torchvision import transforms as T

    def pil_blur(img):  # PILRandomGaussianBlur(p=0.5, radius 0.1-2)
        if np.random.rand() > 0.5:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))

    color = T.Compose([T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), T.RandomGrayscale(p=0.2)])
    crops = []
    for size, n, lo, hi in zip(size_crops, nmb_crops, min_scale, max_scale):
        t = T.Compose([T.RandomResizedCrop(size, scale=(lo, hi)), T.RandomHorizontalFlip(p=0.5), color, pil_blur,
                       T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.228, 0.224, 0.225])])
        crops += [t] * n
    return lambda img: [t(img) for t in crops]


def official_moco_v2_transform():
    """MoCo v2's ``augmentation`` (``--aug-plus``) applied twice (TwoCropsTransform)."""
    from torchvision import transforms as T

    from src.augment.image import GaussianBlur

    t = T.Compose([T.RandomResizedCrop(224, scale=(0.2, 1.0)),
                   T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
                   T.RandomApply([GaussianBlur([0.1, 2.0])], p=0.5), T.RandomHorizontalFlip(), T.ToTensor(),
                   T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    return lambda img: [t(img), t(img)]


def make_jpegs(folder, n, size=(500, 375), seed=0):
    """``n`` photo-like JPEGs (smooth colour fields, edges and grain; quality 90)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        small = Image.fromarray((rng.random((size[1] // 25, size[0] // 25, 3)) * 255).astype(np.uint8))
        a = np.asarray(small.resize(size, Image.BICUBIC), dtype=np.int16)
        a = a + rng.normal(0, 12, a.shape).astype(np.int16)
        y, x = rng.integers(0, size[1] // 2), rng.integers(0, size[0] // 2)
        a[y:y + size[1] // 3, x:x + size[0] // 3] = rng.integers(0, 256, 3)
        paths.append(os.path.join(folder, f"{i:04d}.jpg"))
        Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(paths[-1], quality=90)
    return paths


def cpu_ms_per_sample(fn, paths, passes):
    """Process CPU time per call of ``fn(path)``, after one warm-up pass."""
    for p in paths[:4]:
        fn(p)
    t = time.process_time()
    for _ in range(passes):
        for p in paths:
            fn(p)
    return 1000 * (time.process_time() - t) / (passes * len(paths))


def bench_data(n_images, passes, device_batch=32):
    """Rows of part (a)."""
    from PIL import Image

    from src.augment.recipes import moco_recipe, swav_recipe

    torch.set_num_threads(1)
    torch.manual_seed(0)
    np.random.seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        paths = make_jpegs(folder, n_images)

        def pil_rgb(p):
            with open(p, "rb") as f:
                return Image.open(f).convert("RGB")

        swav_off, moco_off = official_swav_transform(), official_moco_v2_transform()
        swav_split = swav_recipe([224, 96], [2, 6], [0.14, 0.05], [1.0, 0.14]).split()
        moco_split = moco_recipe(224).split()
        cells = [("SwAV 2x224+6x96", "official per-sample PIL", lambda p: swav_off(pil_rgb(p))),
                 ("SwAV 2x224+6x96", "ours, split: CPU half", lambda p: swav_split(Image.open(p))),
                 ("MoCo v2 2x224", "official per-sample PIL", lambda p: moco_off(pil_rgb(p))),
                 ("MoCo v2 2x224", "ours, split: CPU half", lambda p: moco_split(Image.open(p)))]
        for what, how, fn in cells:
            rows.append({"part": "a", "pipeline": what, "path": how, "cpu_ms_per_sample": cpu_ms_per_sample(fn, paths,
                                                                                                           passes)})
        rows.append({"part": "a", "pipeline": "SwAV 2x224+6x96", "path": "split: JPEGs decoded at reduced size",
                     "cpu_ms_per_sample": None, "drafted": f"{swav_split.n_drafted}/{swav_split.n_images}"})
    rows += bench_video_data(n_clips=min(n_images, 4), passes=passes)
    # the device half, run on this CPU (batched, 1 thread): only meaningful as a reference without a GPU
    augment = swav_recipe([224, 96], [2, 6], [0.14, 0.05], [1.0, 0.14]).device()
    crops = [torch.randint(0, 256, (device_batch, 3, s, s), dtype=torch.uint8) for s in [224] * 2 + [96] * 6]
    g = torch.Generator().manual_seed(0)
    augment(crops, g)
    t = time.process_time()
    augment(crops, g)
    rows.append({"part": "a", "pipeline": "SwAV 2x224+6x96", "path": "ours, split: device half run on this CPU",
                 "cpu_ms_per_sample": 1000 * (time.process_time() - t) / device_batch})
    return rows


def bench_video_data(n_clips=4, passes=2, frames=8, size=224, height=256, width=340):
    """Rows of part (a) for SCE's video clips: the 2 views of a decoded clip (``frames`` frames at the K400
    short side 256) through the per-clip path (crop + every colour op on the CPU worker) and through the CPU half
    of the split path (crop + round to uint8); decoding, the same for both, is left out."""
    from src.augment.video import sce_clip_split_views, sce_clip_views

    g = torch.Generator().manual_seed(0)
    clips = [torch.rand(frames, 3, height, width, generator=g) * 255 for _ in range(n_clips)]
    per_clip, split = sce_clip_views(size), sce_clip_split_views(size)
    what = f"SCE video 2x{frames}x{size}"
    rows = []
    for how, fn in (("ours, per-clip path (all on CPU)", lambda c: [per_clip(c, 0), per_clip(c, 1)]),
                    ("ours, split: CPU half", lambda c: [split(c, 0), split(c, 1)])):
        rows.append({"part": "a", "pipeline": what, "path": how, "cpu_ms_per_sample": cpu_ms_per_sample(fn, clips,
                                                                                                       passes)})
    return rows


# ==== (b) training steps, (c) backbone ====
SCRIPTS = {"swav": "main_swav", "deepclusterv2": "main_deepclusterv2", "sce": "main_sce", "moco": "main_moco",
           "sce_video": "main_sce"}


def _crops(sizes, nmb, batch_size, uint8, device, frames=0):
    """The crops of one batch: (B, 3, s, s) images, or (B, 3, frames, s, s) clips when ``frames``."""
    shapes = [s for s, n in zip(sizes, nmb) for _ in range(n)]
    lead = (batch_size, 3, frames) if frames else (batch_size, 3)
    make = (lambda s: torch.randint(0, 256, (*lead, s, s), dtype=torch.uint8)) if uint8 else \
        (lambda s: torch.randn(*lead, s, s))
    crops = [make(s) for s in shapes]
    return [c.pin_memory() for c in crops] if device.type == "cuda" else crops


def _option_flags(device_aug, amp, channels_last, compile):
    """The speed options of a cell as script flags (every method script spells them the same)."""
    return ["--amp", amp, *(["--device-aug"] if device_aug else []), *(["--channels-last"] if channels_last else []),
            *(["--compile"] if compile else [])]


def _crop_flags(sizes, nmb):
    scales = [("0.14", "1"), ("0.05", "0.14")] + [("0.05", "0.14")] * (len(sizes) - 2)
    return ["--size_crops", *map(str, sizes), "--nmb_crops", *map(str, nmb),
            "--min_scale_crops", *[lo for lo, _ in scales[:len(sizes)]],
            "--max_scale_crops", *[hi for _, hi in scales[:len(sizes)]]]


def script_argv(method, arch, batch_size, sizes, nmb, data, options, frames=0, extra_args=()):
    """The command line of a cell's script, as ``python main_<method>.py`` would get it: the cell's trunk, batch,
    crops and speed ``options`` (``_option_flags``' arguments), the folder its build reads (``data["images"]``, or
    ``data["videos"]`` for ``sce_video``), no loader workers, seed 0; queues of 64 (MoCo) / 32 (SCE) batches."""
    b = str(batch_size)
    if method == "moco":  # MoCo v2; split-BN over 8 sub-batches where the batch divides
        argv = [data["images"], "-a", arch, "-b", b, "--crop-size", str(sizes[0]), "--moco-k", str(64 * batch_size),
                "--mlp", "--moco-t", "0.2", "--aug-plus", "--cos", "--bn-splits", "8" if batch_size % 8 == 0 else "1",
                "-j", "0"]
    elif method == "sce_video":  # 2 clips of `frames` frames at the global crop side; the video recipe's defaults
        argv = ["--modality", "video", "--data_path", data["videos"], "--arch", arch, "--batch_size", b,
                "--queue_size", str(32 * batch_size), "--num_frames", str(frames), "--size_crops", str(sizes[0]),
                "--workers", "0"]
    elif method in ("sce", "swav", "deepclusterv2"):
        argv = ["--data_path", data["images"], "--arch", arch, "--batch_size", b, *_crop_flags(sizes, nmb),
                "--workers", "0"]
        argv += (["--queue_size", str(32 * batch_size)] if method == "sce" else
                 ["--freeze_prototypes_niters", "0", *(["--use_fp16", "false"] if method == "swav" else [])])
    else:
        raise ValueError(f"unknown method {method!r}")
    return argv + ["--seed", "0", *_option_flags(*options), *extra_args]


def script_step(method, arch, batch_size, sizes, nmb, device, device_aug, amp, channels_last, compile, data, frames=0,
                extra_args=(), info=None):
    """``main_<method>.step`` on a batch made once, after ``main_<method>.build`` from :func:`script_argv`'s flags
    (``--device-aug``: uint8 crops that the loader's device half augments in each step, else augmented float
    crops). ``sce_video``: ``main_sce.py --modality video`` on 2 clips of ``frames`` frames at ``sizes[0]``; MoCo:
    two views at ``sizes[0]``. ``data``: ``{"images": folder, "videos": folder}`` (``bench.common.step_data``).
    ``extra_args``: more script flags (e.g. ``--mode sela``). ``info``: the DistInfo the build sees (default: one
    process, no group); a ``distributed=True`` one, under an initialised process group, gives the DDP / SyncBN path.
    Returns ``step(it)`` -> the script's stats at global step ``it``; ``step.parts`` is what build made,
    ``step.model`` the module the script checkpoints."""
    import importlib

    script = importlib.import_module(SCRIPTS[method])
    if method in ("moco", "sce_video"):
        sizes, nmb = [sizes[0]], [2]  # MoCo v2: two views of one size; video SCE: two clips
    argv = script_argv(method, arch, batch_size, sizes, nmb, data, (device_aug, amp, channels_last, compile), frames,
                       extra_args)
    args = (script.parse_args if method.startswith("sce") else script.get_args_parser().parse_args)(argv)
    parts = script.build(args, info or local_info(device))
    parts.model.train()  # as train_one_epoch
    batch = (_crops(sizes, nmb, batch_size, device_aug, device, frames if method == "sce_video" else 0),
             torch.zeros(batch_size, dtype=torch.long))
    if method == "deepclusterv2":  # (crops, labels, index); every image of the dataset with a label of each head
        batch += (torch.arange(batch_size),)
        heads = list(args.nmb_prototypes)
        parts.labels.value = torch.randint(0, min(heads), (len(heads), len(parts.dataset)), device=parts.device)
    deliver = loader_feed(parts.loader, batch)

    def step(it):
        return script.step(parts, deliver(), it)
    step.parts, step.model = parts, parts.model
    return step


def make_backbone_step(arch, batch_size, sizes, nmb, device, amp, channels_last, compile, frames=0, key_nmb=None):
    """The ceiling: the trunk's forward + backward on the same crops (one pass per resolution), no head, no loss;
    clips of ``frames`` frames for a video trunk. ``key_nmb`` (one count per size, or None): crops that a momentum
    encoder only embeds, forwarded under no_grad after the others (MoCo's key view, SCE's two global targets)."""
    from src.augment.device import layout
    from src.models import build_backbone
    from src.run.args import autocast_dtype
    from src.run.speed import maybe_compile, to_channels_last

    trunk = to_channels_last(build_backbone(arch)[0].to(device), channels_last)
    step_trunk = maybe_compile(trunk, compile)
    fmt = layout(torch.channels_last if channels_last else torch.contiguous_format, 5 if frames else 4)
    lead = (3, frames) if frames else (3,)
    groups = [torch.randn(batch_size * n, *lead, s, s, device=device).contiguous(memory_format=fmt)
              for s, n in zip(sizes, nmb) if n]
    keys = [torch.randn(batch_size * n, *lead, s, s, device=device).contiguous(memory_format=fmt)
            for s, n in zip(sizes, key_nmb or []) if n]
    dtype = autocast_dtype(argparse.Namespace(amp=amp), device)  # as the scripts: fp16 without CUDA -> fp32
    trunk.train()

    def step(it=0):
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            loss = sum(step_trunk(x).float().mean() for x in groups)
            with torch.no_grad():
                for x in keys:
                    step_trunk(x)
        trunk.zero_grad(set_to_none=True)
        loss.backward()
    step.model = trunk
    return step


def time_cell(cell, data):
    """Run one cell (a dict) in this process: warm-up steps, then timed steps (global steps 0, 1, ...). ``data``:
    the folders a script's build reads (:func:`script_step`). Returns its result row."""
    device = torch.device(cell["device"])
    if cell.get("threads"):
        torch.set_num_threads(cell["threads"])
    import main_deepclusterv2  # noqa: F401 (the scripts are imported before the memory baseline)
    import main_moco  # noqa: F401
    import main_sce  # noqa: F401
    import main_swav  # noqa: F401
    import src.augment.video  # noqa: F401

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = reset_peak_rss() if device.type != "cuda" else 0.0  # torch and the scripts, before any model
    torch.manual_seed(0)
    opts = set(cell["config"].split("+")) - {"base"}
    amp = "bf16" if "bf16" in opts else "fp16" if "fp16" in opts else "none"
    args = (cell["arch"], cell["batch_size"], cell["sizes"], cell["nmb"], device)
    frames = cell.get("frames", 0)
    if cell["method"] == "backbone":
        step = make_backbone_step(*args, amp, "channels_last" in opts, "compile" in opts, frames=frames)
    else:
        step = script_step(cell["method"], *args, "device_aug" in opts, amp, "channels_last" in opts,
                           "compile" in opts, data, frames=frames)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    t0 = time.time()
    for it in range(cell["warmup"]):
        step(it)
    sync()
    t1, c1 = time.time(), time.process_time()
    for it in range(cell["warmup"], cell["warmup"] + cell["steps"]):
        step(it)
    sync()
    dt, cpu = time.time() - t1, time.process_time() - c1
    peak = peak_memory_mb(device) if device.type == "cuda" else peak_rss_mb()
    return {**cell, "images_per_s": cell["batch_size"] * cell["steps"] / dt, "ms_per_step": 1000 * dt / cell["steps"],
            "images_per_cpu_s": cell["batch_size"] * cell["steps"] / cpu, "warmup_s": t1 - t0,
            "peak_mib": peak - rss0, "baseline_mib": rss0}


def _proc_status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(field)


def reset_peak_rss():
    """Linux: reset this process's peak resident set to its current size (``/proc/self/clear_refs``) and return
    that size in MiB; elsewhere the peak so far (then a cell's peak is only what exceeds it)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status_mb("VmRSS")
    except OSError:
        return peak_memory_mb(torch.device("cpu"))


def peak_rss_mb():
    try:
        return _proc_status_mb("VmHWM")
    except OSError:
        return peak_memory_mb(torch.device("cpu"))


def run_cell(cell, timeout, data):
    """``time_cell`` in a fresh process (its own peak memory); returns the row, or an error row."""
    cmd = [sys.executable, "-m", "bench.speed", "--cell", json.dumps(cell), "--data", data["images"], "--video-data",
           data["videos"]]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**cell, "error": f"timed out after {timeout} s"}
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        return {**cell, "error": (p.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(lines[-1])


# ==== report ====
def print_tables(data_rows, step_rows, rate="images_per_s"):
    # the reference of each pipeline: its first row (the official pipeline; video: our per-clip path)
    ref = {}
    for r in data_rows:
        if r["cpu_ms_per_sample"] is not None:
            ref.setdefault(r["pipeline"], r)
    print("(a) CPU time per sample, one thread, 500x375 JPEGs (video: decoded 256x340 frames)")
    for r in data_rows:
        ms, first = r["cpu_ms_per_sample"], ref.get(r["pipeline"])
        ratio = ""
        if ms is not None and first is not None and first is not r:
            r["vs_reference"] = ms / first["cpu_ms_per_sample"]
            ratio = f"  {r['vs_reference']:.2f}x " + ("official" if first["path"].startswith("official")
                                                      else "per-clip")
        print(f"  {r['pipeline']:<16} {r['path']:<42} " + (f"{ms:7.2f} ms{ratio}" if ms is not None
                                                              else r.get("drafted", "")))
    print(f"(b) training step / (c) backbone forward+backward (ratios of {rate}: x vs base, % of the backbone ceiling)")
    ceiling = {(crops_label(r), r["config"]): r[rate] for r in step_rows
               if r["method"] == "backbone" and "error" not in r}
    base = {(r["method"], crops_label(r)): r[rate] for r in step_rows
            if r["config"] == "base" and "error" not in r}
    for r in step_rows:
        name = f"{r['method']} {crops_label(r)}" + (f" {r['arch']}" if r["method"] == "backbone" else "")
        if "error" in r:
            print(f"  {name:<24} {r['config']:<30} error: {r['error']}")
            continue
        b = base.get((r["method"], crops_label(r)))
        ceil = ceiling.get((crops_label(r), ceiling_key(r["config"])))
        extra = f"  {r[rate] / b:.2f}x" if b else ""
        extra += f"  {100 * r[rate] / ceil:5.1f}% of backbone" if ceil and r["method"] != "backbone" else ""
        r.update(vs_base=r[rate] / b if b else None,
                 pct_of_backbone=100 * r[rate] / ceil if ceil and r["method"] != "backbone" else None)
        print(f"  {name:<24} {r['config']:<30} {r['images_per_s']:7.1f} img/s {r['images_per_cpu_s']:7.1f} img/cpu-s "
              f"{r['ms_per_step']:7.0f} ms/step {r['peak_mib']:6.0f} MiB{extra}")


def crops_label(row):
    """``2x64+6x32`` (images), ``2x8x32`` (2 clips of 8 frames at 32 px)."""
    frames = f"{row['frames']}x" if row.get("frames") else ""
    return "+".join(f"{n}x{frames}{s}" for s, n in zip(row["sizes"], row["nmb"]))


def ceiling_key(config):
    """The backbone configuration a step configuration is compared with: the same compute options (the device
    augmentation has no backbone counterpart)."""
    return "+".join(sorted(set(config.split("+")) - {"device_aug", "base"})) or "base"


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell", default=None, help=argparse.SUPPRESS)
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--configs", nargs="*", default=["base", "device_aug", "channels_last", "bf16",
                                                    "device_aug+channels_last+bf16"],
                   help="option sets, '+'-joined: base, device_aug, channels_last, bf16, fp16, compile")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--sizes", type=int, nargs=2, default=[64, 32], help="global and local crop sides (224 96 on GPUs)")
    p.add_argument("--nmb", type=int, nargs=2, default=[2, 6], help="global and local crops (SwAV, DC-v2, SCE)")
    p.add_argument("--video-arch", default="r3d18", help="trunk of the sce_video rows (r3d_tiny, r3d18, r3d50)")
    p.add_argument("--frames", type=int, default=8, help="frames per clip of the sce_video rows (8; the clip side is "
                                                         "the global crop side, --sizes' first value)")
    p.add_argument("--data", default=DEMO_TRAIN,
                   help=f"image folder the image scripts' build reads (the timed steps get pre-made batches; it must "
                        f"hold at least one batch): default {DEMO_TRAIN}, the demo images, built when missing")
    p.add_argument("--video-data", default=BENCH_VIDEO,
                   help=f"video folder main_sce.py --modality video's build reads: default {BENCH_VIDEO}, tiny "
                        "generated moving-shapes videos (src.data.video.demo), built when missing")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads per step cell (0: torch's default)")
    p.add_argument("--data-images", type=int, default=32, help="generated JPEGs of part (a)")
    p.add_argument("--data-passes", type=int, default=2, help="passes over them in part (a)")
    p.add_argument("--skip-data", action="store_true", help="no part (a)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--output", default="bench/results/speed.json")
    return p


def plan_cells(a):
    """The cells of parts (b) and (c), in order: every method under every configuration, then the backbone of each
    distinct batch shape under the configurations' compute options."""
    common = {"arch": a.arch, "batch_size": a.batch_size, "device": a.device, "threads": a.threads,
              "steps": a.steps, "warmup": a.warmup}
    backbone_configs = sorted({ceiling_key(c) for c in a.configs})
    multi, two = (list(a.sizes), list(a.nmb)), ([a.sizes[0]], [2])  # MoCo v2 trains on two views of one size

    def shape(m):  # (arch, sizes, nmb, frames) of a method's batch
        if m == "sce_video":  # two clips
            return a.video_arch, (a.sizes[0],), (2,), a.frames
        return (a.arch, *map(tuple, two if m == "moco" else multi), 0)

    plan = [(m, *shape(m), a.configs) for m in a.methods]
    plan += [("backbone", *batch, backbone_configs) for batch in dict.fromkeys(shape(m) for m in a.methods)]
    return [{**common, "method": method, "config": config, "arch": arch, "sizes": list(sizes), "nmb": list(nmb),
             "frames": frames} for method, arch, sizes, nmb, frames, configs in plan for config in configs]


def main(argv=None):
    p = get_args_parser()
    a = p.parse_args(argv)
    data = {"images": a.data, "videos": a.video_data}
    if a.cell:
        print(json.dumps(time_cell(json.loads(a.cell), data)), flush=True)
        return
    for c in a.configs:
        bad = set(c.split("+")) - OPTIONS - {"base"}
        if bad:
            p.error(f"unknown option(s) {', '.join(sorted(bad))} in --configs {c}")
    device = torch.device(a.device)
    if set(a.methods) - {"sce_video"}:
        ensure_demo_data(a.data)
    if "sce_video" in a.methods:
        ensure_video_data(a.video_data, a.batch_size)
    data_rows = [] if a.skip_data else bench_data(a.data_images, a.data_passes)
    step_rows = []
    for cell in plan_cells(a):
        row = run_cell(cell, a.timeout, data)
        step_rows.append(row)
        print(f"  done {cell['method']} {cell['config']}: " + (f"{row['images_per_s']:.1f} img/s" if "error" not in row
                                                             else row["error"]), flush=True)
    # on a CPU shared with other jobs, wall-clock rates swing with their load: compare CPU-time rates there
    print_tables(data_rows, step_rows, rate="images_per_s" if device.type == "cuda" else "images_per_cpu_s")
    result = {"machine": machine(device), "cpu_count": os.cpu_count(), "torch": torch.__version__,
              "command": " ".join(["python -m bench.speed", *sys.argv[1:]]), "data": data_rows, "steps": step_rows}
    write_json(a.output, result)


if __name__ == "__main__":
    main()
