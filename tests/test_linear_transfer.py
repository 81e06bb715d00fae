"""eval.linear_transfer and src.data.transfer: ssl-transfer's C grid and validation draw, the metrics against loops,
the C search against a brute-force loop, the refit on train + val, VOC's 2C binary fits against the 2-row softmax
they stand for, a CLI run on two tiny datasets (cache reuse keyed on weights), and one-line errors."""
import argparse
import json
import os
import pickle
import shlex
import shutil

import numpy as np
import pytest
import torch
from helpers import ROOT, one_error_line, py, run
from PIL import Image
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression

from eval import linear_transfer as lt
from src.data.transfer import carve_val, load_dataset, resolve_names
from src.evaluation import linear_transfer as protocol
from src.evaluation.pretrained import build_trunk
from src.run.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


# ==== the reference's constants ====
def test_grid_holds_the_published_C_values():
    grid = protocol.reference_grid()
    assert len(grid) == 45 and grid[0] == pytest.approx(1e6, rel=1e-6) and grid[-1] == pytest.approx(1e-5, rel=1e-6)
    assert all(a > b for a, b in zip(grid, grid[1:]))  # searched from weak to strong regularisation
    for c in (0.3162277621819913, 9.99999985098839, 56234.135072196805, 0.005623413223739, 1.778279387127403):
        assert min(abs(g - c) / c for g in grid) < 1e-12  # ssl-transfer's run_linear.sh values, float32 logspace


def test_carve_val_is_the_reference_shuffle():
    for n in (1, 7, 50, 1001):
        indices = list(range(n))
        np.random.seed(0)  # the reference's own calls, on the global RNG
        np.random.shuffle(indices)
        split = int(np.floor(0.2 * n))
        tr, va = carve_val(n)
        assert va.tolist() == indices[:split] and tr.tolist() == indices[split:]
        assert sorted(tr.tolist() + va.tolist()) == list(range(n))


def test_dataset_names():
    assert resolve_names(["all"])[:3] == ["food101", "cifar10", "cifar100"] and len(resolve_names(["all"])) == 11
    assert resolve_names(["DTD", "food", "dtd"]) == ["dtd", "food101"]


# ==== metrics ====
def test_mean_per_class_accuracy():
    y = np.array([0, 0, 0, 0, 1, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 0, 2])
    assert protocol.mean_per_class_accuracy(pred, y) == pytest.approx(100 * (3 / 4 + 1 + 1 / 2) / 3)
    assert protocol.top1_accuracy(pred, y) == pytest.approx(100 * 5 / 7)
    rng = np.random.default_rng(0)
    for _ in range(20):
        y, pred = rng.integers(0, 5, 40), rng.integers(0, 5, 40)
        recalls = []
        for c in sorted(set(y.tolist())):
            rows = [i for i in range(40) if y[i] == c]
            recalls.append(sum(pred[i] == c for i in rows) / len(rows))
        assert protocol.mean_per_class_accuracy(pred, y) == pytest.approx(100 * sum(recalls) / len(recalls), abs=1e-12)


def loop_ap11(scores, positives):
    """11-point AP as loops: precision / recall at every distinct threshold, plus the (recall 0, precision 1) end
    point of scikit-learn's curve, then the best precision at recall >= t for t = 0, 0.1, ..., 1."""
    n_pos = sum(positives)
    points = [(0.0, 1.0)]
    for s in sorted(set(scores), reverse=True):
        tp = sum(1 for x, p in zip(scores, positives) if x >= s and p)
        fp = sum(1 for x, p in zip(scores, positives) if x >= s and not p)
        points.append((tp / n_pos, tp / (tp + fp)))
    total = 0.0
    for t in np.linspace(0, 1, 11):  # the reference's thresholds: 0.30000000000000004 > 3 / 10, so a recall of
        total += max([p for r, p in points if r >= t], default=0.0)  # exactly 0.3 does not count at t = 0.3
    return total / 11


