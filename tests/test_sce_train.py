"""main_sce.py end to end on CPU: 6 crops, 2 processes through torch.distributed.launch killed and resumed,
bit-exact resume, checkpoints that eval.knn and torchvision read, bad flags."""
import os
import signal
import subprocess

import pytest
import torch
import torchvision

import main_sce
from eval import knn
from src.run import dist
from src.run.errors import UserError
from tests.helpers import ROOT, SYNC_RE, assert_ok, free_port, one_error_line, py, run, tiny_dataset

TINY = ["--arch", "resnet18", "--batch_size", "4", "--queue_size", "32", "--feat_dim", "16", "--proj_hidden_dim",
        "32", "--pred_hidden_dim", "32", "--workers", "0", "--print_freq", "1", "--seed", "3", "--warmup_epochs", "1",
        "--base_lr", "0.6"]
SIX_CROPS = ["--size_crops", "32", "16", "--nmb_crops", "2", "4", "--min_scale_crops", "0.2", "0.05",
             "--max_scale_crops", "1", "0.2"]
TWO_CROPS = ["--size_crops", "32"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread per module


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 24 training images: 6 steps per epoch on one process, 3 on two
    return tiny_dataset(str(tmp_path_factory.mktemp("sce") / "demo"), num_classes=4, train_per_class=6,
                        val_per_class=2)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _train_in_process(flags):
    """main_sce.train in this process (no process group), as the command line would run it."""
    args = main_sce.get_args_parser().parse_args(flags)
    main_sce.check_args(args)
    info = dist.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), distributed=False,
                         backend=None, launcher="none")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        return main_sce.train(args, info)
    finally:
        for s, h in handlers.items():  # StopSignal installed its own
            signal.signal(s, h)


