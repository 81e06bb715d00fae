"""Small-data recipes: CIFAR-10 / CIFAR-100 python pickles and STL-10 binaries in their archives' layouts are read as
``--data_path`` / DIR of the pretraining scripts and as ``--monitor_data`` (one dispatch: src.data.folders
``resolve_split`` -> ``build_dataset``), a damaged file is one error line, the online probe leaves STL-10's
unlabelled images out, ``python -m experiments.imagenet100`` writes CMC's 100 classes as links, and every recipe of
scripts/small-data/ parses with its script's flags and carries the peers' values."""
import glob
import os
import pickle
import re
import shlex
import signal

import numpy as np
import pytest
import torch

import main_deepclusterv2
import main_moco
import main_sce
import main_swav
from src.data.cifar import CifarPickleDataset
from src.data.folders import ArraySplit, build_dataset, resolve_split
from src.data.stl10 import CLASSES as STL_CLASSES
from src.data.stl10 import STL10Binary
from src.evaluation.monitor import Monitor, OnlineLinear, check_watch_args
from src.methods.momentum import check_queue_size
from src.run import dist
from src.run.args import ArgumentParser
from src.run.errors import UserError
from src.run.launch import cli
from tests.helpers import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = dist.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), distributed=False, backend=None,
                    launcher="none")
MOCO = ["-a", "resnet_tiny", "--crop-size", "32", "-b", "8", "--moco-k", "32", "--epochs", "2", "-j", "0", "-p", "2",
        "--seed", "0", "--bn-splits", "2", "--mlp", "--aug-plus"]


# ==== tiny archives in the standard layouts ====
def cifar_images(n, seed):
    """``n`` random 32x32 RGB images, (n, 32, 32, 3) uint8."""
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def write_cifar(root, name="cifar10", per_file=12, seed=0):
    """A CIFAR archive as Krizhevsky's python version lays it out (Python-2 style pickles with byte keys, rows of
    1024 red, 1024 green, 1024 blue values). Returns ``{file: (images HWC, labels)}``."""
    spec = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
                        "batches.meta", b"labels", b"label_names", 10),
            "cifar100": ("cifar-100-python", ["train", "test"], "meta", b"fine_labels", b"fine_label_names", 100)}
    folder, files, meta, key, names, k = spec[name]
    os.makedirs(os.path.join(root, folder), exist_ok=True)
    out = {}
    for i, fname in enumerate(files):
        images = cifar_images(per_file, seed + i)
        labels = [(j + i) % k for j in range(per_file)]
        rows = images.transpose(0, 3, 1, 2).reshape(per_file, 3072)
        with open(os.path.join(root, folder, fname), "wb") as f:
            pickle.dump({b"batch_label": b"x", key: labels, b"data": rows}, f, protocol=2)
        out[fname] = (images, labels)
    with open(os.path.join(root, folder, meta), "wb") as f:
        pickle.dump({names: [f"class{c}".encode() for c in range(k)]}, f, protocol=2)
    return out


def write_stl10(root, n_train=16, n_test=12, n_unlabeled=20, seed=0):
    """An STL-10 archive as ``stl10_binary.tar.gz`` extracts: raw uint8 pixels stored channel by channel, each
    channel column by column, labels 1-10 one byte each. Returns ``{part: (images HWC, labels 0-9 or None)}``."""
    folder = os.path.join(root, "stl10_binary")
    os.makedirs(folder, exist_ok=True)
    rng, out = np.random.default_rng(seed), {}
    for part, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        images = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        images.transpose(0, 3, 2, 1).tofile(os.path.join(folder, f"{part}_X.bin"))  # (N, C, W, H): column-major
        labels = None
        if part != "unlabeled":
            labels = [j % 10 for j in range(n)]
            np.array([t + 1 for t in labels], dtype=np.uint8).tofile(os.path.join(folder, f"{part}_y.bin"))
        out[part] = (images, labels)
    with open(os.path.join(folder, "class_names.txt"), "w") as f:
        f.write("\n".join(STL_CLASSES) + "\n")
    return out


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10")
    return str(root), write_cifar(str(root))


