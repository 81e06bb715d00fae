"""eval_linear.py: presets, a separable toy problem, exact resume, 2 processes == 1 process, errors."""
import argparse
import json
import re
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import eval_linear
from src.run.args import ArgumentParser
from src.run.launch import cli
from tests.helpers import assert_ok, exits, free_port, one_line, py, run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """3 colour classes x (12 train, 4 val) noisy 32 px PNGs, and a main_moco.py-style resnet18 checkpoint."""
    root = tmp_path_factory.mktemp("linear")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for c in range(3):
            folder = root / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 120, (32, 32, 3))
                img[..., c] += 120  # the class is the dominant channel: linearly separable features
                Image.fromarray(img.astype(np.uint8)).save(folder / f"{i}.png")
    from src.models import build_backbone

    torch.manual_seed(1)
    trunk, _ = build_backbone("resnet18", cifar_stem=True)
    state = {f"encoder_q.{k}": v for k, v in trunk.state_dict().items()}
    state.update({"encoder_q.fc.0.weight": torch.randn(512, 512), "queue": torch.randn(128, 16)})
    ckpt = root / "moco" / "checkpoint.pth.tar"
    ckpt.parent.mkdir()
    torch.save({"arch": "resnet18", "epoch": 1, "args": {"arch": "resnet18", "cifar_stem": True},
                "state_dict": state}, ckpt)
    return root


def flags(tiny, dump, *extra, pretrained=True):
    ckpt = ["--pretrained", str(tiny / "moco" / "checkpoint.pth.tar")] if pretrained else ["-a", "resnet18"]
    return [str(tiny / "data"), *ckpt, "--resize", "32", "--crop_size", "32", "-b", "8", "-j", "0", "-p", "100",
            "--dump_path", str(dump), *extra]


