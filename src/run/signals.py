"""Stop requests: SIGTERM / SIGUSR1 set a flag that the training loop turns into a checkpoint and a clean exit.

Who receives the signal decides what must happen:

* the training process (any rank): the handler only sets a flag; :class:`~src.run.loop.Run` reads it (one
  all-reduce every ``--print_freq`` steps, so all ranks agree) and stops at the next step boundary;
* a DataLoader worker (``kill -TERM -- -PGID``, ``scancel`` and SLURM's time limit signal every process of the
  job): it ignores the signal and keeps serving batches until the main process has saved and shuts it down
  (a worker that died here would turn the stop into ``DataLoader worker ... is killed by signal``);
* any other forked child (a ``multiprocessing.Pool`` worker): it dies of the signal, as it would without us,
  or ``Pool.terminate()`` and ``scancel`` would wait for it forever;
* the parent of MoCo-style spawned processes (:func:`forward_to_children`): it forwards the signal to its
  children and waits for them to save.

The handlers are installed once per process, at launch, before anything slow happens.
"""
import atexit
import os
import signal
import weakref

import torch

_LOADERS = weakref.WeakSet()  # loaders to shut down at exit (track_loader)
STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if s is not None)


def _in_dataloader_worker():
    """True inside a DataLoader worker process (also in the instant before its loop sets ``get_worker_info``)."""
    if torch.utils.data.get_worker_info() is not None:
        return True
    import multiprocessing

    from torch.utils.data._utils import worker

    return getattr(multiprocessing.current_process(), "_target", None) is worker._worker_loop


class StopSignal:
    """The process's stop flag, set by SIGTERM / SIGUSR1 (SLURM pre-emption: ``--signal=USR1@120``).

    Args:
        device: kept for callers that pass it (the collective decision is ``src.run.loop.Run``'s).
    Attributes:
        flag: True once a stop signal reached this process. signum: the last signal's number (or None).
    """

    def __init__(self, device=None):
        self.flag, self.signum, self.device, self.pid = False, None, device, os.getpid()
        self.install()

    def install(self):
        """(Re)install the handler for SIGTERM / SIGUSR1 where another one took its place."""
        for sig in STOP_SIGNALS:
            try:
                if signal.getsignal(sig) != self._handler:
                    signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. inside a test harness thread)
                pass

    def _handler(self, signum, frame):
        if os.getpid() != self.pid:  # a forked child inherited this handler
            if _in_dataloader_worker():
                return  # keep serving batches: the main process saves, then shuts the worker down
            signal.signal(signum, signal.SIG_DFL)  # die of the signal, as without this handler
            os.kill(os.getpid(), signum)
            return
        self.flag, self.signum = True, signum

    @property
    def name(self):
        """The signal's name, e.g. ``SIGTERM`` (``signal`` when none was received)."""
        return signal.Signals(self.signum).name if self.signum else "signal"



def ignore_stop_signals(worker_id=None):
    """A DataLoader ``worker_init_fn``: SIGTERM / SIGUSR1 no longer end this worker.

    torch installs its own SIGTERM handler in every worker (it exits at once), which would override the handler
    inherited from the training process; ignoring the signals keeps the worker serving batches until the main process
    has saved and shuts the loader down (or exits: the worker's watchdog then ends it).
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


_PROCESS_STOP = {}  # pid -> StopSignal: signal handlers are per process by nature, so is this


def process_stop_signal():
    """This process's :class:`StopSignal`, its handler installed (again, if something replaced it since)."""
    pid = os.getpid()
    if pid not in _PROCESS_STOP:
        _PROCESS_STOP.clear()
        _PROCESS_STOP[pid] = StopSignal()
    _PROCESS_STOP[pid].install()
    return _PROCESS_STOP[pid]


def ends_process_while_starting():
    """Until the returned callable is called, SIGTERM / SIGUSR1 end this process at once (their default action).

    For the rendezvous of a process group: a stop request before the run exists has nothing to save, and a Python
    handler would not run while the process waits inside the rendezvous, so the wait would outlive the signal.
    Returns: a callable that reinstalls the previous handlers (the stop flag's)."""
    previous = {}
    for sig in STOP_SIGNALS:
        try:
            previous[sig] = signal.signal(sig, signal.SIG_DFL)
        except ValueError:  # not the main thread
            pass
    return lambda: [signal.signal(s, h) for s, h in previous.items()]


def track_loader(loader):
    """Shut ``loader``'s workers down at exit if it is still alive then (a loader referenced from a module or an
    exception): they ignore SIGTERM (:func:`ignore_stop_signals`), so multiprocessing's exit handler, which SIGTERMs
    its daemonic children and waits for them, would otherwise wait forever. Returns: ``loader``."""
    if not _LOADERS:
        import multiprocessing.util  # noqa: F401 - its exit handler is registered now: ours, later, runs before it

        atexit.register(_shutdown_loaders)
    _LOADERS.add(loader)
    return loader


def _shutdown_loaders():
    for loader in list(_LOADERS):
        iterator = getattr(loader, "_iterator", None)  # persistent workers live in the loader's last iterator
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()  # the workers get their end-of-work message and exit


def forward_to_children(get_pids):
    """In a parent that only waits for its spawned workers: SIGTERM / SIGUSR1 / SIGINT are passed on to them instead
    of killing the parent (they save, or say ``interrupted``, and exit; the parent's wait then ends normally).

    Args:
        get_pids: callable returning the children's PIDs at the moment of the signal.
    Returns: a callable that restores the previous handlers.
    """
    def handler(signum, frame):
        for pid in get_pids():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    previous = {}
    for sig in STOP_SIGNALS + (signal.SIGINT,):  # Ctrl-C too: the workers stop, then the wait ends
        previous[sig] = signal.signal(sig, handler)
    return lambda: [signal.signal(s, h) for s, h in previous.items()]
