"""eval.voc_svm and src.data.voc on a tiny fake VOC2007 folder: labels from class files and from annotations,
VOC's AP against the reference formula written as a loop, difficult images, the CLI output, errors."""
import argparse
import json
import re

import numpy as np
import pytest
from helpers import assert_ok, py, run
from PIL import Image

from src.data.voc import find_voc_dir, read_split, voc_ap, voc_classes
from src.run.errors import UserError

CLASSES = ["bird", "car", "dog"]  # a VOC-style subset; each is drawn as one colour


def write_voc(root, class_files=True, seed=0):
    """VOCdevkit/VOC2007 with 12 trainval and 8 test images; an image holds 1-2 classes (colour stripes)."""
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    splits = {"trainval": [f"{i:06d}" for i in range(1, 13)], "test": [f"{i:06d}" for i in range(13, 21)]}
    labels = {}
    for split, ids in splits.items():
        for k, image_id in enumerate(ids):
            present = {CLASSES[k % 3]} | ({CLASSES[(k + 1) % 3]} if k % 4 == 3 else set())
            difficult = {CLASSES[(k + 2) % 3]} if k == 5 else set()  # one image holds only a difficult object
            img = rng.integers(0, 60, (48, 64, 3)).astype(np.uint8)
            for c in present:
                img[:, :, CLASSES.index(c)] = 230
            Image.fromarray(img).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
            objects = "".join(f"<object><name>{c}</name><difficult>0</difficult></object>" for c in sorted(present)) + \
                "".join(f"<object><name>{c}</name><difficult>1</difficult></object>" for c in sorted(difficult))
            (voc / "Annotations" / f"{image_id}.xml").write_text(
                f"<annotation><filename>{image_id}.jpg</filename>{objects}</annotation>")
            labels[image_id] = {c: 1 if c in present else (0 if c in difficult else -1) for c in CLASSES}
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        if class_files:
            for c in CLASSES:  # the devkit's format: id, then the label right-aligned in 3 characters
                (voc / "ImageSets" / "Main" / f"{c}_{split}.txt").write_text(
                    "".join(f"{i} {labels[i][c]:2d}\n" for i in ids))
    return voc, labels


def reference_ap(scores, labels):
    """The reference's get_precision_recall + calculate_ap, as loops (Revisiting-Contrastive-SSL's voc_svm)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = fp = 0
    rec, prec = [], []
    n_pos = sum(1 for v in labels if v > 0)
    for i in order:
        tp, fp = (tp + 1, fp) if labels[i] > 0 else (tp, fp + 1)
        rec.append(tp / n_pos)
        prec.append(tp / (tp + fp))
    mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def test_voc_ap_matches_the_reference_formula():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        labels = rng.choice([-1, 0, 1], n)
        labels[0] = 1
        scores = rng.normal(size=n)
        assert voc_ap(scores, labels) == pytest.approx(reference_ap(scores, labels), abs=1e-12)
    assert voc_ap([3, 2, 1], [1, 1, -1]) == 1.0
    assert voc_ap([1, 2, 3], [1, -1, -1]) == pytest.approx(1 / 3)  # the positive ranked last
    assert np.isnan(voc_ap([1, 2], [-1, -1]))


def test_labels_from_class_files_and_from_annotations(tmp_path):
    voc, truth = write_voc(tmp_path / "a")
    assert find_voc_dir(str(tmp_path / "a")) == str(voc) and find_voc_dir(str(voc)) == str(voc)
    classes = voc_classes(str(voc), ["trainval", "test"])
    assert classes == CLASSES
    ids, labels, source = read_split(str(voc), "trainval", classes)
    assert source == "class files" and len(ids) == 12
    assert labels.tolist() == [[truth[i][c] for c in CLASSES] for i in ids]
    voc2, _ = write_voc(tmp_path / "b", class_files=False)
    assert voc_classes(str(voc2), ["trainval", "test"]) == CLASSES  # from the object names
    ids2, labels2, source2 = read_split(str(voc2), "trainval", classes)
    assert source2 == "annotations" and ids2 == ids and np.array_equal(labels2, labels)
    assert (labels == 0).sum() == 1  # the image with only a difficult object
    with pytest.raises(UserError, match=r"VOCdevkit/VOC2007/.*JPEGImages.*nothing is downloaded"):
        find_voc_dir(str(tmp_path / "none"))
    with pytest.raises(UserError, match="val.txt' does not exist"):
        read_split(str(voc), "val", classes)


def test_voc_svm_cli(tmp_path):
    write_voc(tmp_path / "voc")
    import torch

    from src.models import build_backbone

    torch.manual_seed(0)
    trunk, _ = build_backbone("resnet18")
    ckpt = tmp_path / "run" / "checkpoint.pth.tar"
    ckpt.parent.mkdir()
    torch.save({"arch": "resnet18", "state_dict": {f"module.encoder_q.{k}": v for k, v in trunk.state_dict().items()}},
               ckpt)
    proc = run(py("-m", "eval.voc_svm", "--data", str(tmp_path / "voc"), "--pretrained-weights", str(ckpt),
                  "--resize", "64", "--crop-size", "64", "-j", "0", "-b", "8"))
    assert_ok(proc)
    out = proc.stdout
    assert "12 trainval / 8 test images, 3 classes (labels from class files)" in out
    assert "(prefix 'module.encoder_q.')" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("AP ")] == CLASSES
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"Mean AP: \d+\.\d\d", last), last
    res = json.load(open(tmp_path / "run" / "voc_svm.json"))  # next to the checkpoint
    assert set(res["ap"]) == set(CLASSES) and last == f"Mean AP: {res['mean_ap']:.2f}"
    assert res["mean_ap"] > 90, out  # colour classes: frozen random features separate them
    assert res["feat_dim"] == 512 and res["n_train"] == 12 and res["skipped"] == []


def test_ignore_difficult_and_errors(tmp_path, capsys):
    from eval import voc_svm

    voc, _ = write_voc(tmp_path / "voc")
    parse = argparse.ArgumentParser(parents=[voc_svm.get_args_parser()]).parse_args
    common = ["-a", "resnet18", "--resize", "32", "--crop-size", "32", "-j", "0", "--output-json",
              str(tmp_path / "r.json")]
    res = voc_svm.main(parse([str(tmp_path / "voc"), *common, "--ignore-difficult"]))
    assert res["ignore_difficult"] and len(res["ap"]) == 3 and "no --pretrained: a random-init resnet18" in \
        capsys.readouterr().out
    with pytest.raises(SystemExit):
        voc_svm.main(parse([str(tmp_path / "missing"), *common]))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no VOC-style folder at"), err
    (voc / "JPEGImages" / "000003.jpg").unlink()
    with pytest.raises(SystemExit):
        voc_svm.main(parse([str(tmp_path / "voc"), *common]))
    assert "missing, e.g." in capsys.readouterr().err
