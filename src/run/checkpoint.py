"""Checkpoint files: atomic writes that honour the umask, one-line errors for every unreadable or unwritable
file, leftovers of interrupted writes removed, per-rank side files that survive a kill between two writes.

Files are plain dicts of tensors, numbers, strings and lists (args as a dict, RNG states as tensors and lists),
so they load with ``torch.load(weights_only=True)``: nobody has to run code from a file to read it. A write goes
to ``.tmp-*`` in the same folder, is flushed to disk, then renamed over the target, so an interrupted save never
leaves a truncated checkpoint; the next run removes such leftovers (:func:`remove_stale_temp_files`).
"""
import glob
import os
import random
import tempfile

import numpy as np
import torch

from src.run.errors import UserError

TMP_PREFIX = ".tmp-"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _first_line(exc):
    """The first line of an exception's message, or its type when the message is empty (an ``EOFError`` on a
    0-byte file has none)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def _write_error(path, exc, flag):
    """A UserError for a failed write: the reason in words, what to do, and that the old file is kept."""
    reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else _first_line(exc)
    if "file write failed" in str(exc) or "enforce fail" in str(exc):  # torch.save's C++ writer on a full disk
        reason = "the write failed (disk full?)"
    return UserError(f"cannot write '{path}' ({reason}): free some space or pass a writable {flag}; the previous "
                     "file, if any, is kept")


def atomic_write(path, write, flag="--dump_path"):
    """Write a file atomically: ``write(f)`` fills a temporary file in the same folder, which is flushed to disk,
    given mode ``0666 & ~umask`` (0644 by default) and renamed over ``path``.

    Args:
        path: target file; its folder is created.
        write: callable taking the open binary file.
        flag: the command-line flag naming the folder, for the error message.
    Raises:
        UserError: the folder is read-only, the disk is full, or the write failed otherwise (the previous file at
        ``path`` is untouched and no temporary file is left behind).
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX, suffix=os.path.splitext(str(path))[1] or ".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600: a group on a shared cluster could not read it
        os.replace(tmp, path)
        tmp = None
    except (OSError, RuntimeError) as exc:
        raise _write_error(path, exc, flag) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(path, state, flag="--dump_path"):
    """``torch.save(state)`` to ``path`` through :func:`atomic_write` (keep ``state`` weights_only-loadable:
    tensors, numbers, strings, lists, dicts)."""
    atomic_write(path, lambda f: torch.save(state, f), flag)


def check_writable(folder, flag="--dump_path"):
    """Create ``folder`` and prove that a file can be written there, before any work is done.

    Raises:
        UserError: one line naming the folder, the reason and the flag to change.
    """
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX, suffix=".probe")
        try:
            os.write(fd, b"0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else _first_line(exc)
        blocker = _file_in_the_way(folder)
        if blocker:  # makedirs says only "File exists" / "Not a directory"
            reason = f"'{blocker}' is a file, not a folder"
        raise UserError(f"output folder '{folder}' is not writable ({reason}): pass another {flag}") from None


def _file_in_the_way(folder):
    """The nearest existing ancestor of ``folder`` (itself included) when it is not a folder, else None."""
    path = os.path.abspath(folder)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path if os.path.lexists(path) and not os.path.isdir(path) else None


def check_output_file(path, flag, example="out"):
    """Before any work: ``path`` names a file (not a folder) in a writable folder, which is created.

    Args:
        path: the file to write. flag: its flag, for the message. example: a file name to suggest.
    Raises:
        UserError: one line naming the path, the problem and the flag to change.
    """
    if os.path.isdir(path):
        raise UserError(f"{flag} '{path}' is a folder: give a file name (e.g. {os.path.join(path, example)})")
    check_writable(os.path.dirname(os.path.abspath(path)), flag)


def remove_stale_temp_files(folder):
    """Delete the ``.tmp-*`` files an interrupted write left in ``folder`` and ``folder/checkpoints``.

    Call it once at the start of a run, on rank 0, before anything is saved. Returns: the paths removed.
    """
    removed = []
    for pattern in (os.path.join(folder, TMP_PREFIX + "*"), os.path.join(folder, "checkpoints", TMP_PREFIX + "*")):
        for path in glob.glob(pattern):
            try:
                os.remove(path)
                removed.append(path)
            except OSError:
                pass
    return removed


def load_checkpoint(path, flag="--resume"):
    """Read one of our checkpoints on the CPU (weights_only).

    Raises:
        UserError: missing, empty, truncated or not a checkpoint (one line naming the file and ``flag``).
    """
    if not os.path.isfile(path):
        raise UserError(f"checkpoint '{path}' does not exist: check the path given to {flag}")
    if os.path.getsize(path) == 0:
        raise UserError(f"checkpoint '{path}' is empty (0 bytes; an interrupted copy?): delete it or pass another "
                        f"file to {flag}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure becomes one line
        import re

        try:  # the Python objects weights_only refused, named from the file's opcodes (nothing runs)
            found = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)))
        except Exception:  # noqa: BLE001 - not a zip file: the one global the loader's message names, if any
            found = re.findall(r"GLOBAL ([\w.]+\.\w+)", str(exc))
        if found:
            raise UserError(f"checkpoint '{path}' contains pickled Python objects ({', '.join(found)}): this "
                            "project's checkpoints hold only tensors, numbers and strings, so it is not one of them, "
                            f"and unpickling it would run code from the file; pass another file to {flag}") from None
        raise UserError(f"cannot read checkpoint '{path}' ({_first_line(exc)}): the file is truncated or not a "
                        f"checkpoint of this project; pass another file to {flag}") from None


