"""eval_segmentation.py and its parts: the mIoU against a loop reference, the dilated trunk (output stride 16, the
pretrained weights, the reference's dilation rule on torchvision's ResNet-50), the joint transforms, the VOC and
Cityscapes readers on generated folders with drawn masks, the recipes, a few iterations of each recipe, stop and
resume bit for bit, --runs, bad layouts and NaN refusal."""
import argparse
import json
import os
import signal

import cv2
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import eval_segmentation as seg
from src.augment.segmentation import CityscapesTrain, SegTest, VOCTrain, random_crop
from src.data.folders import build_loader
from src.data.segmentation import CITYSCAPES_CLASSES, cityscapes_segmentation, collate_eval, voc_segmentation
from src.evaluation.samplers import ShardSampler
from src.metrics import confusion_matrix, iou_from_confusion
from src.models import build_backbone
from src.models.segmentation import SegmentationFCN
from src.run.args import ArgumentParser
from src.run.errors import UserError
from src.run.launch import cli
from tests.helpers import exits, one_line

pytestmark = pytest.mark.usefixtures("one_thread")

VOC_COLOURS = {1: (220, 40, 40), 5: (40, 200, 40), 12: (40, 40, 230)}  # aeroplane, bottle, dog
CITY_IDS = {7: (128, 64, 128), 11: (70, 70, 70), 26: (0, 0, 142)}  # road, building, car (label ids)


