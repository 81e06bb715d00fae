"""One run per output folder (src.run.lock): a second run on a folder a live run holds is refused with one line and
touches nothing; a lock left by a killed run never blocks the rerun."""
import errno
import fcntl
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from src.run import lock
from src.run.errors import UserError
from tests.helpers import ROOT, assert_ok, one_error_line, py, run

TINY = ["-a", "resnet_tiny", "--crop-size", "32", "-b", "8", "--moco-k", "32", "--epochs", "2", "-j", "0", "-p", "2",
        "--seed", "0", "--bn-splits", "2"]


def _popen(cmd):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for_lock(folder, pid, proc, timeout=120):
    """Until ``pid`` holds ``folder``'s lock (its line is in the lock file)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if f"pid {pid} " in (lock.holder(folder) or ""):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError(f"pid {pid} never took the lock of {folder}")


def _weights(folder):
    return torch.load(os.path.join(folder, "checkpoint.pth.tar"), map_location="cpu", weights_only=True)["state_dict"]


def test_second_run_on_a_held_folder_is_refused_and_touches_nothing(tiny_data, tmp_path):
    alone, shared = str(tmp_path / "alone"), str(tmp_path / "shared")
    assert_ok(run(py("main_moco.py", tiny_data, *TINY, "--output-dir", alone)))

    first = _popen(py("main_moco.py", tiny_data, *TINY, "--output-dir", shared))
    _wait_for_lock(shared, first.pid, first)
    os.killpg(first.pid, signal.SIGSTOP)  # the holder is alive but makes no progress while the second run tries
    try:
        before = {name: os.path.getmtime(os.path.join(shared, name)) for name in os.listdir(shared)}
        second = run(py("main_moco.py", tiny_data, *TINY, "--seed", "1", "--output-dir", shared))
        after = {name: os.path.getmtime(os.path.join(shared, name)) for name in os.listdir(shared)}
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    line = one_error_line(second)
    assert second.returncode == 2
    assert f"pid {first.pid} on host {socket.gethostname()}" in line and shared in line, line
    assert "args:" not in second.stdout and before == after  # nothing written, nothing touched
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    a, b = _weights(alone), _weights(shared)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # as if it had run alone


def test_a_lock_left_by_a_killed_run_does_not_block_the_rerun(tiny_data, tmp_path):
    out = str(tmp_path / "run")
    first = _popen(py("main_moco.py", tiny_data, *TINY, "--output-dir", out))
    _wait_for_lock(out, first.pid, first)
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate(timeout=60)
    assert f"pid {first.pid} " in lock.holder(out)  # the file still names the dead holder ...
    p = run(py("main_moco.py", tiny_data, *TINY, "--output-dir", out))  # ... which blocks nothing
    assert_ok(p)
    assert _weights(out)  # the rerun finished its run


def _try_lock_in_child(folder, queue):
    queue.put(len(lock._HELD))  # the parent's descriptor was closed at the fork
    try:
        lock.lock_folder(folder, "--output-dir", log=lambda line: None)
        queue.put("locked")
    except UserError as exc:
        queue.put(str(exc))


def test_forked_children_do_not_hold_the_lock_and_cannot_take_it(tmp_path):
    folder = str(tmp_path / "f")
    assert lock.lock_folder(folder, "--dump_path") is True
    assert lock.lock_folder(folder, "--dump_path") is True  # the same process again (a second Run in-process)
    assert f"pid {os.getpid()} on host" in lock.holder(folder)
    queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_try_lock_in_child, args=(folder, queue))
    child.start()
    child.join(60)
    held, message = queue.get(timeout=10), queue.get(timeout=10)
    assert held == 0
    assert "is in use by another run" in message and f"pid {os.getpid()}" in message and "--output-dir" in message


def test_a_filesystem_without_flock_warns_and_goes_on(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    lines = []
    assert lock.lock_folder(str(tmp_path / "nfs"), "--dump_path", log=lines.append) is False
    assert len(lines) == 1 and lines[0].startswith("warning:") and "would not be refused" in lines[0]


def test_a_held_folder_is_waited_for_then_refused(tmp_path):
    folder = str(tmp_path / "w")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
                               "from src.run import lock; lock.lock_folder(sys.argv[2], '--dump_path');"
                               "print('held', flush=True); time.sleep(60)", ROOT, folder], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lines, t = [], time.time()
        with pytest.raises(UserError, match="is in use by another run"):
            lock.lock_folder(folder, "--dump_path", wait=1.0, log=lines.append)
        assert time.time() - t >= 1.0 and lines and lines[0].startswith("=> waiting up to 1 s")
    finally:
        holder.kill()
        holder.wait()
