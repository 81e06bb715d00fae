"""One run per output folder: an exclusive ``flock`` on ``<folder>/.lock``, held by the process that writes the run's
files (rank 0) for as long as it lives.

An OS lock dies with its holder, so a run killed with ``kill -9`` or lost with its node never blocks the rerun; the
file keeps the last holder's pid, host and start time only to name it in the message a second run prints. Forked
children (DataLoader workers) close their copy of the descriptor, so the lock never outlives the process that took
it. On a filesystem without ``flock`` (some network filesystems) the run goes on with a warning line: nothing stops a
second run there.
"""
import errno
import fcntl
import os
import socket
import time

from src.run.errors import UserError

LOCK_FILE = ".lock"
_HELD = {}  # real path of the folder -> open descriptor: this process already holds it (a second Run in-process)
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def _close_in_child():
    for fd in _HELD.values():
        try:
            os.close(fd)  # closing (not unlocking) drops only the child's reference to the lock
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def holder(folder):
    """The text the last holder wrote into ``folder/.lock`` (``pid 123 on host node7 since ...``), or ``None``."""
    try:
        with open(os.path.join(folder, LOCK_FILE)) as f:
            text = f.read(200).strip()
    except OSError:
        return None
    return text or None


def lock_folder(folder, flag, wait=0.0, log=print):
    """Take the folder's lock for this process, or refuse.

    Args:
        folder: the run's output folder (created when missing).
        flag: the flag naming it, for messages (``--dump_path``).
        wait: seconds to wait for a live holder to finish before refusing (a requeued job whose predecessor is
            still saving); 0 refuses at once.
        log: where the waiting and no-flock lines go.
    Returns:
        True when locked, False on a filesystem without flock (a warning line was printed).
    Raises:
        UserError: another live process holds the folder (one line naming its pid and host), or the folder
        cannot be created or written.
    """
    real = os.path.realpath(folder)
    if real in _HELD:
        return True
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise UserError(f"output folder '{folder}' is not writable ({reason}): pass another {flag}") from None
    deadline, said = time.time() + wait, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno in _NO_FLOCK:
                os.close(fd)
                log(f"warning: cannot lock '{folder}' (this filesystem has no flock: "
                    f"{os.strerror(exc.errno)}): a second run on the same folder would not be refused")
                return False
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise UserError(f"cannot lock '{folder}' ({os.strerror(exc.errno)}): pass another {flag}") from None
        who = holder(folder) or "another process"
        if time.time() >= deadline:
            os.close(fd)
            raise UserError(f"'{folder}' is in use by another run ({who}): wait for it to end (or stop it), or pass "
                            f"another {flag}")
        if not said:
            log(f"=> waiting up to {wait:.0f} s for the run holding '{folder}' ({who}) to end")
            said = True
        time.sleep(min(2.0, max(deadline - time.time(), 0.05)))
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    _HELD[real] = fd
    return True
