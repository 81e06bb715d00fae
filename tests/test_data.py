"""Tests of src.data.demo and src.data.folders: generator determinism, folder checks, corrupt-image skipping,
seeded per-sample augmentation, and the resumable sampler against DistributedSampler."""
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from src.data.demo import SHAPES, make_demo_dataset
from src.data.folders import (FlatImageFolder, ResumableSampler, SafeImageFolder, build_dataset, build_loader,
                              resolve_split)
from src.run.errors import UserError

TINY = dict(num_classes=3, train_per_class=4, val_per_class=2, size=32, seed=0)


def _tree_bytes(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            path = os.path.join(dirpath, n)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), num_classes=4, train_per_class=6, val_per_class=2,
                             size=32, workers=1)


def _aug(size=24):
    return T.Compose([T.RandomResizedCrop(size, scale=(0.2, 1.0)), T.RandomApply([T.ColorJitter(0.4, 0.4)], p=0.8),
                      T.RandomHorizontalFlip(), T.ToTensor()])


# ---- demo generator ----

def test_demo_deterministic_and_worker_independent(tmp_path):
    a = _tree_bytes(make_demo_dataset(tmp_path / "a", workers=1, **TINY))
    b = _tree_bytes(make_demo_dataset(tmp_path / "b", workers=2, **TINY))
    assert a == b and len(a) == 3 * 6 + 1
    c = _tree_bytes(make_demo_dataset(tmp_path / "c", workers=1, **{**TINY, "seed": 1}))
    assert c[os.path.join("train", SHAPES[0], "0.png")] != a[os.path.join("train", SHAPES[0], "0.png")]


def test_demo_idempotent_and_rebuilds_incomplete(tmp_path):
    root = make_demo_dataset(tmp_path, workers=1, **TINY)
    png = root / "train" / SHAPES[0] / "0.png"
    stamp = png.stat().st_mtime_ns
    make_demo_dataset(tmp_path, workers=1, **TINY)
    assert png.stat().st_mtime_ns == stamp  # marker matched: nothing rewritten
    (root / ".complete").unlink()
    png.write_bytes(b"half-written")
    make_demo_dataset(tmp_path, workers=1, **TINY)
    assert Image.open(png).size == (32, 32) and (root / ".complete").exists()
    make_demo_dataset(tmp_path, workers=1, **{**TINY, "train_per_class": 2})  # other parameters: rebuilt
    assert len(os.listdir(root / "train" / SHAPES[0])) == 2


def test_demo_refuses_foreign_folder(tmp_path):
    (tmp_path / "train" / "cats").mkdir(parents=True)
    with pytest.raises(UserError, match="not a demo dataset"):
        make_demo_dataset(tmp_path, workers=1, **TINY)


def test_demo_balanced_rgb_and_colour_carries_no_class(demo):
    ds = ImageFolder(demo / "train")
    assert ds.classes == sorted(SHAPES[:4])
    assert np.bincount(ds.targets).tolist() == [6] * 4
    img = ds[0][0]
    assert img.mode == "RGB" and img.size == (32, 32)
    # cheap check that class is not in the average colour: per-class means overlap heavily
    means = np.stack([np.asarray(ds[i][0], dtype=np.float32).mean((0, 1)) for i in range(len(ds))])
    per_class = np.stack([means[np.array(ds.targets) == c].mean(0) for c in range(4)])
    assert np.abs(per_class - means.mean(0)).max() < 2 * means.std(0).max()


# ---- folders and checks ----

def test_same_samples_as_imagefolder(demo):
    ours, ref = SafeImageFolder(demo / "train"), ImageFolder(demo / "train")
    assert ours.samples == ref.samples and ours.class_to_idx == ref.class_to_idx and ours.targets == ref.targets
    img, target = ours[5]
    assert target == ref[5][1] and np.array_equal(np.asarray(img), np.asarray(ref[5][0]))