@pytest.fixture(scope="module")
def stl10(tmp_path_factory):
    root = tmp_path_factory.mktemp("stl10")
    return str(root), write_stl10(str(root))


def pixels(dataset, i):
    img, target = dataset[i]
    return np.asarray(img), target


# ==== readers and the dispatch ====
def test_cifar_root_resolves_to_its_train_and_test_pickles(cifar10):
    root, files = cifar10
    train = resolve_split(root, "train")
    assert train == ArraySplit(root, "cifar10", "train") and resolve_split(root, "val").split == "test"
    ds = build_dataset(train, None)
    assert isinstance(ds, CifarPickleDataset) and len(ds) == 60 and ds.classes == [f"class{c}" for c in range(10)]
    img, target = pixels(ds, 12 + 3)  # the 4th image of data_batch_2
    assert np.array_equal(img, files["data_batch_2"][0][3]) and target == files["data_batch_2"][1][3]
    test = build_dataset(resolve_split(root, "val", labelled=True), None)
    assert len(test) == 12 and np.array_equal(pixels(test, 0)[0], files["test_batch"][0][0])
    # the archive's folder itself is accepted too
    assert build_dataset(resolve_split(os.path.join(root, "cifar-10-batches-py"), "train"), None).targets == ds.targets


def test_cifar100_root_resolves_to_its_fine_labels(tmp_path):
    files = write_cifar(str(tmp_path), "cifar100", per_file=7)
    ds = build_dataset(resolve_split(str(tmp_path), "train"), None)
    assert len(ds.classes) == 100 and ds.targets == files["train"][1]
    assert np.array_equal(pixels(ds, 6)[0], files["train"][0][6])


def test_stl10_pixels_are_read_column_major_and_pretraining_adds_the_unlabelled_images(stl10):
    root, parts = stl10
    pretrain = build_dataset(resolve_split(root, "train"), None)
    labelled = build_dataset(resolve_split(root, "train", labelled=True), None)
    test = build_dataset(resolve_split(root, "val", labelled=True), None)
    assert isinstance(pretrain, STL10Binary) and pretrain.split == "train+unlabeled"
    assert (len(pretrain), len(labelled), len(test)) == (36, 16, 12) and labelled.classes == STL_CLASSES
    assert pretrain.targets == parts["train"][1] + [-1] * 20 and test.targets == parts["test"][1]
    for ds, part, i, j in ((pretrain, "train", 5, 5), (pretrain, "unlabeled", 16 + 7, 7), (test, "test", 11, 11)):
        img, _ = pixels(ds, i)
        assert img.shape == (96, 96, 3) and np.array_equal(img, parts[part][0][j])  # rows are rows, not columns


def test_array_items_are_seeded_per_sample_like_image_folders(stl10):
    root, _ = stl10

    def noise(img):
        return torch.rand(3)  # what a random augmentation draws

    a = build_dataset(resolve_split(root, "train"), noise, seed=7)
    b = build_dataset(resolve_split(root, "train"), noise, seed=7)
    a.set_epoch(2), b.set_epoch(2)
    torch.manual_seed(0)
    first = [a[i][0] for i in (3, 30)]
    torch.manual_seed(1)  # the global stream does not matter, (seed, epoch, index) does
    assert all(torch.equal(x, y) for x, y in zip(first, [b[i][0] for i in (3, 30)]))
    b.set_epoch(3)
    assert not torch.equal(first[0], b[3][0])


def test_image_folders_resolve_as_before(tiny_data):
    assert str(resolve_split(tiny_data, "train")) == os.path.join(tiny_data, "train")


def test_a_root_with_two_archives_is_refused_naming_both(tmp_path):
    write_cifar(str(tmp_path), "cifar10", per_file=2)
    write_cifar(str(tmp_path), "cifar100", per_file=2)
    with pytest.raises(UserError, match="CIFAR-10 and CIFAR-100.*cifar-10-batches-py.*cifar-100-python"):
        resolve_split(str(tmp_path), "train")


