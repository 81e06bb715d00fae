"""SCE (Denize et al., "Similarity Contrastive Estimation for Self-Supervised Soft Contrastive Learning", WACV 2023;
juliendenize/eztorch ``models/siamese/sce.py``): every piece of the method in one file, as facebookresearch/moco
keeps MoCo's in ``moco/builder.py``.

Online branch = trunk -> projector -> predictor; target branch = momentum trunk -> momentum projector (no
predictor), an EMA of the online weights. Keys of past steps sit in a (K, D) queue. :class:`SCE` holds the modules
(state-dict layout ``trunk.*`` in torchvision names, ``projector.*``, ``predictor.*``, ``momentum_trunk.*``,
``momentum_projector.*``, ``queue.queue`` / ``queue.ptr``) and the steps that use them: the queue snapshot, the
branches, the loss, the momentum update and the enqueue; ``main_sce.py``'s ``step`` calls them in that order.
Next to it: :class:`Branch` (a list of crops through trunk -> heads, L2-normalised; what DDP wraps),
:func:`multicrop_sce_loss` (the symmetrised multi-crop sum) and :func:`momentum_schedule` (the EMA momentum per
step, 0.99 -> 1).
"""
import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from src.losses import sce_loss
from src.methods.momentum import KeyQueue, copy_params, momentum_update
from src.methods.multicrop import resolution_groups
from src.models import build_backbone
from src.models.heads import build_mlp
from src.run import dist


def build_projector(in_dim, hidden_dim=4096, out_dim=256):
    """SCE's 3-layer projector: "Linear(2048, 4096) - BN - ReLU - Linear(4096, 4096) - BN - ReLU - Linear(4096,
    256) - BN" with no biases and a non-affine last BN (eztorch ``projector_resnet50_mlp3_bn3``)."""
    return build_mlp(in_dim, [hidden_dim, hidden_dim], out_dim, bn=True, last_bn=True, bias=False, last_bias=False)


def build_predictor(dim=256, hidden_dim=4096):
    """SCE's predictor: Linear(256, 4096) - BN - ReLU - Linear(4096, 256), no biases, no final BN
    (eztorch ``predictor_resnet50_mlp2_bn1``)."""
    return build_mlp(dim, [hidden_dim], dim, bn=True, bias=False, last_bias=False)


class Branch(nn.Module):
    """A trunk followed by heads, applied to a list of crops; outputs are L2-normalised.

    Holds references to modules owned by :class:`SCE` (its own state dict is never saved). With
    ``mutual_pass=False`` (the reference's setting) every crop gets its own forward, so batch-norm
    statistics are per view; with ``mutual_pass=True`` consecutive crops of the same resolution are
    concatenated into one forward (faster, BN statistics shared by those views).

    Args:
        trunk: (B, 3, H, W) -> (B, F) module.
        heads: modules applied in order to the trunk output (projector, then predictor for the online branch).
        mutual_pass: group same-resolution crops into one forward.
    """

    def __init__(self, trunk, *heads, mutual_pass=False):
        super().__init__()
        self.trunk, self.heads, self.mutual_pass = trunk, nn.Sequential(*heads), mutual_pass

    def forward(self, crops):
        """crops: list of (B, 3, H_i, W_i) -> list of (B, D) unit-norm outputs, one per crop, in order."""
        groups = resolution_groups(crops) if self.mutual_pass else [(i, i + 1) for i in range(len(crops))]
        out = []
        for start, end in groups:
            z = F.normalize(self.heads(self.trunk(torch.cat(crops[start:end]))), dim=1)  # (n * B, D)
            out += list(z.chunk(end - start))
        return out


