"""Every bad input a user or a cluster gives the scripts: one ``error:`` line naming the problem and the fix, exit
status 2, no traceback; and the files a run leaves behind (no temporaries, one log row per step, readable modes,
a total --max_iters). Most cases run in this process (the CLI's own exit path without another interpreter)."""
import argparse
import importlib
import json
import os
import resource
import signal
import stat
import sys

import pytest
import torch

import eval_linear
import main_deepclusterv2
import main_moco
import main_sce
import main_swav
import main_transfer
from src.models import build_backbone
from src.run.args import ArgumentParser
from src.run.launch import cli
from tests.helpers import ROOT, exits, one_line, py, tiny_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

SCE = ["--arch", "resnet_tiny", "--size_crops", "32", "--batch_size", "8", "--queue_size", "32", "--feat_dim", "16",
       "--proj_hidden_dim", "32", "--pred_hidden_dim", "32", "--epochs", "1", "--warmup_epochs", "0", "--workers", "0",
       "--print_freq", "1"]
MOCO = ["-a", "resnet_tiny", "--crop-size", "32", "-b", "8", "--moco-k", "32", "--epochs", "1", "-j", "0", "-p", "1",
        "--seed", "0", "--bn-splits", "2"]
SWAV = ["--arch", "resnet_tiny", "--hidden_mlp", "32", "--feat_dim", "16", "--batch_size", "8", "--size_crops", "32",
        "--nmb_crops", "2", "--min_scale_crops", "0.14", "--max_scale_crops", "1", "--warmup_epochs", "0",
        "--epochs", "1", "--workers", "0", "--print_freq", "1", "--use_fp16", "false"]
LINEAR = ["--resize", "32", "--crop_size", "32", "-b", "8", "-j", "0", "-p", "1", "--epochs", "1", "--lr", "0.1"]
MODULES = {"main_sce.py": (main_sce, main_sce.parse_args), "main_moco.py": (main_moco, None),
           "main_swav.py": (main_swav, None), "main_deepclusterv2.py": (main_deepclusterv2, None),
           "eval_linear.py": (eval_linear, None), "main_transfer.py": (main_transfer, None)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(str(tmp_path_factory.mktemp("bad") / "demo"), num_classes=2, train_per_class=8,
                        val_per_class=2, size=32)


def cli_run(script, argv, capsys):
    """``python SCRIPT argv`` in this process: (exit status, stdout, stderr)."""
    module, parse = MODULES[script]
    parse = parse or ArgumentParser(parents=[module.get_args_parser(add_help=False)]).parse_args
    return exits(lambda: cli(module.main, lambda: parse(argv)), capsys)




def _ckpt(path, **state):
    torch.save(state, path)
    return str(path)


# ==== flags ====
@pytest.mark.parametrize("script,extra,needle", [
    ("main_moco.py", ["--lr", "-0.03"], "argument --lr"),
    ("main_swav.py", ["--base_lr", "-1"], "argument --base_lr"),
    ("main_deepclusterv2.py", ["--base_lr", "-1"], "argument --base_lr"),
    ("main_sce.py", ["--base_lr", "-1"], "argument --base_lr"),
    ("main_sce.py", ["--workers", "-1"], "argument --workers"),
    ("main_moco.py", ["--crop-size", "0"], "argument --crop-size"),
    ("eval_linear.py", ["-b", "0"], "argument -b"),
    ("main_moco.py", ["--moco-m", "2"], "argument --moco-m"),
    ("main_swav.py", ["--epochs", "-1"], "argument --epochs"),
    ("main_transfer.py", ["--momentum", "1"], "argument --momentum"),
])
def test_bad_flag_values_are_refused_where_parsed(script, extra, needle, data, tmp_path, capsys):
    out = str(tmp_path / "run")
    base = {"main_sce.py": ["--data_path", data, *SCE, "--dump_path", out],
            "main_moco.py": [data, *MOCO, "--output-dir", out],
            "main_swav.py": ["--data_path", data, *SWAV, "--dump_path", out],
            "main_deepclusterv2.py": ["--data_path", data, *SWAV, "--nmb_prototypes", "4", "--dump_path", out],
            "eval_linear.py": [data, "-a", "resnet_tiny", *LINEAR, "--dump_path", out],
            "main_transfer.py": [data, "--dataset", "folder", "--output-dir", out]}[script]
    line = one_line(*cli_run(script, base + extra, capsys))
    assert needle in line and "must be" in line
    assert not os.path.exists(out)  # refused before anything was created


# ==== checkpoints that are not what they should be ====
def test_empty_checkpoint_anywhere(data, tmp_path, capsys):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    line = one_line(*cli_run("eval_linear.py", [data, "--pretrained", str(empty), *LINEAR, "--dump_path",
                                                str(tmp_path / "l")], capsys))
    assert "is empty (0 bytes" in line
    line = one_line(*cli_run("main_sce.py", ["--data_path", data, *SCE, "--resume", str(empty), "--dump_path",
                                             str(tmp_path / "s")], capsys))
    assert "is empty (0 bytes" in line and "--resume" in line
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "checkpoint.pth.tar").write_bytes(b"")  # auto-resume
    line = one_line(*cli_run("main_moco.py", [data, *MOCO, "--output-dir", str(tmp_path / "m")], capsys))
    assert "is empty (0 bytes" in line


