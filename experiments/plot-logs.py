"""Draw the training curves of one run, or of several runs in one figure, from their JSON-lines logs into a PNG.

A run directory (``--output-dir`` / ``--dump_path`` of a ``main_*.py``) holds ``args.json``,
``log.txt`` (one JSON object per line: ``{"type": "iter", "step", "epoch", "lr", "Loss", ...}`` every
``--print-freq`` steps, ``{"type": "epoch", "epoch", "Loss", "lr", ...}`` per epoch, see
``src/run/logging.py``, and the monitor's ``{"type": "monitor", "epoch", "trunk", "best_nn", "weighted_knn"}``
and ``{"type": "online_linear", "epoch", "val_top1"}`` rows) and checkpoints. DINO / SwAV style logs without
``type`` (``{"epoch", "train_loss", "train_lr"}``) are read too. Panels:

* loss: every logged step (thin line) and the per-epoch records (dots: the epoch's average loss);
  every key whose name contains "loss" (``avg_*`` running means are skipped);
* learning rate (``lr`` / ``train_lr``);
* kNN, against the epochs trained (the logged 0-based epoch + 1): the monitor's best-NN (solid) and weighted kNN
  (dashed) of each trunk (online, momentum), every other logged key that names a kNN accuracy (``knn``,
  ``best_nn``), plus the final numbers of a ``knn.json`` (``python -m eval.knn``) or ``demo.json``
  (``main_*.py --demo``) in the run directory, drawn as stars at the last epoch (random-init baselines as dashed
  lines). Without any, the panel says so;
* online linear probe: its ``val_top1`` against the epochs trained (only when a log has such rows).

Several runs go into one figure: one colour per run, each curve labelled by the run's folder name (the parent
folders are added where two names are equal). A run given without a log, or whose log holds no curve, is left
out with a ``warning:`` line (the others are drawn: a run that has not logged yet does not stop a comparison);
when no run is left, that is an error. Runs whose logs have steps are drawn against the step; when one of them
has only epochs, the loss and lr panels of all are drawn from their per-epoch records against the epochs trained.

A healthy MoCo run: the loss jumps up during the first epoch while the queue fills with keys (from
about ln(batch) to about ln(queue size + 1)), then falls slowly; the lr follows the cosine or the step
schedule; the kNN accuracy rises with the epochs and stays above the random-init baseline.

    python -m experiments.plot-logs runs/moco-demo                 # writes runs/moco-demo/curves.png
    python -m experiments.plot-logs runs/moco-demo/log.txt -o /tmp/moco-demo.png
    python -m experiments.plot-logs runs/moco-a runs/moco-b         # writes runs/compare-curves.png
Writes the PNG (another extension matplotlib knows, e.g. ``.pdf``, gives that format) and, next to it,
``<png name>.json`` with the number of records and each curve's first / last / minimum value (several runs: one
such entry per run under ``runs``, and the runs left out under ``left_out``).
"""
import argparse
import io
import json
import math
import os
import re
import sys

from src.run.args import ArgumentParser
from src.run.checkpoint import atomic_write, check_output_file
from src.run.errors import UserError
from src.run.launch import exit_on_user_error

KNN_KEY = re.compile(r"knn|best_nn|nn_top|nn_acc", re.IGNORECASE)
LR_KEYS = ("lr", "train_lr", "learning_rate")
LOOP_TYPES = (None, "iter", "epoch")  # rows of the training loop; monitor and probe rows have their own panels
MONITOR_METRICS = {"best_nn": "best-NN", "weighted_knn": "weighted kNN"}
TRUNK_MARKERS = {"online": "o", "momentum": "s"}
SEVERAL_RUNS_PNG = "compare-curves.png"


def get_args_parser(add_help=False):
    parser = argparse.ArgumentParser("Plot the training curves of one or several runs", add_help=add_help)
    parser.add_argument("runs", metavar="RUN", nargs="+",
                        help="run directories holding log.txt (or the JSON-lines log files themselves); several "
                             "runs are drawn in one figure, each labelled by its folder name")
    parser.add_argument("-o", "--output", default=None,
                        help=f"PNG to write (default: RUN/curves.png for one run, {SEVERAL_RUNS_PNG} in the runs' "
                             "common parent folder for several)")
    return parser


