"""Watching a run learn (src.evaluation.monitor): the online kNN monitor equals eval.knn on the saved checkpoint,
splits over ranks without changing a row, leaves the training bit for bit as it was, survives a stop during its
pass; the online probe never touches the trunk; TensorBoard holds exactly log.txt's values."""
import importlib
import json
import re
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

import main_moco
from src.augment.image import eval_transform
from src.data.folders import SafeImageFolder
from src.evaluation.monitor import Monitor, OnlineLinear, check_watch_args
from src.models import build_backbone
from src.run import dist
from src.run.args import ArgumentParser
from src.run.errors import UserError
from src.run.launch import cli
from tests.helpers import ROOT, exits, free_port, one_line

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = dist.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), distributed=False, backend=None,
                    launcher="none")
MOCO = ["-a", "resnet_tiny", "--crop-size", "32", "-b", "8", "--moco-k", "32", "--epochs", "3", "-j", "1", "-p", "3",
        "--seed", "0", "--bn-splits", "2", "--mlp", "--aug-plus"]


def _train(data, out, *extra):
    args = main_moco.get_args_parser().parse_args([data, *MOCO, "--output-dir", str(out), *extra])
    main_moco.check_recipe_args(args)
    check_watch_args(args)
    return main_moco.train(args, CPU)


def _rows(out, kind=None):
    rows = [json.loads(line) for line in open(os.path.join(out, "log.txt"))]
    return [r for r in rows if kind is None or r.get("type") == kind]


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """The same MoCo run without and with the monitor (every epoch, online probe, TensorBoard)."""
    base = tmp_path_factory.mktemp("monitor")
    plain, watched = base / "plain", base / "watched"
    _train(tiny_data, plain)
    parts = _train(tiny_data, watched, "--monitor_data", tiny_data, "--online_linear", "--tensorboard")
    assert parts.finished
    return plain, watched


def test_last_epoch_best_nn_equals_eval_knn_on_the_checkpoint(runs, tiny_data, tmp_path, capsys):
    _, watched = runs
    monitor = json.load(open(watched / "monitor.json"))
    assert [(r["epoch"], r["trunk"]) for r in monitor if r["type"] == "monitor"] == \
        [(e, t) for e in range(3) for t in ("online", "momentum")]
    assert [r for r in _rows(watched, "monitor")] == [{**r, "step": 6 * (r["epoch"] + 1)} for r in monitor
                                                      if r["type"] == "monitor"]
    knn = importlib.import_module("eval.knn")
    args = ArgumentParser(parents=[knn.get_args_parser()]).parse_args(
        [tiny_data, "--pretrained", str(watched / "checkpoint.pth.tar"), "--resize", "32", "--crop-size", "32",
         "-j", "0", "--output-json", str(tmp_path / "knn.json")])
    result = knn.main(args)
    last = [r for r in monitor if r["type"] == "monitor" and r["epoch"] == 2 and r["trunk"] == "online"][0]
    assert (result["best_nn"], result["best_k"]) == (last["best_nn"], last["best_k"])
    assert result["weighted_knn_top1"] == last["weighted_knn"]
    assert f"best-NN={last['best_nn']:.2f}%, k={last['best_k']}." in capsys.readouterr().out