def test_ap_11point_against_loops():
    assert protocol.ap_11point([3, 2, 1], [1, 1, 0]) == pytest.approx(1.0)
    # the positive ranked last of 4: precision 1/4 at recall 1; t = 0 takes the curve's end point (precision 1)
    assert protocol.ap_11point([4, 3, 2, 1], [0, 0, 0, 1]) == pytest.approx((1 + 10 * 0.25) / 11)
    rng = np.random.default_rng(1)
    for _ in range(40):
        n = int(rng.integers(3, 30))
        positives = rng.integers(0, 2, n)
        positives[0] = 1
        scores = np.round(rng.normal(size=n), 1)  # rounded: ties happen
        assert protocol.ap_11point(scores, positives) == pytest.approx(loop_ap11(scores.tolist(), positives.tolist()),
                                                                 abs=1e-12)


# ==== the search and the refit ====
def blobs(n, dim, classes, seed, noise=1.5):
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(size=(classes, dim))
    y = np.arange(n) % classes
    return (means[y] + noise * rng.normal(size=(n, dim))).astype(np.float32), y


@pytest.mark.parametrize("metric", ["top1", "mean_per_class"])
def test_search_picks_what_a_brute_force_loop_picks(metric):
    train, val, test = blobs(90, 6, 3, 0), blobs(60, 6, 3, 1), blobs(30, 6, 3, 2)
    trainval = (np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]]))
    grid = list(np.logspace(2, -4, 13))
    res = protocol.run_protocol(train, val, trainval, test, metric, grid, max_iter=5000, tol=1e-10, log=lambda s: None)
    brute = []
    for C in grid:  # a cold, fully converged fit per C, scored with the textbook formula
        clf = LogisticRegression(C=C, max_iter=10000, tol=1e-12).fit(train[0].astype(np.float64), train[1])
        pred, y = clf.predict(val[0].astype(np.float64)), val[1]
        per_class = [np.mean(pred[y == c] == c) for c in range(3)]
        brute.append(100 * (np.mean(pred == y) if metric == "top1" else np.mean(per_class)))
    assert res["val_scores"] == pytest.approx(brute, abs=1e-9)
    assert len(set(np.round(brute, 6))) > 2  # the grid matters on this data
    assert res["best_C"] == grid[next(i for i, s in enumerate(brute) if s == max(brute))]


def test_refit_uses_train_and_val_rows():
    train, val, test = blobs(60, 5, 3, 3), blobs(30, 5, 3, 4), blobs(30, 5, 3, 5)
    trainval = (np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]]))
    res = protocol.run_protocol(train, val, trainval, test, "top1", [10.0, 0.1, 0.001], max_iter=5000, tol=1e-10,
                          log=lambda s: None)
    model = res["probe"].models[0]
    assert res["probe"].fit_rows == res["refit_rows"] == 90
    def converged(X, y):
        return LogisticRegression(C=res["best_C"], max_iter=10000, tol=1e-12).fit(X.astype(np.float64), y)

    ref, only_train = converged(*trainval), converged(*train)
    assert np.allclose(model.coef_, ref.coef_, atol=1e-5) and np.allclose(model.intercept_, ref.intercept_, atol=1e-5)
    assert not np.allclose(model.coef_, only_train.coef_, atol=1e-3)
    assert res["test_score"] == pytest.approx(100 * np.mean(ref.predict(test[0].astype(np.float64)) == test[1]))


def test_one_value_grid_skips_the_search():
    train, val, test = blobs(30, 4, 2, 6), blobs(10, 4, 2, 7), blobs(10, 4, 2, 8)
    res = protocol.run_protocol(train, val, train, test, "top1", [0.5], log=lambda s: None)
    assert res["val_scores"] == [] and res["best_C"] == 0.5 and res["refit_rows"] == 30


