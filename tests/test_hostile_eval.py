"""Hostile input to the evaluation tools: each case ends in exactly one ``error:`` line that names the problem and
the fix, exit status 2, no traceback, and no score. Every case runs in this process (the CLI's own exit path)."""
import argparse
import importlib
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import main_transfer
from eval import knn, linear_transfer, retrieval, voc_svm
from src.data.folders import SafeImageFolder, resolve_split
from src.evaluation.pretrained import read_checkpoint
from src.run.args import ArgumentParser
from src.run.checkpoint import load_checkpoint
from src.run.errors import UserError
from tests.helpers import exits, one_line

pytestmark = pytest.mark.usefixtures("one_thread")
stats_dist = importlib.import_module("eval.stats-dist")

KNN = ["-a", "resnet_tiny", "--cifar-stem", "--resize", "16", "--crop-size", "16", "-b", "4", "-j", "0", "-k", "3",
       "--device", "cpu"]


def parse(module, argv):
    """``python -m eval.<module> argv``'s parsing, as its ``__main__`` does it."""
    return ArgumentParser(parents=[module.get_args_parser()]).parse_args(argv)




def images(folder, n, seed=0, size=16):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3)).astype(np.uint8)).save(folder / f"{i}.png")


def image_folders(root, classes=("a", "b"), splits=(("train", 3), ("val", 2))):
    for split, n in splits:
        for k, c in enumerate(classes):
            images(root / split / c, n, seed=k)
    return str(root)


# ==== 1. linear transfer on one class ====
def test_linear_transfer_refuses_a_dataset_of_one_class(tmp_path, capsys):
    image_folders(tmp_path / "data" / "dtd", classes=("only",), splits=(("train", 3), ("val", 2), ("test", 2)))
    argv = ["--data_root", str(tmp_path / "data"), "--datasets", "dtd", "--image_size", "16", "--workers", "0",
            "--output_dir", str(tmp_path / "out")]
    line = one_line(*exits(lambda: linear_transfer.main(parse(linear_transfer, argv)), capsys))
    assert "1 class (only)" in line and "at least 2 classes" in line and str(tmp_path / "data" / "dtd") in line
    assert not os.path.exists(tmp_path / "out" / "linear_transfer.json")


def test_linear_transfer_refuses_a_train_draw_of_one_class(tmp_path, capsys):
    """Two classes on disk, but the rows left for training after the 20% draw hold one: refused before any
    feature is extracted (scikit-learn would raise ValueError)."""
    root = tmp_path / "data" / "pets"
    images(root / "train" / "a", 5)
    images(root / "train" / "b", 1)  # 6 rows: the seed-0 draw takes row 5, b's only image, to val
    for c in "ab":
        images(root / "test" / c, 1)
    from src.data.transfer import carve_val

    assert carve_val(6)[1].tolist() == [5]
    argv = ["--data_root", str(tmp_path / "data"), "--datasets", "pets", "--workers", "0", "--output_dir",
            str(tmp_path / "out")]
    line = one_line(*exits(lambda: linear_transfer.main(parse(linear_transfer, argv)), capsys))
    assert "train rows of pets" in line and "only class a" in line and "at least 2 classes" in line


# ==== 2. eval.knn flags and one-class data ====
@pytest.mark.parametrize("flag,value,needle", [
    ("--crop-size", "0", "must be >= 1"), ("--resize", "0", "must be >= 1"), ("-b", "0", "must be >= 1"),
    ("-k", "0", "must be >= 1"), ("--knn-k", "0", "must be >= 1"), ("-g", "0", "must be >= 1"),
    ("-j", "-1", "must be >= 0"), ("--knn-t", "0", "must be > 0"), ("--knn-t", "-0.1", "must be > 0"),
    ("--crop-size", "x", "expected an integer"),
])
def test_knn_flags_are_refused_where_parsed(flag, value, needle, tmp_path, capsys):
    line = one_line(*exits(lambda: parse(knn, [str(tmp_path), flag, value]), capsys))
    assert f"argument {flag}" in line and needle in line