def test_wrong_kind_of_checkpoint_to_resume(data, tmp_path, capsys):
    plain = _ckpt(tmp_path / "plain.pth", **build_backbone("resnet_tiny")[0].state_dict())
    line = one_line(*cli_run("main_sce.py", ["--data_path", data, *SCE, "--resume", plain, "--dump_path",
                                             str(tmp_path / "s")], capsys))
    assert "not a checkpoint of a run" in line and "--pretrained" in line
    code, out, err = cli_run("main_moco.py", [data, *MOCO, "--max-iters", "1", "--output-dir", str(tmp_path / "m")],
                             capsys)
    assert code == 0, err
    line = one_line(*cli_run("eval_linear.py", [data, "-a", "resnet_tiny", *LINEAR, "--resume",
                                                str(tmp_path / "m" / "checkpoint.pth.tar"), "--dump_path",
                                                str(tmp_path / "l")], capsys))
    assert "is a checkpoint of main_moco.py, not one of eval_linear.py" in line


def test_unsafe_globals_are_all_named(data, tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return exec, ("import sys; sys.exit(99)",)

    bad = _ckpt(tmp_path / "bad.pth", args=argparse.Namespace(arch="resnet_tiny"), x=Payload())
    line = one_line(*cli_run("eval_linear.py", [data, "--pretrained", bad, *LINEAR, "--dump_path",
                                                str(tmp_path / "l")], capsys))
    assert "argparse.Namespace" in line and "builtins.exec" in line and "--trust-checkpoint" in line


def test_a_changed_trunk_is_not_resumed(data, tmp_path, capsys):
    """The --pretrained file at the same path now holds other weights: the head is not continued on them."""
    trunk = build_backbone("resnet_tiny")[0]
    path = tmp_path / "trunk.pth"
    torch.save(trunk.state_dict(), path)
    argv = [data, "--pretrained", str(path), "-a", "resnet_tiny", *LINEAR, "--epochs", "2", "--max_iters", "1",
            "--dump_path", str(tmp_path / "l")]
    assert cli_run("eval_linear.py", argv, capsys)[0] == 0
    with torch.no_grad():
        trunk.conv1.weight.mul_(2)
    torch.save(trunk.state_dict(), path)  # same path, same size, other content
    line = one_line(*cli_run("eval_linear.py", argv, capsys))
    assert "another --pretrained" in line and "trunk_sha256" in line


# ==== output folders ====
def test_unwritable_output_folder_before_any_work(data, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    line = one_line(*cli_run("main_swav.py", ["--data_path", data, *SWAV, "--nmb_prototypes", "4", "--dump_path",
                                              str(blocker / "run")], capsys))
    assert "is not writable" in line and "--dump_path" in line


def test_full_disk_keeps_the_last_checkpoint(data, tmp_path):
    """RLIMIT_FSIZE makes writes past 600 kB fail with EFBIG (Python ignores SIGXFSZ): a disk that fills up."""
    out = tmp_path / "run"
    cmd = py("main_sce.py", "--data_path", data, *SCE, "--arch", "resnet18", "--dump_path", str(out))

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))

    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    p = subprocess.run(cmd, cwd=ROOT, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                       timeout=300, preexec_fn=small_files)
    line = one_line(p.returncode, p.stdout, p.stderr)
    assert "cannot write" in line and "checkpoint.pth.tar" in line and "--dump_path" in line
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]


