"""main_sce.py --modality video: the video recipe's defaults for unset flags (given flags win), flag checks, a 1-process
smoke run whose trunk loads back, and a 2-process gloo run of R3D-18 at 4 frames x 32 px that ends an epoch with
the ranks in sync and a checkpoint."""
import os

import pytest
import torch

import main_sce
from src.data.video.demo import make_video_demo
from src.models import build_backbone
from src.run.errors import UserError
from tests.helpers import SYNC_RE, assert_ok, free_port, one_error_line, py, run

SMALL = ["--modality", "video", "--num_frames", "4", "--size_crops", "32", "--feat_dim", "16", "--proj_hidden_dim",
         "32", "--pred_hidden_dim", "32", "--workers", "0", "--print_freq", "1", "--epochs", "1", "--warmup_epochs",
         "0", "--base_lr", "0.6"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    # 8 training videos of 3 s at 32 x 40 px: 2 iterations per epoch for 2 processes x 2 videos
    return make_video_demo(str(tmp_path_factory.mktemp("video_sce") / "demo"), num_classes=2, train_per_class=4,
                           val_per_class=1, height=32, width=40, seconds=3.0)


def test_video_defaults_fill_only_unset_flags():
    args = main_sce.parse_args(["--modality", "video", "--data_path", "x", "--arch", "r3d18"])
    assert (args.queue_size, args.proj_hidden_dim, args.pred_hidden_dim) == (32768, 1024, 1024)
    assert (args.base_lr, args.warmup_epochs, args.epochs, args.temperature_m, args.batch_size) == (2.4, 35, 200,
                                                                                                  0.05, 64)
    assert (args.min_scale_crops, args.max_scale_crops, args.size_crops) == ([0.2], [0.766], [224])
    assert (args.temperature, args.coeff, args.momentum_start, args.wd) == (0.1, 0.5, 0.99, 1e-6)
    assert args.blur_prob[:2] == [1.0, 0.1] and args.solarize_prob[:2] == [0.0, 0.2]
    assert (args.num_frames, args.clip_duration, args.temporal_diff_prob) == (8, 2.56, 0.2)
    r50 = main_sce.parse_args(["--modality", "video", "--data_path", "x"])
    assert (r50.arch, r50.queue_size, r50.proj_hidden_dim) == ("r3d50", 65536, 4096)
    given = main_sce.parse_args(["--modality", "video", "--arch", "r3d18", "--queue_size", "65536", "--base_lr",
                                 "0.3", "--max_scale_crops", "1.0", "--num_frames", "16"])
    assert (given.queue_size, given.base_lr, given.max_scale_crops, given.num_frames) == (65536, 0.3, [1.0], 16)
    image = main_sce.parse_args(["--data_path", "x"])
    assert vars(image) == vars(main_sce.get_args_parser().parse_args(["--data_path", "x"]))  # images untouched
    assert (image.arch, image.queue_size, image.base_lr, image.temperature_m) == ("resnet50", 65536, 0.3, 0.07)


@pytest.mark.parametrize("flags,words", [
    (["--modality", "video", "--arch", "resnet18"], "video needs a video trunk"),
    (["--arch", "r3d18"], "video needs a video trunk"),
    (["--modality", "video", "--arch", "r3d18", "--nmb_crops", "2", "4", "--size_crops", "32", "16",
      "--min_scale_crops", "0.2", "0.05", "--max_scale_crops", "1", "0.2"], "2 clips per video"),
])
def test_flag_checks(flags, words):
    with pytest.raises(UserError, match=words):
        main_sce.check_args(main_sce.parse_args(flags + ["--data_path", "x"]))


def test_one_process_smoke_and_trunk_export(videos, tmp_path):
    out = tmp_path / "one"
    p = run(py("main_sce.py", "--data_path", videos, "--arch", "r3d18", "--batch_size", "4", "--queue_size", "16",
               "--max_iters", "2", "--dump_path", str(out), *SMALL), timeout=300)
    assert_ok(p)
    assert "=> r3d18: 8 videos, 2 iterations/epoch, batch 4 x 1 processes, crops [32, 32] x 4 frames" in p.stdout
    assert "stopped by --max_iters 2" in p.stdout
    ckpt = torch.load(out / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert ckpt["arch"] == "r3d18" and ckpt["args"]["modality"] == "video" and ckpt["epoch"] == 1
    trunk, _ = build_backbone("r3d18")
    trunk.load_state_dict(torch.load(out / "trunk.pth", map_location="cpu", weights_only=True))
    assert torch.equal(trunk.conv1.weight, ckpt["state_dict"]["trunk.conv1.weight"])


def test_device_aug_and_channels_last_train_and_resume_the_same_clips(videos, tmp_path):
    """--device-aug: uint8 clips from the workers, augmented on the device; with --channels-last the R3D runs in
    NDHWC. Stopped after 1 iteration and resumed, it ends with the weights of an uninterrupted run (the device
    draws are seeded per step)."""
    flags = ["--data_path", videos, "--arch", "r3d_tiny", "--batch_size", "4", "--queue_size", "16", "--device-aug",
             "--channels-last", "--seed", "5", *SMALL]
    full = run(py("main_sce.py", *flags, "--dump_path", str(tmp_path / "full")), timeout=300)
    assert_ok(full)
    assert "crops [32, 32] x 4 frames" in full.stdout and "Epoch: [0][2/2]" in full.stdout
    part = run(py("main_sce.py", *flags, "--dump_path", str(tmp_path / "part"), "--max_iters", "1",
                  "--save_every_iters", "1"), timeout=300)
    assert_ok(part)
    resumed = run(py("main_sce.py", *flags, "--dump_path", str(tmp_path / "part")), timeout=300)
    assert_ok(resumed)
    assert "resumed from" in resumed.stdout and "iteration 1" in resumed.stdout
    a, b = (torch.load(tmp_path / d / "checkpoint.pth.tar", map_location="cpu", weights_only=True)["state_dict"]
            for d in ("full", "part"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume is not bit-exact"


def test_two_gloo_processes_train_r3d18(videos, tmp_path):
    out, port = tmp_path / "two", free_port()
    p = run(py("-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "main_sce.py",
               "--data_path", videos, "--arch", "r3d18", "--batch_size", "2", "--queue_size", "16",
               "--dump_path", str(out), *SMALL), timeout=300)
    assert_ok(p)
    assert "world_size=2" in p.stdout and "2 iterations/epoch, batch 2 x 2 processes" in p.stdout
    assert SYNC_RE.search(p.stdout) and SYNC_RE.search(p.stdout).group(1) == "2"  # weights and queue replicated
    ckpt = torch.load(out / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["world_size"] == 2
    queue = ckpt["state_dict"]["queue.queue"]
    assert int(ckpt["state_dict"]["queue.ptr"]) == 2 * 2 * 4 % 16  # 2 steps x 2 views x global batch 4
    assert torch.allclose(queue.norm(dim=1), torch.ones(16), atol=1e-4)
    assert os.path.isfile(out / "log.txt")


def test_bad_video_folder_is_one_error_line(tmp_path):
    p = run(py("main_sce.py", "--data_path", str(tmp_path / "none"), "--arch", "r3d18", "--batch_size", "2",
               "--queue_size", "16", "--dump_path", str(tmp_path / "out"), *SMALL))
    assert "does not exist" in one_error_line(p)
