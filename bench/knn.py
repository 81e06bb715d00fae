"""Best-NN search at ImageNet scale: seconds and peak resident memory, against faiss-cpu's exact search.

    python -m bench.knn                                              # 100,000 x 2048, 5,000 queries, + faiss
    python -m bench.knn --n 1280000 --dim 2048 --queries 10000      # ImageNet-sized bank, ours alone
    python -m bench.knn --n 20000 --dim 64 --queries 200 --json /tmp/knn.json   # seconds

"ours" is ``src.evaluation.knn.search_bank`` itself, the loop ``python -m eval.knn`` runs in each shard, fed
with an identity trunk and synthetic batches of ``--batch-size`` rows (eval.knn's ``-b``), then
``src.metrics.best_nn_from_candidates``: an exact streaming Euclidean top-k (``StreamingKNN``: one matrix
product per batch, its k best per query merged with the k kept), so the bank is never held in memory. Only the
Best-NN search runs (eval.knn's weighted kNN, a second top-k over the same batches, is off, ``--no-weighted``).
"faiss" is faiss-cpu's exact ``IndexFlatL2`` (the bank added batch by batch, then one ``search``); it runs when
faiss is installed (``pip install faiss-cpu``: an optional bench-only dependency, never needed by the toolkit)
and, by default, when ``--n`` is at most 200,000 (it holds the whole bank; ``--faiss on`` forces it).

Bank: ``--n`` rows of ``--dim`` floats in 10 classes (class-sorted like an ImageFolder): row = its class
centre + N(0, 1) noise, centres N(0, 0.75^2 / sqrt(dim)), so neighbours are neither trivial nor random; rows
are generated batch by batch from ``--seed`` (the same bank for both methods) and the generation time is not
counted. Queries: ``--queries`` rows drawn the same way, classes in turn. Each method runs in its own process
(``--threads`` torch / OpenMP threads, default 1), so its peak resident set (ru_maxrss) is its own; both
return the neighbours' row ids, which are compared (same id sets per query; distances where they differ).
Seconds are wall clock ("seconds": faiss's add + search) and process CPU time ("cpu_s"), the latter less
affected by other load on a shared machine. Prints a table and writes JSON (``--json``, default ``bench/results/knn-<n>x<dim>-q<queries>.json``).
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

from bench.common import machine, report

CLASSES = 10
FAISS_AUTO_MAX_N = 200_000


# ==== synthetic data ====
def class_of(ids, n):
    """Class of bank rows ``ids`` of an n-row bank: class-sorted, 10 equal blocks."""
    return ids * CLASSES // n


def _centres(dim, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(CLASSES, dim, generator=g) * (0.75 / dim ** 0.25)  # Best-NN about 50-70%, any dim


def bank_batches(n, dim, seed, batch_size):
    """Yield ``(feats (b, D) float32, row ids (b,) long)``, the same bank for every call with these arguments."""
    centres = _centres(dim, seed)
    for start in range(0, n, batch_size):
        ids = torch.arange(start, min(start + batch_size, n))
        g = torch.Generator().manual_seed(seed * 1_000_003 + start + 1)
        yield centres[class_of(ids, n)] + torch.randn(len(ids), dim, generator=g), ids


def make_queries(q, dim, seed):
    """``(queries (q, D), labels (q,))``: rows of the bank's distribution, classes 0, 1, ..., 9, 0, ..."""
    labels = torch.arange(q) % CLASSES
    g = torch.Generator().manual_seed(seed * 1_000_003 + 999_999_937)
    return _centres(dim, seed)[labels] + torch.randn(q, dim, generator=g), labels


class _Timed:
    """Wrap an iterator; add the wall and CPU seconds spent inside it (generating data) to ``seconds`` / ``cpu``."""

    def __init__(self, it):
        self.it, self.seconds, self.cpu = iter(it), 0.0, 0.0

    def __iter__(self):
        return self

    def __next__(self):
        t, c = time.perf_counter(), time.process_time()
        try:
            return next(self.it)
        finally:
            self.seconds += time.perf_counter() - t
            self.cpu += time.process_time() - c


