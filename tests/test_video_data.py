"""Video data (docs/video.md "Data and augmentation"): clip spans and frame subsampling read back from frame numbers drawn into
the frames, the same crop box and colour parameters on every frame of a clip but not across clips, the temporal
difference against its formula, the 30 test views in order, skipping of corrupt / too-short videos, split files,
and the demo generator."""
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from src.augment.video import VIDEO_MEAN, VIDEO_STD, ClipAugment, ClipTestTransform, sce_clip_views
from src.data.video.clips import (ConstantClipsSampler, RandomMultiClipSampler, difference_pairs, temporal_difference,
                                  uniform_indices)
from src.data.video.dataset import VideoDataset, video_folder_samples
from src.data.video.demo import make_video_demo, write_frame_folder, write_video
from src.data.video.io import PyAVVideo, open_video
from src.data.video.splits import split_samples

FPS, SECONDS, H, W = 25, 4.0, 64, 96
N = int(FPS * SECONDS)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread per module


def numbered_frames(n=N):
    """Frame k carries k in 8 blocks (16 x 8 px, black / white) at columns 32-63, seen by all 3 test crops, over a
    horizontal ramp in the bottom half that tells the crops apart."""
    frames = np.zeros((n, H, W, 3), np.uint8)
    ramp = np.round(np.arange(W) * 255 / (W - 1)).astype(np.uint8)
    for k in range(n):
        frames[k, H // 2:] = ramp[None, :, None]
        for bit in range(8):
            if k >> bit & 1:
                r, c = bit // 4, bit % 4
                frames[k, 16 * r:16 * r + 16, 32 + 8 * c:40 + 8 * c] = 255
    return frames


def read_number(frame):
    """Inverse of numbered_frames on a (H, W, 3) array in [0, 255] (uncropped)."""
    return sum(1 << bit for bit in range(8) if frame[16 * (bit // 4) + 8, 36 + 8 * (bit % 4)].mean() > 127)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    frames = numbered_frames()
    write_video(str(root / "numbered" / "a" / "numbered.mp4"), frames, fps=FPS)
    folder = root / "frames" / "a" / "numbered"
    os.makedirs(folder)
    for i, f in enumerate(frames):  # lossless frames
        Image.fromarray(f).save(folder / f"img_{i + 1:05d}.png")
    return root


def identity(clip, view_id):
    return clip


class Recorder:
    """Wraps a clip sampler and keeps the views it drew."""

    def __init__(self, sampler):
        self.sampler, self.views = sampler, []

    def __call__(self, duration):
        self.views = self.sampler(duration)
        return self.views


@pytest.mark.parametrize("kind", ["numbered", "frames"])
@pytest.mark.parametrize("num_frames", [8, 16])
def test_clips_cover_their_2_56_s_span_with_uniform_frames(videos, kind, num_frames):
    samples, classes = video_folder_samples(str(videos / kind))
    assert open_video(samples[0][0], FPS).duration == pytest.approx(SECONDS)
    rec = Recorder(RandomMultiClipSampler(2, 2.56))
    ds = VideoDataset(samples, classes, rec, identity, num_frames=num_frames, frames_fps=FPS, seed=1)
    starts = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        clips, view_ids, _ = ds.read_views(0)
        assert view_ids == [0, 1] and len(clips) == 2
        for (start, end, _), clip in zip(rec.views, clips):
            assert end - start == pytest.approx(2.56) and 0 <= start <= SECONDS - 2.56
            starts.append(start)
            numbers = [read_number(f.permute(1, 2, 0).numpy()) for f in clip]
            inside = [k for k in range(N) if start <= k / FPS < end]  # the raw frames of the clip
            assert len(inside) in (64, 65)  # 2.56 s at 25 fps
            assert numbers == [inside[i] for i in uniform_indices(len(inside), num_frames)]
            assert numbers[0] / FPS - start < 1 / FPS and end - numbers[-1] / FPS <= 1 / FPS  # the whole span
    assert len(set(starts)) == len(starts)  # independent starts


def test_random_starts_are_uniform_over_the_valid_range():
    torch.manual_seed(0)
    s = np.array([[v[0] for v in RandomMultiClipSampler(2, 2.56)(10.0)] for _ in range(2000)])
    assert s.min() >= 0 and s.max() <= 10 - 2.56
    assert abs(s.mean() - (10 - 2.56) / 2) < 0.15 and np.corrcoef(s[:, 0], s[:, 1])[0, 1] < 0.1
    assert RandomMultiClipSampler(2, 2.56)(1.0) == [(0.0, 2.56, 0), (0.0, 2.56, 1)]  # shorter than a clip


def test_uniform_indices_truncate_a_linspace():
    assert uniform_indices(77, 8) == [0, 10, 21, 32, 43, 54, 65, 76]
    assert uniform_indices(3, 8) == [0, 0, 0, 0, 1, 1, 1, 2]  # 0, 0.29, 0.57, 0.86, 1.14, ...


def test_thirty_test_views_in_order(videos):
    sampler = ConstantClipsSampler(10, 2.56, 3)
    views = sampler(SECONDS)
    assert len(views) == 30
    max_start = SECONDS - 2.56
    for v, (start, end, crop) in enumerate(views):  # clip-major: clip v // 3, crop v % 3
        assert crop == v % 3
        assert start == pytest.approx((v // 3) * max_start / 9) and end == pytest.approx(start + 2.56)
    samples, classes = video_folder_samples(str(videos / "frames"))
    ds = VideoDataset(samples, classes, sampler, ClipTestTransform(64, 64, 3), num_frames=4, frames_fps=FPS,
                      output="stack")
    out, _ = ds[0]
    assert out.shape == (30, 3, 4, 64, 64)
    pixels = (out * VIDEO_STD + VIDEO_MEAN) * 255  # back to [0, 255]
    for v, (start, _, crop) in enumerate(views):
        first = math.ceil(start * FPS - 1e-9)
        frame0 = pixels[v, :, 0].permute(1, 2, 0).numpy()
        # the crop starts at column 0 / 16 / 32 of the 96-px frame: its number blocks sit 32 / 16 / 0 px in
        full = np.zeros((H, W, 3))
        full[:, 16 * crop:16 * crop + 64] = frame0
        assert read_number(full) == first, v
        assert frame0[H - 1, 0, 0] == pytest.approx(16 * crop * 255 / (W - 1), abs=2)  # ramp value at the left


def test_every_frame_of_a_clip_gets_the_same_box_and_colours():
    torch.manual_seed(0)
    still = torch.rand(1, 3, 48, 64).mul(255).expand(6, 3, 48, 64).contiguous()  # 6 identical frames
    views = sce_clip_views(24, blur_scale=24 / 224)
    aug = ClipAugment(24, jitter_p=1.0, grey_p=0.5, blur_p=0.5, blur_kernel=5, blur_sigma=(0.1, 1.0),
                      solarize_p=0.5)
    for _ in range(20):
        for out in (views(still, 0), views(still, 1), aug(still)):
            assert out.shape == (3, 6, 24, 24)
            assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-5)
    moving = torch.rand(6, 3, 48, 64) * 255
    for _ in range(10):
        p = aug.sample_params(48, 64)
        whole = aug.apply(moving, p)
        frame_by_frame = torch.cat([aug.apply(moving[t:t + 1], p) for t in range(6)], dim=1)
        assert torch.allclose(whole, frame_by_frame, atol=1e-5)  # one parameter set for the whole clip


def test_crop_scale_and_independent_parameters_per_clip():
    torch.manual_seed(0)
    aug = ClipAugment(32, scale=(0.2, 0.766))
    params = [aug.sample_params(120, 160) for _ in range(300)]
    areas = [p["box"][2] * p["box"][3] / (120 * 160) for p in params]
    assert 0.19 <= min(areas) and max(areas) <= 0.78
    assert len({p["box"] for p in params}) > 250
    jitters = [p["jitter"]["brightness"] for p in params if p["jitter"]]
    assert 0.7 < len(jitters) / 300 < 0.9 and len(set(jitters)) == len(jitters)


def test_two_clips_of_a_still_video_differ_but_each_is_constant_in_time(tmp_path):
    frame = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    write_frame_folder(str(tmp_path / "a" / "still"), np.repeat(frame[None], 90, axis=0))
    samples, classes = video_folder_samples(str(tmp_path))
    ds = VideoDataset(samples, classes, RandomMultiClipSampler(2, 2.56), sce_clip_views(24, blur_scale=0.1),
                      num_frames=8, seed=0)
    for epoch in range(3):
        ds.set_epoch(epoch)
        (a, b), _ = ds[0]
        assert not torch.allclose(a, b, atol=1e-3)
        for clip in (a, b):
            assert torch.allclose(clip, clip[:, :1].expand_as(clip), atol=1e-4)
        (a2, _), _ = ds[0]
        assert torch.equal(a, a2)  # seeded per (seed, epoch, index)


def test_temporal_difference_formula(videos):
    rng = np.random.default_rng(0)
    f = torch.from_numpy((rng.random((5, 4, 6, 3)) * 255).astype(np.uint8))
    grey = f.double() @ torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    expected = (grey[:-1] - grey[1:] + 255) / 2
    out = temporal_difference(f[:-1], f[1:])
    assert out.shape == (4, 4, 6, 3) and torch.allclose(out[..., 0].double(), expected, atol=1e-3)
    assert torch.equal(out[..., 0], out[..., 2])
    assert difference_pairs([0, 3, 4], 5) == [(0, 1), (3, 4), (3, 4)]  # the last repeats the previous difference

    # in the dataset (p = 1): the kept frames' differences of consecutive raw frames, before any augmentation
    samples, classes = video_folder_samples(str(videos / "frames"))
    rec = Recorder(RandomMultiClipSampler(2, 2.56))
    ds = VideoDataset(samples, classes, rec, identity, num_frames=8, temporal_diff_p=1.0, frames_fps=FPS, seed=3)
    clips, _, _ = ds.read_views(0)
    raw = torch.from_numpy(numbered_frames()).double()
    g = raw @ torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    for (start, end, _), clip in zip(rec.views, clips):
        inside = [k for k in range(N) if start <= k / FPS < end]
        for t, i in enumerate(uniform_indices(len(inside), 8)):
            j = inside[min(i, len(inside) - 2)]
            want = (g[j] - g[j + 1] + 255) / 2
            assert torch.allclose(clip[t, 1].double(), want, atol=1e-3)


def test_corrupt_and_too_short_videos_are_skipped_with_a_counted_warning(tmp_path, capsys):
    good = str(tmp_path / "a" / "good.mp4")
    write_video(good, numbered_frames(40), fps=FPS)
    (tmp_path / "a" / "garbage.mp4").write_bytes(b"not a video at all" * 100)
    data = open(good, "rb").read()
    (tmp_path / "a" / "half.mp4").write_bytes(data[:len(data) // 2])
    write_video(str(tmp_path / "a" / "one_frame.mp4"), numbered_frames(1), fps=FPS)
    samples, classes = video_folder_samples(str(tmp_path))
    names = [os.path.basename(p) for p, _ in samples]
    assert names == ["garbage.mp4", "good.mp4", "half.mp4", "one_frame.mp4"]
    ds = VideoDataset(samples, classes, RandomMultiClipSampler(1, 2.56), identity, num_frames=4, output="single",
                      seed=0)
    for i in range(len(ds)):
        clip, _ = ds[i]
        assert clip.shape == (4, 3, H, W)  # every index yields the good video
    # every meeting counts: index 0 garbage; 2 half, 3 one frame, 0 garbage; 3 one frame, 0 garbage
    assert ds.n_skipped == 6
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: skipping video")]
    assert len(warnings) == 3  # one line per file, however often it is met
    assert any("garbage.mp4" in w for w in warnings) and any("half.mp4" in w for w in warnings)
    assert any("one_frame.mp4" in w and "too short" in w for w in warnings)


def test_split_files_ucf101_and_hmdb51(tmp_path):
    root = make_video_demo(str(tmp_path / "demo"), num_classes=2, train_per_class=4, val_per_class=2, height=32,
                           width=40, seconds=1.0)
    ucf = os.path.join(root, "ucf")
    for s in (1, 2, 3):
        train, classes = split_samples(os.path.join(ucf, "videos"), os.path.join(ucf, "splits"), s, train=True)
        test, _ = split_samples(os.path.join(ucf, "videos"), os.path.join(ucf, "splits"), s, train=False)
        assert classes == ["Circle", "Square"]
        groups = {int(os.path.basename(p).split("_g")[1][:2]) for p, _ in test}
        assert groups <= {2 * s - 1, 2 * s} and not {p for p, _ in train} & {p for p, _ in test}
        assert len(train) + len(test) == 12
        assert all(classes[label] in p for p, label in train + test)
    hmdb = tmp_path / "hmdb"
    for cls in ("brush_hair", "cartwheel"):
        write_frame_folder(str(hmdb / "videos" / cls / f"{cls}_1"), numbered_frames(3))
        write_video(str(hmdb / "videos" / cls / f"{cls}_2.avi"), numbered_frames(3))
        os.makedirs(hmdb / "splits", exist_ok=True)
        (hmdb / "splits" / f"{cls}_test_split1.txt").write_text(f"{cls}_1.avi 1 \n{cls}_2.avi 2 \n{cls}_3.avi 0 \n")
    train, classes = split_samples(str(hmdb / "videos"), str(hmdb / "splits"), 1, train=True)
    test, _ = split_samples(str(hmdb / "videos"), str(hmdb / "splits"), 1, train=False)
    assert classes == ["brush_hair", "cartwheel"]
    assert [os.path.basename(p) for p, _ in train] == ["brush_hair_1", "cartwheel_1"]  # frame folders
    assert [(os.path.basename(p), y) for p, y in test] == [("brush_hair_2.avi", 0), ("cartwheel_2.avi", 1)]


def test_demo_generator_is_deterministic(tmp_path):
    kw = dict(num_classes=2, train_per_class=2, val_per_class=1, height=32, width=64, seconds=0.6, seed=5)
    a, b = make_video_demo(str(tmp_path / "a"), **kw), make_video_demo(str(tmp_path / "b"), **kw)
    files = sorted(os.path.relpath(os.path.join(d, n), a) for d, _, ns in os.walk(a) for n in ns)
    assert "train/circle/circle_000.mp4" in files and "val/square/square_002.mp4" in files
    assert "ucf/splits/testlist03.txt" in files
    for rel in files:
        if rel.endswith(".mp4"):  # the same decoded frames (and, with the MPEG-4 encoder, the same bytes)
            fa, fb = (PyAVVideo(os.path.join(d, rel)) for d in (a, b))
            (sa,), (sb,) = fa.read_spans([(0, 1)]), fb.read_spans([(0, 1)])
            assert len(sa) == len(sb) == 15 and all(np.array_equal(x[1], y[1]) for x, y in zip(sa, sb)), rel
        assert open(os.path.join(a, rel), "rb").read() == open(os.path.join(b, rel), "rb").read(), rel
