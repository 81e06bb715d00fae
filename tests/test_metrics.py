"""src.metrics against straightforward float64 / Python-loop references."""
import collections

import numpy as np
import pytest
import torch

from src.metrics import (StreamingKNN, accuracy, best_nn, best_nn_from_candidates, feature_mean, feature_sum,
                         knn_candidates, merge_candidates, transform_rep, weighted_knn, weighted_knn_from_candidates)
from src.run.errors import UserError


def _ref_transform(x, rep_space, batch_size=None):
    """numpy float64 version of transform_rep. shift-norm: minus the mean of the whole set x or, with
    ``batch_size`` (the old, wrong behaviour, kept to show the test data tells them apart), of each batch."""
    x = x.astype(np.float64)
    if rep_space in ("shifted-norm", "shift-norm"):
        step = batch_size or len(x)
        x = np.concatenate([x[i:i + step] - x[i:i + step].mean(axis=0, keepdims=True) for i in range(0, len(x), step)])
    if rep_space != "original":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def _ref_best_nn(tr, trl, te, tel, max_k, rep_space, batch_size=None):
    """Full distance matrix, Python majority vote, ties -> smallest class id."""
    q = _ref_transform(te.numpy(), rep_space, batch_size)
    bank = _ref_transform(tr.numpy(), rep_space, batch_size)
    dist = np.sqrt(((q[:, None, :] - bank[None, :, :]) ** 2).sum(-1))
    order = np.argsort(dist, axis=1, kind="stable")
    acc = {}
    for kk in range(1, max_k + 1, 2):
        correct = 0
        for i in range(len(q)):
            votes = collections.Counter(int(trl[j]) for j in order[i, :kk])
            top = max(votes.values())
            pred = min(c for c, v in votes.items() if v == top)
            correct += pred == int(tel[i])
        acc[kk] = 100.0 * correct / len(q)
    best_k = max(acc, key=lambda kk: (acc[kk], -kk))
    return acc[best_k], best_k, acc, dist, order


def _data(seed, n_train=120, n_test=40, dim=12, classes=5):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 1.5
    trl = torch.randint(0, classes, (n_train,), generator=g)
    tel = torch.randint(0, classes, (n_test,), generator=g)
    tr = centers[trl] + torch.randn(n_train, dim, generator=g) + 0.7  # offset: shifted-norm differs from norm
    te = centers[tel] + torch.randn(n_test, dim, generator=g) + 0.7
    return tr, trl, te, tel


@pytest.mark.parametrize("rep_space", ["original", "norm", "shifted-norm", "shift-norm"])
@pytest.mark.parametrize("max_k", [1, 4, 5, 11])
def test_best_nn_matches_brute_force(rep_space, max_k):
    tr, trl, te, tel = _data(seed=max_k)
    ref_best, ref_k, ref_acc, _, _ = _ref_best_nn(tr, trl, te, tel, max_k, rep_space)
    for batch_size in (7, 4096):
        best, best_k, acc_by_k = best_nn(tr, trl, te, tel, max_k=max_k, rep_space=rep_space, batch_size=batch_size)
        assert list(acc_by_k) == list(range(1, max_k + 1, 2))
        assert acc_by_k == pytest.approx(ref_acc)
        assert (best, best_k) == (pytest.approx(ref_best), ref_k)


@pytest.mark.parametrize("rep_space", ["original", "norm", "shifted-norm"])
def test_streaming_and_shard_merge_are_exact(rep_space):
    tr, trl, te, tel = _data(seed=3)
    k = 9
    mean = feature_mean(tr) if rep_space == "shifted-norm" else None
    q = transform_rep(te, rep_space)  # a whole set: shift-norm centres it by its own mean
    batches = list(zip(tr.split(16), trl.split(16)))
    d, l = knn_candidates(q, batches, k, rep_space, bank_mean=mean)
    assert d.shape == l.shape == (len(te), k)
    assert torch.all(d[:, 1:] >= d[:, :-1])
    # the same candidates as the float64 brute-force search over the whole transformed bank
    full = torch.cdist(torch.from_numpy(_ref_transform(te.numpy(), rep_space)),
                       torch.from_numpy(_ref_transform(tr.numpy(), rep_space)))
    ref_d, ref_i = full.topk(k, dim=1, largest=False)
    torch.testing.assert_close(d.double(), ref_d, atol=1e-4, rtol=1e-4)
    assert torch.equal(l, trl[ref_i])
    # two shards of whole batches, merged, give the same candidates
    shards = [knn_candidates(q, batches[:3], k, rep_space, bank_mean=mean),
              knn_candidates(q, batches[3:], k, rep_space, bank_mean=mean)]
    md, ml = merge_candidates(shards)
    torch.testing.assert_close(md, d)
    assert torch.equal(ml, l)
    ref = best_nn_from_candidates(d, l, tel, k)
    assert best_nn_from_candidates(md, ml, tel, k) == ref


