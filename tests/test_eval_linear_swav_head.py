"""eval_linear.py --global_pooling / --use_bn: SwAV's RegLog head on the last feature map (AvgPool2d(6, stride 1),
BatchNorm2d, Linear) against a loop formulation, end to end on images and on cached features, stop + resume."""
import argparse
import json
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import eval_linear
from src.augment.image import test_transform as classifier_test_transform
from src.evaluation.classifier import LinearClassifier, PooledMapClassifier
from src.models import build_backbone
from src.models.resnet import FeatureMap
from src.run.errors import UserError


# ==== the head against a straightforward formulation ====
def _reference_reglog(fmap, head, train, eps=1e-5):
    """Float64 loops: 6x6 stride-1 window means, per-channel BatchNorm over (batch, h, w) with the biased variance
    (train) or the running statistics (eval), channel-major flatten, x W^T + b."""
    n, c, height, width = fmap.shape
    h, w = height - 5, width - 5
    pooled = torch.zeros(n, c, h, w, dtype=torch.float64)
    for b in range(n):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    pooled[b, ch, i, j] = sum(float(fmap[b, ch, i + di, j + dj]) for di in range(6)
                                              for dj in range(6)) / 36
    normed = pooled.clone()
    head = head.requires_grad_(False)
    for ch in range(c):
        values = [float(pooled[b, ch, i, j]) for b in range(n) for i in range(h) for j in range(w)]
        if train:
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / len(values)
        else:
            mean, var = float(head.bn.running_mean[ch]), float(head.bn.running_var[ch])
        gamma, beta = float(head.bn.weight[ch]), float(head.bn.bias[ch])
        normed[:, ch] = (pooled[:, ch] - mean) / (var + eps) ** 0.5 * gamma + beta
    flat = [[float(normed[b, ch, i, j]) for ch in range(c) for i in range(h) for j in range(w)] for b in range(n)]
    weight, bias = head.linear.weight.double(), head.linear.bias.double()
    return torch.tensor([[sum(x * float(weight[k, d]) for d, x in enumerate(row)) + float(bias[k])
                          for k in range(weight.shape[0])] for row in flat], dtype=torch.float64), pooled


def test_head_equals_loop_formulation_train_and_eval():
    torch.manual_seed(0)
    fmap = torch.randn(5, 3, 8, 7, dtype=torch.float64) * 2 + 1
    head = PooledMapClassifier(3, (8, 7), 4, use_bn=True).double()
    assert head.pooled_size == (3, 2) and head.in_dim == 18
    with torch.no_grad():  # non-trivial affine parameters
        head.bn.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
        head.bn.bias.copy_(torch.tensor([0.1, -0.3, 0.2]))
        head.linear.weight.normal_()
        head.linear.bias.normal_()
    expected, pooled = _reference_reglog(fmap, head, train=True)
    head.train()
    torch.testing.assert_close(head(fmap), expected, rtol=1e-10, atol=1e-10)
    # the running statistics after that one step: momentum 0.1 from (0, 1), unbiased variance (PyTorch's BN)
    values = pooled.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(head.bn.running_mean, 0.1 * values.mean(dim=1))
    torch.testing.assert_close(head.bn.running_var, 0.9 + 0.1 * values.var(dim=1, unbiased=True))
    head.eval()
    expected_eval, _ = _reference_reglog(fmap, head, train=False)
    torch.testing.assert_close(head(fmap), expected_eval, rtol=1e-10, atol=1e-10)
    # the cache path: pooled, flattened features in, the same logits out
    flat = head.pool_features(fmap)
    assert flat.shape == (5, 18)
    torch.testing.assert_close(flat, pooled.flatten(1))
    torch.testing.assert_close(head(flat), expected_eval, rtol=1e-10, atol=1e-10)
    # RegLog's BatchNorm2d(C) shares statistics over the h x w positions: a BatchNorm1d(C*h*w) would differ
    bn1d = torch.nn.BatchNorm1d(18).double().train()
    alt = head.linear(bn1d(flat))
    head.train()
    assert not torch.allclose(alt, head(fmap), atol=1e-3)


def test_head_without_bn_init_and_resnet50_sizes():
    torch.manual_seed(0)
    fmap = torch.randn(2, 3, 6, 9, dtype=torch.float64)
    head = PooledMapClassifier(3, (6, 9), 2, use_bn=False).double()
    assert head.bn is None and head.pooled_size == (1, 4)
    pooled = torch.stack([torch.stack([fmap[:, :, :, j:j + 6].mean(dim=(2, 3))], dim=2) for j in range(4)], dim=3)
    torch.testing.assert_close(head(fmap), head.linear(pooled.reshape(2, 3, 1, 4).flatten(1)))
    # SwAV's sizes: ResNet-50's 2048 x 7 x 7 map at 224 px -> 2048 x 2 x 2 = 8192; RegLog's init N(0, 0.01), 0
    big = PooledMapClassifier(2048, (7, 7), 1000, use_bn=True)
    assert big.in_dim == 8192 and tuple(big.linear.weight.shape) == (1000, 8192)
    big.requires_grad_(False)
    assert abs(float(big.linear.weight.std()) - 0.01) < 1e-4 and float(big.linear.bias.abs().max()) == 0.0
    assert float(big.bn.weight.min()) == float(big.bn.weight.max()) == 1.0 and float(big.bn.bias.abs().max()) == 0
    assert (big.bn.eps, big.bn.momentum) == (1e-5, 0.1)
    assert sorted(big.state_dict()) == ["bn.bias", "bn.num_batches_tracked", "bn.running_mean", "bn.running_var",
                                        "bn.weight", "linear.bias", "linear.weight"]  # RegLog's names
    with pytest.raises(UserError, match="raise --crop_size"):
        PooledMapClassifier(512, (4, 4), 10)


