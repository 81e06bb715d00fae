"""eval.instdisc, eval.stats-dist, experiments.tsne and experiments.plot-logs on a tiny generated set,
with a checkpoint of main_moco.py trained for two iterations."""
import argparse
import importlib
import json
import os
import re
import types

import numpy as np
import pytest

from src.run.errors import UserError
from tests.helpers import assert_ok, last_lines, one_error_line, py, run, tiny_dataset

INSTDISC = re.compile(r"^Masked: (\S+); Mode: (\S+); Top1-(\d+): \[([0-9., ]+)\]; CKPT: (.+); Dataset: (.+)$")
HEADER = "D-SD align     SD-SD align    D cls-align    SD cls-align   D uniform      SD uniform"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVAL = ["--resize", "32", "--crop-size", "32", "-b", "16", "-j", "0"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """4 classes x 4 val images, their static MoCo pairs at 32 px, and a 2-iteration main_moco.py run."""
    root = tmp_path_factory.mktemp("evalsuite")
    data = tiny_dataset(str(root / "demo"))
    run_dir = root / "run"
    proc = run(py("main_moco.py", data, "-a", "resnet18", "--cifar-stem", "--crop-size", "32", "-b", "8",
                  "--moco-k", "16", "--mlp", "--aug-plus", "--cos", "-j", "0", "-p", "1", "--seed", "0",
                  "--bn-splits", "2", "--epochs", "1", "--max-iters", "2", "--output-dir", str(run_dir)))
    assert_ok(proc)
    pairs = root / "pairs"
    sample_augs = importlib.import_module("experiments.sample-augs")
    sample_augs.main(argparse.ArgumentParser(parents=[sample_augs.get_args_parser()]).parse_args(
        [os.path.join(data, "val"), str(pairs), "--images-per-class", "4", "--size", "32"]))
    return types.SimpleNamespace(root=root, ckpt=str(run_dir / "checkpoint.pth.tar"), run_dir=run_dir,
                                 pairs=str(pairs))


def test_instdisc_d_sd_line_and_json(tiny):
    proc = run(py("-m", "eval.instdisc", tiny.pairs, "--pretrained", tiny.ckpt, *EVAL))
    assert_ok(proc)
    assert "(prefix 'encoder_q.')" in proc.stdout  # trunk loaded through src.evaluation.pretrained
    m = INSTDISC.match(last_lines(proc.stdout, 1)[0])
    assert m, proc.stdout[-2000:]
    masked, mode, k, accs, ckpt, data = m.groups()
    accs = [float(a) for a in accs.split(", ")]
    assert (masked, mode, k, ckpt, data) == ("normal", "d-sd", "5", tiny.ckpt, tiny.pairs)
    assert len(accs) == 5 and all(0 <= a <= 100 for a in accs) and accs == sorted(accs)
    res = json.load(open(tiny.run_dir / "instdisc_d-sd_normal.json"))  # next to the checkpoint
    assert res["topk"] == accs and (res["n_images"], res["n_classes"], res["arch"]) == (16, 4, "resnet18")


def test_instdisc_sd_sd_random_init_topk(tiny, capsys):
    """In process (saves a start-up): random init, sd-sd, top-3, --output-json."""
    instdisc = importlib.import_module("eval.instdisc")
    out = tiny.root / "sdsd.json"
    args = argparse.ArgumentParser(parents=[instdisc.get_args_parser()]).parse_args(
        [tiny.pairs, "-a", "resnet18", "--cifar-stem", "--mode", "sd-sd", "--topk", "3", "--output-json", str(out),
         "--device", "cpu", *EVAL])
    res = instdisc.main(args)
    m = INSTDISC.match(last_lines(capsys.readouterr().out, 1)[0])
    assert m and m.group(2) == "sd-sd" and m.group(3) == "3" and m.group(5) == "random-init"
    assert json.load(open(out)) == res
    assert (res["query_view"], res["positive_view"], len(res["topk"])) == (1, 2, 3)


def test_stats_dist_block_and_json(tiny):
    proc = run(py("-m", "eval.stats-dist", tiny.pairs, "--pretrained", tiny.ckpt, *EVAL))
    assert_ok(proc)
    head, header, values = last_lines(proc.stdout, 3)
    assert head == f"{tiny.ckpt},{tiny.pairs}"
    assert header == HEADER
    assert re.fullmatch(r"(-?\d+\.\d{4} *){6}", values) and all(len(values[i * 15:(i + 1) * 15]) == 15
                                                                  for i in range(5))
    nums = [float(v) for v in values.split()]
    res = json.load(open(tiny.run_dir / "stats-dist_normal.json"))
    keys = ["d_sd_align", "sd_sd_align", "d_cls_align", "sd_cls_align", "d_uniform", "sd_uniform"]
    assert nums == [round(res[k], 4) for k in keys]
    assert all(0 <= v <= 4 for v in nums[:4]) and all(-4 - 1e-9 <= v <= 0 for v in nums[4:])
    assert (res["n_classes"], res["uniformity_chunks"], res["uniformity_chunk_size"]) == (4, 3, 5)


def test_tsne_figures_and_coordinates(tiny):
    pic = tiny.root / "figs" / "tsne.pdf"
    proc = run(py("-m", "experiments.tsne", tiny.pairs, "--pretrained", tiny.ckpt, *EVAL, "--perplexity", "5",
                  "--tsne-iters", "300", "--pic-name", str(pic), "--paint", "--zoomin"))
    assert_ok(proc)
    base = str(tiny.root / "figs" / "tsne")
    for name in ("", ".full_rep", ".auged_rep"):
        with open(f"{base}{name}.png", "rb") as f:
            assert f.read(8) == PNG_MAGIC
        assert os.path.getsize(f"{base}{name}.png") > 5000 and os.path.getsize(f"{base}{name}.pdf") > 1000
    ys = [np.load(f"{base}.Y{i}.npy") for i in range(3)]
    assert all(y.shape == (16, 2) and np.isfinite(y).all() for y in ys)
    assert np.load(f"{base}.labels.npy").tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    res = json.load(open(f"{base}.json"))
    assert res["n_images"] == 16 and np.isfinite(res["kl_divergence"]) and len(res["files"]) == 10


def test_tsne_rejects_impossible_perplexity():
    tsne = importlib.import_module("experiments.tsne")
    with pytest.raises(UserError, match="perplexity"):
        tsne.run_tsne(np.zeros((10, 4)), perplexity=30)


def test_plot_logs_of_the_moco_run(tiny):
    proc = run(py("-m", "experiments.plot-logs", str(tiny.run_dir)))
    assert_ok(proc)
    png = tiny.run_dir / "curves.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10000
    summary = json.load(open(tiny.run_dir / "curves.json"))
    assert summary["x_unit"] == "step" and summary["steps"]["Loss"]["points"] == 2
    assert summary["steps"]["lr"]["last"] == [2, pytest.approx(0.03)]


def test_plot_logs_epoch_logs_knn_and_bad_lines(tmp_path):
    """A DINO-style log (no type, no step) with a kNN key, a truncated last line, and a knn.json."""
    lines = [json.dumps({"epoch": e, "train_loss": 5 - e, "train_lr": 0.1 / (e + 1), "knn_top1": 10.0 + e})
             for e in range(4)] + ['{"epoch": 4, "train_lo']
    (tmp_path / "log.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "knn.json").write_text(json.dumps({"best_nn": 21.5, "weighted_knn_top1": 19.0}))
    out = tmp_path / "plots" / "c.png"
    proc = run(py("-m", "experiments.plot-logs", str(tmp_path / "log.txt"), "-o", str(out)))
    assert_ok(proc)
    assert "skipped 1 unreadable lines" in proc.stdout and out.read_bytes()[:8] == PNG_MAGIC
    summary = json.load(open(tmp_path / "plots" / "c.json"))
    assert summary["x_unit"] == "epoch" and summary["knn"]["knn_top1"]["last"] == [4, 13.0]
    assert summary["epochs"]["train_loss"]["min"] == [4, 2] and summary["final_knn"]["knn best_nn"] == 21.5


def test_bad_inputs_are_one_error_line(tmp_path, capsys):
    stats_dist = importlib.import_module("eval.stats-dist")
    with pytest.raises(SystemExit) as exc:  # in process: the CLI's exit path without another start-up
        stats_dist.main(argparse.ArgumentParser(parents=[stats_dist.get_args_parser()]).parse_args(
            [str(tmp_path / "missing"), *EVAL]))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1 and "does not exist" in err
    (tmp_path / "log.txt").write_text('{"note": "no numbers"}\n')
    proc = run(py("-m", "experiments.plot-logs", str(tmp_path)))
    assert proc.returncode == 2 and "no loss, lr or kNN values" in one_error_line(proc)