def test_streaming_independent_of_bank_batch_size():
    tr, trl, te, tel = _data(seed=5)
    a = knn_candidates(te, [(tr, trl)], 5)
    b = knn_candidates(te, zip(tr.split(3), trl.split(3)), 5)
    torch.testing.assert_close(a[0], b[0])
    assert torch.equal(a[1], b[1])


def test_small_bank_keeps_everything():
    tr, trl, te, tel = _data(seed=6, n_train=4)
    d, l = knn_candidates(te, [(tr, trl)], 7)
    assert d.shape == (len(te), 4)
    _, _, acc_by_k = best_nn_from_candidates(d, l, tel, 7)
    assert list(acc_by_k) == [1, 3]


def test_vote_ties_go_to_smallest_class_and_best_k_to_smallest_k():
    # one query at 0; neighbours at distance 1 (class 2), 2 (class 0), 3 (class 1), 4 (class 1), 5 (class 0)
    tr = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
    trl = torch.tensor([2, 0, 1, 1, 0])
    te = torch.zeros(1, 1)
    # k=1 -> 2; k=3 -> tie {2, 0, 1} -> 0; k=5 -> tie {0: 2, 1: 2} -> 0
    best, best_k, acc = best_nn(tr, trl, te, torch.tensor([0]), max_k=5)
    assert acc == {1: 0.0, 3: 100.0, 5: 100.0}
    assert (best, best_k) == (100.0, 3)
    best, best_k, acc = best_nn(tr, trl, te, torch.tensor([2]), max_k=5)
    assert acc == {1: 100.0, 3: 0.0, 5: 0.0} and best_k == 1
    # candidates given unsorted are sorted before voting
    d, l = torch.tensor([[3.0, 1.0, 2.0]]), torch.tensor([[1, 2, 0]])
    assert best_nn_from_candidates(d, l, torch.tensor([2]), 1)[2] == {1: 100.0}


def _ref_weighted_knn(tr, trl, te, tel, k, t, num_classes):
    tr = tr.double() / tr.double().norm(dim=1, keepdim=True)
    te = te.double() / te.double().norm(dim=1, keepdim=True)
    correct = 0
    for i in range(len(te)):
        sims = [(float(te[i] @ tr[j]), int(trl[j])) for j in range(len(tr))]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for s, c in sims[:k]:
            votes[c] += np.exp(s / t)
        correct += int(np.argmax(votes)) == int(tel[i])
    return 100.0 * correct / len(te)


@pytest.mark.parametrize("k,t", [(1, 0.07), (5, 0.07), (20, 0.5), (200, 0.1)])
def test_weighted_knn_matches_loop(k, t):
    tr, trl, te, tel = _data(seed=k, n_train=80, n_test=30)
    ref = _ref_weighted_knn(tr, trl, te, tel, min(k, len(tr)), t, 5)
    assert weighted_knn(tr, trl, te, tel, k=k, temperature=t) == pytest.approx(ref)
    assert weighted_knn(tr, trl, te, tel, k=k, temperature=t, chunk_size=7, bank_chunk_size=9) == pytest.approx(ref)


def test_transform_rep_aliases_and_errors():
    x = torch.randn(10, 4) + 2
    assert torch.equal(transform_rep(x, "original"), x)
    torch.testing.assert_close(transform_rep(x, "norm").norm(dim=1), torch.ones(10))
    torch.testing.assert_close(transform_rep(x, "shift-norm"), transform_rep(x, "shifted-norm"))
    torch.testing.assert_close(transform_rep(x, "shifted-norm"), transform_rep(x - x.mean(0), "norm"))
    m = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)  # a given centre wins over the rows' own mean
    torch.testing.assert_close(transform_rep(x[:3], "shift-norm", mean=m), transform_rep(x[:3] - m.float(), "norm"))
    with pytest.raises(UserError, match="original, norm, shifted-norm"):
        transform_rep(x, "cosine")
    with pytest.raises(ValueError, match="bank_mean"):  # a per-batch mean must not creep back in
        knn_candidates(x, [(x, torch.zeros(10, dtype=torch.long))], 3, "shift-norm")


def test_feature_sum_and_mean_are_float64_over_batches():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])
    total, count = feature_sum(x.split(2))
    assert total.dtype == torch.float64 and count == 3 and total.tolist() == [9.0, 15.0]
    assert feature_mean(x, chunk_size=1).tolist() == [3.0, 5.0]
    # float32 accumulation of 1e8 + 1 + ... loses the small terms; float64 keeps them
    big = torch.tensor([[1e8], [1.0], [1.0], [1.0], [1.0]])
    assert feature_mean(big, chunk_size=1).item() == pytest.approx((1e8 + 4) / 5, abs=1e-6)


