"""MoCo training-step throughput, peak memory, and data-pipeline throughput per worker.

    python -m bench.moco                                  # resnet18 at 64 px and resnet50 at 224 px, CPU-sized
    python -m bench.moco --arch resnet50 --batch-size 256 --crop-size 224 --amp bf16 --steps 20   # a GPU
    python -m bench.moco --recipe small --arch resnet18 mobilenetv3_small --crop-size 64 64 \
        --output bench/results/moco_small.json          # SSL-small: wide head, T 0.1
    python -m bench.moco --recipe ours --arch resnet18 mobilenetv3_small --crop-size 64 64 \
        --output bench/results/moco_ours.json           # 2 large + 4 small crops (160:96), kNN loss

With ``--recipe ours`` the large crops are ``--crop-size`` and the 4 small ones ``crop * 96 / 160`` px;
images/s counts images (one image = 6 crops), and the data row times the constrained 2x160 + 4x96
pipeline with AutoAugment on crops 0, 2-5.

The step timed is ``main_moco.step`` itself (momentum update, shuffled key forward, fp32 loss, backward,
SGD, enqueue) on the parts ``main_moco.build`` makes, fed with a pre-made batch so the loader does not
count; the data pipeline is timed separately, one worker, on the demo images with the two-view MoCo v2
transform.
"""
import argparse

import torch

import main_moco
from bench.common import (add_io_args, ensure_demo_data, local_info, machine, peak_memory_mb, per_arch, report,
                          time_per_sample, time_steps)
from src.augment.recipes import moco_recipe
from src.run.errors import UserError


def recipe_flags(recipe, crop_size):
    """main_moco.py flags of a recipe: MoCo v2, SSL-small (wide head, T 0.1), or Revisiting's "ours"
    (2 large + 4 constrained small crops at a 160:96 ratio, AutoAugment, nearest-neighbour loss)."""
    if recipe == "v2":
        return ["--mlp", "--moco-t", "0.2"]
    if recipe == "small":
        return ["--mlp", "wide", "--moco-t", "0.1"]
    if recipe == "ours":
        small = max(8, round(crop_size * 96 / 160))
        return ["--mlp", "--moco-t", "0.2", "--moco-m", "0.995", "--num_crops", "2", "4", "--size_crops",
                str(crop_size), str(small), "--min_scale_crops", "0.2", "0.05", "--max_scale_crops", "1.0", "0.14",
                "--constrained-cropping", "--auto-augment", "0", "2", "3", "4", "5", "--aux-weight", "0.4",
                "--aux-topk", "20"]
    raise UserError(f"unknown recipe {recipe!r}: v2, small or ours")


def bench_step(arch, batch_size, crop_size, steps, amp, device, data, queue=4096, bn_splits=8, recipe="v2"):
    """``main_moco.step`` on one pre-made batch, after ``main_moco.build`` from the recipe's flags."""
    args = main_moco.get_args_parser().parse_args(
        [data, "-a", arch, "-b", str(batch_size), "--crop-size", str(crop_size), "--moco-k", str(queue),
         *recipe_flags(recipe, crop_size), "--bn-splits", str(bn_splits), "--amp", amp, "-j", "0", "--seed", "0",
         "--device", str(device)])
    info = local_info(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    parts = main_moco.build(args, info)
    sizes = [crop_size] * 2  # MoCo's two views, or every crop of the multi-crop recipe
    if args.num_crops:
        sizes = [s for s, n in zip(args.size_crops, args.num_crops) for _ in range(n)]
    batch = ([torch.randn(batch_size, 3, s, s) for s in sizes], torch.zeros(batch_size, dtype=torch.long))
    timed = time_steps(lambda it: main_moco.step(parts, batch, it), steps, device)
    what = f"moco step {arch}" if recipe == "v2" else f"moco {recipe} step {arch}"
    px = crop_size if not args.num_crops else "+".join(f"{n}x{s}" for n, s in zip(args.num_crops, args.size_crops))
    return {"what": what, "batch": batch_size, "px": px, "amp": amp,
            "images/s": batch_size * steps / timed, "ms/step": 1000 * timed / steps,
            "peak MiB": peak_memory_mb(device)}


def bench_data(root, crop_size, n, recipe="v2"):
    if recipe == "ours":  # the published geometry: 2x160 + 4x96, constrained, AutoAugment on crops 0, 2-5
        args = main_moco.get_args_parser().parse_args(["x", *recipe_flags("ours", 160)])
        main_moco.check_recipe_args(args)
        transform = main_moco.build_transform(args)
    else:
        transform = moco_recipe(crop_size, aug_plus=True).per_image()
    n, dt = time_per_sample(root, transform, n)
    what = "data: 2-view MoCo v2, 1 worker" if recipe != "ours" else "data: ours 2x160+4x96 constrained+AA, 1 worker"
    return {"what": what, "batch": 1, "px": crop_size if recipe != "ours" else 160, "amp": "-",
            "images/s": n / dt, "ms/step": 1000 * dt / n, "peak MiB": 0.0}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="*", default=["resnet18", "resnet50"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--crop-size", type=int, nargs="*", default=[64, 224], help="one per arch")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--recipe", default="v2", choices=["v2", "small", "ours"],
                   help="v2: MoCo v2; small: SSL-small (wide head); ours: Revisiting multi-crop + kNN loss")
    add_io_args(p, "moco", data_samples=300)
    a = p.parse_args()
    device = torch.device(a.device)
    sizes = per_arch(a.crop_size, a.arch)
    rows = []
    ensure_demo_data(a.data)
    for arch, size in zip(a.arch, sizes):
        batch = a.batch_size if size <= 96 or device.type == "cuda" else max(a.batch_size // 4, 8)
        rows.append(bench_step(arch, batch, size, a.steps, a.amp, device, a.data, recipe=a.recipe))
    if a.recipe == "ours":
        rows.append(bench_data(a.data, 160, a.data_samples // 3, recipe="ours"))
    else:
        rows.append(bench_data(a.data, 64, a.data_samples))
        rows.append(bench_data(a.data, 224, a.data_samples // 3))
    report(f"MoCo bench on {machine(device)}", rows, a.output)


if __name__ == "__main__":
    main()
