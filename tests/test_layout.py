"""The import order src/__init__.py states is the code's: every module of ``src`` imports only parts listed above
its own (or its own part), and nothing in ``src`` imports a script, ``eval/``, ``experiments/``, ``bench/`` or
``tests/``. Imports inside functions and ``importlib.import_module("...")`` calls count too."""
import ast
import os
import re

from tests.helpers import ROOT

SRC = os.path.join(ROOT, "src")


def stated_order():
    """``{part: rank}`` from the bullets of src/__init__.py's docstring (``- ``run/``: ...``; a bullet naming
    several modules, ``losses.py``, ``optim.py``, ``metrics.py``, gives them one rank)."""
    doc = ast.get_docstring(ast.parse(open(os.path.join(SRC, "__init__.py"), encoding="utf-8").read()))
    ranks = {}
    for line in doc.splitlines():
        if not line.startswith("- "):
            continue
        names = re.findall(r"``(\w+)(?:/|\.py)``", line[2:].split(": ")[0])
        assert names, f"a bullet of src/__init__.py names no part: {line!r}"
        rank = len(set(ranks.values()))
        ranks.update({name: rank for name in names})
    return ranks


def outside_names():
    """What ``src`` may not import: the top-level scripts (``main_*.py``, ``eval_*.py``, ...) and folders of this
    repository other than ``src``."""
    names = set()
    for entry in os.scandir(ROOT):
        if entry.name.startswith(".") or entry.name == "src":
            continue
        if entry.is_file() and entry.name.endswith(".py"):
            names.add(entry.name[:-3])
        elif entry.is_dir() and any(f.endswith(".py") for f in os.listdir(entry.path)):
            names.add(entry.name)
    return names


def module_name(path):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def imported(tree, module, is_package):
    """``[(line, dotted name)]`` of every import in ``tree``: statements at any depth, relative ones resolved, and
    ``importlib.import_module`` / ``__import__`` calls with a constant name."""
    found = []
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found += [(node.lineno, f"{base}.{a.name}" if base == "src" else base) for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and \
                isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return list(dict.fromkeys(found))  # one entry per name and line


def part_of(dotted, ranks):
    """The part of ``src`` a dotted name belongs to (``src.data.video.io`` -> ``data``), or None."""
    bits = dotted.split(".")
    if bits[0] != "src" or len(bits) < 2:
        return None
    assert bits[1] in ranks, f"{dotted}: '{bits[1]}' is not a part listed in src/__init__.py"
    return bits[1]


def violations(path, source, ranks, outside):
    """``["file:line: reason"]`` for one module's imports."""
    module = module_name(path)
    own = part_of(module, ranks) if module != "src" else None
    out = []
    for line, name in imported(ast.parse(source), module, path.endswith("__init__.py")):
        where = f"{os.path.relpath(path, ROOT)}:{line}"
        if name.split(".")[0] in outside:
            out.append(f"{where}: imports {name}, which is not part of src")
            continue
        target = part_of(name, ranks)
        if target is None or own is None or target == own:
            continue
        if ranks[target] >= ranks[own]:
            out.append(f"{where}: {own} imports {name}, listed {'with' if ranks[target] == ranks[own] else 'after'} "
                       f"it in src/__init__.py")
    return out


def test_the_stated_order_is_read():
    ranks = stated_order()
    assert [p for p, _ in sorted(ranks.items(), key=lambda kv: kv[1])][:3] == ["run", "data", "augment"]
    assert ranks["losses"] == ranks["optim"] == ranks["metrics"] and ranks["evaluation"] == max(ranks.values())
    # every part of src is listed
    parts = {e.name[:-3] if e.name.endswith(".py") else e.name for e in os.scandir(SRC)
             if (e.is_dir() and os.path.isfile(os.path.join(e.path, "__init__.py")))
             or (e.name.endswith(".py") and e.name != "__init__.py")}
    assert parts == set(ranks), parts ^ set(ranks)


def test_every_src_module_follows_the_stated_order():
    ranks, outside = stated_order(), outside_names()
    assert {"eval", "experiments", "bench", "tests", "main_moco", "eval_linear"} <= outside
    bad, seen = [], 0
    for dirpath, _, files in os.walk(SRC):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                bad += violations(path, open(path, encoding="utf-8").read(), ranks, outside)
                seen += 1
    assert seen > 50
    assert not bad, "\n".join(bad)


def test_the_check_catches_each_kind_of_violation():
    """An upward import (at module level, in a function, relative, via importlib) and an import of a script or a
    folder outside src are each reported; an import of a part above, or of the module's own part, is not."""
    ranks, outside = stated_order(), outside_names()
    data = os.path.join(SRC, "data", "probe.py")
    cases = {
        "from src.augment.image import eval_transform\n": "data imports src.augment.image",
        "def f():\n    from src.evaluation import monitor\n": "data imports src.evaluation",
        "from ..augment import split\n": "data imports src.augment",
        "import importlib\nm = importlib.import_module('src.methods.moco')\n": "data imports src.methods.moco",
        "import eval.knn\n": "imports eval.knn, which is not part of src",
        "from main_moco import build\n": "imports main_moco, which is not part of src",
        "from bench.common import local_info\n": "imports bench.common, which is not part of src",
    }
    for source, reason in cases.items():
        found = violations(data, source, ranks, outside)
        assert len(found) == 1 and reason in found[0], (source, found)
    clean = "from src.run.errors import UserError\nfrom src.data.folders import build_dataset\nfrom . import cifar\n"
    assert violations(data, clean, ranks, outside) == []
    assert violations(os.path.join(SRC, "evaluation", "probe.py"), "from src.augment.image import eval_transform\n",
                      ranks, outside) == []