# ==== reading ====
def read_log(path):
    """JSON-lines records of ``path``; returns ``(records, number of unreadable lines)``.

    Bytes that are not UTF-8 make their line unreadable, not the file (a disk error or a binary file).
    """
    records, bad = [], 0
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # e.g. the last line of a killed run
                    bad += 1
                    continue
                if isinstance(rec, dict):
                    records.append(rec)
                else:
                    bad += 1
    except OSError as exc:
        raise UserError(f"cannot read '{path}' ({os.strerror(exc.errno) if exc.errno else exc}): pass a readable "
                        "log.txt") from None
    return records, bad


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _series_add(series, name, x, y):
    series.setdefault(name, {})[x] = y  # a resumed run logs some steps twice: the later value wins


def _sorted(series):
    return {name: sorted(d.items()) for name, d in series.items()}


def log_unit(records):
    """``"step"`` when the log's records carry a step, else ``"epoch"``."""
    return "step" if any("step" in r for r in records) else "epoch"


def extract_curves(records, unit=None):
    """Curves of a run's log records.

    Args:
        records: the log's JSON objects. unit: x of the loss and lr curves, ``"step"`` or ``"epoch"`` (epochs
            trained; per-step records are then left out); None takes :func:`log_unit`.
    Returns:
        dict with ``unit`` and {name: sorted list of (x, y)} under ``steps`` (per-step loss and lr), ``epochs``
        (per-epoch loss averages and lr), ``knn`` (kNN accuracies of the loop's rows), ``monitor`` (``"<trunk>
        best_nn"`` / ``"<trunk> weighted_knn"``) and ``online_linear`` (``val_top1``); the last three against the
        epochs trained.
    """
    unit = unit or log_unit(records)
    last_step = {}  # epoch -> largest step logged in it
    for r in records:
        if _number(r.get("step")) and _number(r.get("epoch")):
            last_step[r["epoch"]] = max(last_step.get(r["epoch"], 0), r["step"])
    steps, epochs, knn, monitor, linear = {}, {}, {}, {}, {}
    for r in records:
        kind = r.get("type")
        if not _number(r.get("epoch")) and not (kind == "iter" and _number(r.get("step"))):
            continue
        trained = r["epoch"] + 1 if _number(r.get("epoch")) else None
        if kind == "monitor":
            for key in MONITOR_METRICS:
                if _number(r.get(key)):
                    _series_add(monitor, f"{r.get('trunk', 'online')} {key}", trained, r[key])
            continue
        if kind == "online_linear":
            for key, v in r.items():
                if "top" in key and _number(v):
                    _series_add(linear, key, trained, v)
            continue
        if kind not in LOOP_TYPES:
            continue
        per_step = kind == "iter" and _number(r.get("step"))
        if per_step and unit != "step":
            continue
        x = r["step"] if per_step else (last_step.get(r["epoch"], trained) if unit == "step" else trained)
        for key, v in r.items():
            if not _number(v) or key.startswith("avg_"):
                continue
            if KNN_KEY.search(key):
                if trained is not None:
                    _series_add(knn, key, trained, v)
            elif "loss" in key.lower() or key in LR_KEYS:
                _series_add(steps if per_step else epochs, key, x, v)
    return {"unit": unit, "steps": _sorted(steps), "epochs": _sorted(epochs), "knn": _sorted(knn),
            "monitor": _sorted(monitor), "online_linear": _sorted(linear)}


CURVE_GROUPS = ("steps", "epochs", "knn", "monitor", "online_linear")


def final_knn(run_dir):
    """{label: accuracy} from ``knn.json`` / ``demo.json`` in the run directory (empty when absent)."""
    out = {}
    for name in ("knn.json", "demo.json"):
        path = os.path.join(run_dir, name)
        try:
            with open(path) as f:
                res = json.load(f)
        except (OSError, ValueError):  # absent, or not JSON (ValueError: bytes that are not UTF-8 too)
            continue
        if not isinstance(res, dict):
            continue
        tag = name[:-len(".json")]
        for prefix, d in [(tag, res)] + [(f"{tag} {k}", v) for k, v in res.items() if isinstance(v, dict)]:
            for key in ("best_nn", "weighted_knn_top1"):
                if _number(d.get(key)):
                    out[f"{prefix} {key}"] = d[key]
    return out