def test_feature_map_is_the_trunk_before_its_global_pooling():
    torch.manual_seed(0)
    trunk, dim = build_backbone("resnet50")
    trunk.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        fmap = FeatureMap(trunk)(x)
        pooled = trunk(x)
    assert fmap.shape == (1, 2048, 7, 7) and dim == 2048
    torch.testing.assert_close(fmap.mean(dim=(2, 3)), pooled)
    assert PooledMapClassifier(2048, (7, 7), 1000).pool_features(fmap).shape == (1, 8192)


def test_global_pooling_ignores_use_bn_as_swav(capsys):
    args = argparse.Namespace(global_pooling=True, use_bn=True, arch="resnet_tiny", crop_size=32)
    trunk, dim = build_backbone("resnet_tiny", cifar_stem=True)
    head, frozen, kind = eval_linear.build_head(args, trunk, dim, 3, torch.device("cpu"), 0)
    assert isinstance(head, LinearClassifier) and frozen is trunk and kind == "linear"
    assert "--use_bn has no effect with --global_pooling True" in capsys.readouterr().out
    args = argparse.Namespace(global_pooling=False, use_bn=False, arch="tv_mobilenetv3_small", crop_size=64)
    trunk, dim = build_backbone("tv_mobilenetv3_small")
    with pytest.raises(UserError, match="last feature map of a ResNet"):
        eval_linear.build_head(args, trunk, dim, 3, torch.device("cpu"), 0)


def test_flags_defaults_and_spellings():
    parse = argparse.ArgumentParser(parents=[eval_linear.get_args_parser()]).parse_args
    a = parse(["d"])
    assert (a.global_pooling, a.use_bn) == (True, False)  # SwAV's defaults
    a = parse(["d", "--global-pooling", "false", "--use-bn", "True"])
    assert (a.global_pooling, a.use_bn) == (False, True)


# ==== eval_linear.py end to end ====
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """3 colour classes x (12 train, 4 val) noisy 64 px PNGs and a main_moco.py-style resnet_tiny checkpoint (CIFAR
    stem: a 128 x 8 x 8 map at 64 px, pooled to 128 x 3 x 3 = 1152-d)."""
    root = tmp_path_factory.mktemp("swavhead")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for c in range(3):
            folder = root / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 120, (64, 64, 3))
                img[..., c] += 120
                Image.fromarray(img.astype(np.uint8)).save(folder / f"{i}.png")
    torch.manual_seed(1)
    trunk, _ = build_backbone("resnet_tiny", cifar_stem=True)
    trunk.train()
    with torch.no_grad():  # BN running statistics away from (0, 1), so eval mode matters
        for _ in range(3):
            trunk(torch.rand(8, 3, 64, 64) * 2)
    ckpt = root / "moco" / "checkpoint.pth.tar"
    ckpt.parent.mkdir()
    torch.save({"arch": "resnet_tiny", "epoch": 1, "args": {"arch": "resnet_tiny", "cifar_stem": True},
                "state_dict": {f"encoder_q.{k}": v for k, v in trunk.state_dict().items()}}, ckpt)
    return root


def _flags(tiny, dump, *extra):
    return [str(tiny / "data"), "--pretrained", str(tiny / "moco" / "checkpoint.pth.tar"), "--resize", "64",
            "--crop_size", "64", "-b", "8", "-j", "0", "-p", "100", "--protocol", "swav", "--lr", "0.05",
            "--global_pooling", "False", "--use_bn", "True", "--dump_path", str(dump), *extra]


def _run(argv):
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return eval_linear.main(argparse.ArgumentParser(parents=[eval_linear.get_args_parser()]).parse_args(argv))
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        torch.set_num_threads(threads)


def _head(dump):
    return torch.load(dump / "checkpoint.pth.tar", weights_only=True)["head"]


def _pooled_features(tiny, split):
    """Independent features: the checkpoint's trunk, eval mode, layer4 map, 6x6 stride-1 means, flattened."""
    from src.data.folders import SafeImageFolder

    trunk, _ = build_backbone("resnet_tiny", cifar_stem=True)
    state = torch.load(tiny / "moco" / "checkpoint.pth.tar", weights_only=True)["state_dict"]
    trunk.load_state_dict({k[len("encoder_q."):]: v for k, v in state.items()})
    trunk.eval()
    data = SafeImageFolder(str(tiny / "data" / split), classifier_test_transform(64, 64, (0.228, 0.224, 0.225)))
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([data[i][1] for i in range(len(data))])
    with torch.no_grad():
        return F.avg_pool2d(trunk.forward_features(x), 6, stride=1).flatten(1), y


