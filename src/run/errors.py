"""User-facing errors: one clear line and a non-zero exit instead of a traceback.

Code anywhere in the project raises :class:`UserError` with a message that names the problem and
the fix ("data folder 'x' does not exist: pass the folder that holds train/ and val/"). The
command-line entry points wrap their ``main`` with :func:`exit_on_user_error` (training scripts get it
through ``src.run.launch.cli``), which prints ``error: <message>`` on stderr and exits with status 2.
"""
import functools
import sys


class UserError(Exception):
    """Bad input from the user (paths, flags, checkpoints) or a run that cannot go on. The message is printed
    as-is.

    Args:
        message: one line naming the problem and the fix.
        collective: the error is raised identically on every rank (a flag check, a decision taken through an
            all-reduce): only rank 0 prints it, so a run of N processes says it once.
    """

    collective = False

    def __init__(self, message, collective=None):
        super().__init__(message)
        if collective is not None:
            self.collective = collective


def report(exc, rank=None):
    """Print ``error: <exc>`` on stderr, unless ``exc`` is collective and this is not rank 0.

    Args:
        exc: the UserError. rank: this process's rank (default: the process group's, else the launcher's).
    """
    if rank is None:
        from src.run import dist  # dist imports this module: import it only when needed

        rank = dist.process_rank()
    if rank == 0 or not exc.collective:
        print(f"error: {exc}", file=sys.stderr, flush=True)


def exit_on_user_error(fn, collective=False):
    """Decorator for CLI ``main`` functions: ``UserError`` -> one line on stderr and exit code 2; Ctrl-C ->
    ``interrupted`` and exit code 130. With ``collective`` every UserError counts as raised on every rank."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            if collective:
                exc.collective = True
            report(exc)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr, flush=True)
            sys.exit(130)

    return wrapper


def cli_main(fn):
    """``exit_on_user_error(fn, collective=True)``: the decorator of a ``main(args)`` whose errors come before the
    processes join (flag and data checks every rank repeats): said once, by rank 0."""
    return exit_on_user_error(fn, collective=True)
