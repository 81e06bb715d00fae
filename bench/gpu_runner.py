"""Child processes of ``python -m bench.gpu`` under a global deadline: a crash, a hang or an OOM of one cell is that
cell's row, never the whole command's end.

* :class:`Deadline`: seconds left of the command's budget;
* :func:`run_cells`: a worker (:mod:`bench.gpu_cells`) over a list of cells, each with its own time cap; after a
  crash or a timeout the worker is killed (its whole process group) and a new one starts at the next cell;
  cells the deadline leaves no time for come back as ``skipped`` rows;
* :func:`run_command`: one command (a script under torchrun, the demo) with a timeout, its process group killed
  when it runs over.
"""
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

MARK = "@@cell "  # the worker's protocol lines; anything else on its stdout (warnings, script lines) is ignored
STARTUP_S = 90  # a worker's start (imports, CUDA context, process group) is counted on top of its first cell's cap


class Deadline:
    """The command's budget: ``left()`` seconds remain (negative once it has passed)."""

    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()


def child_env(threads=None):
    """The environment of a child: no launcher variables inherited from the bench's own launch (a child decides its
    world itself), unbuffered output, and optionally ``OMP_NUM_THREADS``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD", "MASTER_",
                                "TORCHELASTIC", "GROUP_RANK", "ROLE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker and whatever it started (torchrun's child, loader workers)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _last_line(path):
    with open(path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1][:240] if lines else ""


def run_cells(cells, prefix, cap_s, deadline, log=print, env=None, min_left_s=5):
    """Run ``cells`` in worker processes ``prefix + [cells.json, "--skip", i]``; returns one row per cell, in order.

    Args:
        cells: list of cell dicts (JSON-serialisable).
        prefix: the worker command without its arguments, e.g. ``[python, "-m", "bench.gpu_cells"]``.
        cap_s: seconds one cell may take (its worker's start-up, ``STARTUP_S``, is added for the first cell).
        deadline: :class:`Deadline`; no cell starts with less than ``min_left_s`` left, and a running one is cut
            off when it passes.
        log: called with one progress line per finished cell.
    Returns:
        rows: the worker's result dict, or the cell plus ``error`` (timeout, crash) or ``skipped``.
    """
    rows = [None] * len(cells)
    tmp = tempfile.mkdtemp(prefix="bench_gpu_")
    path = os.path.join(tmp, "cells.json")
    with open(path, "w") as f:
        json.dump(cells, f)
    i = 0
    while i < len(cells):
        if deadline.left() < min_left_s:
            break
        err_path = os.path.join(tmp, f"stderr_{i}.txt")
        with open(err_path, "w") as err:
            proc = subprocess.Popen(prefix + [path, "--skip", str(i)], stdout=subprocess.PIPE, stderr=err, text=True,
                                    env=env or child_env(), start_new_session=True)
        lines = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        current, since, allowance = i, time.monotonic(), STARTUP_S
        while True:
            wait = min(cap_s + allowance - (time.monotonic() - since), deadline.left())
            try:
                line = lines.get(timeout=max(wait, 0.05))
            except queue.Empty:
                _kill(proc)
                why = "the --budget deadline passed" if deadline.left() <= 0 else f"over its {cap_s:.0f} s cap"
                rows[current] = {**cells[current], "error": f"cut off: {why} (worker killed)"}
                log(f"  {_name(cells[current])}: cut off ({why})")
                i = current + 1
                break
            if line is None:  # the worker ended
                rc = proc.wait()
                if i < len(cells):  # before its last row: the cell in flight crashed it
                    rows[current] = {**cells[current], "error": f"worker died (exit {rc}): {_last_line(err_path)}"}
                    log(f"  {_name(cells[current])}: worker died (exit {rc})")
                    i = current + 1
                break
            msg = json.loads(line)
            if "start" in msg:
                current, since, allowance = msg["start"], time.monotonic(), 0
            else:
                rows[msg["row"]] = msg["result"]
                log(f"  {_name(cells[msg['row']])}: {_summary(msg['result'])}")
                i, current, since, allowance = msg["row"] + 1, msg["row"] + 1, time.monotonic(), 0
    return [r if r is not None else {**c, "skipped": "no time left before the deadline"}
            for r, c in zip(rows, cells)]


def _pump(stream, lines):
    for line in stream:
        if line.startswith(MARK):
            lines.put(line[len(MARK):])
    lines.put(None)


def _name(cell):
    kind = "group" if cell.get("group") else cell["kind"]
    return f"{kind} {cell.get('name', cell.get('pipeline', ''))} {cell.get('config', '')}".strip()


def _summary(row):
    if "error" in row:
        return "error: " + row["error"]
    return f"{row['images_per_s']:.1f} img/s" + (f", {row['ms_per_step']:.1f} ms/step" if "ms_per_step" in row else "")


def run_command(cmd, timeout, deadline, env=None, cwd=None):
    """Run ``cmd`` to its end or until ``min(timeout, deadline.left())`` seconds have passed (then its whole
    process group is killed). Returns ``(returncode or None when cut off, stdout, stderr, seconds)``."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or child_env(),
                            cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=max(min(timeout, deadline.left()), 1))
        return proc.returncode, out, err, time.monotonic() - t0
    except subprocess.TimeoutExpired:
        _kill(proc)
        out, err = proc.communicate()
        return None, out, err, time.monotonic() - t0


PYTHON = [sys.executable]