def test_knn_refuses_data_of_one_class(tmp_path, capsys):
    data = image_folders(tmp_path / "data", classes=("only",))
    code, out, err = exits(lambda: knn.main(parse(knn, [data, *KNN, "--output-json", str(tmp_path / "k.json")])),
                           capsys)
    line = one_line(code, out, err)
    assert "1 class folder (only)" in line and "at least 2 classes" in line
    assert "best-NN=" not in out and not os.path.exists(tmp_path / "k.json")


# ==== 3. stats-dist ====
@pytest.mark.parametrize("flag,value,needle", [("--uniformity-chunks", "0", "must be >= 1"),
                                               ("--uniformity-chunk-size", "1", "must be >= 2")])
def test_stats_dist_uniformity_flags_are_refused_where_parsed(flag, value, needle, tmp_path, capsys):
    line = one_line(*exits(lambda: parse(stats_dist, [str(tmp_path), flag, value]), capsys))
    assert f"argument {flag}" in line and needle in line


@pytest.mark.parametrize("tool", ["eval.stats-dist", "eval.instdisc", "experiments.tsne"])
@pytest.mark.parametrize("flag,value,needle", [
    ("-b", "0", "must be >= 1"), ("--resize", "0", "must be >= 1"), ("--crop-size", "0", "must be >= 1"),
    ("-j", "-1", "must be >= 0"), ("-s", "-1", "must be >= 0"), ("--gpu", "-1", "must be >= 0"),
    ("-b", "x", "expected an integer"),
])
def test_pair_eval_sizes_and_counts_are_refused_where_parsed(tool, flag, value, needle, tmp_path, capsys):
    """The flags src.evaluation.pair_eval gives the positive-pair tools: one line at parsing, before any image."""
    module = importlib.import_module(tool)
    line = one_line(*exits(lambda: parse(module, [str(tmp_path), flag, value]), capsys))
    assert f"argument {flag}" in line and needle in line


# ==== 4. a crafted CIFAR pickle ====
BUILD_ON_INT = b"\x80\x02K\x05}q\x00X\x01\x00\x00\x00aK\x01sb."  # push 5, push {'a': 1}, BUILD: 5.__dict__...


def crafted_cifar(folder, payload=BUILD_ON_INT):
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(payload)
    return folder / "data_batch_1"


def test_crafted_cifar_pickle_in_linear_transfer(tmp_path, capsys):
    bad = crafted_cifar(tmp_path / "data" / "cifar10" / "cifar-10-batches-py")
    argv = ["--data_root", str(tmp_path / "data"), "--datasets", "cifar10", "--output_dir", str(tmp_path / "o")]
    line = one_line(*exits(lambda: linear_transfer.main(parse(linear_transfer, argv)), capsys))
    assert str(bad) in line and "AttributeError" in line and "re-extract" in line


def test_crafted_cifar_pickle_in_main_transfer(tmp_path):
    bad = crafted_cifar(tmp_path / "cifar-10-batches-py")
    args = argparse.ArgumentParser(parents=[main_transfer.get_args_parser()]).parse_args(
        [str(tmp_path), "--dataset", "cifar10", "-j", "0"])
    args.min_scale = 0.08  # set by main's recipe step, before the data are read
    with pytest.raises(UserError, match=rf"cannot read '{bad}' as a CIFAR python pickle"):
        main_transfer.build_datasets(args)


