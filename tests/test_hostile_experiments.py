"""The experiments tools under hostile input (outputs under a file, read-only or full disks, binary logs, NaN
students, unreadable images, out-of-range flags): one ``error:`` line naming the problem and the fix, exit status 2,
no traceback, nothing half-written; and plot-logs drawing several runs in one figure. In process: each tool's own
exit path without another interpreter."""
import builtins
import errno
import importlib
import json
import os

import pytest
import torch

from src.models import build_backbone
from src.run.args import ArgumentParser
from src.run.launch import exit_on_user_error
from tests.helpers import exits, one_line, tiny_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

plot_logs = importlib.import_module("experiments.plot-logs")
sample_augs = importlib.import_module("experiments.sample-augs")
convert_seed = importlib.import_module("experiments.convert-seed")
convert_detectron2 = importlib.import_module("experiments.convert-detectron2")
tsne = importlib.import_module("experiments.tsne")


def cli(module, argv, capsys):
    """``python -m experiments.<module> argv`` in this process: (exit status, stdout, stderr)."""
    argv = [str(a) for a in argv]
    if module in (convert_seed, convert_detectron2):  # they parse their own argv
        return exits(lambda: exit_on_user_error(module.main)(argv), capsys)
    return exits(lambda: module.main(ArgumentParser(parents=[module.get_args_parser()]).parse_args(argv)), capsys)




def _under(path, folder):
    try:
        path = os.path.abspath(os.fsdecode(path))
    except TypeError:  # a file descriptor
        return False
    return path == folder or path.startswith(folder + os.sep)


