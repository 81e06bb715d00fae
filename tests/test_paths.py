"""Every file path and module of this repository that README, docs/, sbatch recipes, comments and docstrings name
exists: a moved module leaves no stale name behind. A name on a line
that cites another repository (owner/name, or a peer library by name) is that repository's, not ours."""
import os
import re
import subprocess

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