def test_resume_mid_epoch_is_bit_identical(data, tmp_path, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    flags = ["--data_path", data, *TINY, *TWO_CROPS, "--epochs", "2"]
    _train_in_process(flags + ["--dump_path", str(full)])
    _train_in_process(flags + ["--dump_path", str(cut), "--max_iters", "4"])
    assert "stopped by --max_iters 4 at epoch 0, iteration 4" in capsys.readouterr().out
    assert _state(cut / "checkpoint.pth.tar")["iter"] == 4
    _train_in_process(flags + ["--dump_path", str(cut)])  # the same command: auto-resume
    assert "resumed from" in capsys.readouterr().out
    a, b = _state(full / "checkpoint.pth.tar"), _state(cut / "checkpoint.pth.tar")
    _same_state(a["state_dict"], b["state_dict"])  # weights, momentum weights, BN statistics, queue, pointer
    _same_state(a["optimizer"]["state"][0], b["optimizer"]["state"][0])
    assert a["epoch"] == b["epoch"] == 2


def _children(pid):
    """PIDs whose parent is ``pid`` (read from /proc: the launcher starts its workers in new sessions)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def test_launch_two_processes_six_crops_killed_then_resumed(data, tmp_path, capsys):
    """Two gloo processes through torch.distributed.launch, killed (SIGKILL, no chance to save) during
    the first epoch; the same command resumes from the last in-epoch checkpoint and finishes in sync."""
    out, port = tmp_path / "launch", free_port()
    cmd = py("-m", "torch.distributed.launch", "--nproc_per_node=2", f"--master_port={port}", "main_sce.py",
             "--data_path", data, *TINY, *SIX_CROPS, "--epochs", "2", "--save_every_iters", "1",
             "--dump_path", str(out))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "LOCAL_WORLD"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = []
    try:
        for line in proc.stdout:  # the checkpoint of iteration 1 is written before iteration 2 is printed
            lines.append(line)
            if line.startswith("Epoch: [0][2/3]"):
                for pid in _children(proc.pid):  # the workers, each in its own session
                    os.killpg(pid, signal.SIGKILL)
                os.killpg(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=120)
    text = "".join(lines)
    assert "warning: --sync_bn needs CUDA" in text and "Epoch: [0][2/3]" in text, text[-3000:]
    assert _state(out / "checkpoint.pth.tar")["iter"] >= 1
    p = run(cmd[:4] + [f"--master_port={free_port()}"] + cmd[5:])
    assert_ok(p)
    assert "resumed from" in p.stdout and "launcher=launch" in p.stdout
    assert SYNC_RE.search(p.stdout) and SYNC_RE.search(p.stdout).group(1) == "2"
    assert "crops [32, 32, 16, 16, 16, 16]" in p.stdout and "Epoch: [1][3/3]" in p.stdout and "ETA" in p.stdout
    ck = _state(out / "checkpoint.pth.tar")
    assert ck["epoch"] == 2 and ck["iter"] == 0 and ck["world_size"] == 2 and len(ck["rng"]) == 2
    sd = ck["state_dict"]
    assert {"trunk.conv1.weight", "predictor.0.weight", "momentum_projector.6.weight", "queue.queue"} <= set(sd)
    assert int(sd["queue.ptr"]) == (6 * 2 * 8) % 32
    assert (out / "checkpoint_0001.pth.tar").exists() is False and '"type": "epoch"' in (out / "log.txt").read_text()
    # the exported trunk is a torchvision state dict; the checkpoint is read by eval.knn (online trunk)
    trunk = _state(out / "trunk.pth")
    res = torchvision.models.resnet18().load_state_dict(trunk, strict=False)
    assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"] and not res.unexpected_keys
    assert torch.equal(trunk["layer1.0.conv1.weight"], sd["trunk.layer1.0.conv1.weight"])
    knn.main(knn.get_args_parser().parse_args(
        [data, "--pretrained", str(out / "checkpoint.pth.tar"), "--resize", "32", "--crop-size", "32", "-b", "16",
         "-j", "0", "-k", "3", "--output-json", str(tmp_path / "knn.json")]))
    printed = capsys.readouterr().out
    assert "prefix 'trunk.'" in printed and printed.strip().splitlines()[-1].startswith("best-NN=")


def test_bad_flag_one_error_line(data, tmp_path):
    p = run(py("main_sce.py", "--data_path", data, *TINY, "--queue_size", "36", "--epochs", "1",
               "--dump_path", str(tmp_path)))
    assert "queue size 36 is not divisible by the 8 keys" in one_error_line(p)  # both views are enqueued


@pytest.mark.parametrize("extra,needle", [
    (["--coeff", "1.5"], "--coeff must be in [0, 1]"),
    (["--size_crops", "32", "16", "--nmb_crops", "2"], "one value per crop group"),
    (["--min_scale_crops", "0.5", "--max_scale_crops", "0.4"], "0 < min <= max <= 1"),
    (["--nmb_crops", "1"], "the first group holds the 2 global views"),
    (["--warmup_epochs", "3", "--epochs", "2"], "--warmup_epochs <= --epochs"),
    (["--temperature_m", "0"], "must be > 0"),
    (["--data_path", "/nonexistent/sce"], "does not exist"),
])
def test_bad_values_raise_user_error(extra, needle, tmp_path):
    with pytest.raises(UserError) as exc:
        _train_in_process(["--data_path", "x", *TINY, "--dump_path", str(tmp_path), *extra])
    assert needle in str(exc.value)


def test_docstring_commands_pass_flag_checks():
    """Every full main_sce.py command of the module docstring passes check_args (the CPU one once said
    --epochs 1 with the default 10 warmup epochs, which check_args refuses)."""
    doc = main_sce.__doc__.replace("\\\n", " ")
    commands = [line.split("main_sce.py", 1)[1].split() for line in doc.splitlines()
                if "main_sce.py --" in line and "..." not in line]
    assert len(commands) >= 3
    for argv in commands:
        main_sce.check_args(main_sce.get_args_parser().parse_args(argv))
