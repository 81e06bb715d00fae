"""Draw a run's training curves (loss, learning rate, kNN accuracy) from its JSON-lines log into a PNG.

A run directory (``--output-dir`` / ``--dump_path`` of a ``main_*.py``) holds ``args.json``,
``log.txt`` (one JSON object per line: ``{"type": "iter", "step", "epoch", "lr", "Loss", ...}`` every
``--print-freq`` steps and ``{"type": "epoch", "epoch", "Loss", "lr", ...}`` per epoch, see
``src/logging.py``) and checkpoints. DINO / SwAV style logs without ``type`` (``{"epoch", "train_loss",
"train_lr"}``) are read too. Panels:

* loss: every logged step (thin line) and the per-epoch records (dots: the epoch's average loss);
  every key whose name contains "loss" (``avg_*`` running means are skipped);
* learning rate (``lr`` / ``train_lr``);
* kNN: every logged key that names a kNN accuracy (``knn``, ``best_nn``), plus the final numbers of a
  ``knn.json`` (``python -m eval.knn``) or ``demo.json`` (``main_*.py --demo``) in the run directory,
  drawn as stars at the last step (random-init baselines as dashed lines). Without any, the panel
  says so.

A healthy MoCo run: the loss jumps up during the first epoch while the queue fills with keys (from
about ln(batch) to about ln(queue size + 1)), then falls slowly; the lr follows the cosine or the step
schedule; the kNN accuracy rises with the epochs and stays above the random-init baseline.

    python -m experiments.plot-logs runs/moco-demo                 # writes runs/moco-demo/curves.png
    python -m experiments.plot-logs runs/moco-demo/log.txt -o /tmp/moco-demo.png
Writes the PNG and, next to it, ``<png name>.json`` with the number of records and each curve's
first / last / minimum value.
"""
import argparse
import json
import math
import os
import re

from src.run.args import ArgumentParser
from src.run.errors import UserError
from src.run.launch import exit_on_user_error

KNN_KEY = re.compile(r"knn|best_nn|nn_top|nn_acc", re.IGNORECASE)
LR_KEYS = ("lr", "train_lr", "learning_rate")


def get_args_parser(add_help=False):
    parser = argparse.ArgumentParser("Plot a run's training curves", add_help=add_help)
    parser.add_argument("dump_path", metavar="RUN",
                        help="run directory holding log.txt (or the JSON-lines log file itself)")
    parser.add_argument("-o", "--output", default=None, help="PNG to write (default RUN/curves.png)")
    return parser


# ==== reading ====
def read_log(path):
    """JSON-lines records of ``path``; returns ``(records, number of unreadable lines)``."""
    records, bad = [], 0
    with open(path) as f:
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
    return records, bad


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _series_add(series, name, x, y):
    series.setdefault(name, {})[x] = y  # a resumed run logs some steps twice: the later value wins


def extract_curves(records):
    """Curves of a run's log records.

    Returns:
        dict with ``unit`` ("step" or "epoch") and ``steps`` / ``epochs`` / ``knn``: {name: sorted list
        of (x, y)} for per-step values, per-epoch values (loss averages and lr) and kNN accuracies.
    """
    unit = "step" if any("step" in r for r in records) else "epoch"
    last_step = {}  # epoch -> largest step logged in it
    for r in records:
        if _number(r.get("step")) and _number(r.get("epoch")):
            last_step[r["epoch"]] = max(last_step.get(r["epoch"], 0), r["step"])
    steps, epochs, knn = {}, {}, {}
    for r in records:
        per_step = r.get("type") == "iter" and _number(r.get("step"))
        if per_step:
            x = r["step"]
        elif _number(r.get("epoch")):
            x = last_step.get(r["epoch"], r["epoch"] + 1) if unit == "step" else r["epoch"] + 1
        else:
            continue
        for key, v in r.items():
            if not _number(v) or key.startswith("avg_"):
                continue
            if KNN_KEY.search(key):
                _series_add(knn, key, x, v)
            elif "loss" in key.lower() or key in LR_KEYS:
                _series_add(steps if per_step else epochs, key, x, v)
    as_lists = {name: sorted(d.items()) for name, d in steps.items()}
    return {"unit": unit, "steps": as_lists, "epochs": {n: sorted(d.items()) for n, d in epochs.items()},
            "knn": {n: sorted(d.items()) for n, d in knn.items()}}


def final_knn(run_dir):
    """{label: accuracy} from ``knn.json`` / ``demo.json`` in the run directory (empty when absent)."""
    out = {}
    for name in ("knn.json", "demo.json"):
        path = os.path.join(run_dir, name)
        try:
            with open(path) as f:
                res = json.load(f)
        except (OSError, json.JSONDecodeError):
            continue
        tag = name[:-len(".json")]
        for prefix, d in [(tag, res)] + [(f"{tag} {k}", v) for k, v in res.items() if isinstance(v, dict)]:
            for key in ("best_nn", "weighted_knn_top1"):
                if _number(d.get(key)):
                    out[f"{prefix} {key}"] = d[key]
    return out