class SCE(nn.Module):
    """Online trunk + projector + predictor, momentum trunk + projector, and the key queue, with the steps that
    use them.

    Args:
        arch: backbone name (``src.models.KNOWN_ARCHS``); resnet50 in the paper.
        dim: projection / queue feature size (256).
        proj_hidden_dim: projector hidden width (4096).
        pred_hidden_dim: predictor hidden width (4096).
        queue_size: K (65536).
        cifar_stem, image_size: passed to ``build_backbone`` (small images; DeiT resolution).
        temperature, temperature_m, coeff, mask_positive: the loss's tau (0.1), tau_m (0.07), lambda (0.5) and
            positive mask (see ``src.losses.sce_loss``).
    """

    def __init__(self, arch="resnet50", dim=256, proj_hidden_dim=4096, pred_hidden_dim=4096, queue_size=65536,
                 cifar_stem=False, image_size=224, temperature=0.1, temperature_m=0.07, coeff=0.5,
                 mask_positive=False):
        super().__init__()
        self.trunk, feat_dim = build_backbone(arch, cifar_stem=cifar_stem, image_size=image_size)
        self.projector = build_projector(feat_dim, proj_hidden_dim, dim)
        self.predictor = build_predictor(dim, pred_hidden_dim)
        self.momentum_trunk = copy.deepcopy(self.trunk)
        self.momentum_projector = copy.deepcopy(self.projector)
        self.sync_target()
        self.queue = KeyQueue(queue_size, dim)
        self.feat_dim = feat_dim
        self.temperature, self.temperature_m, self.coeff = temperature, temperature_m, coeff
        self.mask_positive = mask_positive

    def sync_target(self):
        """Target := online (parameters and buffers) and frozen, as at initialisation (and after DDP's broadcast)."""
        copy_params(self.trunk, self.momentum_trunk)
        copy_params(self.projector, self.momentum_projector)

    def online_params(self):
        """Parameters the optimizer updates: trunk, projector and predictor (not the target, not the queue)."""
        return [p for m in (self.trunk, self.projector, self.predictor) for p in m.parameters()]

    def online_branch(self, mutual_pass=False):
        """:class:`Branch` computing the queries q = normalize(predictor(projector(trunk(x))))."""
        return Branch(self.trunk, self.projector, self.predictor, mutual_pass=mutual_pass)

    def target_branch(self, mutual_pass=False):
        """:class:`Branch` computing the keys z = normalize(momentum_projector(momentum_trunk(x))) (under no_grad)."""
        return Branch(self.momentum_trunk, self.momentum_projector, mutual_pass=mutual_pass)

    def queue_snapshot(self):
        """(K, D) copy of the queue before this step's enqueue: every (key, query) pair of a step is scored against
        the same keys of earlier steps."""
        return self.queue.queue.clone()

    def loss(self, queries, keys, queue):
        """:func:`multicrop_sce_loss` with this model's temperatures and lambda (fp32, a scalar)."""
        return multicrop_sce_loss(queries, keys, queue, self.temperature, self.temperature_m, self.coeff,
                                  self.mask_positive)

    @torch.no_grad()
    def momentum_update(self, m):
        """theta_target <- m * theta_target + (1 - m) * theta_online over parameters only (BN running
        statistics of the target stay its own), for the trunk and the projector; after the optimizer step."""
        momentum_update(self.trunk, self.momentum_trunk, m)
        momentum_update(self.projector, self.momentum_projector, m)

    @torch.no_grad()
    def enqueue(self, keys):
        """Both global views' keys of the whole global batch go into the queue, after the loss: view 1 of ranks
        0..N-1, then view 2, identical on every rank. keys: list of (B, D) per view."""
        self.queue.enqueue(torch.cat([dist.concat_all_gather(k.float()) for k in keys]))

    def trunks(self):
        """The online and momentum trunks (copies; pooled features, no head), for an evaluation of the features."""
        return {"online": copy.deepcopy(self.trunk), "momentum": copy.deepcopy(self.momentum_trunk)}

    def trunk_state(self):
        """The online trunk's weights in torchvision names (``conv1.weight``, ``layer1.0.bn1.*``, no fc): what
        ``trunk.pth`` holds, for ``torchvision.models.resnet50().load_state_dict(sd, strict=False)``."""
        return self.trunk.state_dict()


def multicrop_sce_loss(queries, keys, queue, temperature, temperature_m, coeff, mask_positive=False):
    """Symmetrised multi-crop SCE: every crop is a query for the key of each global view but its own.

    ``sum_{i < len(keys)} sum_{j != i} sce_loss(queries[j], keys[i], queue) / (len(keys) * (len(queries) - 1))``,
    i.e. divided by 2 with 2 crops and by 10 with 6 (2 global + 4 local). All pairs share one queue snapshot.

    Args:
        queries: list of (B, D) unit-norm online predictions, one per crop, global crops first.
        keys: list of (B, D) unit-norm momentum keys of the global crops (2 in every SCE recipe).
        queue: (K, D) queue snapshot. temperature, temperature_m, coeff, mask_positive: see ``sce_loss``.
    Returns:
        scalar float32 loss.
    """
    total, pairs = 0.0, 0
    for i, k in enumerate(keys):
        for j, q in enumerate(queries):
            if j != i:
                total = total + sce_loss(q, k, queue, temperature, temperature_m, coeff, mask_positive)
                pairs += 1
    assert pairs == num_loss_pairs(len(keys), len(queries))
    return total / pairs


def num_loss_pairs(num_global, num_crops):
    """Number of (key, query) pairs of :func:`multicrop_sce_loss`: ``num_global * (num_crops - 1)``."""
    return num_global * (num_crops - 1)


def momentum_schedule(base, epochs, iters_per_epoch):
    """EMA momentum per optimizer step: ``m_s = 1 - (1 - base) * (1 + cos(pi * s / (S - 1))) / 2``.

    Starts at ``base`` (0.99) at step 0 and reaches exactly 1.0 at the last step ``S - 1``, with
    ``S = epochs * iters_per_epoch`` (eztorch's cosine momentum scheduler).

    Returns:
        np.ndarray of length S (float64).
    """
    total = epochs * iters_per_epoch
    s = np.arange(total, dtype=np.float64)
    return 1.0 - (1.0 - base) * (1.0 + np.cos(math.pi * s / max(total - 1, 1))) / 2.0
