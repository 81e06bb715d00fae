"""User-facing errors: one clear line and a non-zero exit instead of a traceback.

Code anywhere in the project raises :class:`UserError` with a message that names the problem and
the fix ("data folder 'x' does not exist: pass the folder that holds train/ and val/"). The
command-line entry points wrap their ``main`` with :func:`exit_on_user_error`, which prints
``error: <message>`` on stderr and exits with status 2.
"""
import functools
import sys


class UserError(Exception):
    """Bad input from the user (paths, flags, checkpoints). The message is printed as-is."""


def exit_on_user_error(fn):
    """Decorator for CLI ``main`` functions: ``UserError`` -> one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr, flush=True)
            sys.exit(130)

    return wrapper