def locate(path):
    """``(run directory, log path)`` of a RUN argument (a run directory or its log file)."""
    if os.path.isdir(path):
        return path, os.path.join(path, "log.txt")
    return os.path.dirname(path) or ".", path


def run_labels(located):
    """Each run's folder name; where names are equal, as many parent folders as make them differ, and the log's
    file name where two logs share a folder.

    Args:
        located: ``(run directory, log path)`` per run (:func:`locate`).
    """
    parts = [os.path.abspath(d).strip(os.sep).split(os.sep) for d, _ in located]
    labels = []
    for p in parts:
        depth = 1
        while depth < len(p) and sum(q[-depth:] == p[-depth:] for q in parts) > 1:
            depth += 1
        labels.append("/".join(p[-depth:]) or os.sep)
    return [f"{label} ({os.path.basename(log)})" if labels.count(label) > 1 else label
            for label, (_, log) in zip(labels, located)]


def load_runs(paths):
    """Read every RUN; returns ``(runs, left_out)``.

    Args:
        paths: run directories or log files.
    Returns:
        ``runs``: dicts with ``label``, ``run_dir``, ``log``, ``records``, ``bad``, ``curves`` (see
        :func:`extract_curves`, one x unit for all) and ``finals`` (:func:`final_knn`); ``left_out``: ``(path,
        reason)`` of the runs without a log or without curves (a warning among several runs).
    Raises:
        UserError: a run given twice; one run, or every run, without a log or without curves.
    """
    located = [locate(p) for p in paths]
    logs = [os.path.abspath(log) for _, log in located]
    for log in logs:
        if logs.count(log) > 1:
            raise UserError(f"the log '{log}' is given {logs.count(log)} times: pass each run once")
    runs, left_out = [], []
    for (run_dir, log), label in zip(located, run_labels(located)):
        if not os.path.isfile(log):
            left_out.append((log, f"no log at '{log}': pass a run directory holding log.txt (the --output-dir of "
                                  "a main_*.py run) or the log file itself"))
            continue
        records, bad = read_log(log)
        curves = extract_curves(records)
        if not any(curves[g] for g in CURVE_GROUPS):
            what = "no JSON records" if not records else f"no loss, lr or kNN values in {len(records)} JSON records"
            left_out.append((log, f"'{log}' has {what} ({bad} unreadable lines): is it a training log? Pass the "
                                  "log.txt of a main_*.py run"))
            continue
        runs.append({"label": label, "run_dir": run_dir, "log": log, "records": records, "bad": bad,
                     "curves": curves, "finals": final_knn(run_dir)})
    if not runs:
        raise UserError(left_out[0][1] if len(left_out) == 1 else
                        f"none of the {len(left_out)} runs can be drawn: {left_out[0][1]}")
    if len(runs) > 1 and len({log_unit(r["records"]) for r in runs}) > 1:  # one x axis for all
        for r in runs:
            r["curves"] = extract_curves(r["records"], unit="epoch")
    return runs, left_out


