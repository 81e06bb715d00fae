"""SCE training-step throughput and peak memory (2 crops and 6 crops), and data-pipeline throughput per worker.

    python -m bench.sce                                   # CPU-sized: resnet18 at 64 px, resnet50 at 224 px
    python -m bench.sce --arch resnet50 --batch-size 256 --crop-size 224 --amp fp16 --steps 20   # a GPU

The step timed is ``main_sce.step`` itself (queue snapshot, online forward of every crop, target forward of
the 2 global crops, fp32 SCE loss over all pairs, backward, unscale, LARS, momentum update, enqueue) on the
parts ``main_sce.build`` makes, fed with a pre-made batch so the loader does not count. 6 crops are the
paper's 2x224 + 192 + 160 + 128 + 96, scaled by crop-size/224. The data pipeline (per-sample PIL
augmentations, one worker) is timed separately on the demo images.
"""
import argparse

import torch

import main_sce
from bench.common import (add_io_args, ensure_demo_data, local_info, machine, peak_memory_mb, per_arch, report,
                          time_per_sample, time_steps)
from src.augment.recipes import sce_recipe
from src.augment.views import relative_blur_scale

LOCAL_SIZES, LOCAL_MIN, LOCAL_MAX = (192, 160, 128, 96), (0.172, 0.143, 0.114, 0.086), (0.86, 0.715, 0.571, 0.429)


def crop_flags(crops, size):
    """main_sce flags for 2 crops, or the 6-crop recipe scaled from 224 px to ``size``."""
    if crops == 2:
        return ["--size_crops", str(size), "--nmb_crops", "2", "--min_scale_crops", "0.2", "--max_scale_crops", "1"]
    locals_ = [str(max(8, round(s * size / 224))) for s in LOCAL_SIZES]
    return ["--size_crops", str(size), *locals_, "--nmb_crops", "2", "1", "1", "1", "1",
            "--min_scale_crops", "0.2", *map(str, LOCAL_MIN), "--max_scale_crops", "1", *map(str, LOCAL_MAX)]


def bench_step(arch, batch_size, crop_size, crops, steps, amp, device, data, mutual_pass=False):
    """``main_sce.step`` on one pre-made batch, after ``main_sce.build`` from the recipe's flags."""
    args = main_sce.get_args_parser().parse_args(
        ["--data_path", data, "--arch", arch, "--batch_size", str(batch_size), "--queue_size", str(2 * batch_size * 16),
         "--amp", amp, "--workers", "0", "--mutual_pass", str(mutual_pass), "--device", str(device),
         *crop_flags(crops, crop_size)])
    info = local_info(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    parts = main_sce.build(args, info)
    parts.model.train()
    batch = ([torch.randn(batch_size, 3, s, s) for s in main_sce.crop_list(args)], torch.zeros(batch_size))
    timed = time_steps(lambda it: main_sce.step(parts, batch, it), steps, device)
    what = f"sce step {arch}, {crops} crops" + (", mutual pass" if mutual_pass else "")
    return {"what": what, "batch": batch_size, "px": crop_size, "amp": amp, "images/s": batch_size * steps / timed,
            "ms/step": 1000 * timed / steps, "peak MiB": peak_memory_mb(device)}


def bench_data(root, crop_size, crops, n):
    args = main_sce.get_args_parser().parse_args(crop_flags(crops, crop_size))
    transform = sce_recipe(args.size_crops, args.nmb_crops, args.min_scale_crops, args.max_scale_crops,
                           blur_scale=relative_blur_scale(crop_size)).per_image()
    n, dt = time_per_sample(root, transform, n)
    return {"what": f"data: {crops}-crop SCE views, 1 worker", "batch": 1, "px": crop_size, "amp": "-",
            "images/s": n / dt, "ms/step": 1000 * dt / n, "peak MiB": 0.0}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="*", default=["resnet18", "resnet50"])
    p.add_argument("--batch-size", type=int, default=32, help="per step (divided by 4 at 224 px on a CPU)")
    p.add_argument("--crop-size", type=int, nargs="*", default=[64, 224], help="global crop side, one per arch")
    p.add_argument("--crops", type=int, nargs="*", default=[2, 6], choices=[2, 6])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--mutual-pass", action="store_true", help="also time same-resolution crops in one forward")
    add_io_args(p, "sce", data_samples=200)
    a = p.parse_args()
    device = torch.device(a.device)
    sizes = per_arch(a.crop_size, a.arch)
    rows = []
    ensure_demo_data(a.data)
    for arch, size in zip(a.arch, sizes):
        batch = a.batch_size if size <= 96 or device.type == "cuda" else max(a.batch_size // 4, 4)
        for crops in a.crops:
            for mutual in ([False, True] if a.mutual_pass and crops == 6 else [False]):
                rows.append(bench_step(arch, batch, size, crops, a.steps, a.amp, device, a.data, mutual))
                print(rows[-1], flush=True)
    for crops in a.crops:
        rows.append(bench_data(a.data, 224, crops, a.data_samples))
    report(f"SCE bench on {machine(device)}", rows, a.output)


if __name__ == "__main__":
    main()
