"""SwAV training-step throughput and peak memory (2x224 + 6x96 multi-crop), and the multi-crop data pipeline.

    python -m bench.swav                      # CPU-sized: resnet50 2x224+6x96 at batch 4, resnet18 2x32+6x16 at 32
    python -m bench.swav --arch resnet50 --batch-size 64 --amp fp16 --steps 20          # one GPU, the paper's crops
    python -m bench.swav --arch resnet50 --batch-size 32 --queue-length 3840 --amp fp16  # bs256 recipe, per GPU

The step timed is ``main_swav.step`` itself (prototype normalisation, grouped forwards, Sinkhorn in fp32 over the
batch and, with ``--queue-length``, the full queue, swapped loss, backward, LARC step) on the parts
``main_swav.build`` makes, fed with a pre-made batch so the loader does not count; images/s counts unique images
(each has 8 crops). The data pipeline is timed separately, one worker, on the demo images (64 px PNGs: cheaper to
decode than ImageNet JPEGs).
"""
import argparse

import torch

import main_swav
from bench.common import (add_io_args, ensure_demo_data, local_info, machine, peak_memory_mb, per_arch, report,
                          time_per_sample, time_steps)
from src.augment.views import relative_blur_scale


def bench_step(arch, batch_size, size_crops, nmb_crops, steps, amp, device, data, nmb_prototypes=3000,
               queue_length=0):
    """``main_swav.step`` on one pre-made batch, after ``main_swav.build``; with ``queue_length`` the queue is full
    (random unit rows) from the first step. Returns one table row."""
    args = main_swav.get_args_parser().parse_args(
        ["--data_path", data, "--arch", arch, "--batch_size", str(batch_size), "--size_crops", *map(str, size_crops),
         "--nmb_crops", *map(str, nmb_crops), "--min_scale_crops", *["0.1"] * len(nmb_crops),
         "--max_scale_crops", *["1"] * len(nmb_crops), "--nmb_prototypes", str(nmb_prototypes),
         "--queue_length", str(queue_length), "--amp", amp, "--use_fp16", "false", "--workers", "0",
         "--freeze_prototypes_niters", "1", "--device", str(device)])
    info = local_info(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    parts = main_swav.build(args, info)
    if parts.queue_rows:
        parts.queue = parts.new_queue()
        parts.queue.queue.copy_(torch.nn.functional.normalize(torch.randn_like(parts.queue.queue), dim=2))
        parts.queue.filled = parts.queue_rows
    parts.model.train()
    crops = [torch.randn(batch_size, 3, s, s) for s, n in zip(size_crops, nmb_crops) for _ in range(n)]
    batch = (crops, torch.zeros(batch_size, dtype=torch.long))
    timed = time_steps(lambda it: main_swav.step(parts, batch, it), steps, device)
    crops_txt = "+".join(f"{n}x{s}" for s, n in zip(size_crops, nmb_crops))
    return {"what": f"swav step {arch}" + (f" queue {parts.queue_rows}" if parts.queue_rows else ""),
            "batch": batch_size, "crops": crops_txt, "amp": amp, "images/s": batch_size * steps / timed,
            "ms/step": 1000 * timed / steps, "peak MiB": peak_memory_mb(device)}


def bench_data(root, size_crops, nmb_crops, n):
    """Per-sample multi-crop augmentation speed, one process (what one loader worker delivers)."""
    from src.augment.recipes import swav_recipe

    transform = swav_recipe(size_crops, nmb_crops, [0.14, 0.05][:len(size_crops)], [1.0, 0.14][:len(size_crops)],
                            blur_scale=relative_blur_scale(size_crops[0])).per_image()
    n, dt = time_per_sample(root, transform, n)
    crops_txt = "+".join(f"{c}x{s}" for s, c in zip(size_crops, nmb_crops))
    return {"what": "data: SwAV multi-crop, 1 worker", "batch": 1, "crops": crops_txt, "amp": "-",
            "images/s": n / dt, "ms/step": 1000 * dt / n, "peak MiB": 0.0}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="*", default=["resnet50", "resnet18"])
    p.add_argument("--batch-size", type=int, nargs="*", default=[4, 32], help="one per arch (or one for all)")
    p.add_argument("--size-crops", type=int, nargs="*", default=None,
                   help="crop sides of the two groups for every arch (default: 224 96 for resnet50*, 32 16 otherwise)")
    p.add_argument("--nmb-crops", type=int, nargs=2, default=[2, 6])
    p.add_argument("--nmb-prototypes", type=int, default=3000)
    p.add_argument("--queue-length", type=int, default=0,
                   help="main_swav's --queue_length (rounded down to whole batches), full from the first step (0: none)")
    p.add_argument("--steps", type=int, default=3)
    add_io_args(p, "swav", data_samples=100)
    a = p.parse_args()
    device = torch.device(a.device)
    batches = per_arch(a.batch_size, a.arch)
    ensure_demo_data(a.data)  # build reads a folder of images (the step is fed a pre-made batch)
    rows = []
    for arch, batch in zip(a.arch, batches):
        sizes = a.size_crops or ([224, 96] if arch.startswith("resnet50") else [32, 16])
        rows.append(bench_step(arch, batch, sizes, a.nmb_crops, a.steps, a.amp, device, a.data, a.nmb_prototypes,
                               a.queue_length))
    rows.append(bench_data(a.data, [224, 96], [2, 6], a.data_samples))
    report(f"SwAV bench on {machine(device)}", rows, a.output)


if __name__ == "__main__":
    main()