def test_voc_binary_fit_is_the_references_two_row_softmax():
    """ssl-transfer's scikit-learn 0.22 fits a binary label as a 2-row softmax, both rows penalised; solved here with
    scipy in float64, its w1 - w0 must equal our binary fit at 2C."""
    X, y = blobs(80, 4, 2, 9, noise=2.0)
    X = X.astype(np.float64)
    C = 0.3
    Y = np.stack([1 - y, y], 1)

    def objective(theta):
        W, b = theta[:8].reshape(2, 4), theta[8:]
        z = X @ W.T + b
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        p = np.exp(logp)
        f = -C * np.sum(Y * logp) + 0.5 * np.sum(W * W)
        g = C * (p - Y)
        return f, np.concatenate([(g.T @ X + W).ravel(), g.sum(0)])

    theta = minimize(objective, np.zeros(10), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "maxiter": 10000}).x
    w, b = theta[4:8] - theta[:4], theta[9] - theta[8]
    probe = protocol.LinearProbe("map11", max_iter=10000, tol=1e-10).fit(X, y[:, None], C)
    assert np.allclose(probe.models[0].coef_[0], w, atol=1e-5)
    assert probe.models[0].intercept_[0] == pytest.approx(b, abs=1e-5)


def _blobs64(n=60, dim=5, classes=3, seed=0):
    X, y = blobs(n, dim, classes, seed, noise=2.0)
    return X.astype(np.float64), y


def reference_lbfgs(X, y, C, tol):
    """ssl-transfer's fit (scikit-learn 0.22, multinomial lbfgs), written out: scipy's L-BFGS-B in float64 on
    ``sum(loss) + ||W||^2 / (2C)`` (cross-entropy summed over the rows, intercepts not penalised), from zero, to a
    gradient of ``gtol=tol``; ftol and maxls as today's scikit-learn passes them, so only the scaling differs."""
    n, d = X.shape
    k = int(y.max()) + 1
    Y = np.eye(k)[y]

    def objective(theta):
        W, b = theta[:k * d].reshape(k, d), theta[k * d:]
        z = X @ W.T + b
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        g = np.exp(logp) - Y
        return -np.sum(Y * logp) + np.sum(W * W) / (2 * C), np.concatenate([(g.T @ X + W / C).ravel(), g.sum(0)])

    res = minimize(objective, np.zeros(k * (d + 1)), jac=True, method="L-BFGS-B",
                   options={"gtol": tol, "ftol": 64 * np.finfo(float).eps, "maxls": 50, "maxiter": 1000})
    return res.x[:k * d].reshape(k, d), res.x[k * d:], res.nit


def test_each_lbfgs_fit_gets_tol_over_n(monkeypatch):
    """scikit-learn minimises the reference's objective divided by n: every fit (search, refit, each VOC class)
    gets tol / n, whatever its C."""
    seen = []
    fit = LogisticRegression.fit

    def spy(self, X, y, *a, **k):
        seen.append((self.tol, self.C, X.shape[0]))
        return fit(self, X, y, *a, **k)

    monkeypatch.setattr(LogisticRegression, "fit", spy)
    train, val, test = blobs(40, 4, 3, 0), blobs(20, 4, 3, 1), blobs(20, 4, 3, 2)
    trainval = (np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]]))
    protocol.run_protocol(train, val, trainval, test, "top1", [100.0, 1.0, 0.01], tol=3e-4, log=lambda s: None)
    assert [(c, n) for _, c, n in seen] == [(100.0, 40), (1.0, 40), (0.01, 40), (seen[-1][1], 60)]
    assert all(tol == pytest.approx(3e-4 / n, rel=1e-12) for tol, _, n in seen)
    seen.clear()
    Y = np.stack([train[1] == 0, train[1] == 1], 1).astype(np.int64)
    protocol.LinearProbe("map11", tol=1e-4).fit(train[0], Y, 0.5)
    assert [(c, n) for _, c, n in seen] == [(1.0, 40), (1.0, 40)]  # one binary fit per class at 2C
    assert all(tol == pytest.approx(1e-4 / 40, rel=1e-12) for tol, _, _ in seen)


