"""experiments.sample-augs: file names, sizes, reproducibility with --seed, the IoU modes; reading the set back
(src.evaluation.pair_eval)."""
import argparse
import filecmp
import importlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from src.augment.pairs import IOU_RANGES, MEAN_FILL, box_iou, masked_views, sample_box_pair
from src.evaluation.pair_eval import PositivePairDataset, split_view_name
from src.run.errors import UserError
from tests.helpers import assert_ok, py, run, tiny_dataset

sample_augs = importlib.import_module("experiments.sample-augs")


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """The val split of the tiny demo set: 4 classes x 4 images of 32 px."""
    return os.path.join(tiny_dataset(str(tmp_path_factory.mktemp("augs") / "demo")), "val")


def _in_process(*argv):
    parser = argparse.ArgumentParser(parents=[sample_augs.get_args_parser()])
    return sample_augs.main(parser.parse_args([str(a) for a in argv]))


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root) for n in names
                  if n.endswith(".jpeg"))


def test_cli_names_sizes_and_manifest(src, tmp_path):
    dst = tmp_path / "pairs"
    proc = run(py("-m", "experiments.sample-augs", src, str(dst), "--aug", "moco", "--images-per-class", "3",
                  "--size", "16", "-j", "2", "--seed", "5"))
    assert_ok(proc)
    assert "wrote 12 images x 3 views" in proc.stdout
    classes = sorted(os.listdir(src))
    expected = []
    for cls in classes:
        stems = sorted(os.path.splitext(n)[0] for n in os.listdir(os.path.join(src, cls)))[:3]
        expected += [os.path.join(cls, f"{s}-{v}.jpeg") for s in stems for v in range(3)]
    assert _files(dst) == sorted(expected)
    one = os.path.join(dst, expected[0].rsplit("-", 1)[0])
    assert Image.open(one + "-0.jpeg").size == (32, 32)  # the original, full resolution
    assert Image.open(one + "-1.jpeg").size == Image.open(one + "-2.jpeg").size == (16, 16)
    manifest = json.load(open(dst / "sample-augs.json"))
    assert (manifest["images"], manifest["written"], manifest["seed"], manifest["aug"]) == (12, 12, 5, "moco")


def test_same_seed_same_bytes_whatever_the_workers(src, tmp_path):
    _in_process(src, tmp_path / "a", "--images-per-class", "2", "--size", "16", "--seed", "5", "-j", "1")
    _in_process(src, tmp_path / "b", "--images-per-class", "2", "--size", "16", "--seed", "5", "-j", "2")
    _in_process(src, tmp_path / "c", "--images-per-class", "2", "--size", "16", "--seed", "6")
    files = _files(tmp_path / "a")
    assert files == _files(tmp_path / "b") == _files(tmp_path / "c") and len(files) == 24
    for f in files:
        assert filecmp.cmp(tmp_path / "a" / f, tmp_path / "b" / f, shallow=False), f
    views = [f for f in files if not f.endswith("-0.jpeg")]
    differ = [f for f in views if not filecmp.cmp(tmp_path / "a" / f, tmp_path / "c" / f, shallow=False)]
    assert len(differ) == len(views)  # another seed: other views
    # a re-run skips what exists and leaves the files untouched
    stamp = os.path.getmtime(tmp_path / "a" / files[1])
    res = _in_process(src, tmp_path / "a", "--images-per-class", "2", "--size", "16", "--seed", "5")
    assert (res["existing"], res["written"]) == (8, 0) and os.path.getmtime(tmp_path / "a" / files[1]) == stamp


def test_hard_mode_writes_ten_views_and_masks_read_back(src, tmp_path):
    _in_process(src, tmp_path / "h", "--aug", "hard", "--images-per-class", "1", "--size", "16")
    names = os.listdir(tmp_path / "h" / sorted(os.listdir(src))[0])
    assert sorted(split_view_name(n)[1] for n in names) == list(range(11))
    pairs = PositivePairDataset(tmp_path / "h", "rand-avg-mask", resize=32, crop_size=16)
    views, label = pairs[0]
    assert pairs.views == (0, 9, 10) and len(pairs) == 4 and label == 0
    assert [tuple(v.shape) for v in views] == [(3, 16, 16)] * 3
    _in_process(src, tmp_path / "m", "--images-per-class", "1", "--size", "16")
    with pytest.raises(UserError, match="view 3 of"):  # a moco set has no masked views
        PositivePairDataset(tmp_path / "m", "g-mask")


@pytest.mark.parametrize("mode", sorted(IOU_RANGES))
def test_box_pairs_respect_iou_range_and_no_containment(mode):
    rng = np.random.default_rng(0)
    lo, hi = IOU_RANGES[mode]
    for _ in range(200):
        a, b = sample_box_pair(rng, 120, 90, IOU_RANGES[mode])
        assert lo <= box_iou(a, b)[0] <= hi
        a_in_b = b[0] <= a[0] and b[1] <= a[1] and a[2] <= b[2] and a[3] <= b[3]
        b_in_a = a[0] <= b[0] and a[1] <= b[1] and b[2] <= a[2] and b[3] <= a[3]
        assert not (a_in_b or b_in_a)
        assert 0 <= min(a[0], b[0]) and max(a[2], b[2]) <= 120 and max(a[3], b[3]) <= 90


def test_masks_cover_exactly_the_overlap():
    img = Image.new("RGB", (40, 40), (10, 200, 30))
    box, other = np.array([5, 5, 25, 25]), np.array([20, 15, 38, 35])  # overlap x 20-25, y 15-25 of the image
    plain, noise, rand_noise, mean, rand_mean = (np.asarray(v) for v in
                                                 masked_views(img, box, other, np.random.default_rng(0), 20))
    inside = np.zeros((20, 20), bool)
    inside[10:20, 15:20] = True  # the overlap in crop pixels (crop starts at 5, 5)
    assert (plain == (10, 200, 30)).all()
    assert (mean[inside] == MEAN_FILL).all() and (mean[~inside] == (10, 200, 30)).all()
    assert (noise[~inside] == (10, 200, 30)).all() and (noise[inside] != (10, 200, 30)).any(axis=-1).mean() > 0.9
    for moved in (rand_noise, rand_mean):  # a patch of the overlap's size, somewhere in the crop
        changed = (moved != (10, 200, 30)).any(axis=-1)
        assert 0 < changed.sum() <= 50


def test_bad_source_is_one_error_line(tmp_path, capsys):
    """In process (the same exit path as the CLI, without a second interpreter start-up)."""
    with pytest.raises(SystemExit) as exc:
        _in_process(tmp_path / "missing", tmp_path / "out")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: source folder '{tmp_path / 'missing'}' does not exist: pass an image folder with one subfolder "
        "per class"]
