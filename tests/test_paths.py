"""Every file path and module of this repository that README, docs/, sbatch recipes, comments and docstrings name
exists: a moved module leaves no stale name behind. A name on a line
that cites another repository (owner/name, or a peer library by name) is that repository's, not ours."""
import ast
import io
import os
import re
import subprocess
import tokenize

from tests.helpers import ROOT

TOP = r"(?:src|eval|experiments|bench|tests|scripts|docs|data_lists|detection)"
PATH = re.compile(rf"(?<![\w./-]){TOP}/[\w./*-]*[\w-]\.(?:py|sh|md|txt|yaml|png|json)\b")
MODULE = re.compile(r"(?<![\w./-])(?:src|eval|experiments|bench)(?:\.[A-Za-z_][\w-]*)+")
OUTPUTS = ("bench/results/",)  # where commands write (git-ignored), not files of the repository
OURS = {"src", "eval", "experiments", "bench", "tests", "scripts", "docs", "data_lists", "detection"}


def tracked_files():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [f for f in out if f.endswith((".py", ".sh", ".md")) and os.path.isfile(os.path.join(ROOT, f))]


def _module_exists(name):
    """``src.evaluation.knn`` (a module or package), or ``src.evaluation.knn.run_knn`` (a name it defines)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        base = os.path.join(ROOT, *parts[:n])
        source = base + ".py" if os.path.isfile(base + ".py") else os.path.join(base, "__init__.py")
        if os.path.isfile(source):
            rest = parts[n:]
            if not rest:
                return True
            text = open(source, encoding="utf-8").read()
            return re.search(rf"^\s*(?:def|class)\s+{re.escape(rest[0])}\b|^\s*{re.escape(rest[0])}\s*=|"
                             rf"import .*\b{re.escape(rest[0])}\b", text, re.M) is not None
    return False


def _cites_elsewhere(line):
    """A line about another project's files: a peer named outright, a possessive ("MoCo's `detection/...`"), or a
    path whose first folder is not one of ours (``builder/builder_ours.py``)."""
    if re.search(r"(?i)github|solo-learn|eztorch|lightly|ssl-transfer|facebookresearch|vturrisi|juliendenize|"
                 r"wvangansbeke|WOWNICE|HobbitLong|linusericsson|mmselfsup|simsiam|\bdino\b|reference|official|"
                 r"\b[A-Z][\w-]*'s\s+[`'\"]+[\w-]+/", line):
        return True
    return any(first not in OURS for first in re.findall(r"(?<![\w./-])([A-Za-z_][\w-]*)/[\w./-]+\.(?:py|sh|yaml|ipynb)",
                                                            line))


def stale_names(files):
    """``[(file, line number, name)]`` of the paths and modules named in ``files`` that this repository lacks."""
    stale = []
    for f in files:
        for number, line in enumerate(open(os.path.join(ROOT, f), encoding="utf-8", errors="replace"), start=1):
            for match in PATH.finditer(line):
                path = match.group(0).rstrip(".")
                if path.startswith(OUTPUTS):
                    continue
                exists = any(os.path.exists(p) for p in (os.path.join(ROOT, path), os.path.join(ROOT, path.replace(
                    "*", "x")))) or ("*" in path and _glob(path))
                if not exists and not _cites_elsewhere(line):
                    stale.append((f, number, path))
            for match in MODULE.finditer(line):
                name = match.group(0).rstrip(".")
                if f.endswith(".py") and not _quoted_or_commented(line, match):
                    continue  # in code ``src`` may be a variable (a trunk), not the package
                if not _module_exists(name) and not _cites_elsewhere(line):
                    stale.append((f, number, name))
    return stale


def _quoted_or_commented(line, match):
    before = line[:match.start()]
    return "#" in before or before[-1:] in ("`", "'", '"', "~") or line.lstrip().startswith(("from ", "import "))


def _glob(pattern):
    import glob

    return bool(glob.glob(os.path.join(ROOT, pattern)))


def test_every_named_path_and_module_exists():
    stale = stale_names(tracked_files())
    assert not stale, "names of files or modules this repository does not have:\n" + "\n".join(
        f"{f}:{n}: {name}" for f, n, name in stale)


def test_a_stale_name_is_caught(tmp_path):
    """The check itself: names that were ours once are reported, names that exist are not."""
    gone = ["src/" + "dist.py", "src." + "pretrained", "src." + "video"]  # ours once (spelt apart: a grep for them
    # over the repository must find nothing)
    probe = tmp_path / "probe.md"
    probe.write_text(f"see `{gone[0]}` and ``{gone[1]}`` and ``{gone[2]}``\n"
                     "but `src/run/dist.py`, ``src.evaluation.pretrained`` and ``src.evaluation.knn.run_knn`` exist\n"
                     "facebookresearch/moco `moco/builder.py` is theirs; so is solo-learn `scripts/pretrain/x.yaml`\n")
    rel = os.path.relpath(probe, ROOT)
    names = [name for _, _, name in stale_names([rel])]
    assert names == gone


# the word, then a file of a specification folder (a name ending in .md, after a space or a slash), or a section
# (A.7, 5.2, D.8, "section 3"), possibly after one word: a specification this repository does not have
SPEC_CITATION = re.compile(r"\b[Ss]pec(?:/|\s+|\s*`+)+(?:[\w-]+\.md\b|(?:[A-Za-z][\w-]*\s+)?"
                           r"(?:section\s+\d|[A-Z]\.\d|\d+\.\d))")


def _prose(path):
    """``[(line number, text)]`` of what a reader takes for prose: comments and string constants (docstrings, help
    strings, group titles, messages) of a .py file; comments of a .sh file."""
    text = open(os.path.join(ROOT, path), encoding="utf-8", errors="replace").read()
    if path.endswith(".sh"):
        return [(n, line[line.index("#"):]) for n, line in enumerate(text.splitlines(), start=1)
                if re.match(r"\s*#", line) or " #" in line]
    out = [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(text).readline)
           if tok.type == tokenize.COMMENT]
    out += [(node.lineno, node.value) for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    return out


def spec_citations(files):
    """``[(file, line number, citation)]`` of every spec section cited in the prose of ``files`` (.py, .sh)."""
    found = []
    for f in files:
        if f.endswith((".py", ".sh")):
            hits = sorted((n, m.start(), m.group(0)) for n, text in _prose(f) for m in SPEC_CITATION.finditer(text))
            found += [(f, n, cite) for n, _, cite in hits]
    return found


def test_no_comment_docstring_or_help_cites_a_spec_section():
    """A reader can open what the prose cites: the official repository's file, the paper, or a docs/ page."""
    found = spec_citations(tracked_files())
    assert not found, "spec sections this repository does not have (cite the official file or a docs/ page):\n" + \
        "\n".join(f"{f}:{n}: {c}" for f, n, c in found)