# ==== what a run leaves behind ====
def test_files_of_a_run(data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".tmp-killed.pth").write_bytes(b"0" * 1000)  # left by a kill during a save
    argv = ["--data_path", data, *SCE, "--epochs", "2", "--print_freq", "10", "--dump_path", str(out)]
    code, stdout, _ = cli_run("main_sce.py", argv + ["--max_iters", "1"], capsys)
    assert code == 0 and "git commit:" in stdout
    assert not (out / ".tmp-killed.pth").exists()
    assert (out / "log.txt").exists()  # before the first print step
    assert stat.S_IMODE(os.stat(out / "checkpoint.pth.tar").st_mode) == 0o666 & ~_umask()
    assert cli_run("main_sce.py", argv + ["--max_iters", "1"], capsys)[1].count("nothing to do") == 1
    assert torch.load(out / "checkpoint.pth.tar", weights_only=True)["iter"] == 1  # --max_iters is a total
    assert cli_run("main_sce.py", argv + ["--max_iters", "3"], capsys)[0] == 0
    assert cli_run("main_sce.py", argv, capsys)[0] == 0
    _, stdout, _ = cli_run("main_sce.py", argv, capsys)
    assert "nothing to do: all 2 epochs are done" in stdout
    records = [json.loads(line) for line in open(out / "log.txt")]
    epochs = [r["epoch"] for r in records if r["type"] == "epoch"]
    assert epochs == [0, 1]  # one row per epoch whatever the resumes
    steps = [r["step"] for r in records if r["type"] == "iter"]
    assert steps == sorted(set(steps))


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ==== NaN / inf: every trainer stops with one line and keeps its last good checkpoint ====
@pytest.mark.parametrize("script,argv", [
    ("main_sce.py", ["--base_lr", "1e30"]),
    ("main_moco.py", ["--lr", "1e30"]),
    ("main_swav.py", ["--base_lr", "1e6", "--nmb_prototypes", "4", "--epochs", "3"]),
    ("main_deepclusterv2.py", ["--base_lr", "1e6", "--nmb_prototypes", "4", "--epochs", "3"]),
    ("eval_linear.py", ["--lr", "1e12", "--epochs", "4"]),
    ("main_transfer.py", ["--finetune", "--lr", "1e12", "--epochs", "4"]),
])
def test_non_finite_training_stops_with_one_line(script, argv, data, tmp_path, capsys):
    out = str(tmp_path / "run")
    base = {"main_sce.py": ["--data_path", data, *SCE, "--dump_path", out],
            "main_moco.py": [data, *MOCO, "--output-dir", out],
            "main_swav.py": ["--data_path", data, *SWAV, "--dump_path", out],
            "main_deepclusterv2.py": ["--data_path", data, *SWAV, "--dump_path", out],
            "eval_linear.py": [data, "-a", "resnet_tiny", *LINEAR, "--dump_path", out],
            "main_transfer.py": [data, "--dataset", "folder", "-a", "resnet_tiny", "--crop-size", "32", "--resize",
                                 "32", "-b", "8", "-j", "0", "-p", "1", "--epochs", "1", "--output-dir", out]}[script]
    line = one_line(*cli_run(script, base + argv, capsys))
    # the run loop's line (it names the epoch / iteration and the checkpoint kept), or the test's refusal to score
    assert "NaN/inf" in line and ("checkpoint" in line or "no score is reported" in line), line
    ckpt = os.path.join(out, "checkpoint.pth.tar")
    if os.path.exists(ckpt):  # whatever was saved is finite
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        for key in ("state_dict", "head"):
            for name, t in state.get(key, {}).items():
                assert torch.isfinite(t.float()).all(), name


