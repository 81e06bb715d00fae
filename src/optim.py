"""Optimizers and schedules: LARS in its two published forms, precomputed per-iteration schedules.

Schedules are numpy arrays indexed by the global step (DINO / SwAV style): pure, so a test can assert
them and a resumed run reads the same values.
"""
import math

import numpy as np
import torch

from src.run.speed import fused_kwargs


def cosine_schedule(base_value, final_value, epochs, iters_per_epoch, warmup_epochs=0, start_warmup_value=0):
    """Linear warmup then half-cosine, one value per iteration (SwAV / DINO formula).

    Warmup: ``linspace(start_warmup_value, base_value, warmup_epochs * iters_per_epoch)`` (both ends
    included). Then for ``t in [0, T)`` with ``T = (epochs - warmup_epochs) * iters_per_epoch``:
    ``final + 0.5 * (base - final) * (1 + cos(pi * t / T))`` (so the last value is just above ``final``).

    Returns:
        np.ndarray of length ``epochs * iters_per_epoch``.
    """
    warmup_iters = int(round(warmup_epochs * iters_per_epoch))
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 else np.array([])
    t = np.arange(epochs * iters_per_epoch - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * t / max(len(t), 1)))
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == epochs * iters_per_epoch
    return schedule


def moco_lr_schedule(base_lr, epochs, iters_per_epoch, cos=False, milestones=(120, 160), gamma=0.1):
    """MoCo's learning rate (facebookresearch/moco ``adjust_learning_rate``), set once per EPOCH.

    ``cos``: ``base * 0.5 * (1 + cos(pi * epoch / epochs))``; otherwise ``base * gamma ** (#milestones <= epoch)``.
    Expanded to one value per iteration (constant within an epoch) so every script indexes schedules
    the same way.
    """
    per_epoch = []
    for epoch in range(epochs):
        if cos:
            per_epoch.append(base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)))
        else:
            per_epoch.append(base_lr * gamma ** sum(epoch >= m for m in milestones))
    return np.repeat(np.array(per_epoch, dtype=np.float64), iters_per_epoch)