def test_a_spec_citation_is_caught(tmp_path):
    """The check itself: each form of citation is reported, in a comment, a docstring, a help string and a .sh
    comment; words that merely contain "spec" are not."""
    s = "sp" + "ec"  # spelt apart: a grep for citations over the repository must find nothing here
    cites = [f"{s} sce.md 5.4", f"{s} A.7", f"{s}/evals.md", f"{s} ``moco.md``", f"{s} 5.2", f"{s} section 3",
             f"{s} evals D.8"]
    probe = tmp_path / "probe.py"
    probe.write_text(f'"""Module ({cites[0]})."""\n'
                     f"x = 1  # as in {cites[1]}\n"
                     f'def f():\n    """Protocol ({cites[2]} D.8)."""\n'
                     f'p.add_argument("--k", help="k ({cites[3]} C.3)")\n'
                     f"y = 2  # ({cites[4]})\n"
                     f'z = "{cites[5]} of the paper, {cites[6]}"\n'
                     f"# fine: a format {s}, the {s}ific case, inspect, find_{s}, {s} = LAYOUTS[name]\n"
                     f"{s} = 3  # code is not prose: {s}.x\n")
    sh = tmp_path / "probe.sh"
    sh.write_text(f"#!/bin/bash\n# values ({cites[0]})\necho ok  # no {s}ific claim\n")
    found = spec_citations([os.path.relpath(p, ROOT) for p in (probe, sh)])
    assert [(os.path.basename(f), n) for f, n, _ in found] == [("probe.py", n) for n in (1, 2, 4, 5, 6, 7, 7)] + [
        ("probe.sh", 2)]
    assert all(cite.startswith(c) for (_, _, c), cite in zip(found, cites + [cites[0]])), found
