"""The prepared GPU check: one command, under 8 minutes on one recent GPU, that says how fast each method's real
training step runs with each speed option, against the bare trunk, and that the CUDA-only paths work.

    python -m bench.gpu                 # the full check, 450 s budget; JSON in bench/results/gpu.json
    python -m bench.gpu --quick         # base and "all" only, one ceiling layout, 2+5 steps, no compile
    python -m bench.gpu --recipes swav moco --configs base all   # a subset

Without CUDA it prints one line and exits with status 2. In order, under one global deadline (``--budget``):

1. ceilings: the bare trunk (ResNet-50; R3D-18 for video) forward + backward in fp16 (NCHW and channels-last) on
   each recipe's crops and batch; "matched" ceilings add a forward-only pass over the crops a momentum encoder
   embeds (MoCo's key, SCE's two global targets), "bare" ones are forward + backward on every crop;
2. steps: each recipe's script's own ``step`` on the parts its ``build`` makes (:func:`bench.speed.script_step`:
   a pre-made batch through the loader's device half; the builds read small generated image and video folders,
   ``bench.common.step_data``) under ``base`` (fp32, per-sample augmentation: the step gets augmented float
   crops), ``all`` (``--device-aug --channels-last --amp bf16``),
   ``fp16`` (``--amp fp16``, i.e. ``--use_fp16 true``, with the grad scaler), ``bf16``, ``channels_last``,
   ``device_aug``; one worker process per recipe, every cell with its own time cap;
3. checks, side by side: the scripts' steps under a 1-process NCCL group with SyncBatchNorm converted
   (``torchrun -m bench.gpu_cells --group``), each script for 2 iterations then resumed for a third under
   ``torchrun --nproc_per_node=1`` (:mod:`bench.gpu_checks`), and ``python main_sce.py --demo --device cuda``;
4. feed: the split pipeline's CPU half with all the machine's cores as loader workers (is the GPU fed?);
5. ``all+compile`` per recipe, one process each, while the budget lasts (compiling takes the most time).

Targets (ratios from the same run): every image recipe's best option set at >= 85% of its matched ceiling and
>= 1.5x its ``base`` (fp32, per-sample) rate; PASS / MISS per recipe. docs/speed.md has the details.
"""
import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

from bench.gpu_runner import PYTHON, Deadline, run_cells

SWAV = dict(sizes=[224, 96], nmb=[2, 6], min_scale=[0.14, 0.05], max_scale=[1.0, 0.14], grad=[2, 6], keys=None,
            pipeline="swav")
# per recipe: the bench.speed.script_step method, the crops, which crops the online trunk back-propagates (grad) and
# which a momentum encoder embeds (keys)
RECIPES = {
    "sce": dict(method="sce", sizes=[224], nmb=[2], min_scale=[0.2], max_scale=[1.0], grad=[2], keys=[2],
                pipeline="sce"),
    "sce_6crop": dict(method="sce", sizes=[224, 192, 160, 128, 96], nmb=[2, 1, 1, 1, 1],  # docs/sce.md
                      min_scale=[0.2, 0.172, 0.143, 0.114, 0.086], max_scale=[1.0, 0.86, 0.715, 0.571, 0.429],
                      grad=[2, 1, 1, 1, 1], keys=[2, 0, 0, 0, 0], pipeline="sce"),
    "moco": dict(method="moco", sizes=[224], nmb=[2], min_scale=[0.2], max_scale=[1.0], grad=[1], keys=[1],
                 pipeline="moco"),  # MoCo v2: one query view back-propagated, the key view embedded
    "swav": dict(method="swav", **SWAV),
    "deepclusterv2": dict(method="deepclusterv2", **SWAV),
    "sela": dict(method="deepclusterv2", extra_args=["--mode", "sela"], **SWAV),  # DC-v2's step; labels differ
    "sce_video": dict(method="sce_video", sizes=[224], nmb=[2], min_scale=[0.2], max_scale=[1.0], grad=[2],
                      keys=[2], frames=8, video=True),
}
STEP_CONFIGS = ["base", "all", "fp16", "bf16", "channels_last", "device_aug"]
CEILING_CONFIGS = ["fp16", "fp16+channels_last"]
TINY_SIDE = {224: 32, 192: 28, 160: 24, 128: 20, 96: 16}  # --tiny (CPU tests): small crops, trunks and heads
TINY_HEADS = {"sce": ["--proj_hidden_dim", "64", "--pred_hidden_dim", "64", "--feat_dim", "32"],
              "moco": ["--moco-dim", "32"], "swav": ["--hidden_mlp", "64", "--feat_dim", "32", "--nmb_prototypes", "30"],
              "deepclusterv2": ["--hidden_mlp", "64", "--feat_dim", "32", "--nmb_prototypes", "30", "30", "30"]}