def run_inprocess(argv):
    """``python eval_linear.py argv`` in this process (no interpreter start-up); signal handlers restored."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 in subprocesses: 2 shared cores, no spinning threads
    try:
        args = argparse.ArgumentParser(parents=[eval_linear.get_args_parser()]).parse_args(argv)
        return eval_linear.main(args)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        torch.set_num_threads(threads)


def head_of(dump):
    return torch.load(dump / "checkpoint.pth.tar", weights_only=True)["head"]


# ==================================================================================================
def test_presets_follow_the_specs():
    parse = argparse.ArgumentParser(parents=[eval_linear.get_args_parser()]).parse_args
    swav = parse(["d", "--protocol", "swav"])
    eval_linear.apply_protocol(swav)
    assert (swav.lr, swav.epochs, swav.batch_size, swav.weight_decay, swav.scheduler_type, swav.final_lr,
            swav.momentum, swav.nesterov, swav.norm_std) == (0.3, 100, 256, 1e-6, "cosine", 0.0, 0.9, False,
                                                             [0.228, 0.224, 0.225])
    moco = parse(["d", "--protocol", "moco"])
    eval_linear.apply_protocol(moco)
    assert (moco.lr, moco.epochs, moco.weight_decay, moco.scheduler_type, moco.decay_epochs, moco.gamma) == \
        (30.0, 100, 0.0, "step", [60, 80], 0.1)
    sce = parse(["d", "--protocol", "sce"])
    eval_linear.apply_protocol(sce)
    assert (sce.lr, sce.epochs, sce.batch_size, sce.weight_decay, sce.scheduler_type) == (0.4, 90, 1024, 0.0,
                                                                                          "cosine_iter")
    small = parse(["d", "--protocol", "sce", "--batch-size", "512", "--wd", "1e-4"])  # either spelling
    eval_linear.apply_protocol(small)
    assert (small.lr, small.weight_decay) == (0.2, 1e-4)

    # schedules: SwAV per-epoch cosine, SCE per-iteration cosine, MoCo steps at 60 and 80
    s = eval_linear.lr_schedule(swav, 3)
    assert len(s) == 300 and s[0] == s[2] == 0.3 and s[3] < 0.3
    assert s[150] == pytest.approx(0.3 * 0.5 * (1 + np.cos(np.pi * 50 / 100)))
    s = eval_linear.lr_schedule(sce, 3)
    assert len(s) == 270 and s[0] == 0.4 and s[1] < s[0] and s[-1] < 1e-4
    s = eval_linear.lr_schedule(moco, 2)
    assert s[119] == 30 and s[120] == pytest.approx(3.0) and s[160] == pytest.approx(0.3)


def test_separable_toy_problem_and_exact_resume_with_cached_features(tiny, tmp_path, capsys):
    common = ["--protocol", "swav", "--lr", "0.01", "--epochs", "10", "--precompute_features"]
    summary = run_inprocess(flags(tiny, tmp_path / "a", *common))
    out = capsys.readouterr().out
    assert summary["best"]["top1"] == 100.0, out  # the frozen random features separate the colour classes
    assert "(prefix 'encoder_q.')" in out and "features train: 36/36 images" in out
    assert re.search(r"^Test:\tTime \d+\.\d{3}\tLoss \d+\.\d{4}\tAcc@1 \d+\.\d{3}\tBest Acc@1 so far \d+\.\d", out,
                     re.M)
    assert re.search(r"^ \* Acc@1 \d+\.\d{3} Acc@5 \d+\.\d{3}$", out, re.M)
    assert "Top-1 test accuracy: 100.0\n" in out
    assert re.search(r"^best Acc@1 100\.000 Acc@5 100\.000 \(epoch \d\); last Acc@1 \d+\.\d{3} Acc@5 \d+\.\d{3} "
                     r"\(epoch 9\)$", out, re.M)
    saved = json.load(open(tmp_path / "a" / "eval_linear.json"))
    assert saved["best"] == summary["best"] and len(saved["history"]) == 10 and saved["last"]["epoch"] == 9
    assert saved["protocol"] == "swav" and saved["precompute_features"] is True

    # stopped mid-epoch 3, then resumed: the cache is read back and the result is bit-identical
    # (--amp fp16 on a CPU: one warning line, then fp32, so the result still equals the fp32 run's)
    assert run_inprocess(flags(tiny, tmp_path / "b", *common, "--max_iters", "17", "--amp", "fp16")) is None
    out = capsys.readouterr().out
    assert "stopped by --max_iters 17 at epoch 3, iteration 2" in out and out.count("--amp fp16 / --use_fp16 needs CUDA") == 1
    resumed = run_inprocess(flags(tiny, tmp_path / "b", *common, "--amp", "fp16"))
    out = capsys.readouterr().out
    assert "features read from" in out and "resumed from" in out and "at epoch 3, iteration 2" in out
    assert resumed["history"] == summary["history"]
    assert all(torch.equal(head_of(tmp_path / "a")[k], v) for k, v in head_of(tmp_path / "b").items())


def test_two_processes_equal_one_and_resume_on_images(tiny, tmp_path, capsys):
    """Image mode: torchrun with 2 gloo processes sees the same global batches as one process (same head up
    to float summation order); a run stopped mid-epoch and resumed equals the uninterrupted one exactly."""
    common = ["--protocol", "swav", "--lr", "0.01", "--epochs", "2", "-a", "resnet18"]
    one = run_inprocess(flags(tiny, tmp_path / "one", *common))
    capsys.readouterr()
    proc = run(py("-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                  "eval_linear.py", *flags(tiny, tmp_path / "two", *common)))
    assert_ok(proc)
    assert "launcher=torchrun, world_size=2" in proc.stdout and "batch 8 (4 x 2 processes)" in proc.stdout
    two = json.load(open(tmp_path / "two" / "eval_linear.json"))
    assert [e["top1"] for e in two["history"]] == [e["top1"] for e in one["history"]]
    for k, v in head_of(tmp_path / "one").items():
        torch.testing.assert_close(head_of(tmp_path / "two")[k], v, rtol=1e-5, atol=1e-6)

    assert run_inprocess(flags(tiny, tmp_path / "cut", *common, "--max_iters", "3")) is None
    resumed = run_inprocess(flags(tiny, tmp_path / "cut", *common))
    assert resumed["history"] == one["history"]
    assert all(torch.equal(head_of(tmp_path / "one")[k], v) for k, v in head_of(tmp_path / "cut").items())
    run_inprocess(flags(tiny, tmp_path / "cut", *common, "-e"))  # evaluate only: the last epoch's numbers
    assert f" * Acc@1 {one['last']['top1']:.3f} Acc@5 {one['last']['top5']:.3f}" in capsys.readouterr().out


def _error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        run_inprocess(argv)
    assert exc.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


def test_bad_input_is_one_error_line(tiny, tmp_path, capsys):
    assert "no dataset given" in _error([], capsys)
    assert "does not exist" in _error(flags(tiny, tmp_path / "x")[1:] + [str(tmp_path / "nope")], capsys)
    assert "--lr > 0" in _error(flags(tiny, tmp_path / "x", "--lr", "-1"), capsys)
    assert "-e/--evaluate needs a trained head" in _error(flags(tiny, tmp_path / "x", "-e"), capsys)
    odd = tmp_path / "odd"
    for split, cls in (("train", "a"), ("val", "b")):
        (odd / split / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(odd / split / cls / "0.png")
    assert "different class folders" in _error([str(odd), "--dump_path", str(tmp_path / "x")], capsys)
    # a dump_path holding a run of another checkpoint is not silently continued
    run_inprocess(flags(tiny, tmp_path / "r", "--epochs", "1", "--precompute_features", "--lr", "0.01"))
    capsys.readouterr()
    line = _error(flags(tiny, tmp_path / "r", "--epochs", "1", "--precompute_features", "--lr", "0.01",
                        pretrained=False), capsys)  # only the trunk differs (another --lr is refused as well)
    assert "--pretrained" in line and "another --dump_path" in line, line


# ==== hostile input: refused with one line, exit 2, no traceback ====
def _cli_error(argv, capsys):
    """The CLI's own path (the project's parser, then main): exit 2, no traceback, one ``error:`` line."""
    parse = ArgumentParser(parents=[eval_linear.get_args_parser()]).parse_args
    return one_line(*exits(lambda: cli(eval_linear.main, lambda: parse(argv)), capsys))


def test_zero_norm_std_is_refused_where_parsed(tiny, tmp_path, capsys):
    line = _cli_error(flags(tiny, tmp_path / "z", "--norm_std", "0", "0", "0"), capsys)
    assert "argument --norm_std" in line and "must be > 0" in line, line
    assert not (tmp_path / "z").exists()  # refused before anything was written


def test_one_class_is_refused(tmp_path, capsys):
    """One class folder: every prediction is right, so a score of 100% would mean nothing."""
    one = tmp_path / "one"
    for split in ("train", "val"):
        (one / split / "only").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(one / split / "only" / f"{i}.png")
    line = _cli_error([str(one), "-a", "resnet_tiny", "--resize", "8", "--crop_size", "8", "-b", "2", "-j", "0",
                       "--epochs", "1", "--dump_path", str(tmp_path / "x")], capsys)
    assert "at least 2 classes" in line and f"{one / 'train'}" in line and "'only'" in line, line


def test_a_finished_run_is_not_reported_again_with_other_flags(tiny, tmp_path, capsys):
    """Rerunning a finished evaluation with flags that change its maths is refused with the list (not "nothing to
    do" and the old score); flags that change nothing (workers, print interval) are accepted."""
    argv = flags(tiny, tmp_path / "r", "--epochs", "1", "--precompute_features", "--lr", "0.01")
    first = run_inprocess(argv)
    capsys.readouterr()
    line = _cli_error(argv + ["--norm_std", "0.5", "0.5", "0.5"], capsys)
    assert "--norm_std [0.228, 0.224, 0.225] -> [0.5, 0.5, 0.5]" in line and "--allow_changed_flags" in line, line
    line = _cli_error(argv + ["--scheduler_type", "step"], capsys)
    assert "--scheduler_type 'cosine' -> 'step'" in line and "another --dump_path" in line, line
    same = run_inprocess(argv + ["-j", "1", "-p", "5"])  # harmless: said in a warning, then nothing to do
    out = capsys.readouterr().out
    assert "nothing to do: all 1 epochs are done" in out and "warning: resuming with flags" in out
    assert same["best"] == first["best"]
    forced = run_inprocess(argv + ["--norm_std", "0.5", "0.5", "0.5", "--allow_changed_flags"])
    out = capsys.readouterr().out
    assert "warning: resuming with flags that differ from the checkpoint's: --norm_std" in out
    assert forced["best"] == first["best"] and "nothing to do" in out
