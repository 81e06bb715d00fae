"""``python -m eval.knn`` on a tiny generated ImageFolder: output format, JSON, sharding, errors."""
import json
import os
import re
import types

import numpy as np
import pytest
import torch
from helpers import assert_ok, last_lines, one_error_line, py, run
from PIL import Image

LAST_LINE = re.compile(r"^best-NN=\d+\.\d\d%, k=\d+\.$")
WEIGHTED = re.compile(r"^weighted kNN \(k=20, T=0\.07, cosine\) top-1: \d+\.\d\d%$")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """3 classes x (6 train, 3 val) noisy 32x32 PNGs, and a main_moco.py-style checkpoint of a resnet18."""
    root = tmp_path_factory.mktemp("knn")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for c in range(3):
            folder = root / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 200, (32, 32, 3))  # weak colour cue: accuracy is not trivially 100%
                img[..., c] += 20
                Image.fromarray(img.astype(np.uint8)).save(folder / f"{i}.png")
    from src.models import build_backbone

    torch.manual_seed(1)
    trunk, _ = build_backbone("resnet18", cifar_stem=True)
    state = {f"encoder_q.{k}": v for k, v in trunk.state_dict().items()}
    state.update({"encoder_q.fc.0.weight": torch.randn(512, 512), "queue": torch.randn(128, 16)})
    ckpt = root / "run" / "checkpoint.pth.tar"
    ckpt.parent.mkdir()
    torch.save({"arch": "resnet18", "epoch": 1, "args": {"arch": "resnet18", "cifar_stem": True},
                "state_dict": state}, ckpt)
    return types.SimpleNamespace(data=str(root / "data"), ckpt=str(ckpt), root=root, cache={},
                                 n_tensors=len(trunk.state_dict()))


COMMON = ["--resize", "32", "--crop-size", "32", "-b", "8", "-j", "0", "-k", "3"]


def _run_one_shard(tiny):
    if "g1" not in tiny.cache:
        proc = run(py("-m", "eval.knn", tiny.data, "-a", "resnet18", "--pretrained", tiny.ckpt, *COMMON))
        assert_ok(proc)
        tiny.cache["g1"] = proc
    return tiny.cache["g1"]


def test_knn_cli_output_and_json(tiny):
    proc = _run_one_shard(tiny)
    weighted, last = last_lines(proc.stdout, 2)
    assert LAST_LINE.match(last), last
    assert WEIGHTED.match(weighted), weighted
    assert f"loaded {tiny.n_tensors} trunk tensors from" in proc.stdout and "(prefix 'encoder_q.')" in proc.stdout
    out = os.path.join(os.path.dirname(tiny.ckpt), "knn.json")  # default: next to the checkpoint
    res = json.load(open(out))
    assert set(res) >= {"best_nn", "best_k", "acc_by_k", "weighted_knn_top1", "pretrained", "arch", "rep_space",
                        "n_train", "n_val"}
    assert (res["n_train"], res["n_val"], res["arch"]) == (18, 9, "resnet18")
    assert list(res["acc_by_k"]) == ["1", "3"]
    assert last == f"best-NN={res['best_nn']:.2f}%, k={res['best_k']}."


def test_two_shards_match_one(tiny):
    one = last_lines(_run_one_shard(tiny).stdout, 2)
    out = str(tiny.root / "g2.json")
    # no -a: arch and stem come from the checkpoint
    proc = run(py("-m", "eval.knn", tiny.data, "--pretrained", tiny.ckpt, *COMMON, "-g", "2", "--output-json", out))
    assert_ok(proc)
    assert "[shard 2/2]" in proc.stdout
    assert last_lines(proc.stdout, 2) == one
    res1 = json.load(open(os.path.join(os.path.dirname(tiny.ckpt), "knn.json")))
    res2 = json.load(open(out))
    for key in ("best_nn", "best_k", "acc_by_k", "weighted_knn_top1"):
        assert res1[key] == pytest.approx(res2[key]), key


def _extracted(args, model):
    from eval.knn import build_datasets
    from src.evaluation.features import extract_features

    train_set, val_set = build_datasets(args)
    ftr, ltr = extract_features(model, torch.utils.data.DataLoader(train_set, batch_size=5), "cpu")
    fva, lva = extract_features(model, torch.utils.data.DataLoader(val_set, batch_size=5), "cpu")
    return ftr, ltr, fva, lva