def recipe(name, tiny, batch, video_batch):
    """The recipe with its trunk, batch and (for ``tiny``) shrunken crops filled in."""
    r = dict(RECIPES[name], name=name)
    video = r.get("video", False)
    r["arch"] = ("r3d_tiny" if tiny else "r3d18") if video else ("resnet_tiny" if tiny else "resnet50")
    r["batch_size"] = (2 if tiny else video_batch) if video else (4 if tiny else batch)
    if tiny:
        r["sizes"] = [TINY_SIDE[s] for s in r["sizes"]]
        r["frames"] = 2 if video else 0
        r["extra_args"] = r.get("extra_args", []) + TINY_HEADS[r["method"].replace("sce_video", "sce")]
    r.setdefault("frames", 0)
    return r


def plan(a):
    """Every cell of phases 1, 2, 4 and 5 and the group cells of phase 3, as JSON-ready dicts."""
    quick = a.quick
    timing = dict(device=a.device, warmup=a.warmup or (1 if a.tiny else 2 if quick else 3),
                  steps=a.steps or (1 if a.tiny else 5 if quick else 10), threads=1 if a.tiny else 0)
    recipes = [recipe(n, a.tiny, a.batch_size, a.video_batch_size) for n in a.recipes]
    configs = a.configs or (["base", "all"] if quick else STEP_CONFIGS)
    ceilings, steps, group, compiled = {}, {}, [], []
    for r in recipes:
        shape = dict(arch=r["arch"], batch_size=r["batch_size"], sizes=r["sizes"], frames=r["frames"])
        shapes = {}
        for kind, nmb, keys in (("matched", r["grad"], r["keys"]), ("bare", r["nmb"], None)):
            shapes[kind] = key = json.dumps([shape, nmb, keys])
            ceilings.setdefault(key, [dict(timing, kind="ceiling", name=f"{r['name']} {kind}", shape=key, config=c,
                                           nmb=nmb, key_nmb=keys, **shape)
                                      for c in (["fp16+channels_last"] if quick else CEILING_CONFIGS)])
        cell = dict(timing, kind="step", name=r["name"], method=r["method"], extra_args=r.get("extra_args", []),
                    nmb=r["nmb"], video=r.get("video", False), pipeline=r.get("pipeline"), **shape,
                    matched_shape=shapes["matched"], bare_shape=shapes["bare"])
        steps[r["name"]] = [dict(cell, config=c) for c in configs]
        group.append(dict(cell, config="all", group=True, warmup=1, steps=1 if a.tiny else 2,
                          expect_syncbn=r["method"] != "moco"))
        if not quick and not a.configs:
            compiled.append(dict(cell, config="all+compile", warmup=max(timing["warmup"], 3 - 2 * a.tiny),
                                 steps=timing["steps"]))
    feeds = {}
    for r in recipes:
        if r.get("pipeline") and r["pipeline"] + str(r["sizes"]) not in feeds:
            feeds[r["pipeline"] + str(r["sizes"])] = dict(
                kind="feed", device=a.device, pipeline=r["pipeline"], name=r["name"], sizes=r["sizes"],
                nmb=r["nmb"], min_scale=r["min_scale"], max_scale=r["max_scale"], batch_size=r["batch_size"],
                workers=a.feed_workers if a.feed_workers is not None else os.cpu_count(),
                seconds=1.0 if a.tiny else 2.0 if quick else 4.0, n_images=8 if a.tiny else 256,
                jpegs=os.path.join(a.workdir, "jpegs"))
    order = ["moco", "sce_video", "sce", "swav", "deepclusterv2", "sela", "sce_6crop"]  # cheapest compiles first
    compiled.sort(key=lambda c: order.index(c["name"]))
    return recipes, [c for cs in ceilings.values() for c in cs], steps, group, list(feeds.values()), compiled


