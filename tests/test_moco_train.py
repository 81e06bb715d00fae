"""main_moco.py end to end on CPU: every launcher, resume bit-for-bit, bad input."""
import os

import pytest
import torch

from tests.helpers import SYNC_RE, assert_ok, free_port, one_error_line, py, run

TINY = ["-a", "resnet18", "--crop-size", "32", "-b", "8", "--moco-k", "32", "--mlp", "--moco-t", "0.2",
        "--aug-plus", "--cos", "-j", "1", "-p", "2", "--seed", "3", "--bn-splits", "2"]


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data  # the session's 4 classes x 12 images at 32 px (read only)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_single_process_epoch_and_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    p = run(py("main_moco.py", data, *TINY, "--epochs", "1", "--output-dir", str(out)))
    assert_ok(p)
    assert "Epoch: [0][" in p.stdout and "img/s" in p.stdout and "ETA" in p.stdout
    ck = _state(out / "checkpoint.pth.tar")
    assert ck["arch"] == "resnet18" and ck["epoch"] == 1 and "optimizer" in ck
    assert "encoder_q.fc.0.weight" in ck["state_dict"] and "queue.queue" in ck["state_dict"]
    assert (out / "checkpoint_0000.pth.tar").exists() and (out / "args.json").exists()
    assert '"type": "epoch"' in (out / "log.txt").read_text()