def test_end_to_end_on_images_matches_an_independent_head(tiny, tmp_path, capsys):
    """A few iterations on images: the head is SwAV's (bn.*, linear 3 x 1152), and the reported test loss and
    top-1 equal those of the saved head applied by hand (eval-mode BN) to independently computed features."""
    summary = _run(_flags(tiny, tmp_path / "img", "--epochs", "1"))
    out = capsys.readouterr().out
    assert "head: resnet_tiny map 128x8x8 -> AvgPool2d(6, stride 1) -> 1152-d -> BatchNorm2d -> Linear" in out
    head = _head(tmp_path / "img")
    assert tuple(head["linear.weight"].shape) == (3, 1152) and int(head["bn.num_batches_tracked"]) == 5
    assert float((head["bn.running_mean"]).abs().sum()) > 0  # BN statistics were updated while training
    feats, y = _pooled_features(tiny, "val")
    x = feats.view(-1, 128, 3, 3)
    x = (x - head["bn.running_mean"][None, :, None, None]) / (head["bn.running_var"][None, :, None, None] + 1e-5).sqrt()
    x = x * head["bn.weight"][None, :, None, None] + head["bn.bias"][None, :, None, None]
    logits = x.flatten(1) @ head["linear.weight"].t() + head["linear.bias"]
    last = summary["last"]
    assert last["loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-4)
    assert last["top1"] == pytest.approx(100.0 * float((logits.argmax(1) == y).float().mean()))
    saved = json.load(open(tmp_path / "img" / "eval_linear.json"))
    assert saved["args"]["global_pooling"] is False and saved["args"]["use_bn"] is True

    # resuming this run with another head is one error line naming the flags
    with pytest.raises(SystemExit):
        _run(_flags(tiny, tmp_path / "img", "--epochs", "2", "--use_bn", "False"))
    err = capsys.readouterr().err
    assert "error:" in err and "another --global_pooling / --use_bn" in err and "avgpool6+bn" in err


def test_cached_pooled_features_and_stop_resume_equal_uninterrupted(tiny, tmp_path, capsys):
    """--precompute_features: the cache holds the 1152-d pooled features (equal to the independent ones); a run
    stopped mid-epoch by --max_iters and resumed ends bit-identical to the uninterrupted one."""
    common = ["--epochs", "4", "--precompute_features"]
    full = _run(_flags(tiny, tmp_path / "full", *common))
    capsys.readouterr()
    from src.evaluation.feature_store import open_split, read_meta

    folder = str(tmp_path / "full" / "feature_cache_0-1")
    meta = read_meta(folder)
    cached, cached_y = open_split(folder, "train", meta)
    feats, y = _pooled_features(tiny, "train")
    assert tuple(cached.shape) == (36, 1152)
    # the cache stores fp16 rows: equal to the independent features within fp16's rounding
    torch.testing.assert_close(cached[torch.arange(36)].float(), feats, rtol=1e-3, atol=1e-4)
    assert torch.equal(cached_y, y) and meta["key"]["trunk_sha256"].endswith("+avgpool6+bn")

    assert _run(_flags(tiny, tmp_path / "cut", *common, "--max_iters", "7")) is None
    assert "stopped by --max_iters 7 at epoch 1, iteration 2" in capsys.readouterr().out
    resumed = _run(_flags(tiny, tmp_path / "cut", *common))
    out = capsys.readouterr().out
    assert "features read from" in out and "resumed from" in out
    assert resumed["history"] == full["history"]
    a, b = _head(tmp_path / "full"), _head(tmp_path / "cut")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)  # incl. BN running statistics


def test_two_processes_test_with_the_saved_heads_statistics(tiny, tmp_path, capsys):
    """2 gloo processes (no SyncBN on CPU: each rank's BN sees its own sub-batches): the test each epoch uses rank
    0's running statistics, so the reported last test equals -e on the saved head in one process."""
    from helpers import assert_ok, free_port, py, run

    argv = _flags(tiny, tmp_path / "two", "--epochs", "2", "--precompute_features")
    argv[1:3] = ["-a", "resnet_tiny", "--cifar_stem"]  # a random-init trunk (seed 31): the loss stays far from 0
    proc = run(py("-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                  "eval_linear.py", *argv))
    assert_ok(proc)
    assert "batch 8 (4 x 2 processes)" in proc.stdout
    two = json.load(open(tmp_path / "two" / "eval_linear.json"))
    alone = _run(argv + ["-e"])
    out = capsys.readouterr().out
    assert f" * Acc@1 {two['last']['top1']:.3f} Acc@5 {two['last']['top5']:.3f}" in out
    # the 2-process run tests on cached fp16 features, -e on features computed in fp32: equal within fp16's rounding
    assert two["last"]["loss"] > 0.01 and alone["loss"] == pytest.approx(two["last"]["loss"], rel=1e-3)
