"""main_transfer.py and src.data.cifar: CIFAR python-pickle folders written here byte-for-byte in the format of the
real archives (Python 2 cPickle, protocol 2), linear vs fine-tune modes, image folders, resume, errors."""
import argparse
import json
import pickle
import signal
import struct

import numpy as np
import pytest
import torch
from helpers import one_error_line, py, run
from PIL import Image

import main_transfer
from src.data.cifar import CifarPickleDataset, read_pickle
from src.run.errors import UserError
from tests.helpers import exits, one_line

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Py2Pickler(pickle._Pickler):
    """What Python 2's cPickle wrote for the CIFAR files: protocol 2, every str (keys, names, the raw array
    bytes) as a byte string (SHORT_BINSTRING / BINSTRING), numpy under its Python-2 name numpy.core.multiarray."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None)
        if module in ("numpy._core.multiarray", "numpy.core.multiarray"):
            module = "numpy.core.multiarray"
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def dump_py2(obj, path):
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def _images(rng, labels):
    """(N, 3072) uint8 rows (R plane, G plane, B plane), the class visible in the dominant colour."""
    data = rng.integers(0, 100, (len(labels), 3, 32, 32))
    for i, label in enumerate(labels):
        data[i, label % 3] += 100 + 15 * (label // 3 % 4)
    return data.astype(np.uint8).reshape(len(labels), 3072)


def write_cifar10(root, per_batch=4, n_test=6, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, n, title in [(f"data_batch_{i}", per_batch, f"training batch {i} of 5") for i in range(1, 6)] + \
                          [("test_batch", n_test, "testing batch 1 of 1")]:
        labels = [int(x) for x in rng.integers(0, 10, n)]
        dump_py2({"batch_label": title, "labels": labels, "data": _images(rng, labels),
                  "filenames": [f"img_{name}_{i}.png" for i in range(n)]}, folder / name)
    dump_py2({"num_cases_per_batch": per_batch, "label_names": CIFAR10_NAMES, "num_vis": 3072}, folder / "batches.meta")
    return folder


def write_cifar100(root, n_train=12, n_test=6, seed=1):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [int(x) for x in rng.integers(0, 100, n)]
        dump_py2({"filenames": [f"f{i}.png" for i in range(n)], "batch_label": f"{name}ing batch 1 of 1",
                  "fine_labels": fine, "coarse_labels": [f // 5 for f in fine], "data": _images(rng, fine)},
                 folder / name)
    dump_py2({"fine_label_names": [f"fine{i}" for i in range(100)],
              "coarse_label_names": [f"coarse{i}" for i in range(20)]}, folder / "meta")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    write_cifar10(root / "c10")
    write_cifar100(root / "c100")
    for split, n in (("train", 4), ("test", 2)):  # a Caltech-like train/ + test/ pair of image folders
        for c in range(3):
            (root / "folders" / split / f"cls{c}").mkdir(parents=True)
            for i in range(n):
                img = np.full((40, 48, 3), 30, np.uint8)
                img[..., c] = 200
                Image.fromarray(img).save(root / "folders" / split / f"cls{c}" / f"{i}.jpg")
    return root


def run_inprocess(argv):
    """``python main_transfer.py argv`` in this process, one thread, signal handlers restored."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main_transfer.main(argparse.ArgumentParser(parents=[main_transfer.get_args_parser()]).parse_args(argv))
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        torch.set_num_threads(threads)


COMMON = ["-a", "resnet18", "--cifar-stem", "--crop-size", "32", "-b", "8", "-j", "0", "-p", "100"]


