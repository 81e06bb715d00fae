"""Rank-0 console progress lines with images/s and ETA, and a JSON-lines log next to the run.

Meters accumulate device tensors and only read them (one host sync) when a line is printed, so
logging does not stall the GPU at every step.
"""
import datetime
import json
import os
import sys
import time
from itertools import islice

import torch


def print_rank0(*args, rank=0, **kwargs):
    """``print`` on rank 0 only (pass ``rank``), flushed."""
    if rank == 0:
        print(*args, **kwargs, flush=True)


def n_params(module):
    """Parameters of ``module`` in millions, as text: ``23.5``."""
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.1f}"


def format_eta(seconds):
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class JsonLog:
    """Appends one JSON object per line to ``path`` (rank 0 only; a no-op elsewhere or with path None), and, once
    :meth:`mirror_to_tensorboard` was called, every number of every row as a TensorBoard scalar too."""

    def __init__(self, path, rank=0):
        self.path = path if rank == 0 else None
        self.writer = None
        if self.path:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)

    def write(self, record):
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.writer is not None and "step" in record:
            for tag, value in scalars(record):
                self.writer.add_scalar(tag, value, record["step"])
            self.writer.flush()

    def mirror_to_tensorboard(self, folder, step):
        """From now on also write each row's numbers to TensorBoard event files in ``folder`` (rank 0), tagged
        ``<row type>/<key>`` (monitor rows: ``monitor/<trunk>/<key>``) at the row's global step. ``step``: where the
        run (re)starts; events an interrupted attempt wrote after it are purged, so a resumed run continues one step
        axis, as ``log.txt`` does."""
        if self.path:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(folder, purge_step=step)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def keep_until(self, step):
        """Start (or resume) the log at global step ``step``: the file exists from now on, and rows logged after
        ``step`` by an earlier, interrupted attempt are dropped, so that after any number of resumes it holds one
        row per logged step. Rows without a ``step`` field are kept."""
        if not self.path:
            return
        rows = []
        if os.path.isfile(self.path):
            with open(self.path) as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:  # a row torn by a kill: drop it
                        continue
                    if not isinstance(record, dict) or record.get("step", 0) <= step:
                        rows.append(line if line.endswith("\n") else line + "\n")
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(rows)
        os.replace(tmp, self.path)


def scalars(record):
    """The ``(tag, value)`` pairs of a log row: its numbers, tagged ``<type>/<key>`` (``monitor/<trunk>/<key>``)."""
    kind = record.get("type", "row")
    if kind == "monitor":
        kind = f"monitor/{record.get('trunk', 'online')}"
    return [(f"{kind}/{key}", float(value)) for key, value in record.items()
            if key not in ("type", "step", "epoch", "iter", "trunk") and isinstance(value, (int, float))
            and not isinstance(value, bool)]


class ProgressLogger:
    """Running averages of per-step values and a periodic progress line.

    ``update(**values)`` takes floats or 0-d tensors (kept on their device). Every ``print_freq``
    steps, ``maybe_print`` prints
    ``Epoch: [e][ it/N]  Time t (avg)  Data t (avg)  Loss x (avg)  ...  lr v  img/s r  ETA h:mm:ss``
    (the MoCo layout plus throughput and ETA) and appends the same numbers to the JSON log.
    """

    def __init__(self, iters_per_epoch, epochs, images_per_step, print_freq=10, json_log=None, rank=0,
                 formats=None):
        self.iters_per_epoch, self.epochs = iters_per_epoch, epochs
        self.images_per_step, self.print_freq = images_per_step, max(1, print_freq)
        self.json_log, self.rank = json_log, rank
        self.formats = formats or {}
        self.start_epoch(0)

    def start_epoch(self, epoch, start_iter=0):
        self.epoch, self.start_iter = epoch, start_iter
        self._t_data, self._t_start = 0.0, None
        self.sums, self.counts, self.last = {}, {}, {}
        self.t_epoch = self.t_last = time.time()
        self.n_steps = 0
        self.data_time = self.step_time = 0.0

    def batches(self, loader, start_iter=0):
        """The epoch's batches from ``start_iter`` on, as ``(iteration, batch)``: at most the ``iters_per_epoch -
        start_iter`` first batches of ``loader``, each step timed (data loading, then the whole step) for
        :meth:`update`."""
        t_end = time.time()
        for it, batch in enumerate(islice(loader, self.iters_per_epoch - start_iter), start=start_iter):
            self._t_data, self._t_start = time.time() - t_end, t_end
            yield it, batch
            t_end = time.time()  # after the caller's work between steps (checks, checkpoints)

    def update(self, data_time=None, step_time=None, **values):
        """Record one step's values (floats or 0-d tensors, read only when a line is printed); the times default to
        those measured by :meth:`batches`."""
        self.n_steps += 1
        self.data_time += self._t_data if data_time is None else data_time
        self.step_time += (time.time() - self._t_start if self._t_start else 0.0) if step_time is None else step_time
        for k, v in values.items():
            v = v.detach() if torch.is_tensor(v) else v
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1
            self.last[k] = v

    def averages(self):
        return {k: float(self.sums[k]) / self.counts[k] for k in self.sums}

    def maybe_print(self, it, lr, force=False):
        """Print and log if ``it`` is on the print interval (or ``force``). ``it`` is 0-based in the epoch."""
        if not force and (it + 1) % self.print_freq != 0 and it + 1 != self.iters_per_epoch:
            return
        if self.rank != 0 or self.n_steps == 0:
            return
        elapsed = time.time() - self.t_epoch
        rate = self.n_steps * self.images_per_step / max(elapsed, 1e-9)
        steps_left = (self.iters_per_epoch - it - 1) + (self.epochs - self.epoch - 1) * self.iters_per_epoch
        eta = steps_left * elapsed / self.n_steps
        avg = self.averages()
        width = len(str(self.iters_per_epoch))
        parts = [f"Epoch: [{self.epoch}][{it + 1:>{width}}/{self.iters_per_epoch}]",
                 f"Time {self.step_time / self.n_steps:.3f}", f"Data {self.data_time / self.n_steps:.3f}"]
        for k in self.sums:
            fmt = self.formats.get(k, ".4f")
            parts.append(f"{k} {float(self.last[k]):{fmt}} ({avg[k]:{fmt}})")
        parts += [f"lr {lr:.5f}", f"{rate:.1f} img/s", f"ETA {format_eta(eta)}"]
        print("  ".join(parts), flush=True)
        sys.stdout.flush()
        if self.json_log is not None:
            self.json_log.write({"type": "iter", "epoch": self.epoch, "iter": it + 1,
                                 "step": self.epoch * self.iters_per_epoch + it + 1, "lr": lr,
                                 "images_per_s": rate, **{k: float(self.last[k]) for k in self.sums},
                                 **{f"avg_{k}": v for k, v in avg.items()}})

    def end_epoch(self, extra=None):
        """Log the epoch's averages (JSON ``type: epoch``) and return them."""
        avg = self.averages()
        elapsed = time.time() - self.t_epoch
        record = {"type": "epoch", "epoch": self.epoch, "step": (self.epoch + 1) * self.iters_per_epoch,
                  "epoch_time_s": elapsed,
                  "images_per_s": self.n_steps * self.images_per_step / max(elapsed, 1e-9), **avg, **(extra or {})}
        if self.json_log is not None and self.rank == 0:
            self.json_log.write(record)
        return record
