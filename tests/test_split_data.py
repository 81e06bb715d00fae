"""src.augment.split (the --device-aug pipeline): CPU crops to uint8 with reduced-size JPEG decoding, the device
loader, and a 2-iteration CPU run of every method script with --device-aug."""
import numpy as np
import pytest
import torch
from PIL import Image

from src.augment.crops import MultiScaleCrops
from src.augment.device import MultiCropAugment
from src.augment.recipes import sce_recipe, swav_recipe, swav_views
from src.augment.split import CropsToUint8, DeviceLoader, device_loader, draft_scale
from src.data.folders import build_dataset
from tests.helpers import assert_ok, one_error_line, py, run


def write_jpeg(path, width, height, seed=0):
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((height // 25, width // 25, 3)) * 255).astype(np.uint8))
    small.resize((width, height), Image.BICUBIC).save(path, quality=92)
    return path


def test_draft_scale():
    assert draft_scale([((0, 0, 300, 300), 224)], 500, 375) is None  # 1.3x: full decode
    assert draft_scale([((0, 0, 400, 500), 96), ((0, 0, 200, 250), 96)], 1000, 800) == (480, 384)  # 200/96
    assert draft_scale([((0, 0, 400, 500), 32)], 1000, 800) == (80, 64)


@pytest.mark.parametrize("size,sides,drafted", [((500, 375), (224, 96), False), ((1600, 1200), (64, 32), True)])
def test_crops_to_uint8_with_and_without_draft(tmp_path, size, sides, drafted):
    """SwAV's 2x224 + 6x96 from a 500x375 JPEG: a small crop is < 2x its side, so a full decode; 64 / 32 px
    crops from 1600x1200: a reduced-size decode, with nearly the same pixels."""
    path = write_jpeg(tmp_path / "a.jpg", *size)
    crops = MultiScaleCrops(list(sides), [2, 3], [0.14, 0.05], [1.0, 0.14])
    fast = CropsToUint8(crops.boxes, None)
    full = CropsToUint8(crops.boxes, None, draft=False)
    torch.manual_seed(0)
    a = fast(Image.open(path))
    torch.manual_seed(0)
    b = full(Image.open(path))
    assert [t.shape[1:] for t in a] == [sides[:1] * 2] * 2 + [sides[1:] * 2] * 3
    assert all(t.dtype == torch.uint8 and t.shape[0] == 3 for t in a)
    assert fast.n_drafted == int(drafted) and full.n_drafted == 0
    if not drafted:
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    # the same boxes: a reduced-size decode changes pixels by little (DCT scaling vs antialiased resize)
    diff = torch.stack([(x.float() - y.float()).abs().mean() for x, y in zip(a, b)])
    assert diff.max() < 4, diff


def test_dataset_items_seeded_and_unreadable_skipped(tmp_path):
    root = tmp_path / "imgs" / "c0"
    root.mkdir(parents=True)
    for i in range(3):
        write_jpeg(root / f"{i}.jpg", 200, 150, seed=i)
    (root / "3.jpg").write_bytes(b"not a jpeg")
    transform = swav_recipe([32, 16], [2, 2], [0.14, 0.05], [1.0, 0.14]).split()
    ds = build_dataset(tmp_path / "imgs", transform, seed=0)
    crops, target = ds[1]
    assert target == 0 and [t.shape for t in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 2
    again, _ = ds[1]
    assert all(torch.equal(x, y) for x, y in zip(crops, again))  # seeded by (seed, epoch, index)
    ds.set_epoch(1)
    assert not all(torch.equal(x, y) for x, y in zip(crops, ds[1][0]))
    skipped, _ = ds[3]  # unreadable: replaced by the next image, as on the per-sample path
    assert len(skipped) == 4 and ds.n_skipped == 1


def test_device_loader_augments_and_seeds_by_step():
    views = swav_views([16], [2])
    batches = [([torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8) for _ in range(2)], torch.arange(4))
               for _ in range(3)]
    loader = DeviceLoader(batches, "cpu", augment=MultiCropAugment(views), seed=7)
    out = list(loader)
    assert len(out) == 3 and all(c.dtype == torch.float32 and c.shape == (4, 3, 16, 16) for c in out[0][0])
    assert torch.equal(out[0][1], torch.arange(4))
    again = list(DeviceLoader(batches, "cpu", augment=MultiCropAugment(views), seed=7))
    assert all(torch.equal(a, b) for x, y in zip(out, again) for a, b in zip(x[0], y[0]))
    other = list(DeviceLoader(batches, "cpu", augment=MultiCropAugment(views), seed=8))
    assert not torch.equal(out[0][0][0], other[0][0][0])


def test_device_loader_is_identity_for_the_plain_path():
    loader = [1, 2]
    assert device_loader(loader, transform=None, device="cpu") is loader
    wrapped = device_loader(loader, sce_recipe([16], [2], [0.2], [1.0]).split(), "cpu")
    assert isinstance(wrapped, DeviceLoader) and len(wrapped.augment.views) == 2


# ==== every method script, 2 iterations on the CPU with --device-aug ====
@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data  # the session's 4 classes x 12 images at 32 px (read only)


SCRIPTS = {
    "swav": ["main_swav.py", "--data_path", "{data}", "--arch", "resnet18", "--hidden_mlp", "32", "--feat_dim", "16",
             "--nmb_prototypes", "12", "--batch_size", "8", "--size_crops", "32", "16", "--nmb_crops", "2", "2",
             "--min_scale_crops", "0.14", "0.05", "--max_scale_crops", "1.", "0.14", "--workers", "0",
             "--warmup_epochs", "0", "--epochs", "1", "--print_freq", "1", "--max_iters", "2", "--dump_path", "{out}"],
    "deepclusterv2": ["main_deepclusterv2.py", "--data_path", "{data}", "--arch", "resnet18", "--hidden_mlp", "32",
                      "--feat_dim", "16", "--nmb_prototypes", "6", "6", "6", "--batch_size", "8", "--size_crops", "32",
                      "16", "--nmb_crops", "2", "2", "--min_scale_crops", "0.14", "0.05", "--max_scale_crops", "1.",
                      "0.14", "--workers", "1", "--warmup_epochs", "0", "--epochs", "1", "--print_freq", "1",
                      "--max_iters", "2", "--dump_path", "{out}"],
    "sce": ["main_sce.py", "--data_path", "{data}", "--arch", "resnet18", "--batch_size", "4", "--queue_size", "32",
            "--feat_dim", "16", "--proj_hidden_dim", "32", "--pred_hidden_dim", "32", "--size_crops", "32", "16",
            "--nmb_crops", "2", "2", "--min_scale_crops", "0.2", "0.05", "--max_scale_crops", "1", "0.2", "--epochs",
            "1", "--warmup_epochs", "0", "--workers", "0", "--print_freq", "1", "--max_iters", "2",
            "--dump_path", "{out}"],
    "moco": ["main_moco.py", "{data}", "-a", "resnet18", "--crop-size", "32", "-b", "8", "--moco-k", "32", "--mlp",
             "--aug-plus", "--cos", "-j", "1", "-p", "1", "--seed", "3", "--bn-splits", "2", "--max-iters", "2",
             "--output-dir", "{out}"],
    "moco_multicrop": ["main_moco.py", "{data}", "-a", "resnet18", "-b", "8", "--moco-k", "32", "--mlp", "-j", "0",
                       "-p", "1", "--seed", "3", "--bn-splits", "2", "--num_crops", "2", "2", "--size_crops", "32",
                       "16", "--constrained-cropping", "--max-iters", "2", "--output-dir", "{out}"],
}


def script_cmd(name, data, out, *extra):
    return py(*[a.format(data=data, out=out) for a in SCRIPTS[name]], *extra)


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_script_runs_two_iterations_with_device_aug(data, tmp_path, name):
    spelling = "--device_aug" if name == "sce" else "--device-aug"
    p = run(script_cmd(name, data, tmp_path / name, spelling))
    assert_ok(p)
    assert "iteration 2; checkpoint saved" in p.stdout and "Loss" in p.stdout


def test_moco_device_aug_refuses_autoaugment(data, tmp_path):
    line = one_error_line(run(script_cmd("moco_multicrop", data, tmp_path, "--device-aug", "--auto-augment", "0")))
    assert "--auto-augment" in line