class LARS(torch.optim.Optimizer):
    """LARS as in MoCo v3 / BYOL / SCE: adaptation and weight decay only for parameters with ndim > 1.

    For ``p.ndim > 1``: ``g <- g + wd * p``; ``g <- eta * ||p|| / ||g|| * g`` when both norms are non-zero.
    Every parameter then takes ``mu <- momentum * mu + g``; ``p <- p - lr * mu``. Biases and norm
    parameters get plain momentum SGD with no weight decay (You et al. 2017; juliendenize/eztorch
    ``eztorch/optimizers/lars.py``).

    Args:
        params: parameters or groups.
        lr: learning rate (usually overwritten each step from a schedule).
        weight_decay: applied to ndim > 1 parameters only.
        momentum: heavy-ball momentum.
        trust_coefficient: eta (1e-3).
    """

    def __init__(self, params, lr=0.0, weight_decay=0.0, momentum=0.9, trust_coefficient=0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            # one multi-tensor kernel per op over the group (torch._foreach_*), not one launch per parameter
            adapt = [p for p in params if p.ndim > 1]
            if adapt:
                g = torch._foreach_add([p.grad for p in adapt], adapt, alpha=group["weight_decay"])
                p_norm = torch.stack(torch._foreach_norm(adapt))
                g_norm = torch.stack(torch._foreach_norm(g))
                ratio = torch.where((p_norm > 0) & (g_norm > 0), group["trust_coefficient"] * p_norm / g_norm,
                                    torch.ones_like(p_norm))
                torch._foreach_mul_(g, list(ratio.unbind()))
                updates = dict(zip(map(id, adapt), g))
            else:
                updates = {}
            grads = [updates.get(id(p), p.grad) for p in params]
            for p in params:
                if "mu" not in self.state[p]:
                    self.state[p]["mu"] = torch.zeros_like(p)
            mus = [self.state[p]["mu"] for p in params]
            torch._foreach_mul_(mus, group["momentum"])
            torch._foreach_add_(mus, grads)
            torch._foreach_add_(params, mus, alpha=-group["lr"])
        return loss


class LARC:
    """SwAV's LARC (apex ``LARC(trust_coefficient=0.001, clip=False, eps=1e-8)``) around any optimizer.

    Follows NVIDIA/apex ``apex/parallel/LARC.py`` (``step``). Before the inner step, for EVERY parameter with
    a gradient (no exclusion lists), when ``||w|| != 0`` and ``||g|| != 0``:
    ``local = eta * ||w|| / (||g|| + wd * ||w|| + eps)``, ``g <- (g + wd * w) * local``.
    A parameter with ``||w|| == 0`` or ``||g|| == 0`` is left untouched: no weight decay, no trust ratio
    (its gradient goes to the inner optimizer as it is). Every group's weight decay is set to 0 for the
    inner step (LARC has absorbed it) and restored afterwards.
    With ``clip=True``: ``local <- min(local / group_lr, 1)`` (apex's clipping mode).

    Args:
        optimizer: the inner optimizer (SwAV: ``torch.optim.SGD(momentum=0.9, weight_decay=wd)``).
        trust_coefficient: eta (SwAV 1e-3).
        clip: apex's clipping mode instead of scaling.
        eps: added to the denominator of the trust ratio.
    """

    def __init__(self, optimizer, trust_coefficient=0.001, clip=False, eps=1e-8):
        self.optim = optimizer
        self.trust_coefficient, self.clip, self.eps = trust_coefficient, clip, eps

    @property
    def param_groups(self):
        return self.optim.param_groups

    @property
    def state(self):
        return self.optim.state

    def state_dict(self):
        return self.optim.state_dict()

    def load_state_dict(self, state_dict):
        self.optim.load_state_dict(state_dict)

    def zero_grad(self, set_to_none=True):
        self.optim.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure=None):
        saved_wd = []
        for group in self.optim.param_groups:
            wd = group.get("weight_decay", 0.0)
            saved_wd.append(wd)
            group["weight_decay"] = 0.0
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            # multi-tensor kernels over the group (torch._foreach_*), not one launch per parameter, and no
            # host sync: the per-parameter test apex writes as `if` becomes a choice of factor
            p_norm = torch.stack(torch._foreach_norm(params))
            g_norm = torch.stack(torch._foreach_norm(grads))
            local = self.trust_coefficient * p_norm / (g_norm + wd * p_norm + self.eps)
            if self.clip:
                local = torch.clamp(local / group["lr"], max=1.0)
            # apex skips a parameter whose weight or gradient norm is 0 (`!=` as apex writes it). The factor
            # below leaves such a gradient exactly as it was after `(g + wd * w) * factor`:
            # ||w|| == 0 -> w is 0, wd * w adds 0, factor 1; ||g|| == 0 -> g is 0, factor 0 keeps it 0 (the
            # weight decay apex does not apply is multiplied away).
            skipped = torch.where(g_norm == 0, torch.zeros_like(local), torch.ones_like(local))
            local = torch.where((p_norm != 0) & (g_norm != 0), local, skipped)
            torch._foreach_add_(grads, params, alpha=wd)
            torch._foreach_mul_(grads, list(local.unbind()))
        try:
            return self.optim.step(closure)
        finally:
            for group, wd in zip(self.optim.param_groups, saved_wd):
                group["weight_decay"] = wd


def exclude_from_wd_groups(named_params, weight_decay):
    """Two parameter groups: ndim > 1 with ``weight_decay``, biases / norm parameters without."""
    decay, no_decay = [], []
    for _, p in named_params:
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def set_lr(optimizer, lr):
    """Set ``lr`` on every parameter group (``lr_scale`` in a group multiplies it). Returns: ``lr`` as a float."""
    lr = float(lr)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr


def sgd_larc(params, lr, weight_decay, device):
    """SwAV's optimizer: SGD (momentum 0.9, ``weight_decay``) on every parameter, wrapped in LARC (eta 1e-3, no
    clipping; facebookresearch/swav ``main_swav.py``); the fused SGD kernel on CUDA."""
    return LARC(torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, **fused_kwargs(device)),
                trust_coefficient=0.001, clip=False, eps=1e-8)


def swav_optimizer(params, base_lr, final_lr, weight_decay, epochs, iters_per_epoch, warmup_epochs=0, start_warmup=0.0,
                   device="cpu"):
    """SwAV's optimizer and the lr of every iteration (facebookresearch/swav ``main_swav.py``): :func:`sgd_larc`,
    and a linear warmup from ``start_warmup`` then a cosine to ``final_lr`` (:func:`cosine_schedule`).

    Returns: ``(optimizer, lr_schedule)``, the schedule of length ``epochs * iters_per_epoch``.
    """
    return sgd_larc(params, base_lr, weight_decay, device), cosine_schedule(
        base_lr, final_lr, epochs, iters_per_epoch, warmup_epochs=warmup_epochs, start_warmup_value=start_warmup)