# ==== drawing ====
def draw(curves, finals, title, out_png):
    """Three stacked panels (loss, lr, kNN) into ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    unit = curves["unit"]
    panels = ((axes[0], lambda k: "loss" in k.lower(), "loss"), (axes[1], lambda k: k in LR_KEYS, "learning rate"))
    for ax, keep, label in panels:
        drawn = False
        for name, pts in curves["steps"].items():
            if keep(name) and pts:
                ax.plot(*zip(*pts), linewidth=0.8, label=f"{name} (logged steps)")
                drawn = True
        for name, pts in curves["epochs"].items():
            if keep(name) and pts:
                ax.plot(*zip(*pts), "o-", markersize=3, linewidth=1.2, label=f"{name} (per epoch)")
                drawn = True
        ax.set_ylabel(label)
        if drawn:
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, f"no {label} in this log", ha="center", va="center", transform=ax.transAxes)
    ax = axes[2]
    for name, pts in curves["knn"].items():
        ax.plot(*zip(*pts), "o-", markersize=3, label=name)
    last_x = max([p[0] for group in ("steps", "epochs", "knn") for pts in curves[group].values() for p in pts],
                 default=1)
    for name, acc in finals.items():
        if "random" in name:  # a baseline, not a point of this run: a level to beat
            ax.axhline(acc, linestyle="--", linewidth=1, color="grey", label=f"{name}: {acc:.2f}%")
        else:
            ax.plot([last_x], [acc], "*", markersize=10, label=f"{name}: {acc:.2f}%")
    if curves["knn"] or finals:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no kNN accuracy in this run (run python -m eval.knn on its checkpoint)",
                ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("kNN top-1 (%)")
    ax.set_xlabel("training step" if unit == "step" else "epoch")
    for a in axes:
        a.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def run_title(run_dir):
    """One line from ``args.json`` (arch, epochs, batch, lr) or the directory name."""
    try:
        with open(os.path.join(run_dir, "args.json")) as f:
            a = json.load(f)
    except (OSError, json.JSONDecodeError):
        return os.path.abspath(run_dir)
    parts = [f"{k} {a[k]}" for k in ("arch", "epochs", "batch_size", "lr", "moco_k", "moco_t") if k in a]
    return f"{os.path.abspath(run_dir)}: " + ", ".join(parts)


def summarize(curves, finals, n_records, n_bad, log_path):
    """Numbers for the JSON next to the PNG: each curve's first / last / min (x, y)."""
    def stats(pts):
        return {"points": len(pts), "first": list(pts[0]), "last": list(pts[-1]),
                "min": list(min(pts, key=lambda p: p[1]))}

    return {"log": log_path, "records": n_records, "unreadable_lines": n_bad, "x_unit": curves["unit"],
            **{group: {n: stats(p) for n, p in curves[group].items() if p} for group in ("steps", "epochs", "knn")},
            "final_knn": finals}


@exit_on_user_error
def main(args):
    path = args.dump_path
    if os.path.isdir(path):
        run_dir, log_path = path, os.path.join(path, "log.txt")
    else:
        run_dir, log_path = os.path.dirname(path) or ".", path
    if not os.path.isfile(log_path):
        raise UserError(f"no log at '{log_path}': pass a run directory holding log.txt (the --output-dir of a "
                        "main_*.py run) or the log file itself")
    records, bad = read_log(log_path)
    curves = extract_curves(records)
    finals = final_knn(run_dir)
    if not any(curves[g] for g in ("steps", "epochs", "knn")):
        raise UserError(f"'{log_path}' has no loss, lr or kNN values in {len(records)} JSON records "
                        f"({bad} unreadable lines): is it a training log?")
    out = args.output or os.path.join(run_dir, "curves.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    draw(curves, finals, run_title(run_dir), out)
    summary = summarize(curves, finals, len(records), bad, log_path)
    json_path = os.path.splitext(out)[0] + ".json"
    with open(json_path, "w") as f:
        json.dump(summary, f, indent=2)
    if bad:
        print(f"warning: skipped {bad} unreadable lines of {log_path}", flush=True)
    names = ", ".join(list(curves["steps"]) + [f"{n} (epoch)" for n in curves["epochs"]] + list(curves["knn"]))
    print(f"{len(records)} records ({names}); wrote {out} and {json_path}", flush=True)
    return summary


if __name__ == "__main__":
    main(ArgumentParser("Plot a run's training curves", parents=[get_args_parser()]).parse_args())
