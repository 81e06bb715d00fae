"""The streamed feature cache of ``eval_linear.py --precompute_features`` (src.evaluation.feature_store):
fp16 rows bit-exact on disk, the fp32 fallback, incomplete caches refused, batches equal to a plain in-memory
formulation, and a resident set that grows by far less than a cache larger than the memory budget."""
import json
import os
import sys

import numpy as np
import pytest
import torch

from src.evaluation.feature_store import open_split, read_meta, write_cache
from src.evaluation.samplers import FeatureBatches
from tests.helpers import assert_ok, run

pytestmark = pytest.mark.usefixtures("one_thread")


def _batches(rows, dim, seed, chunk=7, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        yield torch.randn(n, dim, generator=g) * scale, torch.arange(start, start + n) % 3


@pytest.mark.parametrize("budget", [0, 1 << 40])  # streamed from the file, or held in memory
def test_round_trip_is_the_fp16_rounding_and_files_have_the_stated_size(tmp_path, budget):
    folder = str(tmp_path / "cache")
    meta = write_cache(folder, {"trunk_sha256": "abc", "n": 1}, {"train": lambda: _batches(30, 5, 0, scale=300.0),
                                                                 "val": lambda: _batches(0, 5, 1)},
                       dim_if_empty=lambda: 5)
    assert meta["train"] == {"rows": 30, "dim": 5, "dtype": "float16"} and meta["val"]["rows"] == 0
    assert read_meta(folder) == meta and meta["key"] == {"trunk_sha256": "abc", "n": 1}
    assert os.path.getsize(os.path.join(folder, "train.feats")) == 30 * 5 * 2
    want = torch.cat([f for f, _ in _batches(30, 5, 0, scale=300.0)])
    feats, labels = open_split(folder, "train", meta, memory_budget=budget)
    assert feats.streamed == (budget == 0)
    got = feats[torch.arange(30)]
    assert got.dtype == torch.float16 and torch.equal(got, want.half())  # exactly the fp16 rounding
    assert (got.double() - want.double()).abs().max() <= 300 * 8 * 2 ** -11  # |x| < 8 sigma: half-ulp bound
    assert torch.equal(labels, torch.arange(30) % 3)
    assert torch.equal(feats[torch.tensor([29, 0, 29, 3])], want.half()[[29, 0, 29, 3]])  # any order, repeats
    assert torch.equal(feats[3:7], want.half()[3:7])
    empty, empty_labels = open_split(folder, "val", meta, memory_budget=budget)
    assert empty.shape == (0, 5) and len(empty_labels) == 0


def test_features_beyond_fp16_are_stored_in_fp32(tmp_path, capsys):
    folder = str(tmp_path / "cache")

    def big():
        for f, y in _batches(20, 4, 2):
            yield f * (1e5 if y[0] == 2 else 1.0), y  # one batch beyond 65504

    meta = write_cache(folder, {}, {"train": big, "val": lambda: _batches(3, 4, 3)}, log=print)
    assert meta["train"]["dtype"] == "float32" and meta["val"]["dtype"] == "float16"
    assert "computing the train features again, stored in fp32" in capsys.readouterr().out
    feats, _ = open_split(folder, "train", meta)
    assert torch.equal(feats[torch.arange(20)], torch.cat([f for f, _ in big()]))


def test_incomplete_or_interrupted_caches_are_not_read(tmp_path):
    folder = str(tmp_path / "cache")
    make = {"train": lambda: _batches(10, 3, 0), "val": lambda: _batches(4, 3, 1)}
    write_cache(folder, {"k": 1}, make)
    path = os.path.join(folder, "train.feats")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 2)
    assert read_meta(folder) is None  # truncated rows

    def broken():
        yield from _batches(5, 3, 0)
        raise RuntimeError("disk gone")

    write_cache(folder, {"k": 1}, make)
    with pytest.raises(Exception):
        write_cache(folder, {"k": 2}, {"train": broken, "val": make["val"]})
    assert read_meta(folder) is None  # the old completion mark went first: no mix of old and new files
    assert not [n for n in os.listdir(folder) if n.startswith(".") or n.endswith(".tmp")]  # no temporaries left


@pytest.mark.parametrize("budget", [0, 1 << 40])
def test_batches_from_the_file_equal_a_plain_in_memory_formulation(tmp_path, budget):
    folder = str(tmp_path / "cache")
    meta = write_cache(folder, {}, {"train": lambda: _batches(23, 6, 4), "val": lambda: _batches(9, 6, 5)})
    feats, labels = open_split(folder, "train", meta, memory_budget=budget)
    table = torch.cat([f for f, _ in _batches(23, 6, 4)]).half()
    mapped = FeatureBatches(feats, labels, batch_size=5, samples_per_rank=26, seed=7, rank=1)
    memory = FeatureBatches(table, labels, batch_size=5, samples_per_rank=26, seed=7, rank=1)
    for epoch, start in ((0, 0), (3, 2)):
        mapped.set_epoch(epoch, start)
        memory.set_epoch(epoch, start)
        got = list(mapped)
        assert len(got) == len(mapped) == 6 - start
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, memory))
    mapped.set_epoch(1)
    seen = []  # one epoch: every row once, then 3 repeats of the permutation's start (26 = 23 + 3)
    for x, y in mapped:
        for row, label in zip(x, y):
            hits = [i for i in range(23) if torch.equal(table[i], row)]
            assert len(hits) == 1 and int(labels[hits[0]]) == int(label)
            seen.append(hits[0])
    assert sorted(seen[:23]) == list(range(23)) and seen[23:] == seen[:3]
    vf, vy = open_split(folder, "val", meta, memory_budget=budget)
    val = FeatureBatches(vf, vy, batch_size=4, samples_per_rank=999, shuffle=False)
    rows = list(val)
    assert len(val) == 3 and [len(y) for _, y in rows] == [4, 4, 1]
    assert torch.equal(torch.cat([x for x, _ in rows]), torch.cat([f for f, _ in _batches(9, 6, 5)]).half())