# ==== generated data: shapes whose colour is their class, 255 on one edge ====
def _draw(rng, rows, cols, colours, background=0):
    img = rng.integers(0, 40, (rows, cols, 3)).astype(np.uint8)
    mask = np.full((rows, cols), background, np.uint8)
    for cls in rng.choice(sorted(colours), size=2, replace=False):
        r0, c0 = int(rng.integers(0, rows // 2)), int(rng.integers(0, cols // 2))
        r1, c1 = r0 + int(rng.integers(rows // 4, rows // 2)), c0 + int(rng.integers(cols // 4, cols // 2))
        img[r0:r1, c0:c1] = colours[cls]
        mask[r0:r1, c0:c1] = cls
        mask[r0, c0:c1] = 255  # a boundary, ignored
    return img, mask


def write_voc(root, n_train=12, n_val=4, seed=0):
    """VOCdevkit/VOC2012 with palette masks (SegmentationClass) and grey ones (SegmentationClassAug); images of
    different sizes."""
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    palette = [v for c in range(256) for v in ((c * 37) % 256, (c * 91) % 256, (c * 53) % 256)]
    for split, n in (("train", n_train), ("val", n_val)):
        ids = []
        for i in range(n):
            name = f"2008_{split}_{i:03d}"
            img, mask = _draw(rng, int(rng.integers(48, 70)), int(rng.integers(48, 70)), VOC_COLOURS)
            Image.fromarray(img).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
            pal = Image.fromarray(mask, mode="P")
            pal.putpalette(palette)
            pal.save(voc / "SegmentationClass" / f"{name}.png")
            Image.fromarray(mask, mode="L").save(voc / "SegmentationClassAug" / f"{name}.png")
            ids.append(name)
        (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    # DeepLab's two-column list format
    aug = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in
           (voc / "ImageSets/Segmentation/train.txt").read_text().split()]
    (voc / "ImageSets/Segmentation/train_aug.txt").write_text("\n".join(aug) + "\n")
    return root


def write_cityscapes(root, n_train=8, n_val=3, seed=1, train_ids=False):
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            city = ("aachen", "bremen")[i % 2]
            (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
            (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
            stem = f"{city}_{i:06d}_000019"
            img, ids = _draw(rng, 48, 96, CITY_IDS, background=21)  # vegetation around the shapes
            ids[:4] = 1  # ego vehicle: void, ignored
            Image.fromarray(img).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            Image.fromarray(ids).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
    return root


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return write_voc(tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    return write_cityscapes(tmp_path_factory.mktemp("city"))


def run_inprocess(argv):
    """``python eval_segmentation.py argv`` in this process, signal handlers restored."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        return seg.main(argparse.ArgumentParser(parents=[seg.get_args_parser()]).parse_args(argv))
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def cli_error(argv, capsys):
    """The CLI's exit path: returns the one ``error:`` line (exit 2, no traceback)."""
    parse = ArgumentParser(parents=[seg.get_args_parser()]).parse_args
    return one_line(*exits(lambda: cli(seg.main, lambda: parse(argv)), capsys))


VOC_FAST = ["--recipe", "voc", "-a", "resnet_tiny", "--crop_size", "64", "--test_size", "64", "-b", "4", "-j", "0",
            "-p", "1", "--test_batch_size", "3"]
CITY_FAST = ["--recipe", "cityscapes", "-a", "resnet_tiny", "--crop_size", "48", "-b", "4", "-j", "0", "-p", "1",
             "--test_batch_size", "2"]


# ==== mIoU ====
def loop_iou(pred, target, num_classes, ignore=255):
    """The reference's SemsegMeter as plain loops in Python integers: TP / FP / FN per class over valid pixels;
    a class with TP + FP + FN = 0 is absent (None)."""
    tp, fp, fn = [0] * num_classes, [0] * num_classes, [0] * num_classes
    for p, t in zip(pred.reshape(-1).tolist(), target.reshape(-1).tolist()):
        if t == ignore:
            continue
        for c in range(num_classes):
            tp[c] += int(p == c and t == c)
            fp[c] += int(p == c and t != c)
            fn[c] += int(p != c and t == c)
    return [tp[c] / (tp[c] + fp[c] + fn[c]) if tp[c] + fp[c] + fn[c] else None for c in range(num_classes)]


def test_miou_hand_case_and_loop_reference():
    # hand case, 3 classes: target [0 0 1 1 | 255 2], prediction [0 1 1 1 | 0 0]
    target = torch.tensor([[0, 0, 1, 1], [255, 2, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 2]])
    conf = confusion_matrix(pred, target, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [2, 0, 1]]  # rows: truth, columns: prediction; 255 left out
    iou, miou = iou_from_confusion(conf)
    # class 0: TP 1, FP 2 (truth 2 -> 0), FN 1 -> 1/4; class 1: TP 2, FP 1 -> 2/3; class 2: TP 1, FN 2 -> 1/3
    assert iou.tolist() == pytest.approx([1 / 4, 2 / 3, 1 / 3]) and miou == pytest.approx((1 / 4 + 2 / 3 + 1 / 3) / 3)

    # random maps with ignored pixels, a class never present and never predicted (absent: left out of the mean) and
    # a class predicted but never true (IoU 0, in the mean)
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (3, 9, 11), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = 255
    pred = torch.randint(0, 4, target.shape, generator=g)
    pred[pred == 3] = 5  # class 5 predicted, never true; class 3 true, never predicted; class 4 absent
    num_classes = 6
    reference = loop_iou(pred, target, num_classes)
    conf = sum(confusion_matrix(p, t, num_classes) for p, t in zip(pred, target))  # summed over images
    iou, miou = iou_from_confusion(conf)
    assert reference[4] is None and np.isnan(iou[4].item())
    assert reference[5] == 0 and reference[3] == 0
    present = [v for v in reference if v is not None]
    assert [v for v in iou.tolist() if not np.isnan(v)] == pytest.approx(present, abs=1e-12)
    assert miou == pytest.approx(sum(present) / len(present), abs=1e-12)
    with pytest.raises(UserError, match="no labelled pixel"):
        iou_from_confusion(confusion_matrix(pred, torch.full_like(pred, 255), num_classes) * 0)


# ==== the network ====
def _reference_dilation(net):
    """The reference's rule (models/model.py) written again on torchvision's ResNet: every 3x3 conv of layer4 gets
    dilation 2, padding 2, stride 1; any other strided conv there stride 1."""
    for name, m in net.layer4.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            if m.kernel_size == (3, 3):
                m.dilation, m.padding, m.stride = (2, 2), (2, 2), (1, 1)
            elif m.stride == (2, 2):
                m.stride = (1, 1)
    return net


def test_dilated_resnet50_matches_the_reference_rule_on_torchvision():
    torch.manual_seed(0)
    ours = SegmentationFCN(build_backbone("resnet50")[0], 21, head_dilation=6).eval()
    tv = torchvision.models.resnet50(weights=None)
    tv.load_state_dict({**ours.backbone.state_dict(), "fc.weight": tv.fc.weight, "fc.bias": tv.fc.bias})
    tv = _reference_dilation(tv).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
        feats = ours.backbone.forward_features(x)
        out = ours(x)
    assert feats.shape == (1, 2048, 4, 6) and torch.allclose(feats, ref, atol=1e-5)  # output stride 16
    assert out.shape == (1, 21, 64, 96)
    convs = [m for m in ours.decoder if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.dilation, c.bias) for c in convs] == [
        (2048, 256, (3, 3), (6, 6), None), (256, 256, (3, 3), (6, 6), None), (256, 21, (1, 1), (1, 1), None)]
    # torchvision's own dilation keeps dilation 1 in the first block's 3x3 conv: the reference dilates it too
    assert ours.backbone.layer4[0].conv2.dilation == (2, 2) and ours.backbone.layer4[0].conv2.stride == (1, 1)


def test_build_model_loads_the_pretrained_trunk(tmp_path):
    torch.manual_seed(3)
    trunk = build_backbone("resnet18")[0]
    path = tmp_path / "moco.pth.tar"  # MoCo's layout: module.encoder_q.* with its fc head
    state = {f"module.encoder_q.{k}": v for k, v in trunk.state_dict().items()}
    torch.save({"arch": "resnet18", "state_dict": {**state, "module.encoder_q.fc.weight": torch.zeros(8, 512)}}, path)
    args = argparse.Namespace(pretrained=str(path), arch=None, cifar_stem=None, trunk_pattern=None,
                              trust_checkpoint=False, seed=0, head_dilation=1, sync_bn=None)
    info = argparse.Namespace(rank=0, distributed=False)
    net, trunk_hash = seg.build_model(args, 19, torch.device("cpu"), info)
    assert args.arch == "resnet18"
    got = net.backbone.state_dict()
    assert all(torch.equal(got[k], v) for k, v in trunk.state_dict().items())
    assert net.decoder[0].dilation == (1, 1) and net.decoder[-1].out_channels == 19
    with torch.no_grad():
        assert net.eval().backbone.forward_features(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 4, 4)
    with pytest.raises(UserError, match="needs a ResNet trunk"):
        SegmentationFCN(build_backbone("mobilenetv3_small")[0], 21)


# ==== transforms and readers ====
def test_joint_transforms_keep_image_and_mask_aligned():
    rng = np.random.default_rng(0)
    img, mask = _draw(rng, 60, 80, VOC_COLOURS)
    mask[mask == 255] = 0
    for tf in (VOCTrain(48, 5.0, (0.75, 1.25)), CityscapesTrain(40, (0.5, 1.0, 2.0))):
        for seed in range(6):
            x, y = tf(img, mask, np.random.default_rng(seed))
            assert x.shape == (3, tf.size, tf.size) and y.shape == (tf.size, tf.size) and y.dtype == torch.int64
            rgb = x * torch.tensor([0.229, 0.224, 0.225])[:, None, None] + torch.tensor([0.485, 0.456, 0.406])[:, None,
                                                                                                          None]
            # inside every object (away from its edges) the pixels have the object's colour: flips, zooms and
            # rotations moved image and mask together
            for cls, colour in VOC_COLOURS.items():
                inner = torch.from_numpy(cv2.erode((y.numpy() == cls).astype(np.uint8), np.ones((5, 5)))) > 0
                if inner.any():
                    assert torch.allclose(rgb[:, inner].mean(dim=1) * 255, torch.tensor(colour).float(), atol=12)
            assert set(y.unique().tolist()) <= {0, 1, 5, 12}  # nearest resampling: no new labels
    # the reference's RandomCrop: a smaller image is enlarged so both sides reach the crop (+1 px), then cropped
    small_img, small_mask = np.zeros((20, 30, 3), np.uint8), np.zeros((20, 30), np.uint8)
    a, b = random_crop(small_img, small_mask, np.random.default_rng(0), 32)
    assert a.shape == (32, 32, 3) and b.shape == (32, 32)
    x, y = SegTest(32)(img, mask)  # test: the image to 32 x 32, the mask kept at full resolution
    assert x.shape == (3, 32, 32) and y.shape == (60, 80) and torch.equal(y, torch.from_numpy(mask).long())


def test_voc_reader(voc):
    val = voc_segmentation(str(voc), "val", SegTest(0), train=False)
    assert len(val) == 4 and len(val.classes) == 21 and val.classes[12] == "dog"
    x, y, ok = val[1]
    raw = np.array(Image.open(val.masks[1]))
    assert ok and torch.equal(y, torch.from_numpy(raw).long()) and x.shape[1:] == raw.shape
    aug = voc_segmentation(str(voc), "trainaug", VOCTrain(32), seed=0)  # read from train_aug.txt's two columns
    assert len(aug) == 12 and aug.masks[0].endswith("SegmentationClassAug/2008_train_000.png")
    first = aug[3]
    assert torch.equal(aug[3][0], first[0])  # seeded by (seed, epoch, index)
    aug.set_epoch(1)
    assert not torch.equal(aug[3][0], first[0])
    palette = voc_segmentation(str(voc / "VOCdevkit"), "train", SegTest(0), train=False)  # root/VOC2012 also works
    assert torch.equal(palette[0][1], voc_segmentation(str(voc), "trainaug", SegTest(0), train=False)[0][1])


def test_cityscapes_reader_maps_label_ids_like_train_ids(city, tmp_path):
    val = cityscapes_segmentation(str(city), "val", SegTest(0), train=False)
    assert len(val) == 3 and len(val.classes) == 19 and val.classes[13] == "car"
    ids = np.array(Image.open(val.masks[0]))
    _, y, _ = val[0]
    expected = {7: 0, 11: 2, 26: 13, 21: 8, 1: 255, 255: 255}  # road, building, car, vegetation, ego vehicle
    for label_id, train_id in expected.items():
        if (ids == label_id).any():
            assert set(y[torch.from_numpy(ids == label_id)].tolist()) == {train_id}
    # the same split with cityscapesScripts' labelTrainIds files instead
    other = tmp_path / "trainids"
    for split in ("val",):
        for p in sorted((city / "gtFine" / split).rglob("*_labelIds.png")):
            dest = other / "gtFine" / split / p.parent.name
            dest.mkdir(parents=True, exist_ok=True)
            Image.fromarray(val.lut[np.asarray(Image.open(p))]).save(
                dest / p.name.replace("_labelIds", "_labelTrainIds"))
    os.symlink(city / "leftImg8bit", other / "leftImg8bit")
    train_ids = cityscapes_segmentation(str(other), "val", SegTest(0), train=False)
    assert all(torch.equal(train_ids[i][1], val[i][1]) for i in range(3))
    assert len(CITYSCAPES_CLASSES) == 19


def test_full_resolution_scoring_matches_the_reference_offline_path(voc):
    """evaluate(): network at 40 x 40, argmax, prediction brought back to each image's size; the reference resizes
    the uint8 argmax with cv2 INTER_NEAREST and scores against the original mask (loops here)."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 21, 3, padding=1).eval()  # per-pixel logits: predictions that change pixel by pixel
    val = voc_segmentation(str(voc), "val", SegTest(40), train=False)
    loader = build_loader(val, 3, ShardSampler(len(val)), 0, drop_last=False, collate_fn=collate_eval)
    res = seg.evaluate(net, loader, 21, torch.device("cpu"), None)
    preds, targets = [], []
    for i in range(len(val)):
        x, y, _ = val[i]
        with torch.no_grad():
            p = net(x[None]).argmax(dim=1)[0].numpy().astype(np.uint8)
        preds.append(cv2.resize(p, (y.shape[1], y.shape[0]), interpolation=cv2.INTER_NEAREST).reshape(-1))
        targets.append(y.numpy().reshape(-1))
    reference = loop_iou(np.concatenate(preds), np.concatenate(targets), 21)
    present = [v for v in reference if v is not None]
    assert res["n"] == 4 and res["skipped"] == 0
    assert res["miou"] == pytest.approx(100 * sum(present) / len(present), abs=1e-9)
    assert [v for v in res["iou"] if v is not None] == pytest.approx([100 * v for v in present], abs=1e-9)
    assert len(np.unique(np.concatenate(preds))) > 3  # several classes predicted: the resizing matters
    net = SegmentationFCN(build_backbone("resnet_tiny")[0], 21).eval()
    net.decoder[1].running_var.fill_(float("nan"))  # a diverged network gives no score
    with pytest.raises(UserError, match="NaN/inf logits"):
        seg.evaluate(net, loader, 21, torch.device("cpu"), None)


# ==== recipes ====
def _parsed(argv):
    args = seg.get_args_parser().parse_args(argv)
    args.data = args.data or args.data_path
    seg.fill_recipe(args)
    return args


def test_recipes_parse_to_the_published_values():
    voc = _parsed(["d", "--recipe", "voc"])
    assert (voc.train_split, voc.val_split, voc.batch_size, voc.epochs, voc.optimizer, voc.lr, voc.momentum,
            voc.weight_decay, voc.nesterov, voc.scheduler, voc.lr_decay_epochs, voc.lr_decay_rate, voc.crop_size,
            voc.test_size, voc.scales, voc.max_rotation, voc.head_dilation, voc.test_batch_size, voc.arch) == (
        "trainaug", "val", 16, 45, "sgd", 0.003, 0.9, 1e-4, False, "step", [30, 40], 0.1, 512, 512, [0.75, 1.25], 5.0,
        6, 16, None)  # arch None: the checkpoint's, else resnet50
    lr = seg.lr_schedule(voc, 2)  # per epoch e: x0.1 once e > 30 and again once e > 40 (the reference's test)
    assert lr[30 * 2 + 1] == pytest.approx(0.003) and lr[31 * 2] == pytest.approx(3e-4)
    assert lr[40 * 2 + 1] == pytest.approx(3e-4) and lr[41 * 2] == pytest.approx(3e-5) and len(lr) == 90
    cs = _parsed(["d", "--recipe", "cityscapes"])
    assert (cs.train_split, cs.batch_size, cs.epochs, cs.optimizer, cs.lr, cs.momentum, cs.weight_decay, cs.scheduler,
            cs.poly_power, cs.crop_size, cs.test_size, cs.scales, cs.head_dilation, cs.test_batch_size) == (
        "train", 8, 150, "adam", 1e-4, None, 1e-4, "poly", 0.9, 768, 0, [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0], 1, 6)
    lr = seg.lr_schedule(cs, 1)
    assert lr[0] == 1e-4 and lr[75] == pytest.approx(1e-4 * 0.5 ** 0.9) and lr[149] == pytest.approx(
        1e-4 * (1 / 150) ** 0.9)
    given = _parsed(["d", "--recipe", "cityscapes", "--lr", "0.01", "--epochs", "3", "--optimizer", "sgd",
                     "--head_dilation", "6", "-b", "2"])  # flags given explicitly win
    assert (given.lr, given.epochs, given.optimizer, given.momentum, given.head_dilation, given.batch_size,
            given.weight_decay) == (0.01, 3, "sgd", 0.9, 6, 2, 1e-4)
    with pytest.raises(UserError, match="SGD settings"):
        _parsed(["d", "--recipe", "cityscapes", "--momentum", "0.5"])
    with pytest.raises(UserError, match="zoom range"):
        _parsed(["d", "--recipe", "voc", "--scales", "0.5", "1", "2"])


# ==== the script ====
def test_voc_recipe_runs_stops_and_resumes_bit_for_bit(voc, tmp_path, capsys):
    argv = [str(voc), *VOC_FAST, "--epochs", "2"]
    full = run_inprocess(argv + ["--output_dir", str(tmp_path / "a")])
    out = capsys.readouterr().out
    assert "recipe voc: sgd lr 0.003 x0.1 after epochs 30 40, wd 0.0001, 2 epochs, batch 4" in out
    assert "data: 12 trainaug / 4 val images, 21 classes, 3 iterations per epoch" in out
    assert "img/s" in out and "ETA" in out and "IoU dog" in out
    last = out.strip().splitlines()[-1]
    assert last == f"mIoU: {full['miou']:.2f}", last
    saved = json.load(open(tmp_path / "a" / "segmentation.json"))
    assert saved["miou"] == full["miou"] and len(saved["history"]) == 2 and saved["classes"][0] == "background"
    assert os.path.isfile(tmp_path / "a" / "model_best.pth.tar")

    assert run_inprocess(argv + ["--output_dir", str(tmp_path / "b"), "--max_iters", "2"]) is None  # mid-epoch 0
    assert "=> stopped by --max_iters 2 at epoch 0, iteration 2" in capsys.readouterr().out
    resumed = run_inprocess(argv + ["--output_dir", str(tmp_path / "b")])
    assert "=> resumed from" in capsys.readouterr().out
    assert resumed["history"] == full["history"]
    a = torch.load(tmp_path / "a" / "checkpoint.pth.tar", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pth.tar", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    assert all(torch.equal(a["optimizer"]["state"][k]["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
               for k in a["optimizer"]["state"])


def test_cityscapes_recipe_and_runs(city, tmp_path, capsys):
    argv = [str(city), *CITY_FAST, "--epochs", "1", "--runs", "2", "--output_dir", str(tmp_path / "c")]
    summary = run_inprocess(argv)
    out = capsys.readouterr().out
    assert "recipe cityscapes: adam lr 0.0001 poly 0.9" in out and "data: 8 train / 3 val images, 19 classes" in out
    assert "=> run 2 of 2 (seed 1)" in out and "mIoU over 2 runs: mean" in out
    runs = [json.load(open(tmp_path / "c" / f"run_{i}" / "segmentation.json")) for i in range(2)]
    assert [r["seed"] for r in runs] == [0, 1] and runs[0]["history"] != runs[1]["history"]
    mious = [r["miou"] for r in runs]
    assert summary["miou_mean"] == pytest.approx(np.mean(mious)) and summary["miou_std"] == pytest.approx(
        np.std(mious, ddof=1))
    assert out.strip().splitlines()[-1] == f"mIoU: {np.mean(mious):.2f}"
    again = run_inprocess(argv)  # finished runs are not redone
    out = capsys.readouterr().out
    assert out.count("=> nothing to do: all 1 epochs are done") == 2 and again["miou_runs"] == summary["miou_runs"]


def test_bad_layouts_give_one_line(voc, city, tmp_path, capsys):
    line = cli_error([str(tmp_path / "nowhere"), *VOC_FAST], capsys)
    assert "no PASCAL VOC 2012 folder" in line and "JPEGImages" in line and "nothing is downloaded" in line
    line = cli_error([str(tmp_path), "--recipe", "cityscapes"], capsys)
    assert f"{tmp_path}/leftImg8bit/train" in line and f"{tmp_path}/gtFine/train" in line, line
    broken = write_voc(tmp_path / "broken", n_train=7, n_val=2)
    masks = broken / "VOCdevkit/VOC2012/SegmentationClassAug"
    for i in range(6):
        (masks / f"2008_train_{i:03d}.png").unlink()
    line = cli_error([str(broken), *VOC_FAST], capsys)
    assert "6 of 7 VOC trainaug masks missing" in line and "2008_train_004.png" in line and "and 1 more" in line, line
    (broken / "VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt").unlink()
    line = cli_error([str(broken), *VOC_FAST], capsys)
    assert "trainaug split list is missing" in line and "--train_split train" in line, line
    nogt = tmp_path / "nogt"
    (nogt / "leftImg8bit" / "val" / "x").mkdir(parents=True)
    (nogt / "leftImg8bit" / "train").symlink_to(city / "leftImg8bit" / "train")
    (nogt / "gtFine").mkdir()
    (nogt / "gtFine" / "train").symlink_to(city / "gtFine" / "train")
    line = cli_error([str(nogt), "--recipe", "cityscapes"], capsys)
    assert f"{nogt}/gtFine/val" in line, line
    line = cli_error([str(voc), *VOC_FAST, "-b", "40", "--output_dir", str(tmp_path / "big")], capsys)
    assert "larger than the 12 training samples" in line


def test_nan_refusal(voc, tmp_path, capsys):
    line = cli_error([str(voc), *VOC_FAST, "--epochs", "2", "--lr", "1e30", "--output_dir", str(tmp_path / "n")],
                     capsys)
    assert "NaN/inf" in line and "checkpoint" in line, line


def test_two_processes_score_the_saved_network(voc, tmp_path):
    """torchrun, 2 gloo processes: the val set is split over the ranks and the score is that of the network saved
    (rank 0's, BatchNorm statistics included), the same as one process scoring it alone."""
    from helpers import assert_ok, free_port, py, run

    out = tmp_path / "ddp"
    proc = run(py("-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
                  "eval_segmentation.py", str(voc), *VOC_FAST, "--epochs", "1", "--test_batch_size", "1",
                  "--output_dir", str(out)))
    assert_ok(proc)
    assert "batch 4 (2 x 2 processes)" in proc.stdout and proc.stdout.strip().splitlines()[-1].startswith("mIoU: ")
    ckpt = torch.load(out / "checkpoint.pth.tar", weights_only=True)
    net = SegmentationFCN(build_backbone("resnet_tiny")[0], 21)
    net.load_state_dict(ckpt["state_dict"])
    val = voc_segmentation(str(voc), "val", SegTest(64), train=False)
    alone = seg.evaluate(net, build_loader(val, 4, ShardSampler(len(val)), 0, drop_last=False,
                                           collate_fn=collate_eval), 21,
                         torch.device("cpu"), None)
    assert alone["miou"] == ckpt["results"]["history"][-1]["miou"]
    assert json.load(open(out / "segmentation.json"))["n"] == 4


def test_unreadable_images_are_left_out_of_the_score_and_counted(tmp_path, capsys):
    root = write_voc(tmp_path / "v", n_train=4, n_val=3)
    (root / "VOCdevkit/VOC2012/JPEGImages/2008_val_001.jpg").write_bytes(b"not a jpeg")
    (root / "VOCdevkit/VOC2012/JPEGImages/2008_train_002.jpg").write_bytes(b"\xff\xd8 truncated")
    train = voc_segmentation(str(root), "trainaug", VOCTrain(32), seed=0)
    x, y = train[2]  # training: replaced by the next pair, one warning line
    assert x.shape == (3, 32, 32) and "skipping unreadable pair" in capsys.readouterr().err
    val = voc_segmentation(str(root), "val", SegTest(32), train=False)
    assert val[1][2] is False and val[0][2] is True
    torch.manual_seed(0)
    net = SegmentationFCN(build_backbone("resnet_tiny")[0], 21).eval()
    res = seg.evaluate(net, build_loader(val, 2, ShardSampler(len(val)), 0, drop_last=False, collate_fn=collate_eval), 21,
                       torch.device("cpu"), None)
    assert res["n"] == 2 and res["skipped"] == 1
    results = seg.SegResults(val.classes)
    results.add(0, res)
    assert "2 images, 1 unreadable left out" in results.test_line()


@pytest.mark.parametrize("name", ["voc", "cityscapes"])
def test_sbatch_recipes_write_out_the_published_values(name):
    import shlex

    from helpers import ROOT

    text = open(os.path.join(ROOT, "scripts", f"segmentation_{name}.sh")).read()
    assert text.startswith("#!/bin/bash\n") and "#SBATCH --signal=B:USR1@120" in text and "#SBATCH --requeue" in text
    assert "trap requeue USR1" in text and 'RUN_PID=$!\nwait "$RUN_PID"' in text and "./runs/segmentation_" in text
    cmd = shlex.split(text[text.index("srun "):].split(" &\n", 1)[0].replace("\\\n", " "), comments=True)
    argv = cmd[cmd.index("eval_segmentation.py") + 1:]
    written = _parsed(argv)
    preset = _parsed(["d", "--recipe", name])
    for key in seg.RECIPES[name]:  # the values written out are the recipe's
        assert getattr(written, key) == getattr(preset, key), key
    assert (written.runs, written.seed, written.report, written.arch) == (5, 0, "best", "resnet50")
    tasks = int(text.split("--ntasks-per-node=")[1].split()[0])
    assert tasks == {"voc": 1, "cityscapes": 2}[name]  # the reference: one GPU for VOC, 2 x 1080 Ti for Cityscapes


# ==== the reference's choice of the best epoch: the mIoU at the network's input picks, full resolution reports ====
def test_input_size_scoring_matches_the_reference_online_path(voc):
    """evaluate()'s second score: the argmax at the network's input against each mask resized to it with cv2
    INTER_NEAREST (the reference's fixed 512 x 512 val transform), scored with loops."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 21, 3, padding=1).eval()
    val = voc_segmentation(str(voc), "val", SegTest(40), train=False)
    loader = build_loader(val, 3, ShardSampler(len(val)), 0, drop_last=False, collate_fn=collate_eval)
    res = seg.evaluate(net, loader, 21, torch.device("cpu"), None)
    preds, targets = [], []
    for i in range(len(val)):
        x, y, _ = val[i]
        with torch.no_grad():
            preds.append(net(x[None]).argmax(dim=1)[0].numpy().reshape(-1))
        targets.append(cv2.resize(y.numpy().astype(np.uint8), (40, 40), interpolation=cv2.INTER_NEAREST).reshape(-1))
    reference = loop_iou(np.concatenate(preds), np.concatenate(targets), 21)
    present = [v for v in reference if v is not None]
    assert res["miou_input"] == pytest.approx(100 * sum(present) / len(present), abs=1e-9)
    assert [v for v in res["iou_input"] if v is not None] == pytest.approx([100 * v for v in present], abs=1e-9)
    assert res["miou_input"] != res["miou"]  # the masks are not 40 x 40: the two scores differ here
    same = voc_segmentation(str(voc), "val", SegTest(0), train=False)  # images at their own size: one score
    res = seg.evaluate(net, build_loader(same, 1, ShardSampler(len(same)), 0, drop_last=False,
                                         collate_fn=collate_eval), 21, torch.device("cpu"), None)
    assert res["miou_input"] == res["miou"] and res["iou_input"] == res["iou"]


def _res(miou, miou_input):
    return {"miou": miou, "iou": [miou], "miou_input": miou_input, "iou_input": [miou_input], "n": 4, "skipped": 0}


def test_best_epoch_is_chosen_at_the_input_and_reported_at_full_resolution():
    picked = seg.SegResults(["a"], input_size=512)
    assert picked.add(0, _res(50.0, 40.0)) and picked.add(1, _res(45.0, 42.0)) and not picked.add(2, _res(60.0, 41.0))
    assert picked.best["epoch"] == 1 and picked.best["miou"] == 45.0  # not epoch 2, the best at full resolution
    assert picked.test_line() == ("Test: epoch 2, 4 images: mIoU 60.00 at full resolution, 41.00 at the 512x512 "
                                  "input (best at the 512x512 input: 42.00 at epoch 1)")
    tie = seg.SegResults(["a"], input_size=512)
    tie.add(0, _res(1.0, 5.0))
    assert not tie.add(1, _res(2.0, 5.0)) and tie.best["epoch"] == 0  # the reference's "mIoU > best": the earliest
    own = seg.SegResults(["a"], input_size=0)  # images scored at their own size (Cityscapes): the one score
    own.add(0, _res(50.0, 50.0))
    own.add(1, _res(45.0, 45.0))
    assert own.best["epoch"] == 0 and own.test_line() == "Test: epoch 1, 4 images: mIoU 45.00 (best 50.00 at epoch 0)"
    with pytest.raises(UserError, match="new --output_dir"):  # scores of an older checkpoint: no input mIoU
        seg.SegResults(["a"], input_size=512).load_state_dict({"history": [{"epoch": 0, "miou": 1.0}]})


def test_voc_run_reports_both_figures(voc, tmp_path, capsys):
    out = tmp_path / "both"
    summary = run_inprocess([str(voc), *VOC_FAST, "--epochs", "3", "--output_dir", str(out)])
    lines = capsys.readouterr().out.strip().splitlines()
    history = summary["history"]
    chosen = max(history, key=lambda e: (e["miou_input"], -e["epoch"]))  # the reference's choice
    assert summary["epoch"] == chosen["epoch"] and summary["best_by"] == "miou_input"
    assert summary["miou"] == chosen["miou"] and summary["miou_input"] == chosen["miou_input"]
    assert summary["iou_input"] == chosen["iou_input"] and summary["test_size"] == 64
    assert lines[-1] == f"mIoU: {chosen['miou']:.2f}"  # the full-resolution score of the chosen model
    assert (f"best epoch {chosen['epoch']}: mIoU {chosen['miou_input']:.2f} at the 64x64 input (the reference's "
            f"online score, which picks the best epoch), {chosen['miou']:.2f} at full resolution (reported)") in lines
    saved = json.load(open(out / "segmentation.json"))
    assert (saved["miou"], saved["miou_input"], saved["epoch"]) == (chosen["miou"], chosen["miou_input"],
                                                                    chosen["epoch"])
    best = torch.load(out / "model_best.pth.tar", weights_only=True)
    assert best["epoch"] == chosen["epoch"] and best["miou_input"] == chosen["miou_input"]


# ==== a mask of another size than its image ====
def test_a_mask_of_another_size_is_refused(tmp_path, capsys):
    root = write_voc(tmp_path / "v", n_train=4, n_val=3)
    mask = root / "VOCdevkit/VOC2012/SegmentationClass/2008_val_001.png"
    Image.fromarray(np.zeros((10, 13), np.uint8), mode="L").save(mask)  # 13 x 10 px for an image of about 60 x 60
    line = cli_error([str(root), *VOC_FAST, "--train_split", "train", "--epochs", "1", "--output_dir",
                      str(tmp_path / "x")], capsys)
    assert "1 of 3 VOC val masks differ in size from their images" in line and str(mask) in line, line
    assert "13x10 px" in line and "2008_val_001.jpg" in line and not (tmp_path / "x").exists(), line
    # the reader refuses it too (a file replaced after the check): unreadable, left out of the score and counted
    val = voc_segmentation(str(root), "val", SegTest(32), train=False)
    assert val[1][2] is False and val[0][2] is True
    assert "a mask labels its own image pixel for pixel" in capsys.readouterr().err