@pytest.mark.parametrize("damage, needle", [
    ("truncate_x", "not a whole number of 96x96x3 images"),
    ("short_y", "labels for 16 images"),
    ("bad_label", "labels from 1 to 11"),
    ("missing", "missing: unlabeled_X.bin"),
])
def test_damaged_stl10_files_are_named(tmp_path, damage, needle):
    write_stl10(str(tmp_path))
    folder = tmp_path / "stl10_binary"
    if damage == "truncate_x":
        data = (folder / "train_X.bin").read_bytes()
        (folder / "train_X.bin").write_bytes(data[:-100])
    elif damage == "short_y":
        (folder / "train_y.bin").write_bytes((folder / "train_y.bin").read_bytes()[:-1])
    elif damage == "bad_label":
        np.array([1] * 15 + [11], dtype=np.uint8).tofile(folder / "train_y.bin")
    else:
        (folder / "unlabeled_X.bin").unlink()
    with pytest.raises(UserError, match=needle):
        build_dataset(resolve_split(str(tmp_path), "train"), None)


def test_stl10_dataset_pickles_without_its_memory_maps(stl10):
    root, parts = stl10
    ds = build_dataset(resolve_split(root, "train"), None)
    pixels(ds, 0)  # maps opened here
    copy = pickle.loads(pickle.dumps(ds))  # what a spawned loader worker receives
    assert copy._maps is None and np.array_equal(pixels(copy, 20)[0], parts["unlabeled"][0][4])


# ==== the pretraining scripts and the monitor on these layouts ====
def _train(data, out, *extra):
    args = main_moco.get_args_parser().parse_args([data, *MOCO, "--output-dir", str(out), *extra])
    main_moco.check_recipe_args(args)
    check_watch_args(args)
    return main_moco.train(args, CPU)


def _rows(out, kind):
    import json

    return [r for r in map(json.loads, open(os.path.join(out, "log.txt"))) if r.get("type") == kind]


def test_moco_pretrains_on_cifar_pickles_with_the_monitor_on_them(cifar10, tmp_path):
    root, _ = cifar10
    parts = _train(root, tmp_path / "run", "--monitor_data", root, "--online_linear")
    assert parts.finished and isinstance(parts.dataset, CifarPickleDataset) and len(parts.dataset) == 60
    assert [(r["epoch"], r["trunk"]) for r in _rows(tmp_path / "run", "monitor")] == \
        [(e, t) for e in range(2) for t in ("online", "momentum")]
    assert [r["epoch"] for r in _rows(tmp_path / "run", "online_linear")] == [0, 1]


def test_moco_pretrains_on_stl10_train_and_unlabeled_and_the_probe_skips_the_unlabelled(stl10, tmp_path):
    root, _ = stl10
    parts = _train(root, tmp_path / "run", "--monitor_data", root, "--online_linear")
    assert parts.finished and len(parts.dataset) == 36 and parts.dataset.targets.count(-1) == 20
    probe = _rows(tmp_path / "run", "online_linear")
    assert [r["epoch"] for r in probe] == [0, 1] and all(0 <= r["val_top1"] <= 100 for r in probe)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert torch.isfinite(ckpt["monitor"]["probe"]["linear"]["weight"]).all()  # batches of only -1 left it finite


def test_the_monitor_reads_the_labelled_splits_of_an_archive(stl10):
    root, _ = stl10
    args = main_moco.get_args_parser().parse_args([root, *MOCO, "--monitor_data", root])
    check_watch_args(args)
    monitor = Monitor.from_args(args, CPU, lambda: {}, 32, 10, None)
    assert (len(monitor.train_set), len(monitor.val_set)) == (16, 12)  # STL-10 train (labelled only) / test
    assert -1 not in monitor.train_set.targets


def test_online_probe_leaves_unlabelled_images_out():
    torch.manual_seed(0)
    features, labels = torch.randn(8, 5), torch.tensor([0, 1, -1, 2, -1, 1, 0, -1])
    a, b = OnlineLinear(3, 0.5, 10, torch.device("cpu")), OnlineLinear(3, 0.5, 10, torch.device("cpu"))
    a.observe(features, labels, 0)
    keep = labels >= 0
    b.observe(features[keep], labels[keep], 0)
    assert torch.allclose(a.linear.weight, b.linear.weight, atol=1e-7)
    before = a.linear.weight.clone()
    a.optimizer.state.clear()  # no momentum left over: a batch without labels must not move the probe
    a.observe(features, torch.full((8,), -1), 1)
    assert torch.equal(a.linear.weight, before) and torch.isfinite(a.linear.weight).all()