class Marker:
    """Unpickling calls os.system: the restricted unpickler must refuse it before it runs."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


@pytest.mark.parametrize("payload", ["labels_int", "labels_text", "names_int", "system"])
def test_malformed_cifar_pickles_are_one_line_naming_the_file(tmp_path, payload):
    from src.data.cifar import CifarPickleDataset

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    good = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
    files = {f"data_batch_{i}": good for i in range(1, 6)}
    files.update(test_batch=good, **{"batches.meta": {"label_names": ["a", "b"]}})
    bad = {"labels_int": ("data_batch_1", {"data": good["data"], "labels": 7}),
           "labels_text": ("data_batch_2", {"data": good["data"], "labels": ["x", "y"]}),
           "names_int": ("batches.meta", {"label_names": 3}),
           "system": ("data_batch_3", Marker(tmp_path / "ran"))}[payload]
    files[bad[0]] = bad[1]
    for name, obj in files.items():
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    with pytest.raises(UserError, match=str(folder / bad[0])):
        CifarPickleDataset(str(tmp_path), "cifar10", train=True)
    assert not (tmp_path / "ran").exists()  # no code ran


# ==== 5. VOC labels ====
def test_voc_svm_refuses_an_invalid_class_label(tmp_path, capsys):
    main = tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages").mkdir()
    for split in ("trainval", "test"):
        (main / f"{split}.txt").write_text("000001\n000002\n")
        for c in ("bird", "car"):
            (main / f"{c}_{split}.txt").write_text("000001  1\n000002 -1\n")
    (main / "car_trainval.txt").write_text("000001  1\n\n000002  7\n")
    argv = [str(tmp_path), "--output-json", str(tmp_path / "v.json")]
    code, out, err = exits(lambda: voc_svm.main(parse(voc_svm, argv)), capsys)
    line = one_line(code, out, err)
    assert str(main / "car_trainval.txt") in line and "line 3" in line and "'000002  7'" in line
    assert "-1 (absent), 0 (only difficult objects) or 1 (present)" in line and "Mean AP" not in out


# ==== 6. retrieval names the flag that was given ====
def test_retrieval_from_bank_file_names_from_bank(tmp_path, capsys):
    bank = tmp_path / "bank.pth"
    bank.write_bytes(b"x")
    line = one_line(*exits(lambda: retrieval.main(parse(retrieval, ["--from_bank", str(bank)])), capsys))
    assert "--from_bank" in line and "is a file, not a folder" in line and "--output_dir" not in line


@pytest.mark.parametrize("case", ["empty", "labels_dict", "rows"])
def test_retrieval_bad_bank_folder_names_from_bank(case, tmp_path, capsys):
    folder = tmp_path / "bank"
    folder.mkdir()
    if case != "empty":
        for split in ("train", "val"):
            torch.save(torch.zeros(4, 3), folder / f"{split}_features.pth")
            torch.save(torch.zeros(3 if case == "rows" else 4, dtype=torch.long), folder / f"{split}_labels.pth")
        if case == "labels_dict":
            torch.save({"labels": torch.zeros(4)}, folder / "train_labels.pth")
    line = one_line(*exits(lambda: retrieval.main(parse(retrieval, ["--from_bank", str(folder)])), capsys))
    assert "--from_bank" in line and "--resume" not in line and "--output_dir" not in line
    assert {"empty": "does not exist", "labels_dict": "holds a dict", "rows": "(4,) integer labels"}[case] in line


# ==== 7. a file where a folder should be ====
def test_a_file_as_data_folder_is_called_a_file(tmp_path, capsys):
    (tmp_path / "train").write_text("not a folder")
    (tmp_path / "val").mkdir()
    line = one_line(*exits(lambda: knn.main(parse(knn, [str(tmp_path), *KNN])), capsys))
    assert f"'{tmp_path / 'train'}' is a file, not a folder" in line and "does not exist" not in line
    for build in (lambda: resolve_split(str(tmp_path / "train"), "train"), lambda: resolve_split(str(tmp_path), "train"),
                  lambda: SafeImageFolder(str(tmp_path / "train"))):
        with pytest.raises(UserError, match="is a file, not a folder"):
            build()


def test_a_file_as_transfer_dataset_folder_is_called_a_file(tmp_path, capsys):
    (tmp_path / "dtd").write_text("x")
    argv = ["--data_root", str(tmp_path), "--datasets", "dtd", "--output_dir", str(tmp_path / "o")]
    line = one_line(*exits(lambda: linear_transfer.main(parse(linear_transfer, argv)), capsys))
    assert f"dataset folder '{tmp_path / 'dtd'}' is a file, not a folder" in line


def test_a_file_as_voc_or_cifar_folder_is_called_a_file(tmp_path, capsys):
    (tmp_path / "voc").write_text("x")
    line = one_line(*exits(lambda: voc_svm.main(parse(voc_svm, [str(tmp_path / "voc"), "--output-json",
                                                               str(tmp_path / "v.json")])), capsys))
    assert f"'{tmp_path / 'voc'}' is a file, not a folder" in line
    (tmp_path / "data" / "cifar10").mkdir(parents=True)
    (tmp_path / "data" / "cifar10" / "cifar-10-batches-py").write_text("x")
    argv = ["--data_root", str(tmp_path / "data"), "--datasets", "cifar10", "--output_dir", str(tmp_path / "o")]
    line = one_line(*exits(lambda: linear_transfer.main(parse(linear_transfer, argv)), capsys))
    assert "cifar-10-batches-py/" in line and "it is a file, not a folder" in line


# ==== 8. a checkpoint that runs a command when unpickled ====
@pytest.fixture
def system_checkpoint(tmp_path):
    """A zip and a legacy checkpoint whose unpickling would call os.system (pickled as posix.system on Linux)
    to create ``ran``."""
    paths = {}
    for kind, zipped in (("zip", True), ("legacy", False)):
        paths[kind] = tmp_path / f"{kind}.pth"
        torch.save({"args": argparse.Namespace(arch="resnet_tiny"), "x": Marker(tmp_path / "ran"),
                    "state_dict": {"w": torch.zeros(1)}}, paths[kind], _use_new_zipfile_serialization=zipped)
    return paths, tmp_path / "ran"


@pytest.mark.parametrize("trust", [False, True])
def test_system_call_in_a_checkpoint_is_named_with_or_without_trust(system_checkpoint, trust, tmp_path, capsys):
    """Without --trust-checkpoint every unsafe global is named; with it, a pickle that calls a command runner is
    still refused (no checkpoint needs one), never called truncated, and nothing runs."""
    paths, ran = system_checkpoint
    data = image_folders(tmp_path / "data")
    system = os.system.__module__ + ".system"  # posix.system on Linux
    for path in paths.values():
        argv = [data, *KNN, "--pretrained", str(path)] + ["--trust-checkpoint"] * trust
        line = one_line(*exits(lambda: knn.main(parse(knn, argv)), capsys))
        assert system in line and "argparse.Namespace" in line and "truncated" not in line
        assert "even with --trust-checkpoint" in line
    assert not ran.exists()


def test_exec_and_system_are_named_the_same_way(tmp_path):
    class Exec:
        def __reduce__(self):
            return exec, ("open('ran', 'w')",)

    messages = {}
    for name, payload in (("exec", Exec()), ("system", Marker(tmp_path / "ran"))):
        torch.save({"x": payload}, tmp_path / f"{name}.pth")
        with pytest.raises(UserError) as exc:
            read_checkpoint(tmp_path / f"{name}.pth", trust=True)
        messages[name] = str(exc.value).replace(str(tmp_path / f"{name}.pth"), "FILE")
    system = os.system.__module__ + ".system"
    assert messages["system"] == messages["exec"].replace("builtins.exec", system)
    assert not (tmp_path / "ran").exists()


def test_resume_checkpoint_with_a_system_call_is_named(system_checkpoint):
    paths, ran = system_checkpoint
    system = os.system.__module__ + ".system"
    with pytest.raises(UserError) as exc:
        load_checkpoint(str(paths["zip"]), "--resume")
    assert system in str(exc.value) and "argparse.Namespace" in str(exc.value) and "--resume" in str(exc.value)
    assert "truncated" not in str(exc.value)
    with pytest.raises(UserError, match="pickled Python objects") as exc:
        load_checkpoint(str(paths["legacy"]), "--resume")  # a legacy file: the loader names the first one
    assert "truncated" not in str(exc.value) and not ran.exists()


# ==== 9. a folder whose every image is unreadable ====
def test_every_image_unreadable_gives_the_true_count(tmp_path, capsys):
    data = image_folders(tmp_path / "data", splits=(("val", 1),))
    for c in "ab":
        (tmp_path / "data" / "train" / c).mkdir(parents=True)
        for i in range(4):
            (tmp_path / "data" / "train" / c / f"{i}.jpg").write_bytes(b"not a jpeg")
    code, out, err = exits(lambda: knn.main(parse(knn, [data, *KNN, "--output-json", str(tmp_path / "k.json")])),
                           capsys)
    line = one_line(code, out, err)
    assert f"all 8 images in '{tmp_path / 'data' / 'train'}' cannot be read" in line and "51" not in line
    assert "best-NN=" not in out
