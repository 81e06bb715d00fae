"""Checksums of a module's weights: :func:`fingerprint` (cheap, to assert that a frozen trunk never changed, as
MoCo's ``sanity_check``), :func:`content_hash` (what resumed evaluations and feature caches are keyed on) and
:func:`trunk_sha256` (the linear-transfer protocol's feature-cache key and results field).
"""
import hashlib

import torch


@torch.no_grad()
def fingerprint(module):
    """(T, 2) tensor of (sum, L2 norm) of every parameter and buffer, in fp32: any update of them changes it.

    Cheap enough to call every epoch (no copy of float tensors); compare with ``torch.equal``.
    """
    return torch.stack([torch.stack([t.float().sum(), torch.linalg.vector_norm(t.float())])
                        for t in module.state_dict().values() if torch.is_tensor(t)]).cpu()


@torch.no_grad()
def content_hash(module):
    """SHA-256 (hex, 16 characters) of a module's state: names, dtypes, shapes and bytes of every tensor.

    What a resumed evaluation and a feature cache are keyed on: the same path with other weights in it (a
    ``--pretrained`` file overwritten by a later epoch) gives another hash, a copy of the file the same one.
    """
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        if torch.is_tensor(t):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def trunk_sha256(model):
    """SHA-256 (hex, 64 characters) of a module's state dict (names sorted, dtypes, shapes and bytes): the linear
    transfer protocol's feature-cache key and ``trunk_sha256`` field, so a renamed checkpoint reuses its cache and an
    overwritten one does not. Another byte layout than :func:`content_hash`: kept so that existing caches and
    results stay valid."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