# ==== drawing ====
def _panel_text(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _draw_loss_or_lr(ax, runs, keep, label):
    """One panel of per-step / per-epoch curves; one run: both, with key names; several: one curve per run and
    key (per-step when logged, else per-epoch), coloured by run."""
    several = len(runs) > 1
    names = {n for r in runs for g in ("steps", "epochs") for n, p in r["curves"][g].items() if keep(n) and p}
    drawn = False
    for i, r in enumerate(runs):
        colour = f"C{i}" if several else None
        for name in sorted({n for g in ("steps", "epochs") for n in r["curves"][g] if keep(n)}):
            steps, epochs = r["curves"]["steps"].get(name), r["curves"]["epochs"].get(name)
            if several:
                tag = r["label"] if len(names) == 1 else f"{r['label']} {name}"
                if steps:
                    ax.plot(*zip(*steps), linewidth=0.8, color=colour, label=tag)
                elif epochs:
                    ax.plot(*zip(*epochs), "o-", markersize=3, linewidth=1.2, color=colour, label=tag)
                drawn = drawn or bool(steps or epochs)
                continue
            if steps:
                ax.plot(*zip(*steps), linewidth=0.8, label=f"{name} (logged steps)")
            if epochs:
                ax.plot(*zip(*epochs), "o-", markersize=3, linewidth=1.2, label=f"{name} (per epoch)")
            drawn = drawn or bool(steps or epochs)
    ax.set_ylabel(label)
    if drawn:
        ax.legend(fontsize=7, loc="best")
    else:
        _panel_text(ax, f"no {label} in {'these logs' if several else 'this log'}")


def _draw_knn(ax, runs):
    """The monitor's best-NN (solid) and weighted kNN (dashed) per trunk, other logged kNN keys, final numbers."""
    several = len(runs) > 1
    drawn = False
    for i, r in enumerate(runs):
        colour = f"C{i}" if several else None
        prefix = f"{r['label']} " if several else ""
        trunks = list(dict.fromkeys(name.rsplit(" ", 1)[0] for name in r["curves"]["monitor"]))
        for name, pts in r["curves"]["monitor"].items():
            trunk, metric = name.rsplit(" ", 1)
            ax.plot(*zip(*pts), TRUNK_MARKERS.get(trunk, "^"), linestyle="-" if metric == "best_nn" else "--",
                    markersize=3, color=colour or f"C{trunks.index(trunk)}",  # one run: a colour per trunk
                    label=f"{prefix}{trunk} {MONITOR_METRICS[metric]}")
        for name, pts in r["curves"]["knn"].items():
            ax.plot(*zip(*pts), "o-", markersize=3, color=colour, label=f"{prefix}{name}")
        last = max([p[0] for g in ("knn", "monitor") for pts in r["curves"][g].values() for p in pts]
                   + [rec["epoch"] + 1 for rec in r["records"] if _number(rec.get("epoch"))], default=1)
        for name, acc in r["finals"].items():
            if "random" in name:  # a baseline, not a point of this run: a level to beat
                ax.axhline(acc, linestyle="--", linewidth=1, color=colour or "grey",
                           label=f"{prefix}{name}: {acc:.2f}%")
            else:
                ax.plot([last], [acc], "*", markersize=10, color=colour, label=f"{prefix}{name}: {acc:.2f}%")
        drawn = drawn or any(r["curves"][g] for g in ("monitor", "knn")) or bool(r["finals"])
    if drawn:
        ax.legend(fontsize=7, loc="best")
    else:
        _panel_text(ax, f"no kNN accuracy in {'these runs' if several else 'this run'} (pass --monitor_data to "
                        "the training, or run python -m eval.knn on a checkpoint)")
    ax.set_ylabel("kNN top-1 (%)")


def _draw_online_linear(ax, runs):
    several = len(runs) > 1
    for i, r in enumerate(runs):
        for name, pts in r["curves"]["online_linear"].items():
            ax.plot(*zip(*pts), "o-", markersize=3, color=f"C{i}" if several else None,
                    label=f"{r['label']} {name}" if several else name)
    ax.legend(fontsize=7, loc="best")
    ax.set_ylabel("online linear top-1 (%)")


def build_figure(runs, title):
    """The figure of one or several runs (see the module docstring), not yet saved.

    Args:
        runs: from :func:`load_runs`. title: the figure's title.
    Returns:
        the matplotlib Figure; its axes are, top to bottom, loss, lr, kNN and (when a run has probe rows) the
        online linear probe.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    linear = any(r["curves"]["online_linear"] for r in runs)
    n = 4 if linear else 3
    fig, axes = plt.subplots(n, 1, figsize=(8, 3 * n), layout="constrained")  # room for a title of several lines
    axes[1].sharex(axes[0])
    _draw_loss_or_lr(axes[0], runs, lambda k: "loss" in k.lower(), "loss")
    _draw_loss_or_lr(axes[1], runs, lambda k: k in LR_KEYS, "learning rate")
    axes[1].set_xlabel("training step" if runs[0]["curves"]["unit"] == "step" else "epochs trained")
    _draw_knn(axes[2], runs)
    if linear:
        axes[3].sharex(axes[2])
        _draw_online_linear(axes[3], runs)
    axes[-1].set_xlabel("epochs trained")
    for a in axes:
        a.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    return fig


def run_title(run_dir, label=None):
    """One line from ``args.json`` (arch, epochs, batch, lr): ``<label or path>: arch ..., ...``."""
    name = label or os.path.abspath(run_dir)
    try:
        with open(os.path.join(run_dir, "args.json")) as f:
            a = json.load(f)
    except (OSError, ValueError):
        return name
    if not isinstance(a, dict):
        return name
    parts = [f"{k} {a[k]}" for k in ("arch", "epochs", "batch_size", "lr", "moco_k", "moco_t") if k in a]
    return f"{name}: " + ", ".join(parts)


def figure_title(runs, max_lines=6):
    if len(runs) == 1:
        return run_title(runs[0]["run_dir"])
    lines = [run_title(r["run_dir"], r["label"]) for r in runs]
    return "\n".join(lines[:max_lines] + ([f"... and {len(lines) - max_lines} more"] if len(lines) > max_lines else []))


def summarize(curves, finals, n_records, n_bad, log_path):
    """Numbers for the JSON next to the PNG: each curve's first / last / min (x, y)."""
    def stats(pts):
        return {"points": len(pts), "first": list(pts[0]), "last": list(pts[-1]),
                "min": list(min(pts, key=lambda p: p[1]))}

    return {"log": log_path, "records": n_records, "unreadable_lines": n_bad, "x_unit": curves["unit"],
            **{group: {n: stats(p) for n, p in curves[group].items() if p} for group in CURVE_GROUPS},
            "final_knn": finals}


def default_output(runs):
    """``RUN/curves.png`` for one run; ``compare-curves.png`` in the common parent folder of several."""
    if len(runs) == 1:
        return os.path.join(runs[0]["run_dir"], "curves.png")
    return os.path.join(os.path.commonpath([os.path.abspath(r["run_dir"]) for r in runs]), SEVERAL_RUNS_PNG)


def image_format(path):
    """matplotlib's format name for the extension of ``path`` (png without one)."""
    from matplotlib.figure import Figure

    ext = os.path.splitext(path)[1][1:].lower() or "png"
    known = Figure().canvas.get_supported_filetypes()
    if ext not in known:
        raise UserError(f"-o '{path}': matplotlib cannot write .{ext} files: name a .png, .pdf or .svg file")
    return ext


@exit_on_user_error
def main(args):
    out = args.output
    if out:  # before any log is read
        check_output_file(out, "-o", "curves.png")
        fmt = image_format(out)
    runs, left_out = load_runs(args.runs)
    if not out:
        out, fmt = default_output(runs), "png"
        check_output_file(out, "-o", "curves.png")
    for path, reason in left_out:  # only among several runs: one alone is an error
        print(f"warning: left out of the figure: {reason}", file=sys.stderr, flush=True)
    fig = build_figure(runs, figure_title(runs))
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    atomic_write(out, lambda f: f.write(buf.getvalue()), "-o")
    each = [summarize(r["curves"], r["finals"], len(r["records"]), r["bad"], r["log"]) for r in runs]
    summary = each[0] if len(runs) == 1 and not left_out else \
        {"runs": [{"label": r["label"], **s} for r, s in zip(runs, each)],
         "left_out": [{"run": path, "reason": reason} for path, reason in left_out]}
    json_path = os.path.splitext(out)[0] + ".json"
    atomic_write(json_path, lambda f: f.write(json.dumps(summary, indent=2).encode()), "-o")
    for r in runs:
        if r["bad"]:
            print(f"warning: skipped {r['bad']} unreadable lines of {r['log']}", flush=True)
    if len(runs) == 1 and not left_out:
        c = runs[0]["curves"]
        names = ", ".join(list(c["steps"]) + [f"{n} (epoch)" for n in c["epochs"]] + list(c["knn"])
                          + [f"monitor {n}" for n in c["monitor"]] + [f"online linear {n}" for n in c["online_linear"]])
        print(f"{len(runs[0]['records'])} records ({names}); wrote {out} and {json_path}", flush=True)
    else:
        counts = ", ".join(f"{r['label']}: {len(r['records'])} records" for r in runs)
        print(f"{len(runs)} runs ({counts}); wrote {out} and {json_path}", flush=True)
    return summary


if __name__ == "__main__":
    main(ArgumentParser("Plot the training curves of one or several runs", parents=[get_args_parser()]).parse_args())