# ==================================================================================================
def test_cifar_readers_match_the_written_arrays(data):
    c10 = CifarPickleDataset(data / "c10", "cifar10", train=True)
    raw = read_pickle(data / "c10" / "cifar-10-batches-py" / "data_batch_2")
    assert set(raw) == {"batch_label", "labels", "data", "filenames"}
    assert raw["filenames"][0] == "img_data_batch_2_0.png"
    assert len(c10) == 20 and c10.classes == CIFAR10_NAMES and c10.data.shape == (20, 32, 32, 3)
    row = raw["data"][3].reshape(3, 32, 32).transpose(1, 2, 0)  # planes -> HWC
    img, label = c10[4 + 3]
    assert np.array_equal(np.asarray(img), row) and label == raw["labels"][3]
    test = CifarPickleDataset(data / "c10" / "cifar-10-batches-py", "cifar10", train=False)  # the folder itself
    assert len(test) == 6
    c100 = CifarPickleDataset(data / "c100", "cifar100", train=True)
    assert len(c100) == 12 and c100.classes[7] == "fine7" and max(c100.targets) < 100
    # what torchvision's reader does with the same file (pickle.load, latin1) gives the same array
    with open(data / "c100" / "cifar-100-python" / "test", "rb") as f:
        tv = pickle.load(f, encoding="latin1")
    assert np.array_equal(CifarPickleDataset(data / "c100", "cifar100", train=False).data,
                          tv["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def test_cifar_files_missing_or_hostile(tmp_path):
    with pytest.raises(UserError, match=r"cifar-10-batches-py/ holding data_batch_1.*batches\.meta.*nothing is "
                                        r"downloaded"):
        CifarPickleDataset(tmp_path, "cifar10")
    folder = write_cifar10(tmp_path / "c")
    (folder / "test_batch").unlink()
    with pytest.raises(UserError, match=r"\(missing: test_batch\)"):
        CifarPickleDataset(tmp_path / "c", "cifar10")
    import os

    class Hostile:
        def __reduce__(self):
            return os.system, ("echo unpickled-code-ran",)

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": Hostile()}, f)
    with pytest.raises(UserError, match=r"unexpected object posix\.system|unexpected object nt\.system"):
        CifarPickleDataset(tmp_path / "c", "cifar10", train=False)


def _track_train_mode(monkeypatch):
    """Record the trunk's ``training`` flag at every forward of its first BN (train steps and tests)."""
    modes = []
    build = main_transfer.build_model

    def spy(*a, **k):
        trunk, head = build(*a, **k)
        trunk.bn1.register_forward_pre_hook(lambda m, inp: modes.append(m.training))
        return trunk, head

    monkeypatch.setattr(main_transfer, "build_model", spy)
    return modes


def test_linear_and_finetune_on_cifar10(data, tmp_path, capsys, monkeypatch):
    modes = _track_train_mode(monkeypatch)
    res = run_inprocess([str(data / "c10"), *COMMON, "--epochs", "2", "--output-dir", str(tmp_path / "lin")])
    out = capsys.readouterr().out
    assert "linear transfer to cifar10: lr 1.5 x0.1 at epochs 40, 2 epochs" in out  # the published recipe
    assert "data: 20 train / 6 test images, 10 classes" in out
    assert out.count(" * Acc@1 ") == 2 and "linear transfer to cifar10: best Acc@1" in out
    saved = json.load(open(tmp_path / "lin" / "transfer.json"))
    assert saved["mode"] == "linear" and saved["best"] == res["best"] and len(saved["history"]) == 2
    assert modes and not any(modes)  # linear: the trunk never leaves eval mode (frozen BN statistics)
    sd = torch.load(tmp_path / "lin" / "checkpoint.pth.tar", weights_only=True)["state_dict"]
    assert "1.fc.weight" in sd and "0.conv1.weight" in sd

    modes.clear()
    run_inprocess([str(data / "c10"), *COMMON, "--epochs", "2", "--finetune", "--output-dir", str(tmp_path / "ft"),
                   "--amp", "fp16"])
    out = capsys.readouterr().out
    assert "finetune transfer to cifar10: lr 0.01 x0.2 at epochs 40 70" in out
    assert out.count("--amp fp16 / --use_fp16 needs CUDA") == 1  # a CPU run falls back to fp32, once
    # epoch 0: 3 train steps (20 images, batch 8) in train mode, the test (6 images, one batch) in eval mode,
    # then epoch 1 in train mode AGAIN (the reference stays in eval mode from here on), then its test
    assert modes == [True] * 3 + [False] + [True] * 3 + [False], modes


def test_image_folders_resume_and_cli_error(data, tmp_path, capsys):
    argv = [str(data / "folders"), "--dataset", "caltech101", *COMMON, "--resize", "36", "--epochs", "2"]
    full = run_inprocess(argv + ["--output-dir", str(tmp_path / "a")])
    assert "linear transfer to caltech101: lr 2 x0.1" in capsys.readouterr().out
    assert run_inprocess(argv + ["--output-dir", str(tmp_path / "b"), "--max-iters", "1"]) is None
    resumed = run_inprocess(argv + ["--output-dir", str(tmp_path / "b")])
    assert resumed["history"] == full["history"]
    a = torch.load(tmp_path / "a" / "checkpoint.pth.tar", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "checkpoint.pth.tar", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    proc = run(py("main_transfer.py", str(tmp_path / "nowhere"), "--dataset", "cifar100", "-j", "0"))
    line = one_error_line(proc)
    assert "cifar-100-python/ holding train, test, meta" in line and "nothing is downloaded" in line, line


# ==== hostile input: refused with one line, exit 2, no traceback, no score ====
def _cli_error(argv, capsys):
    """The CLI's own path: exit 2, no traceback, one ``error:`` line; returns (line, stdout)."""
    from src.run.args import ArgumentParser
    from src.run.launch import cli

    parse = ArgumentParser(parents=[main_transfer.get_args_parser()]).parse_args
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, out, err = exits(lambda: cli(main_transfer.main, lambda: parse(argv)), capsys)
    finally:
        torch.set_num_threads(threads)
    return one_line(code, out, err), out


def test_one_class_folder_is_refused(tmp_path, capsys):
    one = tmp_path / "one"
    for split in ("train", "test"):
        (one / split / "only").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (60 * i, 0, 0)).save(one / split / "only" / f"{i}.jpg")
    line, out = _cli_error([str(one), "--dataset", "folder", *COMMON, "--resize", "36", "--epochs", "1",
                            "--output-dir", str(tmp_path / "x")], capsys)
    assert "at least 2 classes" in line and f"{one / 'train'}" in line and " * Acc@1" not in out, line


def test_a_diverged_training_gives_no_score(data, tmp_path, capsys):
    """--lr 1e30 on the linear head: the loss stays finite (about 1e29) but is far above ln(classes), the loss of a
    uniform guess: an error line naming the loss and --lr, no test line, no results file."""
    out_dir = tmp_path / "div"
    line, out = _cli_error([str(data / "folders"), "--dataset", "folder", *COMMON, "--resize", "36", "--epochs", "2",
                            "--lr", "1e30", "--output-dir", str(out_dir)], capsys)
    assert "training diverged in epoch 0" in line and "--lr 1e+30 is far too high" in line, line
    assert f"over {main_transfer.DIVERGED} x ln(" in line and "NaN" not in line, line
    assert " * Acc@1" not in out and not (out_dir / "transfer.json").exists()
    # the bound: 100 x ln(C); an epoch under it (a sane lr) is tested as before
    assert run_inprocess([str(data / "folders"), "--dataset", "folder", *COMMON, "--resize", "36", "--epochs", "1",
                          "--output-dir", str(tmp_path / "ok")])["last"]["top1"] >= 0
