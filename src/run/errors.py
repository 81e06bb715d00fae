"""User-facing errors: one clear line and a non-zero exit instead of a traceback.

Code anywhere in the project raises :class:`UserError` with a message that names the problem and
the fix ("data folder 'x' does not exist: pass the folder that holds train/ and val/"). The
command-line entry points turn it into ``error: <message>`` on stderr and exit status 2
(``src.run.launch.exit_on_user_error``, ``cli`` and ``cli_main``).
"""


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