def cli_run(module, argv, capsys):
    """``python SCRIPT argv`` in this process: (exit status, stderr)."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    code = 0
    try:
        cli(module.main, lambda: ArgumentParser(parents=[module.get_args_parser(add_help=False)]).parse_args(argv))
    except SystemExit as exc:
        code = exc.code
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    return code, capsys.readouterr().err


def one_error_line(code, err):
    assert code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_truncated_stl10_file_is_one_error_line(tmp_path, capsys):
    write_stl10(str(tmp_path))
    path = tmp_path / "stl10_binary" / "unlabeled_X.bin"
    path.write_bytes(path.read_bytes()[:-1])
    line = one_error_line(*cli_run(main_moco, [str(tmp_path), *MOCO, "--output-dir", str(tmp_path / "o")], capsys))
    assert "unlabeled_X.bin" in line and "re-extract stl10_binary.tar.gz" in line


def test_a_corrupt_cifar_pickle_given_as_monitor_data_is_one_error_line(cifar10, tmp_path, capsys):
    bad = tmp_path / "bad"
    write_cifar(str(bad), per_file=2)
    (bad / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x02not a pickle")
    argv = [cifar10[0], *MOCO, "--output-dir", str(tmp_path / "o"), "--monitor_data", str(bad)]
    line = one_error_line(*cli_run(main_moco, argv, capsys))
    assert "test_batch" in line and "re-extract the archive" in line


def test_monitor_data_without_splits_or_archive_is_one_error_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = [str(tmp_path / "empty"), *MOCO, "--monitor_data", str(tmp_path / "empty")]
    line = one_error_line(*cli_run(main_moco, argv, capsys))
    assert "train" in line and "--monitor" in line


# ==== python -m experiments.imagenet100 ====
CMC = [line.strip() for line in open(os.path.join(ROOT, "data_lists", "imagenet100.txt")) if line.strip()]


def fake_imagenet(root, classes, extra=("n99999999",), per_class=2):
    for split in ("train", "val"):
        for c in list(classes) + list(extra):
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(per_class):
                open(os.path.join(root, split, c, f"{c}_{i}.JPEG"), "wb").write(f"{split}/{c}/{i}".encode())


def run_imagenet100(argv, capsys):
    import importlib

    tool = importlib.import_module("experiments.imagenet100")
    code = 0
    try:
        tool.main(ArgumentParser(parents=[tool.get_args_parser()]).parse_args(argv))
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr()


def test_cmc_list_is_shipped():
    assert len(CMC) == len(set(CMC)) == 100 and all(re.fullmatch(r"n\d{8}", c) for c in CMC)


def test_imagenet100_writes_the_100_classes_as_links(tmp_path, capsys):
    src, dst = tmp_path / "imagenet", tmp_path / "out" / "imagenet100"
    fake_imagenet(str(src), CMC)
    code, out = run_imagenet100([str(src), str(dst)], capsys)
    assert code == 0 and "100 classes, 200 train images, 200 val images" in out.out
    for split in ("train", "val"):
        assert sorted(os.listdir(dst / split)) == sorted(CMC)  # the extra class is left out
        link = dst / split / CMC[0] / f"{CMC[0]}_1.JPEG"
        assert link.is_symlink() and os.readlink(link) == str(src / split / CMC[0] / f"{CMC[0]}_1.JPEG")
        assert link.read_bytes() == f"{split}/{CMC[0]}/1".encode()
    assert not glob.glob(str(tmp_path / "out" / ".tmp-*"))  # the temporary folder was renamed


def test_imagenet100_missing_class_is_one_error_line_and_writes_nothing(tmp_path, capsys):
    src, dst = tmp_path / "imagenet", tmp_path / "imagenet100"
    fake_imagenet(str(src), CMC[:-1])
    code, out = run_imagenet100([str(src), str(dst)], capsys)
    line = one_error_line(code, out.err)
    assert CMC[-1] in line and "1 of the 100 classes" in line and os.path.join(str(src), "train") in line
    assert not dst.exists() and not glob.glob(str(tmp_path / ".tmp-*"))


def test_imagenet100_existing_destination_is_one_error_line(tmp_path, capsys):
    src, dst = tmp_path / "imagenet", tmp_path / "imagenet100"
    fake_imagenet(str(src), CMC, per_class=1)
    dst.mkdir()
    code, out = run_imagenet100([str(src), str(dst)], capsys)
    assert "already exists" in one_error_line(code, out.err) and os.listdir(dst) == []


# ==== the recipes of scripts/small-data/ ====
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "scripts", "small-data", "*.sh")))
DATASETS = {"cifar10": 32, "cifar100": 32, "stl10": 96, "imagenet100": 224}
METHODS = {"moco": main_moco, "sce": main_sce, "swav": main_swav, "deepclusterv2": main_deepclusterv2,
           "selav2": main_deepclusterv2}
ITERS = {"cifar10": 195, "cifar100": 195, "stl10": 410, "imagenet100": 494}  # batch 256: floor(N / 256)


def recipe(path):
    """``(text, module, parsed flags)`` of a recipe's ``python -u main_*.py`` command, $DATA and $OUTPUT given."""
    text = open(path).read()
    start = text.index("python -u main_")
    cmd = shlex.split(text[start:].replace("\\\n", " "), comments=True)
    script = cmd[2]
    argv = [a.replace("$DATA", "/data").replace("$OUTPUT", "/out") for a in cmd[3:]]
    module = {"main_moco.py": main_moco, "main_sce.py": main_sce, "main_swav.py": main_swav,
              "main_deepclusterv2.py": main_deepclusterv2}[script]
    return text, module, module.get_args_parser().parse_args(argv)


