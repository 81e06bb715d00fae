"""The end-to-end checks of ``python -m bench.gpu``: each method's real script for a few iterations under
``torchrun --nproc_per_node=1`` (stopped by ``--max_iters`` with a checkpoint, then resumed), and
``python main_sce.py --demo`` with its two kNN lines. They run side by side (their speed is not measured).

With one process, ``src.run.dist.init_distributed`` creates no process group (world size 1), so a script under
``torchrun --nproc_per_node=1`` neither builds an NCCL group nor converts SyncBatchNorm, and prints no
``ranks in sync`` line (it needs two processes); those paths are the ``group`` cells of :mod:`bench.gpu_cells`.
What these commands check is the launcher, the real data path, the checkpoint and the resume.
"""
import os
import re

from bench.gpu_runner import PYTHON, child_env, run_command

STOP_FLAG = "--max_iters"
DEMO_RE = re.compile(r"^demo kNN top-1 (pretrained|random-init): (\d+\.\d+)%$")


def make_check_data(root, tiny):
    """The generated image and video folders the script checks train on (written once under ``root``)."""
    from src.data.demo import make_demo_dataset
    from src.data.video.demo import make_video_demo

    images = make_demo_dataset(os.path.join(root, "images"), num_classes=4, train_per_class=16, val_per_class=2,
                               size=64, seed=0, workers=1)
    videos = make_video_demo(os.path.join(root, "videos"), num_classes=2, train_per_class=4, val_per_class=1,
                             height=32 if tiny else 64, width=40 if tiny else 80, seconds=3.0)
    return str(images), str(videos)


def script_command(name, recipe, data, out, device, max_iters, tiny):
    """The command line of one check run: the method's script under a 1-process torchrun, ``max_iters``
    iterations, at the recipe's crops (GPU: ResNet-50 / R3D-18 at batch 8 / 2; ``tiny``: the CPU test sizes)."""
    images, videos = data
    arch, sizes, nmb = recipe["arch"], recipe["sizes"], recipe["nmb"]
    batch, workers = ("4", "0") if tiny else ("8", "2")
    launch = PYTHON + ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    s = [str(x) for x in sizes]
    n = [str(x) for x in nmb]
    lo, hi = [str(x) for x in recipe["min_scale"]], [str(x) for x in recipe["max_scale"]]
    common = ["--device", device, "--print_freq", "1", "--max_iters", str(max_iters)]
    if name == "moco":
        return launch + ["main_moco.py", images, "-a", arch, "--crop-size", s[0], "-b", batch, "--moco-k", "64",
                         "--mlp", "--aug-plus", "--cos", "-j", workers, "--bn-splits", "2", "--output-dir", out,
                         *common]
    if name in ("sce", "sce_6crop", "sce_video"):
        video = ["--modality", "video", "--num_frames", str(recipe["frames"])] if name == "sce_video" else []
        return launch + ["main_sce.py", "--data_path", videos if video else images, "--arch", arch, "--batch_size",
                         "2" if video else batch, "--queue_size", "64", "--size_crops", *s, "--nmb_crops", *n,
                         "--min_scale_crops", *lo, "--max_scale_crops", *hi, "--epochs", "1", "--warmup_epochs", "0",
                         "--workers", workers, "--dump_path", out, *video, *common]
    script = "main_swav.py" if name == "swav" else "main_deepclusterv2.py"
    protos = ["30"] if name == "swav" else ["8", "8", "8"]
    return launch + [script, "--data_path", images, "--arch", arch, "--batch_size", batch, "--size_crops", *s,
                     "--nmb_crops", *n, "--min_scale_crops", *lo, "--max_scale_crops", *hi, "--nmb_prototypes",
                     *protos, "--epochs", "1", "--warmup_epochs", "0", "--workers", workers, "--dump_path", out,
                     *recipe.get("extra_args", []), *common]


def script_check(name, recipe, data, out, device, deadline, tiny, timeout=240):
    """Two runs of the method's script under a 1-process torchrun: ``--max_iters 2`` (stops with a checkpoint),
    then ``--max_iters 3`` in the same folder, which must resume from it. Returns the check's row."""
    env = child_env(threads=2)
    row = {"check": "torchrun 1 process", "name": name}
    for iters, want in ((2, ["launcher=torchrun", f"stopped by {STOP_FLAG} 2"]),
                        (3, ["=> resumed from", f"stopped by {STOP_FLAG} 3"])):
        cmd = script_command(name, recipe, data, out, device, iters, tiny)
        rc, stdout, stderr, secs = run_command(cmd, timeout, deadline, env=env)
        row[f"run{iters}_s"] = round(secs, 1)
        text = stdout.replace("--max-iters", STOP_FLAG)  # main_moco.py names its flag MoCo's way
        missing = [w for w in want if w not in text]
        if rc != 0 or missing:
            tail = (stderr.strip().splitlines() or stdout.strip().splitlines() or ["(no output)"])[-1][:240]
            why = "cut off (timeout or deadline)" if rc is None else f"exit {rc}" if rc else f"no {missing[0]!r} line"
            return {**row, "ok": False, "error": f"--max_iters {iters} run: {why}: {tail}",
                    "command": " ".join(cmd)}
        if iters == 3:
            row["resume_line"] = next(line for line in stdout.splitlines() if "=> resumed from" in line)[:200]
    return {**row, "ok": True}


def demo_check(root, device, deadline, timeout=300):
    """``python main_sce.py --demo --device DEVICE``: exit 0 and the two kNN lines as its last lines."""
    cmd = PYTHON + ["main_sce.py", "--demo", "--device", device, "--demo_dir", os.path.join(root, "demo"),
                    "--dump_path", os.path.join(root, "sce-demo")]
    rc, stdout, stderr, secs = run_command(cmd, timeout, deadline, env=child_env(threads=4))
    row = {"check": "demo", "name": "sce", "seconds": round(secs, 1), "command": " ".join(cmd[1:])}
    found = parse_demo(stdout)
    if rc != 0 or found is None:
        tail = (stderr.strip().splitlines() or stdout.strip().splitlines() or ["(no output)"])[-1][:240]
        return {**row, "ok": False, "error": ("cut off" if rc is None else f"exit {rc}") + f": {tail}"}
    return {**row, "ok": True, "knn_pretrained": found[0], "knn_random_init": found[1]}


def parse_demo(stdout):
    """``(pretrained, random_init)`` top-1 percentages when the last two lines are the demo's kNN lines (in that
    order), else None."""
    lines = [line for line in stdout.splitlines() if line.strip()][-2:]
    matches = [DEMO_RE.match(line) for line in lines]
    if len(matches) != 2 or not all(matches) or [m.group(1) for m in matches] != ["pretrained", "random-init"]:
        return None
    return float(matches[0].group(2)), float(matches[1].group(2))