class _Clock:
    """Wall and process CPU seconds (all threads) since creation, minus what ``timed`` spent generating data."""

    def __init__(self, timed=None):
        self.t, self.c, self.timed = time.perf_counter(), time.process_time(), timed

    def read(self):
        gen_wall, gen_cpu = (self.timed.seconds, self.timed.cpu) if self.timed else (0.0, 0.0)
        return time.perf_counter() - self.t - gen_wall, time.process_time() - self.c - gen_cpu


def _rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ==== one method, in its own process ====
def run_ours(args):
    """eval.knn's search on the synthetic bank; returns seconds, memory, neighbour ids/distances and Best-NN."""
    from src.evaluation.knn import search_bank
    from src.metrics import best_nn_from_candidates

    query, labels = make_queries(args.queries, args.dim, args.seed)
    base = _rss_mib()
    batches = _Timed(bank_batches(args.n, args.dim, args.seed, args.batch_size))
    clock = _Clock(batches)
    part = search_bank(torch.nn.Identity(), batches, query, torch.device("cpu"), args.k)  # "labels" = row ids
    search_s, cpu_s = clock.read()
    best, best_k, _ = best_nn_from_candidates(part["dists"], class_of(part["labels"], args.n), labels, args.k)
    return {"search_s": search_s, "add_s": 0.0, "cpu_s": cpu_s, "gen_s": batches.seconds, "base_rss_mib": base,
            "peak_rss_mib": _rss_mib(), "ids": part["labels"], "dists": part["dists"], "best_nn": best,
            "best_k": best_k}


def run_faiss(args):
    """faiss IndexFlatL2 on the same bank: add batch by batch (timed without generation), then one search."""
    import faiss

    from src.metrics import best_nn_from_candidates

    faiss.omp_set_num_threads(args.threads)
    query, labels = make_queries(args.queries, args.dim, args.seed)
    base = _rss_mib()
    index = faiss.IndexFlatL2(args.dim)
    batches = _Timed(bank_batches(args.n, args.dim, args.seed, args.batch_size))
    clock = _Clock(batches)
    for x, _ in batches:
        index.add(x.numpy())
    add_s, add_cpu = clock.read()
    clock = _Clock()
    d2, ids = index.search(query.numpy(), args.k)  # squared L2, ascending
    search_s, cpu_s = clock.read()
    ids, dists = torch.from_numpy(ids).long(), torch.from_numpy(d2).clamp_min(0).sqrt()
    best, best_k, _ = best_nn_from_candidates(dists, class_of(ids, args.n), labels, args.k)
    return {"search_s": search_s, "add_s": add_s, "cpu_s": add_cpu + cpu_s, "gen_s": batches.seconds,
            "base_rss_mib": base,
            "peak_rss_mib": _rss_mib(), "ids": ids, "dists": dists, "best_nn": best, "best_k": best_k}