CHILD = r"""
import json, sys
import numpy as np, torch
from bench.speed import peak_rss_mb, reset_peak_rss
from src.evaluation.feature_store import open_split, write_cache
from src.evaluation.samplers import FeatureBatches
folder, rows, dim, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
total = [0.0]
def train():
    g = torch.Generator().manual_seed(0)
    for start in range(0, rows, 4096):
        f = torch.randn(min(4096, rows - start), dim, generator=g)
        total[0] += f.half().double().sum().item()
        yield f, torch.zeros(len(f), dtype=torch.long)
meta = write_cache(folder, {}, {"train": train, "val": lambda: iter(())}, dim_if_empty=lambda: dim)
out = {"cache_mib": rows * dim * 2 / 2 ** 20}
# warm-up on a small cache: the first batches page in torch's and numpy's code (file-backed RSS)
small = write_cache(folder + "_small", {}, {"train": lambda: iter([(torch.ones(2048, dim), torch.zeros(2048))]),
                                            "val": lambda: iter(())})
for x, y in FeatureBatches(*open_split(folder + "_small", "train", small, memory_budget=0), 1024, 2048, seed=0):
    x.double().sum().item()
feats, labels = open_split(folder, "train", meta, memory_budget=budget)
assert feats.streamed
base = reset_peak_rss()
s = 0.0
for x, y in FeatureBatches(feats, labels, 1024, rows, seed=0):
    s += x.double().sum().item()
out["streamed_growth_mib"] = peak_rss_mb() - base
out["streamed_sum_ok"] = abs(s - total[0]) <= 1e-9 * abs(total[0]) + 1e-6
base = reset_peak_rss()  # the control: the shard loaded whole, as the .pth cache was (torch.load)
whole = torch.from_numpy(np.fromfile(feats.path, dtype=np.float16))
out["whole_growth_mib"] = peak_rss_mb() - base
out["whole_sum_ok"] = abs(whole.double().sum().item() - total[0]) <= 1e-9 * abs(total[0]) + 1e-6
print(json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS reset through /proc/self/clear_refs")
def test_resident_set_grows_far_less_than_a_cache_over_the_budget(tmp_path):
    """A 256 MiB cache (65,536 x 2048 fp16) over a 64 MiB memory budget streams: over one shuffled epoch the peak
    resident set (from /proc) grows by less than the budget, and every row is read once (float64 checksum); the control,
    the same file loaded whole as the old .pth cache was, grows it by the cache's size (so the measurement sees a
    cache that lives in the process)."""
    budget_mib = 64
    p = run([sys.executable, "-c", CHILD, str(tmp_path / "cache"), str(65536), "2048", str(budget_mib * 2 ** 20)],
            timeout=300)
    assert_ok(p)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    print(out)
    assert out["cache_mib"] == 256 and out["streamed_sum_ok"] and out["whole_sum_ok"]
    assert out["streamed_growth_mib"] < budget_mib, out
    assert out["whole_growth_mib"] > 0.9 * out["cache_mib"], out


def _eval_linear(argv):
    import argparse

    import eval_linear

    return eval_linear.main(argparse.ArgumentParser(parents=[eval_linear.get_args_parser()]).parse_args(argv))


def test_eval_linear_writes_and_rereads_the_mapped_cache(tmp_path, capsys):
    """eval_linear.py --precompute_features: the rank's folder holds fp16 rows; the same command elsewhere with
    that folder reads it back; another key (here: an edited trunk hash) makes it compute the features again."""
    import shutil

    from PIL import Image

    root, rng = tmp_path / "data", np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in range(2):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3)).astype(np.uint8)).save(root / split / f"c{c}/{i}.png")
    argv = [str(root), "-a", "resnet18", "--cifar_stem", "--resize", "16", "--crop_size", "16", "-b", "4", "-j", "0",
            "-p", "100", "--epochs", "1", "--lr", "0.01", "--precompute_features", "--dump_path"]
    _eval_linear(argv + [str(tmp_path / "a")])
    folder = tmp_path / "a" / "feature_cache_0-1"
    meta = json.load(open(folder / "meta.json"))
    assert meta["train"] == {"rows": 12, "dim": 512, "dtype": "float16"} and meta["val"]["rows"] == 4
    assert os.path.getsize(folder / "train.feats") == 12 * 512 * 2
    shutil.copytree(folder, tmp_path / "b" / "feature_cache_0-1")
    capsys.readouterr()
    _eval_linear(argv + [str(tmp_path / "b")])
    assert "features read from" in capsys.readouterr().out
    meta["key"]["trunk_sha256"] = "0" * 16
    with open(folder / "meta.json", "w") as f:
        json.dump(meta, f)
    shutil.copytree(folder, tmp_path / "c" / "feature_cache_0-1")
    _eval_linear(argv + [str(tmp_path / "c")])
    out = capsys.readouterr().out
    assert "features read from" not in out and "features train: 12/12 images" in out
