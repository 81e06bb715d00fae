"""README.md and docs/: every command of a fenced block that runs one of this repository's scripts parses with that
script's own parser (the flags exist, the values have the right types), and every relative link resolves.

A command is parsed the way the shell would run it: the script's ``__main__`` runs until its parser's ``parse_args``,
which checks the words and then stops the script (nothing is trained, read or written)."""
import argparse
import contextlib
import glob
import io
import os
import re
import runpy
import shlex
import sys

import pytest

from tests.helpers import ROOT

DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
SCRIPT = re.compile(r"^(main_\w+|eval_\w+)\.py$")
MODULE = re.compile(r"^(eval|experiments|bench)\.[\w-]+$|^src\.data\.(video\.)?demo$")
PLACEHOLDER = {"$": "x"}  # shell variables become a plain word


class _Parsed(Exception):
    """The script reached its parser, which accepted the command."""


def fenced_blocks(text):
    """The contents of the ``` blocks of a markdown text that hold shell commands (a ```text block, e.g. a layout
    tree or a transcript, is not parsed)."""
    return [body for info, body in re.findall(r"^```([^\n]*)\n(.*?)^```", text, flags=re.M | re.S)
            if info.strip() not in ("text", "console-output", "python")]


def commands(block):
    """``(target, argv)`` of every command line of a block that runs a script or module of this repository."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#") or "..." in line:  # elided commands are not complete
            continue
        for part in re.split(r"&&|;|\|", line):
            try:
                words = shlex.split(part)
            except ValueError:
                continue
            words = [re.sub(r"\$\{?\w+\}?", "x", w) for w in words]
            for i, w in enumerate(words):
                if SCRIPT.match(os.path.basename(w)) and os.path.isfile(os.path.join(ROOT, w)):
                    out.append((w, words[i + 1:]))
                    break
                if w == "-m" and i + 1 < len(words) and MODULE.match(words[i + 1]):
                    out.append((words[i + 1], words[i + 2:]))
                    break
    return out


def parse_error(target, argv):
    """None if ``target`` (a script path or a module name) accepts ``argv``, else the parser's message."""
    real = argparse.ArgumentParser.parse_args

    def check(self, args=None, namespace=None):
        real(self, argv if args is None else args, namespace)
        raise _Parsed

    argparse.ArgumentParser.parse_args = check
    saved_argv, err = sys.argv, io.StringIO()
    sys.argv = [target] + list(argv)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if target.endswith(".py"):
                runpy.run_path(os.path.join(ROOT, target), run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
        return f"{target} never parsed its command line"
    except _Parsed:
        return None
    except SystemExit as exc:
        return (err.getvalue().strip().splitlines() or [f"exit {exc.code}"])[-1] if exc.code else None
    finally:
        argparse.ArgumentParser.parse_args = real
        sys.argv = saved_argv


def check_text(text):
    """Every problem of the commands of ``text``: ``[(command, message)]``."""
    problems = []
    for block in fenced_blocks(text):
        for target, argv in commands(block):
            message = parse_error(target, argv)
            if message:
                problems.append((f"{target} {' '.join(argv)}", message))
    return problems


def links(path):
    """Relative link targets of a markdown file (anchors and web addresses left out)."""
    text = re.sub(r"```.*?```", "", open(path).read(), flags=re.S)
    out = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"^(https?:|mailto:|#)", target):
            out.append(target.split("#", 1)[0])
    return out


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.mark.parametrize("path", DOCS, ids=[os.path.relpath(p, ROOT) for p in DOCS])
def test_documented_commands_parse(path):
    found = sum(len(commands(b)) for b in fenced_blocks(open(path).read()))
    problems = check_text(open(path).read())
    assert not problems, "\n".join(f"{cmd}\n    -> {msg}" for cmd, msg in problems)
    if os.path.basename(path) == "README.md":
        assert found >= 10  # the README's commands are really checked


@pytest.mark.parametrize("path", DOCS, ids=[os.path.relpath(p, ROOT) for p in DOCS])
def test_relative_links_resolve(path):
    missing = [t for t in links(path) if not os.path.exists(os.path.join(os.path.dirname(path), t))]
    assert not missing, missing


def test_a_misspelled_flag_is_caught():
    good = "```bash\npython main_sce.py --data_path data/demo --batch_size 32 --epochs 2\n```\n"
    bad = good.replace("--batch_size", "--batch_sizee")
    wrong_type = good.replace("--epochs 2", "--epochs two")
    module = "```bash\npython -m eval.knn data/demo --resize 32 --crop-size 32\n```\n"
    assert check_text(good) == [] and check_text(module) == []
    problems = check_text(bad)
    assert len(problems) == 1 and "--batch_sizee" in problems[0][1]
    assert len(check_text(wrong_type)) == 1
    assert len(check_text(module.replace("--crop-size", "--crop-sise"))) == 1


def test_commands_are_found_through_launchers():
    block = ("torchrun --nproc_per_node=8 main_moco.py /data -a resnet50 \\\n    --lr 0.03 -b 256\n"
             "python -m torch.distributed.launch --nproc_per_node=2 main_swav.py --data_path $DATA\n"
             "srun --kill-on-bad-exit=1 python -u -m eval.knn x  # a comment\n"
             "python main_sce.py --data_path /path ...  # elided: skipped\n")
    found = commands(block)
    assert [t for t, _ in found] == ["main_moco.py", "main_swav.py", "eval.knn"]
    assert found[0][1] == ["/data", "-a", "resnet50", "--lr", "0.03", "-b", "256"]
    assert found[1][1] == ["--data_path", "x"]
