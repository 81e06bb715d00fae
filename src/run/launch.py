"""Run a script under whichever launcher started it, with the same exits everywhere.

``cli(main, parse_args)`` is every script's ``__main__``: parse (a bad flag is one ``error:`` line, exit 2),
then ``main(args)``; a :class:`~src.run.errors.UserError` anywhere is one ``error:`` line and exit 2, Ctrl-C is
``interrupted`` and exit 130, never a traceback.

``launch(fn, args)`` spawns MoCo's ``--multiprocessing-distributed`` processes (the parent forwards stop signals and
waits) or runs in this process under whichever launcher started it (``src.run.dist.init_distributed``). Each process
checks its device, joins the group, installs its stop handler and calls ``fn(args, info)``. Until the process has
joined, a stop signal ends it at once: nothing exists to save, and a rendezvous wait would not see a handler.
"""
import functools
import sys

import torch

from src.run import dist
from src.run.errors import UserError
from src.run.signals import ends_process_while_starting, process_stop_signal


def report(exc, rank=None):
    """Print ``error: <exc>`` on stderr, unless ``exc`` is collective and this is not rank 0.

    Args:
        exc: the UserError. rank: this process's rank (default: the process group's, else the launcher's).
    """
    if rank is None:
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


def launch(fn, args):
    """Run ``fn(args, info)`` in every process of the run.

    Args:
        fn: module-level function (it is pickled for spawned processes).
        args: parsed flags with ``add_dist_args``'s fields.
    Returns:
        ``fn``'s return value in this process (None when processes were spawned).
    """
    if not args.multiprocessing_distributed:
        if args.dist_url not in ("", "env://") and not dist.launcher_env():
            dist.check_manual_launch(args.dist_url, args.world_size, args.rank)
        return _worker(None, None, None, None, fn, args)
    nprocs = args.nproc_per_node or max(torch.cuda.device_count(), 1)
    if nprocs < 1:
        raise UserError(f"--nproc-per-node {args.nproc_per_node}: give at least 1 process per node")
    dist.check_manual_launch(args.dist_url, max(args.world_size, 1), max(args.rank, 0), what="node")
    try:
        dist.spawn_workers(_worker, nprocs, max(args.rank, 0), max(args.world_size, 1), args.dist_url, (fn, args))
    except torch.multiprocessing.ProcessExitedException as exc:
        if exc.signal_name in ("SIGTERM", "SIGUSR1"):  # only possible before the processes joined (see _worker)
            print(f"=> stopped by signal {exc.signal_name} while the processes were starting: nothing was saved, run "
                  "the same command to start", flush=True)
            sys.exit(0)
        # 2: a UserError, 130: Ctrl-C, both already said by the process itself in one line
        if exc.exit_code not in (2, 130):
            print(f"error: process {exc.error_index} exited with code {exc.exit_code} (its output is above)",
                  file=sys.stderr, flush=True)
        sys.exit(exc.exit_code if exc.exit_code in (2, 130) else 1)
    except torch.multiprocessing.ProcessRaisedException as exc:
        # the spawned process's traceback travels in the exception, not on its stderr
        print(str(exc).strip(), file=sys.stderr, flush=True)
        last = [line for line in str(exc).strip().splitlines() if line.strip()][-1:] or ["?"]
        print(f"error: process {exc.error_index} failed: {last[0].strip()} (its traceback is above)",
              file=sys.stderr, flush=True)
        sys.exit(1)
    return None


def _worker(local_rank, rank, world_size, dist_url, fn, args):
    """One process: stop handler, device check, process group (any launcher), ``fn``, clean exit."""
    if rank is None:  # not spawned here: torchrun / launch / srun / plain python / MoCo-style manual ranks
        local_rank, rank, world_size = args.local_rank, args.rank, args.world_size
        dist_url = args.dist_url if args.dist_url != "env://" else None
    restore = ends_process_while_starting()  # no rendezvous wait may outlive a SIGTERM
    try:
        info = dist.init_distributed(dist_url=dist_url, world_size=world_size, rank=rank, local_rank=local_rank,
                                     backend=args.dist_backend or None, device=args.device or None, gpu=args.gpu)
    except UserError as exc:  # e.g. --device cuda on a machine without one
        report(exc, rank if rank is not None and rank >= 0 else None)
        sys.exit(2)
    finally:
        restore()
    process_stop_signal()  # from here on a stop signal is a stop request: the run saves and exits
    try:
        out = fn(args, info)
    except UserError as exc:
        report(exc, info.rank)
        if exc.collective:
            dist.cleanup()  # every rank stopped at the same point: leave the group together
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    dist.cleanup()
    return out


def cli(main, parse_args):
    """A script's ``__main__``: ``main(parse_args())`` with one-line errors (a flag or data error before the
    processes join is the same on every rank: rank 0 says it).

    Args: main: the script's ``main(args)``; parse_args: e.g. ``get_args_parser().parse_args``.
    """
    return exit_on_user_error(lambda: main(parse_args()), collective=True)()