@pytest.mark.parametrize("C,tol", [(0.05, 1e-2), (0.05, 1e-4), (30.0, 1e-2), (30.0, 1e-4)])
def test_fit_is_the_references_lbfgs_on_the_summed_objective(C, tol):
    """Same L-BFGS iterations as the reference's objective run to gtol=tol: the same number of iterations and the
    same weights to rounding (L-BFGS steps do not change when the objective is scaled; only the stop does)."""
    X, y = _blobs64()
    W, b, nit = reference_lbfgs(X, y, C, tol)
    probe = protocol.LinearProbe("top1", max_iter=1000, tol=tol).fit(X, y, C)
    model = probe.models[0]
    assert probe.n_iter == [nit]
    assert np.allclose(model.coef_, W, rtol=0, atol=1e-10) and np.allclose(model.intercept_, b, rtol=0, atol=1e-10)
    if tol == 1e-2:  # the former tol / (C n) stops elsewhere when C != 1: this test tells the rules apart
        old = LogisticRegression(C=C, tol=tol / (C * len(X)), max_iter=1000).fit(X, y)
        assert old.n_iter_[0] != nit and not np.allclose(old.coef_, W, rtol=0, atol=1e-6)


# ==== data on disk ====
def write_folders(root, splits=("train", "val", "test"), per_class=(10, 4, 6), classes=("a", "b", "c")):
    """Class folders of coloured squares: class k is mostly colour channel k."""
    rng = np.random.default_rng(0)
    for split, n in zip(splits, per_class):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 90, (20, 24, 3)).astype(np.uint8)
                img[..., k] = 200
                Image.fromarray(img).save(root / split / c / f"{i}.png")


def write_voc(root, classes=("bird", "car", "dog")):
    """VOCdevkit/VOC2007 with train / val / test; image k shows class k % 3, image 3, 7, 11, ... class (k+1) % 3 too,
    and image 5 holds a "difficult" object of class (k+2) % 3 (label 0)."""
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng, start = np.random.default_rng(1), 0
    for split, n in (("train", 12), ("val", 9), ("test", 9)):
        ids = [f"{start + k:06d}" for k in range(n)]
        start += n
        labels = {}
        for k, image_id in enumerate(ids):
            present = {k % 3} | ({(k + 1) % 3} if k % 4 == 3 else set())
            img = rng.integers(0, 60, (20, 20, 3)).astype(np.uint8)
            for j in present:
                img[..., j] = 220
            Image.fromarray(img).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
            labels[image_id] = [1 if j in present else (0 if k == 5 and j == (k + 2) % 3 else -1) for j in range(3)]
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for j, c in enumerate(classes):
            lines = "".join(f"{i} {labels[i][j]:2d}\n" for i in ids)
            (voc / "ImageSets" / "Main" / f"{c}_{split}.txt").write_text(lines)