def test_one_recipe_per_method_and_dataset():
    assert sorted(os.path.basename(p) for p in SCRIPTS) == sorted(f"{d}_{m}.sh" for d in DATASETS for m in METHODS)


@pytest.mark.parametrize("path", SCRIPTS, ids=[os.path.basename(p) for p in SCRIPTS])
def test_recipe_parses_and_watches_the_labelled_data(path):
    dataset, method = os.path.basename(path)[:-3].split("_")
    text, module, a = recipe(path)
    assert module is METHODS[method]
    assert text.startswith("#!/bin/bash\n") and "sbatch" not in text and "srun" not in text
    assert re.search(r"^DATA=\$\{DATA:-[^}]+\}", text, re.M) and re.search(r"^OUTPUT=\$\{OUTPUT:-[^}]+\}", text, re.M)
    assert a.monitor_data == "/data" and a.online_linear and a.monitor_every >= 1
    assert (a.monitor_crop, a.monitor_resize) == (DATASETS[dataset], 256 if dataset == "imagenet100" else
                                                  DATASETS[dataset])
    assert (a.data if module is main_moco else a.data_path) == "/data"
    assert (a.output_dir if module is main_moco else a.dump_path) == "/out"
    crop = a.crop_size if module is main_moco else a.size_crops
    assert crop == (DATASETS[dataset] if module is main_moco else [DATASETS[dataset]])
    assert a.arch == "resnet18" and a.cifar_stem == dataset.startswith("cifar")
    (main_moco.check_recipe_args if module is main_moco else module.check_args)(a)  # the script's own checks
    if module is main_moco:
        check_queue_size(a.moco_k, a.batch_size)
    elif module is main_sce:
        check_queue_size(a.queue_size, 2 * a.batch_size)  # both views are enqueued


@pytest.mark.parametrize("path", [p for p in SCRIPTS if "_moco" in p], ids=lambda p: os.path.basename(p))
def test_moco_recipe_values(path):
    dataset = os.path.basename(path).split("_")[0]
    _, _, a = recipe(path)
    if dataset.startswith("cifar"):  # facebookresearch/moco colab/moco_cifar10_demo.ipynb
        assert (a.batch_size, a.lr, a.weight_decay, a.moco_k, a.moco_m, a.moco_t, a.moco_dim, a.bn_splits,
                a.epochs, a.mlp, a.min_scale, a.gaussian_blur, a.cos) == (512, 0.06, 5e-4, 4096, 0.99, 0.1, 128, 8,
                                                                           200, None, 0.08, 0.0, True)
    else:  # solo-learn scripts/pretrain/imagenet-100/mocov2plus.yaml
        assert (a.batch_size, a.lr, a.weight_decay, a.moco_k, a.moco_m, a.moco_t, a.moco_dim, a.epochs, a.mlp,
                a.min_scale, a.gaussian_blur, a.amp) == (256, 0.3, 1e-4, 65536, 0.99, 0.2, 256, 400, "simple", 0.08,
                                                         0.5, "fp16")


