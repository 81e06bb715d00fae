"""Checkpoints: atomic writes, auto-resume, RNG states.

Files are plain dicts of tensors, numbers, strings and lists (args as a dict, RNG states as tensors),
so they load with ``torch.load(weights_only=True)``: nobody has to run code from a file to read it.
Writes go to a temporary file in the same folder, are flushed to disk, then renamed over the target,
so an interrupted save never leaves a truncated checkpoint.
"""
import os
import random
import tempfile

import numpy as np
import torch

from .errors import UserError


def save_checkpoint(path, state):
    """Write ``state`` to ``path`` atomically (temp file + fsync + rename). Call on rank 0 only."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pth")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path):
    """Read one of our checkpoints on the CPU (weights_only); a clear UserError if it is missing or unreadable."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint '{path}' does not exist: check the path given to --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure becomes one line
        raise UserError(f"cannot read checkpoint '{path}' ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                        "the file may be truncated or not a checkpoint of this project") from None


def find_resume_checkpoint(output_dir, resume=""):
    """``resume`` if given, else ``output_dir/checkpoint.pth.tar`` when it exists (auto-resume), else None."""
    if resume:
        if not os.path.isfile(resume):
            raise UserError(f"--resume '{resume}' does not exist: pass a checkpoint file or leave it empty")
        return resume
    latest = os.path.join(output_dir, "checkpoint.pth.tar")
    return latest if os.path.isfile(latest) else None


def load_state_strict(module, state, what, path):
    """``module.load_state_dict(state)`` that turns key / shape mismatches into a UserError naming keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing[:5]))
        if unexpected:
            parts.append("unexpected " + ", ".join(unexpected[:5]))
        if shape:
            parts.append("shape mismatch " + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                        for k in shape[:5]))
        raise UserError(f"{what} in '{path}' does not match this model ({'; '.join(parts)}): "
                        "check -a/--arch and the head/queue flags used for that run")
    module.load_state_dict(state)


def rng_state(device=None):
    """This process's RNG states as tensors / lists (loadable with weights_only=True)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device=None):
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["numpy"]
    np.random.set_state((npy[0], npy[1].numpy().astype(np.uint32), npy[2], npy[3], npy[4]))
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