# ==== NaN / inf: no evaluation prints a score from a diverged trunk ====
@pytest.fixture(scope="module")
def nan_trunk(tmp_path_factory):
    trunk = build_backbone("resnet_tiny")[0]
    state = trunk.state_dict()
    state["layer1.0.bn1.running_var"].fill_(float("nan"))
    path = tmp_path_factory.mktemp("nan") / "trunk.pth"
    torch.save({"arch": "resnet_tiny", "state_dict": state}, path)
    return str(path)


def _eval_cli(module_name, argv, capsys):
    module = importlib.import_module(module_name)
    try:
        module.main(ArgumentParser(parents=[module.get_args_parser()]).parse_args(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_evaluations_refuse_non_finite_features(data, nan_trunk, tmp_path, capsys):
    common = ["--pretrained", nan_trunk, "--resize", "32", "--crop-size", "32", "-b", "8", "-j", "0"]
    pairs = tmp_path / "pairs"
    sample_augs = importlib.import_module("experiments.sample-augs")
    sample_augs.main(argparse.ArgumentParser(parents=[sample_augs.get_args_parser()]).parse_args(
        [os.path.join(data, "val"), str(pairs), "--images-per-class", "2", "--size", "32"]))
    capsys.readouterr()
    cases = [("eval.instdisc", [str(pairs), *common, "--output-json", str(tmp_path / "i.json")]),
             ("eval.stats-dist", [str(pairs), *common, "--uniformity-chunks", "1", "--output-json",
                                  str(tmp_path / "s.json")]),
             ("eval.retrieval", [data, "--modality", "image", *common, "--output_dir", str(tmp_path / "r")]),
             ("experiments.tsne", [str(pairs), *common, "--pic-name", str(tmp_path / "t.pdf")])]
    from tests.test_voc_svm import write_voc

    write_voc(tmp_path / "voc")
    cases.append(("eval.voc_svm", [str(tmp_path / "voc"), *common, "--output-json", str(tmp_path / "v.json")]))
    for name, argv in cases:
        line = one_line(*_eval_cli(name, argv, capsys))
        assert "NaN/inf" in line, (name, line)
    for script, argv in (("eval_linear.py", [data, "--pretrained", nan_trunk, *LINEAR, "--dump_path",
                                             str(tmp_path / "l")]),
                         ("main_transfer.py", [data, "--dataset", "folder", "--pretrained", nan_trunk, "--crop-size",
                                               "32", "--resize", "32", "-b", "8", "-j", "0", "--epochs", "1",
                                               "--output-dir", str(tmp_path / "t")])):
        line = one_line(*cli_run(script, argv, capsys))
        assert "NaN/inf" in line, (script, line)


def test_sample_augs_refuses_an_empty_class_folder(data, tmp_path, capsys):
    src = tmp_path / "src"
    (src / "empty").mkdir(parents=True)
    (src / "full").mkdir()
    import shutil

    first = sorted(os.listdir(os.path.join(data, "val", os.listdir(os.path.join(data, "val"))[0])))[0]
    cls = os.listdir(os.path.join(data, "val"))[0]
    shutil.copy(os.path.join(data, "val", cls, first), src / "full" / first)
    line = one_line(*_eval_cli("experiments.sample-augs", [str(src), str(tmp_path / "out")], capsys))
    assert "class folder" in line and "empty" in line and "has no images" in line


def test_sigint_is_one_word_not_a_traceback(data, tmp_path):
    import subprocess
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    proc = subprocess.Popen([sys.executable, "main_moco.py", data, *MOCO, "--epochs", "50", "--output-dir",
                             str(tmp_path / "m")], cwd=ROOT, env={**env, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("Epoch: [0]"):
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in out + err, err[-2000:]