def read_only(monkeypatch, folder):
    """Make ``folder`` and everything below it behave as a read-only mount (EROFS): tests run as root here, so
    file modes would not stop a write."""
    folder = os.path.abspath(folder)
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def fake_open(file, mode="r", *args, **kwargs):
        if _under(file, folder) and any(c in mode for c in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if _under(path, folder) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if _under(path, folder):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


class _FullDiskFile:
    """An open file whose writes fail as on a full disk (ENOSPC)."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


def full_disk(monkeypatch, folder):
    """Files opened for writing under ``folder`` with ``open`` fail on their first write (the probe of the output
    folder, written through a file descriptor, passes: the disk fills up during the job)."""
    folder = os.path.abspath(folder)
    real_open = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return _FullDiskFile(f) if _under(file, folder) and any(c in mode for c in "wax+") else f

    monkeypatch.setattr(builtins, "open", fake_open)


# ==== plot-logs: outputs and logs ====
def write_run(folder, epochs=3, iters=4, loss0=6.0, monitor=True, linear=False):
    """A run folder with a log.txt in the format of src/run/logging.py, plus monitor / probe rows."""
    os.makedirs(folder, exist_ok=True)
    rows = []
    for e in range(epochs):
        for it in (2, 4):
            step = e * iters + it
            rows.append({"type": "iter", "epoch": e, "iter": it, "step": step, "lr": 0.1 / (step + 1),
                         "images_per_s": 100.0, "Loss": loss0 - 0.1 * step, "avg_Loss": loss0 - 0.05 * step})
        rows.append({"type": "epoch", "epoch": e, "step": (e + 1) * iters, "Loss": loss0 - e, "lr": 0.1 / (e + 1)})
        if monitor:
            for trunk, gain in (("online", 10.0), ("momentum", 12.0)):
                rows.append({"type": "monitor", "epoch": e, "trunk": trunk, "best_nn": 20.0 + gain * e, "best_k": 5,
                             "weighted_knn": 18.0 + gain * e, "step": (e + 1) * iters})
        if linear:
            rows.append({"type": "online_linear", "epoch": e, "val_top1": 30.0 + e, "step": (e + 1) * iters})
    with open(os.path.join(folder, "log.txt"), "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(folder)


def test_plot_logs_output_under_a_file(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "file").write_text("x")
    line = one_line(*cli(plot_logs, [run, "-o", tmp_path / "a" / "file" / "x.png"], capsys))
    assert "is a file, not a folder" in line and "-o" in line


def test_plot_logs_output_read_only(tmp_path, capsys, monkeypatch):
    run = write_run(tmp_path / "run")
    read_only(monkeypatch, tmp_path / "ro")
    line = one_line(*cli(plot_logs, [run, "-o", tmp_path / "ro" / "x.png"], capsys))
    assert "Read-only file system" in line and "pass another -o" in line


def test_plot_logs_output_is_a_folder(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    line = one_line(*cli(plot_logs, [run, "-o", tmp_path], capsys))
    assert "is a folder: give a file name" in line


def test_plot_logs_binary_log(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.txt").write_bytes(bytes(range(256)) * 40 + os.urandom(4000))
    line = one_line(*cli(plot_logs, [tmp_path / "run"], capsys))
    assert "no JSON records" in line and "log.txt" in line
    assert not (tmp_path / "run" / "curves.png").exists()


def test_plot_logs_run_without_log(tmp_path, capsys):
    (tmp_path / "empty-run").mkdir()
    line = one_line(*cli(plot_logs, [tmp_path / "empty-run"], capsys))
    assert "no log at" in line and "empty-run" in line


def test_plot_logs_unknown_image_format(tmp_path, capsys):
    line = one_line(*cli(plot_logs, [write_run(tmp_path / "run"), "-o", tmp_path / "c.xyz"], capsys))
    assert ".xyz" in line and ".png" in line


# ==== plot-logs: several runs in one figure ====
def _panels(fig):
    return {ax.get_ylabel(): ax for ax in fig.axes}


def _labelled(ax):
    return [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_plot_logs_two_runs_one_figure(tmp_path, capsys):
    a = write_run(tmp_path / "moco-a", loss0=6.0, linear=True)
    b = write_run(tmp_path / "moco-b", loss0=7.0)
    runs, left_out = plot_logs.load_runs([a, b])
    assert left_out == [] and [r["label"] for r in runs] == ["moco-a", "moco-b"]
    fig = plot_logs.build_figure(runs, plot_logs.figure_title(runs))
    panels = _panels(fig)
    assert set(panels) == {"loss", "learning rate", "kNN top-1 (%)", "online linear top-1 (%)"}
    for name in ("loss", "learning rate"):  # one curve per run, labelled by its folder
        assert _labelled(panels[name]) == ["moco-a", "moco-b"], name
    knn = panels["kNN top-1 (%)"].get_lines()
    assert sorted(line.get_label() for line in knn) == sorted(
        f"{run} {trunk} {metric}" for run in ("moco-a", "moco-b") for trunk in ("online", "momentum")
        for metric in ("best-NN", "weighted kNN"))
    for line in knn:  # against the epochs trained; weighted kNN dashed
        assert list(line.get_xdata()) == [1, 2, 3]
        assert line.get_linestyle() == ("--" if "weighted" in line.get_label() else "-")
    online_a = next(line for line in knn if line.get_label() == "moco-a online best-NN")
    assert list(online_a.get_ydata()) == [20.0, 30.0, 40.0]
    assert _labelled(panels["online linear top-1 (%)"]) == ["moco-a val_top1"]
    import matplotlib.pyplot as plt

    plt.close(fig)

    code, out, _ = cli(plot_logs, [a, b], capsys)  # the CLI: one PNG next to the runs, one JSON
    assert code == 0
    png = tmp_path / "compare-curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "2 runs" in out
    summary = json.loads((tmp_path / "compare-curves.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["moco-a", "moco-b"]
    assert summary["runs"][1]["monitor"]["momentum best_nn"]["last"] == [3, 44.0]


def test_plot_logs_no_monitor_panel_says_so(tmp_path):
    runs, _ = plot_logs.load_runs([write_run(tmp_path / "a", monitor=False), write_run(tmp_path / "b", monitor=False)])
    fig = plot_logs.build_figure(runs, "t")
    panels = _panels(fig)
    assert "online linear top-1 (%)" not in panels  # no probe rows in any run: no panel
    assert not panels["kNN top-1 (%)"].get_lines()
    assert any("no kNN accuracy" in t.get_text() for t in panels["kNN top-1 (%)"].texts)


def test_plot_logs_equal_folder_names_are_told_apart(tmp_path):
    a, b = write_run(tmp_path / "exp1" / "moco"), write_run(tmp_path / "exp2" / "moco")
    runs, _ = plot_logs.load_runs([a, b])
    assert [r["label"] for r in runs] == ["exp1/moco", "exp2/moco"]
    fig = plot_logs.build_figure(runs, "t")
    assert _labelled(_panels(fig)["loss"]) == ["exp1/moco", "exp2/moco"]


def test_plot_logs_one_missing_run_is_a_warning(tmp_path, capsys):
    a = write_run(tmp_path / "a")
    (tmp_path / "not-started").mkdir()
    code, out, err = cli(plot_logs, [a, tmp_path / "not-started", "-o", tmp_path / "c.png"], capsys)
    assert code == 0 and "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "not-started" in warnings[0] and "no log at" in warnings[0]
    summary = json.loads((tmp_path / "c.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["a"] and "not-started" in summary["left_out"][0]["run"]


def test_plot_logs_no_run_has_a_log(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    line = one_line(*cli(plot_logs, [tmp_path / "x", tmp_path / "y"], capsys))
    assert "none of the 2 runs" in line and "no log at" in line


def test_plot_logs_single_run_keeps_its_output(tmp_path, capsys):
    run = write_run(tmp_path / "run", linear=True)
    code, out, _ = cli(plot_logs, [run], capsys)
    assert code == 0 and f"wrote {os.path.join(run, 'curves.png')}" in out
    summary = json.loads((tmp_path / "run" / "curves.json").read_text())
    assert summary["x_unit"] == "step" and summary["steps"]["Loss"]["points"] == 6
    assert summary["monitor"]["online best_nn"]["last"] == [3, 40.0]
    assert summary["online_linear"]["val_top1"]["last"] == [3, 32.0]
    assert "best_nn" not in summary["knn"]  # monitor rows are drawn once, in their own series


# ==== sample-augs ====
@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return os.path.join(tiny_dataset(str(tmp_path_factory.mktemp("hostile") / "demo"), num_classes=2,
                                     train_per_class=2, val_per_class=2, size=32), "val")


SAMPLE = ["--images-per-class", "2", "--size", "16"]


def test_sample_augs_read_only_destination(images, tmp_path, capsys, monkeypatch):
    read_only(monkeypatch, tmp_path / "ro")
    line = one_line(*cli(sample_augs, [images, tmp_path / "ro" / "pairs", *SAMPLE], capsys))
    assert "Read-only file system" in line and "DST" in line


def test_sample_augs_full_disk(images, tmp_path, capsys, monkeypatch):
    dst = tmp_path / "pairs"
    full_disk(monkeypatch, dst)
    line = one_line(*cli(sample_augs, [images, dst, *SAMPLE], capsys))
    assert "No space left on device" in line and "free some space" in line
    left = [n for _, _, names in os.walk(dst) for n in names]
    assert not [n for n in left if n.endswith(".tmp")] and "sample-augs.json" not in left


def test_sample_augs_destination_is_a_file(images, tmp_path, capsys):
    (tmp_path / "pairs").write_text("x")
    line = one_line(*cli(sample_augs, [images, tmp_path / "pairs", *SAMPLE], capsys))
    assert "is a file, not a folder" in line and "DST" in line


def test_sample_augs_file_where_a_class_folder_goes(images, tmp_path, capsys):
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / sorted(os.listdir(images))[0]).write_text("x")
    line = one_line(*cli(sample_augs, [images, tmp_path / "pairs", *SAMPLE], capsys))
    assert "a file is in the way" in line and sorted(os.listdir(images))[0] in line


def test_sample_augs_every_image_unreadable(tmp_path, capsys):
    for cls in ("a", "b"):
        (tmp_path / "src" / cls).mkdir(parents=True)
        (tmp_path / "src" / cls / "x.jpg").write_bytes(os.urandom(500))
    code, out, err = cli(sample_augs, [tmp_path / "src", tmp_path / "pairs", *SAMPLE], capsys)
    line = one_line(code, out, err)
    assert "none of the 2 images" in line and "could be read" in line
    assert not (tmp_path / "pairs" / "sample-augs.json").exists()


# ==== the converters ====
def test_convert_seed_refuses_a_nan_student(tmp_path, capsys):
    trunk = build_backbone("resnet18")[0].state_dict()
    state = {f"module.student.{k}": torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in trunk.items()}
    state["module.teacher.conv1.weight"] = torch.zeros(4, 3, 7, 7)
    torch.save({"arch": "resnet18", "state_dict": state}, tmp_path / "seed-r18-ep200.pth.tar")
    line = one_line(*cli(convert_seed, [tmp_path / "seed-r18-ep200.pth.tar"], capsys))
    assert "NaN/inf" in line and "student" in line and "nothing is written" in line
    assert not (tmp_path / "converted_ep200.pth.tar").exists()


def test_convert_detectron2_output_is_a_folder(tmp_path, capsys):
    torch.save(build_backbone("resnet18")[0].state_dict(), tmp_path / "r18.pth")
    (tmp_path / "out.pkl").mkdir()
    line = one_line(*cli(convert_detectron2, [tmp_path / "r18.pth", tmp_path / "out.pkl", "-a", "resnet18"], capsys))
    assert "is a folder: give a file name" in line and "free some space" not in line


# ==== tsne ====
def test_tsne_iters_refused_when_parsed(capsys):
    with pytest.raises(SystemExit) as exc:
        ArgumentParser(parents=[tsne.get_args_parser()]).parse_args(["pairs", "--tsne-iters", "250"])
    line = one_line(exc.value.code, *capsys.readouterr())
    assert "--tsne-iters" in line and ">= 300" in line and "250" in line


def test_tsne_perplexity_refused_before_the_embedding(images, tmp_path, capsys, monkeypatch):
    pairs = tmp_path / "pairs"
    assert cli(sample_augs, [images, pairs, "--images-per-class", "1", "--size", "16"], capsys)[0] == 0
    monkeypatch.setattr(tsne, "embed_views", lambda *a, **k: pytest.fail("the features were extracted"))
    line = one_line(*cli(tsne, [pairs, "-s", "1", "--perplexity", "30", "--resize", "32", "--crop-size", "32",
                              "-a", "resnet_tiny", "--pic-name", tmp_path / "t.pdf"], capsys))
    assert "--perplexity" in line and "6" in line  # 2 images x 3 views