def test_resolve_split(demo, tmp_path):
    assert resolve_split(demo, "train") == demo / "train"
    assert resolve_split(demo / "val", "train") == demo / "val"  # already a class folder
    with pytest.raises(UserError, match="does not exist"):
        resolve_split(tmp_path / "missing", "train")
    (tmp_path / "val").mkdir()
    with pytest.raises(UserError, match="no 'train/' subfolder"):
        resolve_split(tmp_path, "train")


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        SafeImageFolder(tmp_path / "missing")
    with pytest.raises(UserError, match="no class subfolders"):
        SafeImageFolder(tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "a.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match=r"class folder '.*dog' has no images \(extensions: .jpg"):
        SafeImageFolder(tmp_path)
    with pytest.raises(UserError, match="has no images"):
        FlatImageFolder(tmp_path / "dog")


def test_corrupt_image_skipped_with_warning(tmp_path, capsys):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "a" / "1.png").write_bytes(b"\x89PNG garbage bytes")
    ds = SafeImageFolder(tmp_path, transform=T.ToTensor())
    items = [ds[i] for i in range(len(ds))]
    err = capsys.readouterr().err
    assert err.count("warning: skipping unreadable image") == 1 and "1.png" in err
    assert ds.n_skipped == 1
    assert torch.equal(items[1][0], items[2][0])  # index 1 replaced by index 2
    assert [t for _, t in items] == [0, 0, 0, 1, 1, 1]
    for c in ("a", "b"):  # everything unreadable: a clear error instead of an endless loop
        for i in range(3):
            (tmp_path / c / f"{i}.png").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot be read"):
        SafeImageFolder(tmp_path)[0]


def test_flat_folder_nested_and_auto(tmp_path):
    (tmp_path / "x" / "y").mkdir(parents=True)
    for p in ("1.jpg", "x/2.png", "x/y/3.JPEG"):
        Image.new("RGB", (5, 4)).save(tmp_path / p)
    ds = FlatImageFolder(tmp_path)
    assert len(ds) == 3 and set(ds.targets) == {0}
    assert ds[2][0].mode == "RGB"
    flat = tmp_path / "x" / "y"
    assert isinstance(build_dataset(flat, None), FlatImageFolder)
    assert isinstance(build_dataset(tmp_path, None), SafeImageFolder)  # has subfolders: class layout
    assert isinstance(build_dataset(tmp_path, None, flat=True), FlatImageFolder)


# ---- seeded augmentation ----

def _batches(ds, workers, epoch):
    ds.set_epoch(epoch)
    loader = build_loader(ds, 4, None, workers, drop_last=False)
    return torch.cat([x for x, _ in loader])


def test_seeded_augmentation_independent_of_rng_and_workers(demo):
    ds = SafeImageFolder(demo / "train", _aug(), seed=7)
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    a = ds[3][0]
    torch.manual_seed(2), random.seed(2), np.random.seed(2)
    assert torch.equal(a, ds[3][0])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[3][0])
    assert not torch.equal(ds[3][0], ds[4][0])
    ref0, ref1 = _batches(ds, 0, 0), _batches(ds, 0, 1)
    assert torch.equal(ref0[3], a)
    ds2 = SafeImageFolder(demo / "train", _aug(), seed=7)
    loader = build_loader(ds2, 4, None, 2, drop_last=False)  # persistent workers must follow set_epoch
    for epoch, ref in ((0, ref0), (1, ref1)):
        ds2.set_epoch(epoch)
        assert torch.equal(torch.cat([x for x, _ in loader]), ref)


def test_getitem_leaves_global_rng_untouched(demo):
    ds = SafeImageFolder(demo / "train", T.Compose([_aug(), T.Lambda(lambda x: x + np.random.rand())]), seed=0)
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    ds[0]
    after = random.random(), np.random.rand(), torch.rand(1).item()
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    assert after == (random.random(), np.random.rand(), torch.rand(1).item())


# ---- sampler ----

@pytest.mark.parametrize("n,replicas,shuffle", [(10, 1, True), (11, 2, True), (11, 2, False), (3, 4, True)])
def test_sampler_matches_distributed_sampler(n, replicas, shuffle):
    for rank in range(replicas):
        ours = ResumableSampler(n, replicas, rank, shuffle=shuffle, seed=5)
        ref = DistributedSampler(range(n), replicas, rank, shuffle=shuffle, seed=5, drop_last=False)
        for epoch in range(3):
            ours.set_epoch(epoch), ref.set_epoch(epoch)
            full = list(ours)
            assert full == list(ref) and len(ours) == len(ref)
            skip = min(2, len(full))
            ours.set_epoch(epoch, start_index=skip)
            assert list(ours) == full[skip:] and len(ours) == len(full) - skip


def test_sampler_resume_with_loader():
    ds = torch.utils.data.TensorDataset(torch.arange(20))
    sampler = ResumableSampler(len(ds), seed=0)
    sampler.set_epoch(4)
    full = [b[0] for b in build_loader(ds, 3, sampler, 0)]
    sampler.set_epoch(4, start_index=2 * 3)
    resumed = [b[0] for b in build_loader(ds, 3, sampler, 0)]
    assert len(resumed) == len(full) - 2 and all(torch.equal(a, b) for a, b in zip(full[2:], resumed))
    with pytest.raises(ValueError):
        sampler.set_epoch(0, start_index=21)
