"""Schedules and LARS / LARC against straightforward reference formulas."""
import math

import numpy as np
import pytest
import torch

from src.optim import LARC, LARS, cosine_schedule, moco_lr_schedule


def test_cosine_schedule_matches_formula():
    base, final, epochs, ipe, warm, start = 4.8, 0.0048, 5, 7, 2, 0.3
    s = cosine_schedule(base, final, epochs, ipe, warmup_epochs=warm, start_warmup_value=start)
    assert len(s) == epochs * ipe
    W, T = warm * ipe, (epochs - warm) * ipe
    for i in range(W):  # linspace with both ends included
        assert s[i] == pytest.approx(start + (base - start) * i / (W - 1))
    for t in range(T):
        assert s[W + t] == pytest.approx(final + 0.5 * (base - final) * (1 + math.cos(math.pi * t / T)))
    assert s[W] == pytest.approx(base)


def test_cosine_schedule_without_warmup_starts_at_base_and_decreases():
    s = cosine_schedule(1.0, 0.0, 3, 4)
    assert s[0] == 1.0 and np.all(np.diff(s) < 0) and s[-1] > 0


def test_moco_schedule_is_per_epoch():
    s = moco_lr_schedule(0.03, 200, 3, cos=True)
    assert s[0] == s[2] == 0.03
    assert s[3 * 100] == pytest.approx(0.03 * 0.5 * (1 + math.cos(math.pi * 100 / 200)))
    step = moco_lr_schedule(0.03, 200, 2, cos=False, milestones=(120, 160))
    assert step[2 * 119] == 0.03 and step[2 * 120] == pytest.approx(0.003) and step[2 * 199] == pytest.approx(0.0003)


def _reference_lars(params, grads, lr, wd, mom, eta, steps):
    """Loop version of LARS (MoCo v3 / SCE): adaptation and wd on ndim > 1 only; float64."""
    ps = [p.clone().double() for p in params]
    mus = [torch.zeros_like(p) for p in ps]
    for s in range(steps):
        for p, mu, g in zip(ps, mus, grads[s]):
            g = g.double().clone()
            if p.ndim > 1:
                g = g + wd * p
                pn, gn = p.norm().item(), g.norm().item()
                if pn > 0 and gn > 0:
                    g = g * (eta * pn / gn)
            mu.mul_(mom).add_(g)
            p.sub_(lr * mu)
    return ps


def test_lars_matches_reference():
    torch.manual_seed(0)
    params = [torch.randn(4, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)]
    grads = [[torch.randn_like(p) for p in params] for _ in range(3)]
    ref = _reference_lars(params, grads, lr=0.5, wd=1e-2, mom=0.9, eta=1e-3, steps=3)
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = LARS(ps, lr=0.5, weight_decay=1e-2, momentum=0.9, trust_coefficient=1e-3)
    for s in range(3):
        for p, g in zip(ps, grads[s]):
            p.grad = g.clone()
        opt.step()
    for p, r in zip(ps, ref):
        torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-12)
    # the zero-norm 2-D parameter takes plain momentum SGD (ratio 1) and moves
    assert ps[2].abs().sum() > 0


