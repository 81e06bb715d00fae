"""src.metrics align / uniformity / intra_class_align / instdisc_topk against float64 Python loops."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from src.metrics import align, instdisc_topk, intra_class_align, uniformity
from src.run.errors import UserError


def _unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def _sqdist(a, b):
    return math.fsum((float(u) - float(v)) ** 2 for u, v in zip(a, b))


# ==== alignment ====
def test_align_is_mean_squared_pair_distance():
    x, y = _unit(37, 9, 0), _unit(37, 9, 1)
    ref = math.fsum(_sqdist(x[i], y[i]) for i in range(37)) / 37
    assert float(align(x, y)) == pytest.approx(ref, rel=1e-12)
    # unit rows: the reference's 2 - 2 * mean <x_i, y_i>
    dots = math.fsum(math.fsum(float(u) * float(v) for u, v in zip(x[i], y[i])) for i in range(37))
    assert float(align(x, y)) == pytest.approx(2 - 2 * dots / 37, rel=1e-12)
    assert float(align(x, x)) == 0.0 and float(align(x, -x)) == pytest.approx(4.0)


def test_align_float32_close_and_differentiable():
    x, y = _unit(20, 5, 2), _unit(20, 5, 3)
    xf = x.float().requires_grad_()
    out = align(xf, y.float())
    out.backward()
    assert out.dtype == torch.float32 and xf.grad is not None
    assert float(out.detach()) == pytest.approx(float(align(x, y)), rel=1e-5)


# ==== uniformity ====
def _ref_uniformity(x, t):
    terms = [-t * _sqdist(x[i], x[j]) for i, j in itertools.combinations(range(len(x)), 2)]
    top = max(terms)  # log-mean-exp by hand, stable for far-apart points
    return top + math.log(math.fsum(math.exp(v - top) for v in terms) / len(terms))


@pytest.mark.parametrize("t", [2, 0.5, 7])
def test_uniformity_matches_pair_loop(t):
    x = _unit(30, 6, 4)
    assert float(uniformity(x, t=t)) == pytest.approx(_ref_uniformity(x, t), rel=1e-10)


def test_uniformity_default_t_is_2_and_stable_far_apart():
    x = _unit(12, 4, 5)
    assert float(uniformity(x)) == pytest.approx(_ref_uniformity(x, 2), rel=1e-10)
    far = x * 40  # exp(-2 d^2) underflows to 0 in a naive mean
    assert math.isfinite(float(uniformity(far)))
    assert float(uniformity(far)) == pytest.approx(_ref_uniformity(far, 2), rel=1e-10)
    same = torch.ones(5, 3, dtype=torch.float64)  # collapsed: every distance 0, log mean exp 0 = 0
    assert float(uniformity(same)) == pytest.approx(0.0, abs=1e-12)


# ==== intra-class alignment ====
def _ref_intra(x, labels):
    per_class = []
    for c in sorted(set(labels)):
        idx = [i for i, l in enumerate(labels) if l == c]
        pairs = list(itertools.combinations(idx, 2))
        if pairs:
            per_class.append(math.fsum(_sqdist(x[i], x[j]) for i, j in pairs) / len(pairs))
    return math.fsum(per_class) / len(per_class)


def test_intra_class_align_matches_loop_with_uneven_classes():
    x = _unit(23, 7, 6)
    labels = [7] * 5 + [3] * 9 + [100] * 8 + [42]  # unsorted ids, unequal sizes, one singleton (left out)
    perm = torch.randperm(23, generator=torch.Generator().manual_seed(0))
    x, labels = x[perm], [labels[i] for i in perm.tolist()]
    got = intra_class_align(x, torch.tensor(labels))
    assert float(got) == pytest.approx(_ref_intra(x, labels), rel=1e-12)
    assert float(intra_class_align(x, labels)) == pytest.approx(float(got))  # a list works too


def test_bad_inputs_raise_user_errors():
    x = _unit(4, 3, 7)
    with pytest.raises(UserError):
        align(x, x[:3])
    with pytest.raises(UserError):
        uniformity(x[:1])
    with pytest.raises(UserError, match="no class has two samples"):
        intra_class_align(x, torch.arange(4))
    with pytest.raises(UserError):
        intra_class_align(x, torch.zeros(3))


# ==== instance discrimination ====
def test_instdisc_topk_hand_made():
    """Four queries on the unit circle; each positive is placed so that its rank is known.

    q0 = (1, 0): positive (1, 0), sim 1 beats all negatives (0, -1, 0): rank 0.
    q1 = (0, 1): positive (0.6, -0.8), sim -0.8; negatives 0, 0, -1: two score higher: rank 2.
    q2 = (-1, 0): positive (0, 1), sim 0; negatives -1, 0, 0: two ties count against it: rank 2.
    q3 = (0, -1): positive (0, 1), sim -1; negatives 0, -1, 0: all three: rank 3.
    """
    q = torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]])
    p = torch.tensor([[1.0, 0], [0.6, -0.8], [0, 1], [0, 1]])
    assert instdisc_topk(q, p, topk=5) == [25.0, 25.0, 75.0, 100.0, 100.0]
    assert instdisc_topk(q, p, topk=2, chunk_size=1) == [25.0, 25.0]
    collapsed = torch.ones(6, 4)
    assert instdisc_topk(collapsed, collapsed, topk=3) == [0.0, 0.0, 0.0]


def _reference_instdisc(r0, r1, topk):
    """The SSL-small formulation: logits [<q_i, p_i>, <q_i, q_j> for all j incl. i], top-(k+1)."""
    logits = torch.cat([(r0 * r1).sum(1, keepdim=True), r0 @ r0.T], dim=1)
    ranked = logits.topk(topk + 1, dim=1).indices
    return [100.0 * (ranked[:, :k + 1] == 0).any(1).double().mean().item() for k in range(1, topk + 1)]


def test_instdisc_topk_matches_reference_formulation():
    r0 = _unit(64, 8, 8)
    r1 = F.normalize(r0 + 0.6 * _unit(64, 8, 9), dim=1)
    ours = instdisc_topk(r0, r1, topk=5, chunk_size=10)
    assert ours == pytest.approx(_reference_instdisc(r0, r1, 5))
    assert 0 < ours[0] < ours[-1] <= 100  # not trivial: some misses at top-1, more hits at top-5
    assert ours == pytest.approx(instdisc_topk(r0.float(), r1.float(), topk=5))
