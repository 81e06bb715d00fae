"""The run skeleton's guards against silently wrong runs: a resume with flags that change the maths, launch flags
that would hang, stop signals before the processes joined, non-finite flag values, a stopped demo."""
import os
import re
import signal
import subprocess
import time

import pytest

import main_moco
from src.run.launch import cli
from src.run.signals import process_stop_signal
from tests.helpers import ROOT, exits, free_port, py

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["-a", "resnet_tiny", "--crop-size", "32", "-b", "8", "--moco-k", "32", "-j", "0", "-p", "2", "--seed", "0",
        "--bn-splits", "2"]


def _cli(argv, capsys):
    return exits(lambda: cli(main_moco.main, lambda: main_moco.get_args_parser().parse_args(argv)), capsys)


def test_a_resume_with_flags_that_change_the_run_is_refused_with_the_list(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "run")
    code, _, err = _cli([tiny_data, *TINY, "--epochs", "1", "--output-dir", out], capsys)
    assert code in (0, None), err
    code, stdout, err = _cli([tiny_data, *TINY, "--epochs", "1", "-b", "16", "--moco-t", "0.2", "--output-dir", out],
                             capsys)
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert "--batch-size 8 -> 16" in err and "--moco-t 0.07 -> 0.2" in err and "--allow-changed-flags" in err
    assert "=> resumed" not in stdout
    # more epochs: allowed, said
    code, stdout, err = _cli([tiny_data, *TINY, "--epochs", "2", "--output-dir", out], capsys)
    assert code in (0, None), err
    assert "warning: resuming with flags that differ from the checkpoint's: --epochs 1 -> 2" in stdout
    assert "=> resumed from" in stdout and "Epoch: [1]" in stdout
    # the override: the new value is used, and the run says which flags it continued with
    code, stdout, err = _cli([tiny_data, *TINY, "--epochs", "3", "--moco-t", "0.2", "--allow-changed-flags",
                              "--output-dir", out], capsys)
    assert code in (0, None), err
    assert "--moco-t 0.07 -> 0.2" in stdout and "Epoch: [2]" in stdout


@pytest.mark.parametrize("flags,words", [
    (["--multiprocessing-distributed", "--nproc-per-node", "2", "--world-size", "1", "--rank", "3",
      "--dist-url", "tcp://127.0.0.1:29581"], "--rank 3 is this node's index among --world-size 1 nodes"),
    (["--multiprocessing-distributed", "--nproc-per-node", "2", "--world-size", "1", "--rank", "0",
      "--dist-url", "tcp://256.0.0.1:99999"], "port in 1-65535"),
    (["--multiprocessing-distributed", "--nproc-per-node", "2", "--world-size", "1", "--rank", "0",
      "--dist-url", "tcp://256.0.0.1:29581"], "cannot be resolved"),
    (["--dist-url", "tcp://127.0.0.1:29581", "--world-size", "2", "--rank", "2"], "among --world-size 2 processes"),
    (["--lr", "nan"], "expected a finite number"),
    (["--moco-t", "inf"], "expected a finite number"),
])
def test_launch_and_number_flags_that_cannot_work_are_one_line(flags, words, tiny_data, tmp_path, capsys):
    t = time.time()
    code, _, err = _cli([tiny_data, *TINY, "--epochs", "1", "--output-dir", str(tmp_path / "r"), *flags], capsys)
    assert code == 2 and err.count("error:") == 1 and words in err and "Traceback" not in err, err
    assert time.time() - t < 30  # refused before any process or rendezvous
    assert not os.path.exists(tmp_path / "r" / "args.json")


def test_sigterm_during_the_rendezvous_ends_the_processes(tiny_data, tmp_path):
    """Node 0 of 2 waits for a node that never comes: the group's SIGTERM ends it at once, not after the 30-minute
    rendezvous timeout, and the parent says that nothing was saved."""
    p = subprocess.Popen(py("main_moco.py", tiny_data, *TINY, "--epochs", "1", "--output-dir", str(tmp_path / "r"),
                            "--multiprocessing-distributed", "--nproc-per-node", "2", "--world-size", "2", "--rank",
                            "0", "--dist-url", f"tcp://127.0.0.1:{free_port()}"),
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    time.sleep(15)  # the spawned processes are waiting in the rendezvous by now
    assert p.poll() is None
    t = time.time()
    os.killpg(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert time.time() - t < 30
    assert p.returncode == 0, err
    assert "=> stopped by signal SIGTERM while the processes were starting: nothing was saved" in out
    assert "Traceback" not in err


def test_a_stopped_demo_prints_the_stop_line_and_no_contract_lines(tmp_path, monkeypatch, capsys):
    import src.data.demo
    import src.evaluation.demo

    real = src.data.demo.make_demo_dataset
    small = lambda root: real(root, train_per_class=30, val_per_class=10, workers=1)  # noqa: E731
    monkeypatch.setattr(src.evaluation.demo, "make_demo_dataset", small)
    step, calls = main_moco.step, []

    def signalled_step(parts, batch, it):  # the slow machine's `timeout` sends SIGTERM during training
        calls.append(it)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(parts, batch, it)

    monkeypatch.setattr(main_moco, "step", signalled_step)
    args = main_moco.get_args_parser().parse_args(
        ["--demo", "--demo-dir", str(tmp_path / "demo"), "--output-dir", str(tmp_path / "run")])
    handler = signal.getsignal(signal.SIGTERM)
    try:
        assert main_moco.run_demo(args) is None
    finally:  # this process's stop flag is for the rest of the test session to use
        signal.signal(signal.SIGTERM, handler)
        stop = process_stop_signal()
        stop.flag, stop.signum = False, None
    out = capsys.readouterr().out
    assert re.search(r"=> stopped by signal SIGTERM at epoch \d+, iteration \d+; checkpoint saved, run the same", out)
    assert "demo kNN top-1" not in out and "demo pretrained:" not in out
    assert (tmp_path / "run" / "checkpoint.pth.tar").exists()