def find_resume_checkpoint(output_dir, resume="", name="checkpoint.pth.tar"):
    """``resume`` if given, else ``output_dir/name`` when it exists (auto-resume), else None."""
    if resume:
        if not os.path.isfile(resume):
            raise UserError(f"--resume '{resume}' does not exist: pass a checkpoint file or leave it empty")
        return resume
    latest = os.path.join(output_dir, name)
    return latest if os.path.isfile(latest) else None


def load_state_strict(module, state, what, path):
    """``module.load_state_dict(state)`` that turns key / shape mismatches into a UserError naming keys."""
    if not isinstance(state, dict):
        raise UserError(f"'{what}' in '{path}' is a {type(state).__name__}, not a state dict: the file is not a "
                        "checkpoint of this script")
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


# ==== per-rank side files (a queue or memory bank each rank keeps) ====
def save_rank_file(folder, name, rank, tensors, epoch, it):
    """Every rank: ``folder/{name}{rank}.pth`` holding ``tensors`` stamped with the step they belong to.

    The previous file is first renamed to ``{name}{rank}.prev.pth``: if the run is killed after this write but
    before the main checkpoint of the same step is written, the file matching the older main checkpoint is still
    there (:func:`load_rank_file` takes whichever matches).
    """
    path = os.path.join(folder, f"{name}{rank}.pth")
    if os.path.isfile(path):
        os.replace(path, os.path.join(folder, f"{name}{rank}.prev.pth"))
    save_checkpoint(path, {**tensors, "epoch": epoch, "iter": it})


def load_rank_file(folder, name, rank, epoch, it, log=print):
    """This rank's ``{name}{rank}.pth`` (or its ``.prev`` copy) written at ``(epoch, it)``, else None with a line."""
    stamps = []
    for suffix in ("", ".prev"):
        path = os.path.join(folder, f"{name}{rank}{suffix}.pth")
        if not os.path.isfile(path):
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a torn side file is as good as none
            continue
        if not isinstance(state, dict):  # not a side file of this project (replaced by hand?): as good as none
            stamps.append(f"{os.path.basename(path)}: not a side file ({type(state).__name__})")
            continue
        if (state.get("epoch"), state.get("iter")) == (epoch, it):
            return state
        stamps.append(f"{os.path.basename(path)}: epoch {state.get('epoch')} iteration {state.get('iter')}")
    if stamps:
        log(f"warning: no {name}{rank}.pth of the checkpoint's step (epoch {epoch} iteration {it}; found "
            f"{'; '.join(stamps)}): ignored")
    return None


# ==== RNG states ====
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
    if device is not None and torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device=None):
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"].clone())  # a tensor with a storage offset crashes set_rng_state
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["numpy"]
    np.random.set_state((npy[0], npy[1].numpy().astype(np.uint32), npy[2], npy[3], npy[4]))
    if device is not None and torch.device(device).type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].clone(), device)
