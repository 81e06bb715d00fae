"""Projection / prediction heads.

MoCo v2 (Chen et al. 2020, "Improved baselines"): "we replace the fc head in MoCo with a 2-layer MLP
head (hidden layer 2048-d, with ReLU)": ``Linear(d, d) -> ReLU -> Linear(d, 128)``, no BN. SSL-small's
variants (simple / deep / dropout / wide) and BN-MLPs for later methods are built by the same function.
"""
from torch import nn


def build_mlp(in_dim, hidden_dims, out_dim, bn=False, last_bn=False, bias=True, dropout=0.0, last_bias=True):
    """Linear layers with ReLU (and optional BN / dropout) between them.

    Args:
        in_dim: input feature size.
        hidden_dims: list of hidden sizes; ``[]`` gives a single Linear.
        out_dim: output size.
        bn: BatchNorm1d after each hidden Linear (before ReLU).
        last_bn: BatchNorm1d (affine=False) after the last Linear.
        bias: bias of the hidden Linears (commonly off when followed by BN).
        dropout: dropout probability after each hidden ReLU (SSL-small's "dropout" head uses 0.5).
        last_bias: bias of the last Linear.
    Returns:
        ``nn.Sequential``; with ``bn=False`` and one hidden layer its indices are 0 (Linear), 1 (ReLU),
        2 (Linear), the layout of MoCo's released checkpoints (``encoder_q.fc.0`` / ``fc.2``).
    """
    layers, dim = [], in_dim
    for h in hidden_dims:
        layers.append(nn.Linear(dim, h, bias=bias))
        if bn:
            layers.append(nn.BatchNorm1d(h))
        layers.append(nn.ReLU(inplace=True))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        dim = h
    layers.append(nn.Linear(dim, out_dim, bias=last_bias))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


MOCO_HEADS = ("none", "simple", "deep", "dropout", "wide", "bn")


def build_moco_head(kind, in_dim, out_dim=128):
    """MoCo / SSL-small heads (``main_moco.py --mlp``; docs/moco.md). ``kind``: none (a Linear, MoCo v1), simple
    (MoCo v2), deep (two hidden d layers), dropout (hidden d, Dropout 0.5), wide (hidden 2d), bn (the
    MoCo-v2 MLP with BatchNorm after the hidden Linear and a non-affine BatchNorm on the output, as
    MoCo v3's projector: the output cannot collapse onto one common direction; the CPU demo uses it)."""
    if kind == "none":
        return nn.Linear(in_dim, out_dim)
    if kind == "simple":
        return build_mlp(in_dim, [in_dim], out_dim)
    if kind == "deep":
        return build_mlp(in_dim, [in_dim, in_dim], out_dim)
    if kind == "dropout":
        return build_mlp(in_dim, [in_dim], out_dim, dropout=0.5)
    if kind == "wide":
        return build_mlp(in_dim, [2 * in_dim], out_dim)
    if kind == "bn":
        return build_mlp(in_dim, [in_dim], out_dim, bn=True, last_bn=True, bias=False, last_bias=False)
    raise ValueError(f"unknown MoCo head {kind!r}; choose one of {MOCO_HEADS}")