def _spawn(method, args, out):
    """Run one method in a fresh interpreter with ``--threads`` threads; its result dict."""
    cmd = [sys.executable, "-m", "bench.knn", "--worker", method, "--worker-out", out,
           "--n", str(args.n), "--dim", str(args.dim), "--queries", str(args.queries), "--k", str(args.k),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--seed", str(args.seed)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd, env=env, check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return torch.load(out, weights_only=True)


# ==== comparison and report ====
def agreement(a, b, rtol=1e-4):
    """Neighbour agreement of two results: fraction of queries with the same set of k ids, the largest
    distance difference, and whether every differing query is a near-tie (sorted distances within rtol)."""
    rows_same = (a["ids"].sort(dim=1).values == b["ids"].sort(dim=1).values).all(dim=1)  # (Q,)
    diff = (a["dists"] - b["dists"]).abs()  # both sorted ascending: k-th neighbour against k-th neighbour
    ties_only = bool((diff[~rows_same] <= rtol * b["dists"][~rows_same].clamp_min(1e-12)).all())
    return {"same_ids_frac": rows_same.float().mean().item(), "max_dist_diff": diff.max().item(),
            "differences_are_ties": ties_only}


def faiss_available():
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None):
    p = argparse.ArgumentParser("bench.knn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="bank rows (default 100000; ImageNet train: 1281167)")
    p.add_argument("--dim", type=int, default=2048, help="feature dimension (default 2048, a ResNet-50)")
    p.add_argument("--queries", type=int, default=5000, help="query rows (default 5000; ImageNet val: 50000)")
    p.add_argument("--k", type=int, default=5, help="neighbours, eval.knn's -k (default 5; 101 in the paper)")
    p.add_argument("--batch-size", "--batch_size", type=int, default=512,
                   help="bank rows per batch, eval.knn's -b (default 512)")
    p.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads per method (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic bank and queries (default 0)")
    p.add_argument("--faiss", choices=("auto", "on", "off"), default="auto",
                   help=f"run faiss IndexFlatL2: auto = when installed and --n <= {FAISS_AUTO_MAX_N}")
    p.add_argument("--json", default=None, help="results file (default bench/results/knn-<n>x<dim>-q<queries>.json)")
    p.add_argument("--neighbours", "--neighbors", default=None,
                   help="also save our neighbours' row ids and distances (torch file: ids, dists (queries, k))")
    p.add_argument("--worker", choices=("ours", "faiss"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.n, args.dim, args.queries, args.k, args.batch_size, args.threads) < 1:
        p.error("--n, --dim, --queries, --k, --batch-size and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    if args.worker:
        torch.save((run_ours if args.worker == "ours" else run_faiss)(args), args.worker_out)
        return None

    use_faiss = args.faiss == "on" or (args.faiss == "auto" and args.n <= FAISS_AUTO_MAX_N)
    if use_faiss and not faiss_available():
        print("faiss not installed (pip install faiss-cpu): its row is skipped", flush=True)
        use_faiss = False
    elif not use_faiss and args.faiss == "auto":
        print(f"faiss skipped: --n above {FAISS_AUTO_MAX_N} (it holds the whole bank; --faiss on forces it)")
    with tempfile.TemporaryDirectory(prefix="bench-knn-") as tmp:
        results = {"ours": _spawn("ours", args, os.path.join(tmp, "ours.pt"))}
        if use_faiss:
            results["faiss"] = _spawn("faiss", args, os.path.join(tmp, "faiss.pt"))
    ours = results["ours"]
    if args.neighbours:
        torch.save({"ids": ours["ids"], "dists": ours["dists"]}, args.neighbours)
    agree = agreement(ours, results["faiss"]) if use_faiss else None
    rows = []
    for name, r in results.items():
        total = r["search_s"] + r["add_s"]
        rows.append({"method": name, "n": args.n, "dim": args.dim, "queries": args.queries, "k": args.k,
                     "threads": args.threads, "seconds": total, "cpu_s": r["cpu_s"], "add_s": r["add_s"],
                     "gen_s": r["gen_s"],
                     "peak_rss_gib": r["peak_rss_mib"] / 1024, "base_rss_gib": r["base_rss_mib"] / 1024,
                     "best_nn": r["best_nn"], "best_k": r["best_k"],
                     "s_per_50k_queries": total * 50_000 / args.queries,
                     "vs_faiss": total / (results["faiss"]["search_s"] + results["faiss"]["add_s"]) if use_faiss else "-",
                     "cpu_vs_faiss": r["cpu_s"] / results["faiss"]["cpu_s"] if use_faiss else "-",
                     "same_ids_frac": agree["same_ids_frac"] if agree else "-"})
    title = (f"bench.knn: exact Best-NN search, {args.n} x {args.dim} bank, {args.queries} queries, k {args.k}, "
             f"batch {args.batch_size}; {machine(torch.device('cpu'))}, {time.strftime('%Y-%m-%d')}")
    path = args.json or os.path.join("bench", "results", f"knn-{args.n}x{args.dim}-q{args.queries}.json")
    report(title, rows, path)
    if agree:
        print(f"neighbours: same id sets for {100 * agree['same_ids_frac']:.2f}% of queries, largest distance "
              f"difference {agree['max_dist_diff']:.2e}, differences only at near-ties: {agree['differences_are_ties']}")
        print(f"ours / faiss time: {rows[0]['vs_faiss']:.3f} wall, {rows[0]['cpu_vs_faiss']:.3f} CPU")
    return {"rows": rows, "agreement": agree}


if __name__ == "__main__":
    main()
