"""StopSignal: the training process turns SIGTERM into a flag; a process forked after it (DataLoader or Pool worker)
still dies of SIGTERM, so that Pool.terminate() and SLURM's scancel do not wait on it forever."""
import multiprocessing as mp
import os
import signal
import time

import torch

from src.runtime import StopSignal


def _sleep():
    time.sleep(30)


def test_parent_sets_flag_and_forked_child_still_dies_of_sigterm():
    before = signal.getsignal(signal.SIGTERM)
    try:
        stop = StopSignal(torch.device("cpu"))
        child = mp.get_context("fork").Process(target=_sleep)
        child.start()
        os.kill(child.pid, signal.SIGTERM)
        child.join(timeout=10)
        assert not child.is_alive(), "a forked child ignored SIGTERM"
        assert child.exitcode == -signal.SIGTERM
        assert stop.flag is False  # the child's signal did not reach the parent's flag
        os.kill(os.getpid(), signal.SIGTERM)  # the training process itself only records the request
        assert stop.flag is True
    finally:
        signal.signal(signal.SIGTERM, before)