def test_in_process_shards_match_metrics(tiny):
    """run_shard on 2 shards in batches of 3, merged, equals best_nn / weighted_knn on features extracted in
    batches of 5: shift-norm uses the training-set and val-set means, so batching does not matter."""
    from eval.knn import build_datasets, build_model, get_args_parser, run_shard, shard_sum
    from src.evaluation.knn import run_knn, shard_bounds, summarize
    from src.metrics import best_nn, feature_mean, weighted_knn

    args = get_args_parser().parse_args([tiny.data, "-a", "resnet18", "--rep-space", "shift-norm", "-g", "2",
                                         *COMMON, "-b", "3"])
    model = build_model(args)
    ftr, ltr, fva, lva = _extracted(args, model)
    bounds = shard_bounds(18, 2)
    sums = [shard_sum(i, model, args, bounds) for i in range(2)]
    assert [s["count"] for s in sums] == [9, 9] and sums[0]["sum"].dtype == torch.float64
    bank_mean = (sums[0]["sum"] + sums[1]["sum"]) / 18
    torch.testing.assert_close(bank_mean, feature_mean(ftr), rtol=1e-5, atol=1e-6)
    parts = [run_shard(i, model, args, bounds, None, bank_mean) for i in range(2)]
    res = summarize(parts, parts[0]["val_labels"], 3)
    best, best_k, acc = best_nn(ftr, ltr, fva, lva, max_k=3, rep_space="shift-norm")
    assert (res["best_nn"], res["best_k"], res["acc_by_k"]) == (pytest.approx(best), best_k, pytest.approx(acc))
    assert res["weighted_knn_top1"] == pytest.approx(weighted_knn(ftr, ltr, fva, lva))
    # the unsharded in-process entry point (two passes over one loader of batches of 4)
    loaders = [torch.utils.data.DataLoader(s, batch_size=4) for s in build_datasets(args)]
    again = run_knn(model, *loaders, "cpu", max_k=3, rep_space="shift-norm")
    assert again["acc_by_k"] == pytest.approx(res["acc_by_k"])
    assert again["weighted_knn_top1"] == pytest.approx(res["weighted_knn_top1"])


def test_shift_norm_cli_two_shards_matches_metrics(tiny):
    """The CLI path: two spawned rounds (training-mean sums, then the search) give best_nn's figures."""
    from eval.knn import build_model, get_args_parser
    from src.metrics import best_nn

    out = str(tiny.root / "shift.json")
    proc = run(py("-m", "eval.knn", tiny.data, "-a", "resnet18", "--rep-space", "shift-norm", *COMMON, "-b", "4",
                  "-g", "2", "--no-weighted", "--output-json", out))
    assert_ok(proc)
    assert "[shard 2/2] train mean 9-18" in proc.stdout
    res = json.load(open(out))
    args = get_args_parser().parse_args([tiny.data, "-a", "resnet18", *COMMON])
    model = build_model(args)
    best, best_k, acc = best_nn(*_extracted(args, model), max_k=3, rep_space="shift-norm")
    assert (res["best_nn"], res["best_k"]) == (pytest.approx(best), best_k) and res["weighted_knn_top1"] is None
    assert [res["acc_by_k"][str(k)] for k in acc] == pytest.approx(list(acc.values()))


def test_nan_trunk_is_refused_without_a_score(tiny):
    ckpt = torch.load(tiny.ckpt, weights_only=True)
    ckpt["state_dict"]["encoder_q.conv1.weight"][0, 0, 0, 0] = float("nan")
    bad = tiny.root / "nan" / "checkpoint.pth.tar"
    bad.parent.mkdir()
    torch.save(ckpt, bad)
    proc = run(py("-m", "eval.knn", tiny.data, "--pretrained", str(bad), *COMMON))
    line = one_error_line(proc)
    assert "NaN/inf" in line and str(bad) in line
    assert "best-NN=" not in proc.stdout and not (bad.parent / "knn.json").exists()


def test_unwritable_output_is_refused_before_work(tiny):
    blocker = tiny.root / "not-a-folder"
    blocker.write_text("a file where the results folder should be")
    for target, hint in ((blocker / "knn.json", "is not writable"), (tiny.root, "is a folder")):
        proc = run(py("-m", "eval.knn", tiny.data, "-a", "resnet18", *COMMON, "--output-json", str(target)))
        assert proc.returncode == 2
        assert hint in one_error_line(proc)
        assert "data:" not in proc.stdout and "images," not in proc.stdout  # nothing was embedded