def test_a_monitored_run_trains_bit_for_bit_like_one_without(runs):
    plain, watched = runs
    a = torch.load(plain / "checkpoint.pth.tar", weights_only=True)
    b = torch.load(watched / "checkpoint.pth.tar", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:  # the probe trained alongside and the monitor ran 3 passes: not one bit moved
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for x, y in zip(a["rng"], b["rng"]):
        assert torch.equal(x["torch"], y["torch"])
    assert [r["Loss"] for r in _rows(plain, "iter")] == [r["Loss"] for r in _rows(watched, "iter")]
    probe = [r for r in _rows(watched, "online_linear")]
    assert [r["epoch"] for r in probe] == [0, 1, 2] and all(0 <= r["val_top1"] <= 100 for r in probe)
    assert b["monitor"]["probe"]["linear"]["weight"].shape == (4, 128)  # resnet_tiny features, 4 classes


def test_tensorboard_events_equal_log_txt(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from src.run.logging import scalars

    _, watched = runs
    events = EventAccumulator(str(watched / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    expected = {}
    for row in _rows(watched):
        for tag, value in scalars(row):
            expected.setdefault(tag, []).append((row["step"], value))
    assert {"iter/Loss", "iter/lr", "iter/images_per_s", "epoch/Loss", "monitor/online/best_nn",
            "monitor/momentum/weighted_knn", "online_linear/val_top1"} <= set(expected)
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        for (_, v), (_, w) in zip(got, points):
            assert v == pytest.approx(w, rel=1e-6, abs=1e-6), tag  # event files hold float32


STOP_DURING_PASS = """
import os, signal, sys
sys.path.insert(0, {root!r})
import main_moco
from src.evaluation.monitor import Monitor
from src.run.launch import cli
original = Monitor.after_epoch
def after_epoch(self, epoch):
    if epoch == 1:
        os.killpg(os.getpgrp(), signal.SIGTERM)  # the whole group, loader workers included, mid-pass
    return original(self, epoch)
Monitor.after_epoch = after_epoch
sys.argv = ["main_moco.py"] + sys.argv[1:]
cli(main_moco.main, main_moco.get_args_parser().parse_args)
"""


def test_sigterm_during_a_monitor_pass_then_rerun_gives_the_same_rows(runs, tiny_data, tmp_path):
    _, watched = runs
    out = tmp_path / "stopped"
    cmd = [tiny_data, *MOCO, "--output-dir", str(out), "--monitor_data", tiny_data, "--online_linear"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", STOP_DURING_PASS.format(root=ROOT), *cmd], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600, start_new_session=True)
    assert p.returncode == 0, p.stderr
    assert "=> monitor epoch 1:" in p.stdout  # the pass finished, then the run stopped
    assert "stopped by signal SIGTERM at epoch 1, iteration 6" in p.stdout
    assert "=> monitor epoch 2" not in p.stdout
    p = subprocess.run([sys.executable, "main_moco.py", *cmd], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("=> monitor epoch") == 1  # only the missing pass
    expected = json.load(open(watched / "monitor.json"))
    assert json.load(open(out / "monitor.json")) == expected
    assert [{k: v for k, v in r.items() if k != "step"} for r in _rows(out, "monitor") + _rows(out, "online_linear")] \
        == [r for r in expected if r["type"] == "monitor"] + [r for r in expected if r["type"] == "online_linear"]


# ==== the monitor over ranks ====
def _monitor_rows(info, data, features, labels):
    torch.manual_seed(0)
    trunk, _ = build_backbone("resnet_tiny")
    tf = eval_transform(resize=32, crop_size=32)
    sets = [SafeImageFolder(os.path.join(data, s), transform=tf) for s in ("train", "val")]
    probe = OnlineLinear(4, 0.5, 10, info.device)
    monitor = Monitor(lambda: {"online": trunk}, *sets, info, batch_size=7, workers=0, probe=probe)
    per_rank = features.shape[0] // info.world_size
    for step in range(3):  # the probe: each rank sees its half of every batch
        rows = slice(info.rank * per_rank, (info.rank + 1) * per_rank)
        monitor.observe(features[step, rows], labels[step, rows], step)
    return monitor.after_epoch(0)


def _rank(rank, port, data, path, features, labels):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    info = dist.init_distributed(device="cpu")
    torch.save(_monitor_rows(info, data, features[:, :], labels), f"{path}.{rank}")
    dist.cleanup()


def test_two_processes_give_the_rows_of_one(tiny_data, tmp_path, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    g = torch.Generator().manual_seed(0)
    features, labels = torch.randn(3, 8, 128, generator=g), torch.randint(0, 4, (3, 8), generator=g)
    path = str(tmp_path / "rows")
    mp.spawn(_rank, args=(free_port(), tiny_data, path, features, labels), nprocs=2, join=True)
    one = _monitor_rows(CPU, tiny_data, features, labels)
    two = [torch.load(f"{path}.{r}", weights_only=False) for r in range(2)]
    assert two[0] == two[1] == one
    assert [r["type"] for r in one] == ["monitor", "online_linear"]


# ==== bad flags ====
def test_tensorboard_without_the_package_is_one_line(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(SystemExit) as exc:
        main_moco.get_args_parser().parse_args(["data", "--tensorboard"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "pip install tensorboard" in err and "Traceback" not in err


def test_watch_flags_that_cannot_work_are_one_line(tiny_data, tmp_path, capsys):
    for extra, words in ((["--online_linear"], "give --monitor_data"),
                         (["--monitor_data", str(tmp_path / "missing")], "does not exist"),
                         (["--monitor-every", "-1"], "must be >= 0")):
        parse = main_moco.get_args_parser().parse_args
        assert words in one_line(*exits(lambda: cli(main_moco.main, lambda: parse([tiny_data, *MOCO, *extra])),
                                        capsys))
    for split in ("train", "val"):  # one class: every neighbour would be right
        first = sorted(os.listdir(os.path.join(tiny_data, split)))[0]
        shutil.copytree(os.path.join(tiny_data, split, first), tmp_path / "one" / split / first)
    args = main_moco.get_args_parser().parse_args([tiny_data, *MOCO, "--monitor_data", str(tmp_path / "one")])
    with pytest.raises(UserError, match="at least 2 classes"):
        Monitor.from_args(args, CPU, dict, 32, 10, None)


# ==== every pretraining script ====
SCRIPTS = {
    "sce": ("main_sce", ["--arch", "resnet_tiny", "--size_crops", "32", "--batch_size", "8", "--queue_size", "32",
                         "--feat_dim", "16", "--proj_hidden_dim", "32", "--pred_hidden_dim", "32", "--warmup_epochs",
                         "0"]),
    "swav": ("main_swav", ["--arch", "resnet_tiny", "--hidden_mlp", "32", "--feat_dim", "16", "--nmb_prototypes", "10",
                           "--batch_size", "8", "--size_crops", "32", "--nmb_crops", "2", "--min_scale_crops", "0.14",
                           "--max_scale_crops", "1", "--warmup_epochs", "0", "--use_fp16", "false"]),
    "deepcluster": ("main_deepclusterv2", ["--arch", "resnet_tiny", "--hidden_mlp", "32", "--feat_dim", "16",
                                           "--nmb_prototypes", "8", "8", "--batch_size", "8", "--size_crops", "32",
                                           "--nmb_crops", "2", "--min_scale_crops", "0.14", "--max_scale_crops", "1",
                                           "--warmup_epochs", "0"]),
}
SCRIPTS["sela"] = (SCRIPTS["deepcluster"][0], SCRIPTS["deepcluster"][1] + ["--mode", "sela"])


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_every_script_prints_a_monitor_line_per_epoch_and_trains_as_without(name, tiny_data, tmp_path, capsys):
    module = importlib.import_module(SCRIPTS[name][0])
    parse = module.parse_args if hasattr(module, "parse_args") else module.get_args_parser().parse_args
    common = ["--data_path", tiny_data, *SCRIPTS[name][1], "--epochs", "3", "--workers", "0", "--print_freq", "3"]
    states = []
    for out, watch in ((tmp_path / "plain", []), (tmp_path / "watched", ["--monitor_data", tiny_data,
                                                                        "--online_linear", "--tensorboard"])):
        code, printed, err = exits(lambda: cli(module.main, lambda: parse([*common, "--dump_path", str(out), *watch])),
                                   capsys)
        assert code in (0, None), err
        states.append(torch.load(out / "checkpoint.pth.tar", weights_only=True)["state_dict"])
    assert len(re.findall(r"^=> monitor epoch \d: best-NN \d+\.\d\d% \(k=\d\), weighted kNN \(k=20\) \d+\.\d\d%$",
                          printed, re.M)) == 3
    assert printed.count("online linear probe: val top-1") == 3
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "watched" / "tensorboard"))
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