@pytest.mark.parametrize("path", [p for p in SCRIPTS if re.search(r"_(swav|deepclusterv2|selav2)\.sh$", p)],
                         ids=lambda p: os.path.basename(p))
def test_swav_family_recipe_values(path):  # solo-learn scripts/pretrain/{cifar,imagenet-100}/{swav,deepclusterv2}
    dataset, method = os.path.basename(path)[:-3].split("_")
    _, _, a = recipe(path)
    assert (a.batch_size, a.base_lr, a.final_lr, a.wd, a.hidden_mlp, a.feat_dim, a.temperature, a.nmb_crops,
            a.min_scale_crops, a.crops_for_assign, a.epochs) == (256, 0.6, 0.0006, 1e-6, 2048, 128, 0.1, [2], [0.08],
                                                                  [0, 1], 1000 if dataset.startswith("cifar") else 400)
    assert a.blur_scale == (1.0 if dataset == "imagenet100" else "relative")  # blur all but off below 224 px
    if method == "swav":
        assert (a.nmb_prototypes, a.queue_length, a.epoch_queue_starts, a.epsilon, a.sinkhorn_iterations,
                a.warmup_epochs, a.start_warmup) == (3000, 3840, 50, 0.05, 3, 10, 3e-5)
        assert a.freeze_prototypes_niters == 2 * ITERS[dataset]  # freeze_prototypes_epochs: 2
    else:
        assert (a.nmb_prototypes, a.warmup_epochs, a.start_warmup) == ([3000, 3000, 3000], 11, 0.0)
        assert a.mode == ("sela" if method == "selav2" else "deepcluster")
        if method == "selav2":  # the official selav2 scripts freeze the prototypes for 1 epoch
            assert (a.freeze_prototypes_niters, a.epsilon, a.sela_rounding) == (ITERS[dataset], 0.05, "balanced")
        else:
            assert a.freeze_prototypes_niters >= a.epochs * ITERS[dataset]  # k-means centroids: never trained


@pytest.mark.parametrize("path", [p for p in SCRIPTS if "_sce" in p], ids=lambda p: os.path.basename(p))
def test_sce_recipe_values(path):
    dataset = os.path.basename(path).split("_")[0]
    _, _, a = recipe(path)
    if dataset.startswith("cifar"):  # CEA-LIST/SCE sce/configs/run/pretrain/sce/resnet18/resnet18_cifar10.yaml
        assert (a.queue_size, a.temperature, a.temperature_m, a.coeff, a.momentum_start, a.feat_dim,
                a.proj_hidden_dim, a.batch_size, a.warmup_epochs, a.epochs, a.min_scale_crops,
                a.solarize_prob) == (4096, 0.1, 0.05, 0.5, 0.99, 128, 512, 256, 5, 200, [0.2], [0.0, 0.0, 0.0])
    else:  # juliendenize/eztorch eztorch/configs/run/pretrain/sce/resnet50/resnet50_imagenet.yaml
        assert (a.queue_size, a.temperature, a.temperature_m, a.coeff, a.momentum_start, a.feat_dim,
                a.proj_hidden_dim, a.pred_hidden_dim, a.batch_size, a.warmup_epochs, a.min_scale_crops, a.blur_prob,
                a.solarize_prob) == (65536, 0.1, 0.07, 0.5, 0.99, 256, 4096, 4096, 256, 10, [0.2], [1.0, 0.1, 0.5],
                                     [0.0, 0.2, 0.2])
    assert (a.base_lr, a.wd, a.trust_coefficient) == (0.3, 1e-6, 1e-3)  # the authors' LARS values