def run_phases(a, deadline, log):
    """Run every phase; returns ``(rows, checks)``."""
    from bench.common import step_data
    from bench.gpu_checks import demo_check, make_check_data, script_check

    recipes, ceilings, steps, group, feeds, compiled = plan(a)
    made = step_data(os.path.join(a.workdir, "steps"), max(r["batch_size"] for r in recipes),
                     max([r["batch_size"] for r in recipes if r.get("video")], default=1))
    folders = ["--data", made["images"], "--video-data", made["videos"]]  # what the step cells' builds read
    worker = PYTHON + ["-m", "bench.gpu_cells", *folders]
    rows = []
    log(f"== 1. ceilings ({len(ceilings)} cells)")
    rows += run_cells(ceilings, worker, a.cell_cap, deadline, log)
    log(f"== 2. training steps ({sum(map(len, steps.values()))} cells)")
    batches = [sum(steps.values(), [])] if a.tiny else list(steps.values())  # --tiny: one worker (CPU start-up)
    for cells in batches:
        rows += run_cells(cells, worker, a.cell_cap, deadline, log)
    log("== 3. checks, side by side: 1-process group + SyncBN, torchrun + resume, demo")
    checks = []
    if not a.skip_checks and deadline.left() > 30:
        data = make_check_data(os.path.join(a.workdir, "data"), a.tiny)
        torchrun = PYTHON + ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m",
                             "bench.gpu_cells", "--group", *folders]
        with ThreadPoolExecutor(max_workers=len(recipes) + 2) as pool:
            jobs = [pool.submit(run_cells, group, torchrun, a.cell_cap, deadline, log)]
            jobs += [pool.submit(script_check, r["name"], r, data, os.path.join(a.workdir, "runs", r["name"]),
                                 a.device, deadline, a.tiny) for r in recipes]
            if not a.skip_demo:
                jobs.append(pool.submit(demo_check, a.workdir, a.device, deadline))
            rows += jobs[0].result()
            checks = [j.result() for j in jobs[1:]]
        for c in checks:
            log(f"  {c['check']} {c['name']}: " + ("ok" if c["ok"] else "FAILED: " + c["error"]))
    log(f"== 4. loader feed ({len(feeds)} pipelines)")
    rows += run_cells(feeds, worker, a.cell_cap, deadline, log)
    log(f"== 5. all+compile ({len(compiled)} cells, while the budget lasts)")
    for cell in compiled:
        rows += run_cells([cell], worker, a.compile_cap, deadline, log, min_left_s=a.compile_cap / 2)
    return rows, checks


def get_args_parser():
    from src.run.args import NONNEG_INT, POSITIVE, POSITIVE_INT, ArgumentParser

    p = ArgumentParser("python -m bench.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="base and all only, one ceiling layout, 2+5 steps, no compile")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES), help="recipes (default all)")
    p.add_argument("--configs", nargs="+", default=None,
                   help=f"step option sets (default {' '.join(STEP_CONFIGS)}, then all+compile): '+'-joined "
                        "base, all, device_aug, channels_last, bf16, fp16, compile")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=128, help="images per step of the image recipes (128)")
    p.add_argument("--video-batch-size", type=POSITIVE_INT, default=32, help="clips per step of sce_video (32)")
    p.add_argument("--warmup", type=NONNEG_INT, default=0, help="untimed steps per cell (0: 3, --quick 2)")
    p.add_argument("--steps", type=NONNEG_INT, default=0, help="timed steps per cell (0: 10, --quick 5)")
    p.add_argument("--budget", type=POSITIVE, default=450.0,
                   help="seconds for every phase (450: the command ends under 8 minutes)")
    p.add_argument("--cell-cap", type=POSITIVE, default=75.0, help="seconds one eager cell may take (75)")
    p.add_argument("--compile-cap", type=POSITIVE, default=150.0, help="seconds one compile cell may take (150)")
    p.add_argument("--feed-workers", type=NONNEG_INT, default=None, help="loader workers (default: every core)")
    p.add_argument("--skip-checks", action="store_true", help="no phase 3 (group, torchrun, demo)")
    p.add_argument("--skip-demo", action="store_true", help="no demo run in phase 3")
    p.add_argument("--output", default="bench/results/gpu.json", help="JSON results (bench/results/gpu.json)")
    p.add_argument("--device", default=None, help=argparse.SUPPRESS)  # tests: --device cpu --tiny
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv=None):
    a = get_args_parser().parse_args(argv)
    import torch

    with warnings.catch_warnings():  # a driver problem is the refusal line, not a warning block before it
        warnings.simplefilter("ignore")
        cuda = torch.cuda.is_available()
    if a.device is None and not cuda:
        print("error: python -m bench.gpu needs a CUDA GPU and torch.cuda.is_available() is False here; "
              "python -m bench.speed measures on the CPU", file=sys.stderr, flush=True)
        return 2
    from bench.common import machine
    from bench.gpu_cells import options
    from bench.gpu_report import report

    for c in a.configs or []:
        try:
            options(c)
        except ValueError:
            get_args_parser().error(f"--configs {c}: use '+'-joined base, all, device_aug, channels_last, bf16, "
                                    "fp16, compile (one of bf16 / fp16)")
    a.device = a.device or "cuda"
    t0, deadline = time.time(), Deadline(a.budget)
    where = machine(torch.device(a.device))
    print(f"bench.gpu: {where}, CUDA {torch.version.cuda}; budget {a.budget:.0f} s; recipes {' '.join(a.recipes)}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as workdir:
        a.workdir = workdir
        rows, checks = run_phases(a, deadline, lambda line: print(line, flush=True))
    result = {"command": " ".join(["python -m bench.gpu", *(argv if argv is not None else sys.argv[1:])]),
              "machine": where, "torch": torch.__version__, "cuda": torch.version.cuda,
              "date": time.strftime("%Y-%m-%d %H:%M"), "budget_s": a.budget, "wall_s": round(time.time() - t0, 1),
              "recipes": a.recipes, "rows": rows, "checks": checks}
    report(result, a.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
