"""Time of the linear transfer protocol (``src.evaluation.linear_transfer.run_protocol``) at Food101's size: the C
search on train / val (20% of train drawn as ssl-transfer does), the refit on train + val and the test score, on
synthetic features shaped like ResNet-50's (non-negative, 2048-d), so no dataset or trunk is needed.

    python -m bench.linear_transfer                                       # 75,750 x 2048, 101 classes, 45 C values
    python -m bench.linear_transfer --rows 20000 --grid_size 10           # a quicker look

Features: ``max(0, signal * mu[y] + noise)`` with per-class means ``mu`` ~ N(0, 1) and unit Gaussian noise; the
signal sets how separable the classes are, hence how many L-BFGS iterations each fit needs (see the JSON).
"""
import argparse
import os
import platform
import time

import numpy as np
import torch

from bench.common import write_json
from src.data.transfer import carve_val
from src.evaluation.linear_transfer import reference_grid, run_protocol


def synthetic(rows, dim, classes, signal, seed):
    """(rows, dim) float32 non-negative features and (rows,) labels, classes balanced."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((classes, dim), dtype=np.float32)
    y = np.arange(rows) % classes
    X = signal * mu[y]
    X += rng.standard_normal((rows, dim), dtype=np.float32)
    return np.maximum(X, 0, out=X), y


def main():
    p = argparse.ArgumentParser("linear transfer timing")
    p.add_argument("--rows", type=int, default=75750, help="train rows (Food101's train split: 75,750)")
    p.add_argument("--test_rows", type=int, default=25250, help="test rows (Food101's test split: 25,250)")
    p.add_argument("--dim", type=int, default=2048, help="feature dimension (ResNet-50: 2048)")
    p.add_argument("--classes", type=int, default=101, help="classes (Food101: 101)")
    p.add_argument("--grid_size", type=int, default=45, help="C values, ssl-transfer's grid 1/logspace(-6, 5, n) (45)")
    p.add_argument("--signal", type=float, default=0.1, help="class signal of the synthetic features (0.1)")
    p.add_argument("--output", default="bench/results/linear_transfer.json")
    args = p.parse_args()

    X, y = synthetic(args.rows + args.test_rows, args.dim, args.classes, args.signal, seed=0)
    Xall, yall, Xte, yte = X[:args.rows], y[:args.rows], X[args.rows:], y[args.rows:]
    tr, va = carve_val(args.rows)
    grid = reference_grid(args.grid_size)
    lines = []

    def log(line):
        print(line, flush=True)
        lines.append(line)

    load_start, t0 = os.getloadavg(), time.time()
    res = run_protocol((Xall[tr], yall[tr]), (Xall[va], yall[va]), (Xall, yall), (Xte, yte), "top1", grid, log=log)
    total = time.time() - t0
    res.pop("probe")
    res.update(total_seconds=total, rows=args.rows, test_rows=args.test_rows, dim=args.dim, classes=args.classes,
               grid_size=len(grid), signal=args.signal, load_average_start=load_start,
               load_average_end=os.getloadavg(), per_C=lines, threads=torch.get_num_threads(),
               omp_num_threads=os.environ.get("OMP_NUM_THREADS"), machine=f"{platform.machine()}, {os.cpu_count()} "
               "cores", solver="sklearn LogisticRegression(solver='lbfgs', max_iter=100, tol=1e-4, warm_start=True)")
    print(f"search {res['search_seconds']:.0f} s + refit {res['refit_seconds']:.0f} s = {total:.0f} s "
          f"({len(grid)} C values, {len(tr)} train / {len(va)} val / {args.rows} refit rows, {args.dim}-d, "
          f"{args.classes} classes); best C {res['best_C']:.4g}, test top-1 {res['test_score']:.2f}", flush=True)
    write_json(args.output, res, indent=1)


if __name__ == "__main__":
    main()
