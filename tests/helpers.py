"""Shared test helpers: a tiny generated dataset and subprocess runners."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_dataset(path, num_classes=4, train_per_class=12, val_per_class=4, size=32):
    """A small demo dataset (shapes), built once per path."""
    from src.data.demo import make_demo_dataset

    return str(make_demo_dataset(path, num_classes=num_classes, train_per_class=train_per_class,
                                 val_per_class=val_per_class, size=size, seed=0, workers=1))


def run(cmd, env=None, timeout=600, cwd=ROOT):
    """Run ``cmd`` (list) from the repo root; returns CompletedProcess with text output."""
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "LOCAL_WORLD"))}
    full_env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    full_env.update(env or {})
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def py(*args):
    return [sys.executable, *args]


def assert_ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"


def exits(fn, capsys):
    """``fn()`` (a CLI's parse and main) in this process: ``(exit status, stdout, stderr)``; the stop-signal handlers a
    script installs are put back afterwards."""
    import signal

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    code = 0
    try:
        fn()
    except SystemExit as exc:
        code = exc.code
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code, out, err):
    """Bad input in this process: exit status 2, no traceback, exactly one ``error:`` line on stderr; returns it."""
    assert code == 2, (code, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def one_error_line(proc):
    """Bad input: non-zero exit, no traceback, exactly one 'error:' line on stderr."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_lines(text, n=2):
    return [l for l in text.splitlines() if l.strip()][-n:]


SYNC_RE = re.compile(r"ranks in sync: encoder weights and queue identical on (\d+) processes")