def test_shift_norm_hand_computed():
    """Bank (2,0),(4,0),(0,2),(0,4): mean (1.5,1.5); queries (3,1),(1,3): mean (2,2), so q0 -> (1,-1)/sqrt2.
    Its nearest centred bank row is (2.5,-1.5): cos = 4/sqrt(17), distance sqrt(2 - 8/sqrt(17))."""
    tr = torch.tensor([[2.0, 0.0], [4.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    trl = torch.tensor([0, 0, 1, 1])
    te = torch.tensor([[3.0, 1.0], [1.0, 3.0]])
    assert feature_mean(tr).tolist() == [1.5, 1.5]
    q = transform_rep(te, "shift-norm")
    torch.testing.assert_close(q, torch.tensor([[1.0, -1.0], [-1.0, 1.0]]) / 2 ** 0.5)
    for bs in (1, 2, 4):  # batch-size independent: the bank mean is given, not taken per batch
        d, l = knn_candidates(q, zip(tr.split(bs), trl.split(bs)), 1, "shift-norm", bank_mean=feature_mean(tr))
        torch.testing.assert_close(d, torch.full((2, 1), (2 - 8 / 17 ** 0.5) ** 0.5))
        assert l.flatten().tolist() == [0, 1]


def _class_sorted(seed, classes=6, per_class=24, n_test_per_class=8, dim=10):
    """Class-sorted features (ImageFolder order) with a large common offset and class offsets, so a batch mean
    (about one class) is far from the set mean."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 2.0
    trl = torch.arange(classes).repeat_interleave(per_class)
    tel = torch.arange(classes).repeat_interleave(n_test_per_class)
    tr = centers[trl] + torch.randn(len(trl), dim, generator=g) + 5.0
    te = centers[tel] + torch.randn(len(tel), dim, generator=g) + 5.0
    return tr, trl, te, tel


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shift_norm_on_class_sorted_data_uses_global_means(seed):
    tr, trl, te, tel = _class_sorted(seed)
    ref_best, ref_k, ref_acc, ref_dist, _ = _ref_best_nn(tr, trl, te, tel, 7, "shift-norm")
    old = _ref_best_nn(tr, trl, te, tel, 7, "shift-norm", batch_size=24)  # one class per batch
    assert old[2] != ref_acc  # the data tells the per-batch mean from the set mean
    for batch_size in (5, 24, 4096):
        best, best_k, acc = best_nn(tr, trl, te, tel, max_k=7, rep_space="shift-norm", batch_size=batch_size)
        assert acc == pytest.approx(ref_acc) and best_k == ref_k
    # the distances themselves, from the streaming search with the float64 training mean
    d, _ = knn_candidates(transform_rep(te, "shift-norm"), zip(tr.split(5), trl.split(5)), 7, "shift-norm",
                          bank_mean=feature_mean(tr))
    torch.testing.assert_close(d.double(), torch.from_numpy(np.sort(ref_dist, axis=1)[:, :7]), atol=1e-5, rtol=1e-5)


def test_cosine_streaming_shards_give_weighted_knn():
    tr, trl, te, tel = _data(seed=8, n_train=90, n_test=30)
    qn = torch.nn.functional.normalize(te, dim=1)
    parts = []
    for lo, hi in ((0, 40), (40, 90)):  # two shards, each streamed in batches of 7
        knn = StreamingKNN(qn, 20, metric="cosine")
        for b, bl in zip(tr[lo:hi].split(7), trl[lo:hi].split(7)):
            knn.add(torch.nn.functional.normalize(b, dim=1), bl)
        parts.append(knn.result())
    sims, labs = merge_candidates(parts, k=20, largest=True)
    ref = torch.nn.functional.normalize(tr.double(), dim=1) @ qn.double().T  # (N_train, N_test)
    ref_s, ref_i = ref.T.topk(20, dim=1)
    torch.testing.assert_close(sims.double(), ref_s, atol=1e-6, rtol=1e-6)
    assert torch.equal(labs, trl[ref_i])
    want = _ref_weighted_knn(tr, trl, te, tel, 20, 0.07, 5)
    assert weighted_knn_from_candidates(sims, labs, tel, temperature=0.07) == pytest.approx(want)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_features_are_refused(bad):
    tr, trl, te, tel = _data(seed=9)
    broken = tr.clone()
    broken[37, 2] = bad
    with pytest.raises(UserError, match="bank features contain NaN or inf"):
        best_nn(broken, trl, te, tel)
    with pytest.raises(UserError, match="query features contain NaN or inf"):
        best_nn(tr, trl, broken[30:40], tel[:10])
    with pytest.raises(UserError, match="NaN or inf"):
        weighted_knn(broken, trl, te, tel)


def test_accuracy():
    out = torch.tensor([[0.1, 0.5, 0.4], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5], [0.3, 0.4, 0.3]])
    target = torch.tensor([2, 0, 2, 0])
    top1, top2 = accuracy(out, target, topk=(1, 2))
    assert top1 == pytest.approx(50.0) and top2 == pytest.approx(100.0)