def test_resume_mid_epoch_is_bit_identical(data, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert_ok(run(py("main_moco.py", data, *TINY, "--epochs", "2", "--output-dir", str(full))))
    p = run(py("main_moco.py", data, *TINY, "--epochs", "2", "--output-dir", str(cut), "--max-iters", "3"))
    assert_ok(p)
    assert "stopped by --max-iters 3 at epoch 0, iteration 3" in p.stdout
    assert _state(cut / "checkpoint.pth.tar")["iter"] == 3
    p = run(py("main_moco.py", data, *TINY, "--epochs", "2", "--output-dir", str(cut)))  # same command: auto-resume
    assert_ok(p)
    assert "resumed from" in p.stdout and "epoch 0, iteration 3" in p.stdout
    a, b = _state(full / "checkpoint.pth.tar"), _state(cut / "checkpoint.pth.tar")
    _same_state(a["state_dict"], b["state_dict"])
    assert a["epoch"] == b["epoch"] == 2


def _check_two_ranks(p, out):
    assert_ok(p)
    m = SYNC_RE.search(p.stdout)
    assert m and m.group(1) == "2", p.stdout[-3000:]
    assert (out / "checkpoint.pth.tar").exists()


def test_torch_distributed_launch_two_processes(data, tmp_path):
    out = tmp_path / "launch"
    p = run(py("-m", "torch.distributed.launch", "--nproc_per_node=2", f"--master_port={free_port()}",
               "main_moco.py", data, *TINY, "--epochs", "1", "--output-dir", str(out)))
    _check_two_ranks(p, out)
    assert "launcher=launch" in p.stdout or "launcher=torchrun" in p.stdout


def test_torchrun_two_processes_then_knn(data, tmp_path):
    out = tmp_path / "torchrun"
    p = run(py("-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "main_moco.py", data, *TINY, "--epochs", "1", "--output-dir", str(out)))
    _check_two_ranks(p, out)
    k = run(py("-m", "eval.knn", data, "--pretrained", str(out / "checkpoint.pth.tar"), "--resize", "32",
               "--crop-size", "32", "-b", "16", "-j", "0", "-k", "3"))
    assert_ok(k)
    assert k.stdout.strip().splitlines()[-1].startswith("best-NN=")


def test_emulated_slurm_two_tasks(data, tmp_path):
    out, port = tmp_path / "slurm", str(free_port())
    procs = []
    import subprocess
    import sys

    from tests.helpers import ROOT
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
        env.update({"SLURM_PROCID": str(rank), "SLURM_NTASKS": "2", "SLURM_LOCALID": str(rank),
                    "SLURM_JOB_NODELIST": "localhost", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"})
        procs.append(subprocess.Popen([sys.executable, "main_moco.py", data, *TINY, "--epochs", "1",
                                       "--output-dir", str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert SYNC_RE.search(outs[0][0]) and "launcher=slurm" in outs[0][0]


def test_moco_style_multiprocessing_distributed(data, tmp_path):
    out = tmp_path / "spawn"
    p = run(py("main_moco.py", data, *TINY, "--epochs", "1", "--output-dir", str(out),
               "--dist-url", f"tcp://127.0.0.1:{free_port()}", "--multiprocessing-distributed",
               "--world-size", "1", "--rank", "0", "--nproc-per-node", "2"))
    _check_two_ranks(p, out)


@pytest.mark.parametrize("extra,needle", [
    (["--moco-k", "30"], "queue size 30 is not divisible"),
    (["-a", "resnet9000"], "unknown architecture 'resnet9000'"),
    (["-b", "6", "--bn-splits", "4"], "not divisible by --bn-splits"),
])
def test_bad_flags_one_line(data, tmp_path, extra, needle):
    p = run(py("main_moco.py", data, *TINY, *extra, "--epochs", "1", "--output-dir", str(tmp_path / "x")))
    assert needle in one_error_line(p)


def test_missing_data_one_line(tmp_path):
    p = run(py("main_moco.py", str(tmp_path / "nope"), *TINY, "--output-dir", str(tmp_path / "x")))
    assert "does not exist" in one_error_line(p)


def test_resume_from_wrong_arch_names_keys(data, tmp_path):
    out = tmp_path / "r"
    assert_ok(run(py("main_moco.py", data, *TINY, "--max-iters", "1", "--output-dir", str(out))))
    args = [a if a != "resnet18" else "resnet34" for a in TINY]
    line = one_error_line(run(py("main_moco.py", data, *args, "--output-dir", str(out))))
    assert "--arch 'resnet18' -> 'resnet34'" in line  # the flags that changed come first
    p = run(py("main_moco.py", data, *args, "--output-dir", str(out), "--allow-changed-flags"))
    line = one_error_line(p)
    assert "does not match" in line and "layer" in line


def test_amp_bf16_smoke(data, tmp_path):
    out = tmp_path / "bf16"
    p = run(py("main_moco.py", data, *TINY, "--amp", "bf16", "--max-iters", "2", "--output-dir", str(out)))
    assert_ok(p)
    ck = _state(out / "checkpoint.pth.tar")
    assert all(torch.isfinite(v).all() for k, v in ck["state_dict"].items() if v.is_floating_point())
    assert ck["state_dict"]["encoder_q.conv1.weight"].dtype == torch.float32  # weights stay fp32 under autocast


def test_sigterm_saves_and_resume_is_bit_identical(data, tmp_path):
    """A real SIGTERM (SLURM pre-emption) mid-run: checkpoint, clean exit, and the resumed run ends
    with exactly the weights of an uninterrupted one, wherever the signal landed."""
    import signal
    import subprocess
    import sys

    from tests.helpers import ROOT
    full, cut = tmp_path / "full", tmp_path / "cut"
    flags = [*TINY, "--epochs", "2", "-p", "1"]
    assert_ok(run(py("main_moco.py", data, *flags, "--output-dir", str(full))))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "main_moco.py", data, *flags, "--output-dir", str(cut)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # wait for the first progress line, then pre-empt
        lines.append(line)
        if line.startswith("Epoch: [0]"):
            proc.send_signal(signal.SIGTERM)
            break
    out = "".join(lines) + proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    assert "stopped by signal" in out
    p = run(py("main_moco.py", data, *flags, "--output-dir", str(cut)))
    assert_ok(p)
    assert "resumed from" in p.stdout
    _same_state(_state(full / "checkpoint.pth.tar")["state_dict"], _state(cut / "checkpoint.pth.tar")["state_dict"])