def write_cifar10(folder, n_train=20, n_test=10):
    """cifar-10-batches-py with 5 train batches of n_train / 5 images each, as Python-2-style pickles."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)

    def dump(name, obj):
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    for i in range(1, 6):
        dump(f"data_batch_{i}", {"data": rng.integers(0, 255, (n_train // 5, 3072), dtype=np.uint8),
                                 "labels": [int(v) for v in rng.integers(0, 10, n_train // 5)]})
    dump("test_batch", {"data": rng.integers(0, 255, (n_test, 3072), dtype=np.uint8),
                        "labels": [int(v) for v in rng.integers(0, 10, n_test)]})
    dump("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})


def test_readers(tmp_path):
    write_folders(tmp_path / "pets", splits=("train", "test"), per_class=(5, 2))
    write_voc(tmp_path / "voc2007")
    write_cifar10(tmp_path / "cifar10" / "cifar-10-batches-py")
    pets = load_dataset(str(tmp_path), "pets", transform=lambda im: torch.zeros(1))
    assert pets.val is None and pets.classes == ["a", "b", "c"]
    assert pets.train.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    voc = load_dataset(str(tmp_path), "voc2007", transform=lambda im: torch.zeros(1))
    assert voc.classes == ["bird", "car", "dog"] and voc.train.labels.shape == (12, 3)
    assert voc.train.labels[5].tolist() == [0, 0, 1]  # image 5: a dog, and a car that is "difficult" only (0): negative
    assert voc.train.labels[3].tolist() == [1, 1, 0] and voc.train.labels[7].tolist() == [0, 1, 1]
    cifar = load_dataset(str(tmp_path), "cifar10", transform=lambda im: torch.zeros(1))
    assert len(cifar.train.labels) == 20 and len(cifar.test.labels) == 10 and cifar.val is None


# ==== ssl-transfer's image order, from the archives' metadata ====
def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"image")  # only listed here, never decoded
    return path


def write_food101(root):
    """food-101/meta with classes.txt and train / test JSON lists in an order that is not the sorted one."""
    base = root / "food101" / "food-101"
    classes = ["apple_pie", "baklava"]
    train = {"baklava": ["baklava/30", "baklava/4"], "apple_pie": ["apple_pie/9", "apple_pie/10", "apple_pie/2"]}
    test = {"apple_pie": ["apple_pie/5"], "baklava": ["baklava/7"]}
    (base / "meta").mkdir(parents=True)
    (base / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    for split, lists in (("train", train), ("test", test)):
        (base / "meta" / f"{split}.json").write_text(json.dumps(lists))
        for ids in lists.values():
            for i in ids:
                touch(base / "images" / f"{i}.jpg")
    expected = [(f"images/{i}.jpg", k) for k, c in enumerate(classes) for i in train[c]]
    return base, expected


def write_sun397(root):
    base = root / "sun397"
    (base).mkdir(parents=True)
    (base / "ClassName.txt").write_text("/b/bakery/shop\n/a/abbey\n")
    lines = ["/b/bakery/shop/sun_c.jpg", "/a/abbey/sun_b.jpg", "/b/bakery/shop/sun_a.jpg", "/a/abbey/sun_a.jpg"]
    (base / "Training_01.txt").write_text("\n".join(lines) + "\n")
    (base / "Testing_01.txt").write_text("/a/abbey/sun_t.jpg\n/b/bakery/shop/sun_t.jpg\n")
    for line in lines + ["/a/abbey/sun_t.jpg", "/b/bakery/shop/sun_t.jpg"]:
        touch(base / line[1:])
    return base, [(line[1:], 1 if "bakery" in line else 0) for line in lines]  # classes sorted: abbey, bakery/shop


def write_cars(root):
    from scipy.io import savemat

    base = root / "cars"
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    rows = {"train": [(3, "00001.jpg"), (1, "00002.jpg"), (3, "00003.jpg"), (2, "00004.jpg")],
            "test": [(1, "00001.jpg"), (2, "00002.jpg"), (3, "00003.jpg")]}
    for split, annos in (("train", "cars_train_annos.mat"), ("test", "cars_test_annos_withlabels.mat")):
        arr = np.empty((1, len(rows[split])), dtype=[(f, "O") for f in fields])
        for i, (c, fname) in enumerate(rows[split]):  # the devkit's layout: [[x]] numbers, [name] strings
            for f, v in zip(fields, (np.array([[5]]),) * 4 + (np.array([[c]], dtype=np.uint8), np.array([fname]))):
                arr[0, i][f] = v
            touch(base / f"cars_{split}" / fname)
        (base / "devkit").mkdir(parents=True, exist_ok=True)
        savemat(str(base / "devkit" / annos), {"annotations": arr})
    return base, [(f"cars_train/{f}", c - 1) for c, f in rows["train"]]


def write_pets(root):
    base = root / "pets"
    train = ["Bengal_3 6 1 2", "Abyssinian_10 1 1 1", "american_bulldog_2 2 2 1", "Abyssinian_2 1 1 1"]
    (base / "annotations").mkdir(parents=True)
    (base / "annotations" / "trainval.txt").write_text("\n".join(train) + "\n")
    (base / "annotations" / "test.txt").write_text("Abyssinian_5 1 1 1\nBengal_9 6 1 2\n")
    for name in ["Bengal_3", "Abyssinian_10", "american_bulldog_2", "Abyssinian_2", "Abyssinian_5", "Bengal_9"]:
        touch(base / "images" / f"{name}.jpg")
    return base, [(f"images/{line.split()[0]}.jpg", int(line.split()[1]) - 1) for line in train]


def write_caltech101(root):
    base = root / "caltech101"
    train = ["BACKGROUND_Google/image_0003.jpg 0", "BACKGROUND_Google/image_0001.jpg 0", "Faces/image_0002.jpg 1",
             "accordion/image_0010.jpg 2", "accordion/image_0002.jpg 2"]
    test = ["BACKGROUND_Google/image_0002.jpg 0", "Faces/image_0001.jpg 1", "accordion/image_0001.jpg 2"]
    base.mkdir(parents=True)
    (base / "train.txt").write_text("\n".join(train) + "\n")
    (base / "test.txt").write_text("\n".join(test) + "\n")
    for line in train + test:
        touch(base / "caltech101" / "101_ObjectCategories" / line.split(" ")[0])
    return base, [(f"caltech101/101_ObjectCategories/{line.split(' ')[0]}", int(line.split(" ")[1]))
                  for line in train]


ARCHIVES = {"food101": write_food101, "sun397": write_sun397, "cars": write_cars, "pets": write_pets,
            "caltech101": write_caltech101}


@pytest.mark.parametrize("name", list(ARCHIVES))
def test_archive_layouts_list_train_in_the_references_order(name, tmp_path):
    """Each of the five is listed as ssl-transfer's dataset class lists it (metadata order, its labels), so
    carve_val's seed-0 draw picks the images the reference's draw picks."""
    base, expected = ARCHIVES[name](tmp_path)
    data = load_dataset(str(tmp_path), name, transform=lambda im: torch.zeros(1))
    listed = [(os.path.relpath(p, base), t) for p, t in data.train.dataset.samples]
    assert listed == expected
    assert data.train.labels.tolist() == [t for _, t in expected] and data.val is None and data.note is None
    assert "ssl-transfer's order" in data.order
    indices = list(range(len(expected)))  # the reference's draw over its own listing
    np.random.seed(0)
    np.random.shuffle(indices)
    val_names = [expected[i][0] for i in indices[:int(np.floor(0.2 * len(expected)))]]
    assert [listed[i][0] for i in carve_val(len(listed))[1]] == val_names
    assert len(data.test.labels) in (2, 3)


def test_archive_class_names(tmp_path):
    for write in ARCHIVES.values():
        write(tmp_path)
    names = {n: load_dataset(str(tmp_path), n, transform=None).classes for n in ARCHIVES}
    assert names["food101"] == ["apple_pie", "baklava"] and names["sun397"] == ["abbey", "bakery/shop"]
    assert names["pets"][:2] == ["Abyssinian", "american_bulldog"] and names["pets"][5] == "Bengal"
    assert names["caltech101"] == ["BACKGROUND_Google", "Faces", "accordion"] and names["cars"] == ["1", "2", "3"]


def test_folder_layout_of_an_archive_dataset_warns_about_the_order(tmp_path):
    write_folders(tmp_path / "food101", splits=("train", "test"), per_class=(5, 2))
    data = load_dataset(str(tmp_path), "food101", transform=None)
    assert data.val is None and data.order.startswith("sorted")
    assert "picks other images than the reference's" in data.note and "meta/" in data.note


@pytest.mark.parametrize("case", ["val_for_pets", "no_val_for_dtd", "listed_image_missing", "food_class_missing"])
def test_val_policy_and_archive_errors(case, tmp_path):
    if case == "val_for_pets":
        write_folders(tmp_path / "pets", per_class=(3, 1, 1))
        match = "ssl-transfer has no val split for pets: it draws 20% of train"
    elif case == "no_val_for_dtd":
        write_folders(tmp_path / "dtd", splits=("train", "test"), per_class=(3, 1))
        match = f"split folder '{tmp_path / 'dtd' / 'val'}' does not exist: dtd needs train/, val/, test/"
    elif case == "listed_image_missing":
        base, _ = write_pets(tmp_path)
        os.remove(base / "images" / "Bengal_3.jpg")
        match = "1 of the 4 images listed in .*trainval.txt' are not on disk, e.g. .*Bengal_3.jpg"
    else:
        base, _ = write_food101(tmp_path)
        (base / "meta" / "classes.txt").write_text("apple_pie\nbaklava\ncannoli\n")
        match = "has no image list for class 'cannoli'"
    with pytest.raises(UserError, match=match):
        load_dataset(str(tmp_path), {"val_for_pets": "pets", "no_val_for_dtd": "dtd", "listed_image_missing": "pets",
                                     "food_class_missing": "food101"}[case], transform=None)


# ==== the CLI ====
def cli(argv):
    return lt.main(argparse.ArgumentParser(parents=[lt.get_args_parser()]).parse_args(argv))


def test_cli_two_datasets_and_cache_keyed_on_weights(tmp_path, capsys):
    write_folders(tmp_path / "data" / "dtd")                                       # official val/
    write_folders(tmp_path / "data" / "pets", splits=("train", "test"), per_class=(10, 5))  # 20% of train
    write_voc(tmp_path / "data" / "voc2007")
    model, _, _ = build_trunk("", "resnet_tiny", True, seed=3, log=lambda s: None)
    torch.save({"arch": "resnet_tiny", "args": {"arch": "resnet_tiny", "cifar_stem": True},
                "state_dict": model.state_dict()}, tmp_path / "a.pth")
    shutil.copy(tmp_path / "a.pth", tmp_path / "b.pth")
    common = ["--data_root", str(tmp_path / "data"), "--datasets", "voc2007", "pets", "dtd", "--image_size", "24",
              "--batch_size", "16", "--workers", "0", "--C_grid", "1", "0.01", "--device", "cpu",
              "--output_dir", str(tmp_path / "out")]
    first = cli(common + ["--pretrained", str(tmp_path / "a.pth")])
    out = capsys.readouterr().out
    assert "img/s" in out and "cached" not in out
    d = first["datasets"]
    assert (d["dtd"]["n_train"], d["dtd"]["n_val"], d["dtd"]["refit_rows"]) == (30, 12, 42)
    assert (d["pets"]["n_train"], d["pets"]["n_val"], d["pets"]["refit_rows"]) == (24, 6, 30)
    assert d["voc2007"]["metric"] == "map11" and d["pets"]["metric"] == "mean_per_class"
    assert d["dtd"]["metric"] == "top1" and d["voc2007"]["refit_rows"] == 21 and len(d["dtd"]["val_scores"]) == 2
    table = out.strip().splitlines()[-3:]
    assert [c.strip() for c in table[0].strip("|").split("|")] == ["Method", "VOC2007", "DTD", "Pets", "Avg."]
    avg = np.mean([d[n]["test_score"] for n in d])
    assert table[2].split("|")[1].strip() == "a" and table[2].split("|")[-2].strip() == f"{avg:.1f}"
    saved = json.load(open(tmp_path / "out" / "linear_transfer.json"))
    assert saved["average"] == pytest.approx(avg) and saved["trunk_sha256"] == first["trunk_sha256"]
    # the same weights under another name: every split's features come from the cache, the scores are the same
    second = cli(common + ["--pretrained", str(tmp_path / "b.pth")])
    out = capsys.readouterr().out
    assert out.count("cached features") == 8 and "img/s" not in out
    assert {n: r["test_score"] for n, r in second["datasets"].items()} == {n: r["test_score"] for n, r in d.items()}


class Counting(torch.nn.Module):
    """(B, 3, H, W) -> (B, 2) channel means; counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.mean((2, 3))[:, :2]