def test_missing_data_folder_is_one_error_line(tmp_path):
    (tmp_path / "train").mkdir()
    proc = run(py("-m", "eval.knn", str(tmp_path), "-a", "resnet18", *COMMON))
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "val" in line and "does not exist" in line


@pytest.mark.parametrize("rep_space", ["original", "shift-norm"])
def test_per_rank_shards_equal_run_knn(tiny, rep_space):
    """What an online monitor does on `world_size` ranks: each searches its contiguous shard (shard_bounds) with
    search_shard (shift-norm: bank_mean of every rank's bank_sum first), and summarize merges the parts in rank
    order; the figures equal run_knn in one process, and so eval.knn's."""
    from eval.knn import build_datasets, build_model, get_args_parser
    from src.evaluation.knn import bank_mean, bank_sum, run_knn, search_shard, shard_bounds, summarize

    args = get_args_parser().parse_args([tiny.data, "-a", "resnet18", *COMMON])
    model = build_model(args)
    train_set, val_set = build_datasets(args)

    def loader(ds):
        return torch.utils.data.DataLoader(ds, batch_size=4)

    whole = run_knn(model, loader(train_set), loader(val_set), "cpu", max_k=3, rep_space=rep_space)
    for world_size in (2, 3):
        shards = [loader(torch.utils.data.Subset(train_set, range(lo, hi)))
                  for lo, hi in shard_bounds(len(train_set), world_size)]
        mean = bank_mean([bank_sum(model, s, "cpu") for s in shards]) if rep_space == "shift-norm" else None
        parts = [search_shard(model, s, loader(val_set), "cpu", max_k=3, rep_space=rep_space, bank_mean=mean)
                 for s in shards]
        res = summarize(parts, parts[0]["val_labels"], 3)
        assert res["best_k"] == whole["best_k"] and res["acc_by_k"] == pytest.approx(whole["acc_by_k"], abs=1e-9)
        assert res["weighted_knn_top1"] == pytest.approx(whole["weighted_knn_top1"], abs=1e-9)


@pytest.mark.parametrize("layout", ["cifar10", "stl10"])
def test_archive_roots_are_read_as_the_monitor_reads_them(layout, tmp_path, capsys):
    """An extracted CIFAR-10 / STL-10 archive as DIR: train and test splits (STL-10's train: its labelled images
    only), the splits a run's ``--monitor_data`` reads, so a monitor pass and eval.knn on the same trunk give the
    same figures."""
    from eval.knn import build_datasets, build_model, get_args_parser, main
    from src.evaluation.monitor import Monitor
    from src.run.dist import DistInfo
    from tests.test_small_data import write_cifar, write_stl10

    root = str(tmp_path / "data")
    written = write_cifar(root) if layout == "cifar10" else write_stl10(root)
    args = get_args_parser().parse_args([root, "-a", "resnet18", "--cifar-stem", "--resize", "32", "--crop-size", "32",
                                         "-b", "8", "-j", "0", "--output-json", str(tmp_path / "knn.json")])
    train_set, val_set = build_datasets(args)
    if layout == "stl10":
        assert (len(train_set), len(val_set)) == (len(written["train"][0]), len(written["test"][0]))
    else:  # 5 training batches and the test batch
        assert (len(train_set), len(val_set)) == (5 * len(written["test_batch"][0]), len(written["test_batch"][0]))
    assert -1 not in train_set.targets and len(train_set.classes) == 10

    model = build_model(args)
    watch = types.SimpleNamespace(monitor_data=root, monitor_crop=32, monitor_resize=32, monitor_every=1,
                                  online_linear=False, workers=0)
    cpu = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), distributed=False, backend=None,
                   launcher="none")
    row = Monitor.from_args(watch, cpu, lambda: {"online": model}, 32, 1, None).after_epoch(0)[0]
    res = main(args)
    assert (res["n_train"], res["n_val"]) == (len(train_set), len(val_set))
    assert (res["best_nn"], res["best_k"]) == (row["best_nn"], row["best_k"])
    assert res["weighted_knn_top1"] == pytest.approx(row["weighted_knn"], abs=1e-9)
    assert f"best-NN={row['best_nn']:.2f}%" in capsys.readouterr().out