def test_larc_matches_reference_sgd_formula():
    torch.manual_seed(1)
    w0 = [torch.randn(5, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    grads = [[torch.randn_like(w) for w in w0] for _ in range(2)]
    lr, wd, mom, eta, eps = 0.3, 1e-6, 0.9, 1e-3, 1e-8
    ref = [w.clone() for w in w0]
    bufs = [None, None]
    for s in range(2):
        for i, (w, g) in enumerate(zip(ref, grads[s])):
            local = eta * w.norm() / (g.norm() + wd * w.norm() + eps)
            d = (g + wd * w) * local
            bufs[i] = d.clone() if bufs[i] is None else bufs[i] * mom + d
            w -= lr * bufs[i]
    ps = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = LARC(torch.optim.SGD(ps, lr=lr, momentum=mom, weight_decay=wd))
    for s in range(2):
        for p, g in zip(ps, grads[s]):
            p.grad = g.clone()
        opt.step()
    for p, r in zip(ps, ref):
        torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-12)
    assert opt.param_groups[0]["weight_decay"] == wd  # restored after the step


def _reference_larc_sgd(w0, grads, lr, wd, mom, eta, eps, clip):
    """apex LARC around torch SGD(momentum, weight_decay) as a loop over parameters, float64.

    Per parameter (apex apex/parallel/LARC.py): only when ||w|| != 0 and ||g|| != 0, local = eta ||w|| /
    (||g|| + wd ||w|| + eps) (clip: min(local / lr, 1)) and g <- (g + wd w) local; otherwise g unchanged.
    The inner SGD then runs with weight decay 0: buf <- g (first step) or mom buf + g; w <- w - lr buf.
    """
    ws = [w.clone() for w in w0]
    bufs = [None] * len(ws)
    for step_grads in grads:
        for i, (w, g) in enumerate(zip(ws, step_grads)):
            g = g.clone()
            pn, gn = w.norm().item(), g.norm().item()
            if pn != 0 and gn != 0:
                local = eta * pn / (gn + wd * pn + eps)
                if clip:
                    local = min(local / lr, 1.0)
                g = (g + wd * w) * local
            bufs[i] = g.clone() if bufs[i] is None else bufs[i] * mom + g
            w -= lr * bufs[i]
    return ws


@pytest.mark.parametrize("clip", [False, True])
def test_larc_skips_zero_gradient_and_zero_weight_like_apex(clip):
    torch.manual_seed(2)
    normal, zero_grad, zero_w = torch.randn(5, 4), torch.randn(3, 3), torch.zeros(4)
    w0 = [t.double() for t in (normal, zero_grad, zero_w)]
    steps = 3
    grads = [[torch.randn_like(w) for w in w0] for _ in range(steps)]
    grads[0][1].zero_()  # exactly zero gradient at the first step (and a non-zero one later)
    grads[2][1].zero_()  # and again once the momentum buffer is non-zero
    lr, wd, mom, eta, eps = 0.7, 0.05, 0.9, 1e-3, 1e-8  # large wd so skipping it is visible
    ref = _reference_larc_sgd(w0, grads, lr, wd, mom, eta, eps, clip)
    ps = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = LARC(torch.optim.SGD(ps, lr=lr, momentum=mom, weight_decay=wd), trust_coefficient=eta, clip=clip, eps=eps)
    for s in range(steps):
        for p, g in zip(ps, grads[s]):
            p.grad = g.clone()
        opt.step()
        if s == 0:
            # zero gradient, zero buffer: apex applies no weight decay, so the weight does not move;
            # the zero weight took its raw gradient (no trust ratio): w = -lr * g
            torch.testing.assert_close(ps[1].detach(), w0[1], rtol=0, atol=0)
            torch.testing.assert_close(ps[2].detach(), -lr * grads[0][2], rtol=1e-15, atol=1e-15)
    for p, r in zip(ps, ref):
        torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-12)
    assert opt.param_groups[0]["weight_decay"] == wd


def test_larc_float32_zero_gradient_stays_zero_and_restores_wd_of_every_group():
    torch.manual_seed(3)
    a = torch.nn.Parameter(torch.randn(6, 2))
    b = torch.nn.Parameter(torch.randn(2))
    c = torch.nn.Parameter(torch.randn(3))  # no gradient at all: skipped by the inner SGD
    sgd = torch.optim.SGD([{"params": [a], "weight_decay": 0.1}, {"params": [b, c], "weight_decay": 0.2}],
                          lr=0.5, momentum=0.9)
    opt = LARC(sgd)
    a.grad, b.grad = torch.randn_like(a), torch.zeros_like(b)
    b0, c0 = b.detach().clone(), c.detach().clone()
    opt.step()
    assert torch.equal(b.grad, torch.zeros_like(b)) and torch.equal(b.detach(), b0) and torch.equal(c.detach(), c0)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.2]