def test_feature_cache_follows_the_split_listing(tmp_path):
    from src.data.transfer import Split

    images = torch.utils.data.TensorDataset(torch.arange(24.0).view(2, 3, 2, 2), torch.zeros(2, dtype=torch.long))
    split, path, model = Split(images, np.zeros(2, dtype=np.int64), "k1"), str(tmp_path / "c" / "x.pt"), Counting()
    feats = protocol.split_features(model, split, path, 8, 0, torch.device("cpu"), "x/train")
    assert np.allclose(feats, [[1.5, 5.5], [13.5, 17.5]]) and model.calls == 1
    assert np.array_equal(protocol.split_features(model, split, path, 8, 0, torch.device("cpu"), "x"), feats)
    assert model.calls == 1  # read back from the cache
    protocol.split_features(model, Split(images, split.labels, "k2"), path, 8, 0, torch.device("cpu"), "x")
    assert model.calls == 2  # another listing: extracted again
    open(path, "wb").write(b"truncated")
    protocol.split_features(model, Split(images, split.labels, "k2"), path, 8, 0, torch.device("cpu"), "x")
    assert model.calls == 3 and torch.load(path, weights_only=True)["key"] == "k2"  # unreadable: rewritten


def test_non_finite_features_give_one_error_and_no_score(tmp_path, capsys):
    write_folders(tmp_path / "data" / "dtd", per_class=(2, 1, 1))
    model, _, _ = build_trunk("", "resnet_tiny", True, seed=0, log=lambda s: None)
    state = model.state_dict()
    state["bn1.running_var"][0] = -1.0  # finite weights (load_trunk accepts them) whose forward pass gives NaN
    torch.save({"state_dict": state, "arch": "resnet_tiny", "args": {"cifar_stem": True}}, tmp_path / "nan.pth")
    with pytest.raises(SystemExit) as exc:
        cli(["--data_root", str(tmp_path / "data"), "--datasets", "dtd", "--pretrained", str(tmp_path / "nan.pth"),
             "--image_size", "16", "--workers", "0", "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("error:") == 1 and "not finite" in err
    assert not os.path.exists(tmp_path / "out" / "linear_transfer.json")
    assert not any(f.endswith(".pt") for _, _, fs in os.walk(tmp_path / "out") for f in fs)  # nothing cached


@pytest.mark.parametrize("case", ["missing_dataset", "missing_test", "other_classes", "unknown_name"])
def test_bad_layouts_give_one_error_line(tmp_path, capsys, case):
    data = tmp_path / "data"
    write_folders(data / "dtd", per_class=(1, 1, 1))
    names = {"missing_dataset": ["dtd", "flowers"], "unknown_name": ["imagenet"]}.get(case, ["dtd"])
    if case == "missing_test":
        shutil.rmtree(data / "dtd" / "test")
    if case == "other_classes":
        shutil.rmtree(data / "dtd" / "test" / "c")
    with pytest.raises(SystemExit) as exc:
        cli(["--data_root", str(data), "--datasets", *names, "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("error:") == 1 and "Traceback" not in err
    expected = {"missing_dataset": str(data / "flowers"), "missing_test": str(data / "dtd" / "test"),
                "other_classes": "different class folders", "unknown_name": "unknown dataset 'imagenet'"}[case]
    assert expected in err


def test_cli_process_error_has_no_traceback(tmp_path):
    proc = run(py("-m", "eval.linear_transfer", "--data-root", str(tmp_path), "--datasets", "cifar10"))
    line = one_error_line(proc)
    assert proc.returncode == 2 and str(tmp_path / "cifar10") in line


def test_sbatch_recipe_parses():
    text = open(os.path.join(ROOT, "scripts", "linear_transfer_11.sh")).read()
    assert text.startswith("#!/bin/bash\n") and "#SBATCH --gpus-per-node=1" in text
    cmd = shlex.split(text[text.index("python -u -m eval.linear_transfer"):].replace("\\\n", " "), comments=True)
    argv = [a.replace("$DATA_ROOT", "/data").replace("$PRETRAINED", "x.pth").replace("$EXPERIMENT_PATH", "/exp")
            for a in cmd[4:]]
    a = argparse.ArgumentParser(parents=[lt.get_args_parser()]).parse_args(argv)
    assert a.datasets == ["all"] and a.image_size == 224 and a.batch_size == 64 and a.C_grid is None
    assert (a.max_iter, a.tol, a.seed, a.no_norm) == (100, 1e-4, 0, False) and a.output_dir == "/exp"
