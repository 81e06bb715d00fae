"""python -m bench.knn, run small: its neighbours against a float64 brute force, its table, JSON and faiss row."""
import json

import pytest
import torch
from helpers import assert_ok, py, run

N, DIM, QUERIES, K = 20000, 64, 200, 5


def _brute_force(seed=0, batch_size=512):
    """float64 cdist of the same synthetic queries and bank, then topk."""
    from bench.knn import bank_batches, make_queries

    bank = torch.cat([x for x, _ in bank_batches(N, DIM, seed, batch_size)]).double()
    query, labels = make_queries(QUERIES, DIM, seed)
    d, i = torch.cdist(query.double(), bank).topk(K + 1, dim=1, largest=False)
    return d, i, labels


def test_bench_knn_matches_brute_force(tmp_path):
    out, nn = tmp_path / "knn.json", tmp_path / "nn.pt"
    proc = run(py("-m", "bench.knn", "--n", str(N), "--dim", str(DIM), "--queries", str(QUERIES), "--json", str(out),
                  "--neighbours", str(nn)))
    assert_ok(proc)
    ours = torch.load(nn, weights_only=True)
    ref_d, ref_i, labels = _brute_force()
    assert ours["ids"].shape == (QUERIES, K)
    torch.testing.assert_close(ours["dists"].double(), ref_d[:, :K], rtol=1e-5, atol=1e-4)
    # same neighbour ids, except where the float64 k-th and (k+1)-th neighbours tie to float32 precision
    clear = (ref_d[:, K] - ref_d[:, K - 1]) > 1e-4 * ref_d[:, K]
    assert clear.float().mean() > 0.9
    same = (ours["ids"].sort(dim=1).values == ref_i[:, :K].sort(dim=1).values).all(dim=1)
    assert same[clear].all()

    res = json.load(open(out))
    rows = {r["method"]: r for r in res["rows"]}
    assert f"{N} x {DIM} bank, {QUERIES} queries" in res["title"]
    # Best-NN of the bench is the vote over those neighbours' classes (class-sorted bank, 10 blocks)
    from src.metrics import best_nn_from_candidates

    best, best_k, _ = best_nn_from_candidates(ref_d[:, :K], ref_i[:, :K] * 10 // N, labels, K)
    assert rows["ours"]["best_nn"] == pytest.approx(best) and rows["ours"]["best_k"] == best_k
    assert 20.0 < best < 100.0  # neither trivial nor random: the classes give structure
    assert rows["ours"]["peak_rss_gib"] >= rows["ours"]["base_rss_gib"] > 0
    assert any(line.startswith("ours ") for line in proc.stdout.splitlines())
    try:
        import faiss  # noqa: F401
    except ImportError:
        assert "faiss not installed" in proc.stdout and set(rows) == {"ours"}
        return
    assert set(rows) == {"ours", "faiss"}
    assert rows["faiss"]["same_ids_frac"] == rows["ours"]["same_ids_frac"] >= 0.99
    assert rows["ours"]["vs_faiss"] == pytest.approx(rows["ours"]["seconds"] / rows["faiss"]["seconds"])
    assert "ours / faiss time:" in proc.stdout


def test_bench_knn_without_faiss(tmp_path):
    """faiss hidden behind a module that fails to import: one line says so, the bench still runs ours."""
    (tmp_path / "faiss.py").write_text("raise ImportError('hidden for the test')\n")
    out = tmp_path / "knn.json"
    proc = run(py("-m", "bench.knn", "--n", "3000", "--dim", "16", "--queries", "50", "--json", str(out)),
               env={"PYTHONPATH": str(tmp_path)})
    assert_ok(proc)
    assert "faiss not installed (pip install faiss-cpu)" in proc.stdout
    assert [r["method"] for r in json.load(open(out))["rows"]] == ["ours"]
