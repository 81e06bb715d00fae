"""MoCo v1 / v2 (He et al. 2020; Chen et al. 2020): every piece of the method in one file, as facebookresearch/moco
keeps them in ``moco/builder.py``.

A query encoder, a momentum key encoder (same architecture, never receives gradients) and a queue. Each encoder is a
trunk whose ``fc`` is the projection head (a Linear for v1, the 2-layer MLP for v2), so the state dict has MoCo's
released layout: ``encoder_q.conv1.weight`` ... ``encoder_q.fc.0.weight``. :class:`MoCo` holds the momentum update,
the queries, the shuffled keys, the logits and the enqueue; shuffle-BN across processes and split-BN on one process
are at the end of this file. ``main_moco.py``'s ``step`` calls them in order.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from src.losses import infonce_logits
from src.methods.momentum import KeyQueue, copy_params, momentum_update
from src.methods.multicrop import resolution_groups
from src.methods.taps import InputTap
from src.models import build_backbone
from src.models.heads import build_moco_head
from src.run import dist
from src.run.errors import UserError


class MoCo(nn.Module):
    """Query encoder, momentum key encoder and the key queue, with the steps that use them.

    Args:
        arch: backbone name (see ``src.models.KNOWN_ARCHS``).
        dim: output feature dimension (128).
        K: queue size (65536).
        m: momentum of the key encoder (0.999).
        T: softmax temperature (0.07 v1, 0.2 v2).
        head: "none" (MoCo v1 Linear), "simple" (v2 MLP), or SSL-small's "deep" / "dropout" / "wide".
        bn_splits: >1 replaces BN by :class:`SplitBatchNorm` (single-process shuffle-BN simulation).
        cifar_stem, image_size: passed to ``build_backbone``.
        feature_queue: also keep a queue of the keys' unit-norm BACKBONE features (``queue_backbone``,
            K x feature dim, same pointer as ``queue``) and record the backbone feature of every
            forward (``tap_q`` / ``tap_k``), for the nearest-neighbour loss of Van Gansbeke et al. 2021.
        tap_features: record the query encoder's backbone features (``tap_q``) without a feature queue (an
            online linear probe reads them).
    """

    def __init__(self, arch="resnet50", dim=128, K=65536, m=0.999, T=0.07, head="none", bn_splits=1, cifar_stem=False,
                 image_size=224, feature_queue=False, tap_features=False):
        super().__init__()
        self.m, self.T = m, T
        self.encoder_q, feat_dim = build_backbone(arch, cifar_stem=cifar_stem, image_size=image_size)
        self.encoder_q.fc = build_moco_head(head, feat_dim, dim)
        convert_split_bn(self.encoder_q, bn_splits)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        copy_params(self.encoder_q, self.encoder_k)
        self.queue = KeyQueue(K, dim)
        self.feat_dim = feat_dim
        self.queue_backbone = self.tap_q = self.tap_k = None
        if feature_queue:
            self.queue_backbone = KeyQueue(K, feat_dim)
            self.tap_k = InputTap(self.encoder_k.fc)
        if feature_queue or tap_features:
            self.tap_q = InputTap(self.encoder_q.fc)

    @torch.no_grad()
    def momentum_update(self):
        """Key encoder <- m * key encoder + (1 - m) * query encoder (parameters only)."""
        momentum_update(self.encoder_q, self.encoder_k, self.m)

    def queries(self, encoder_q, crops):
        """Unit-norm query embeddings of every query crop, one forward per run of same-size crops (a batch
        shares one resolution; the small crops go through together, so BN sees them as one batch).

        Args:
            encoder_q: the query encoder as the step calls it (possibly DDP-wrapped or compiled).
            crops: list of V tensors (B, 3, H_v, W_v), same-size crops next to each other.
        Returns:
            q (V*B, dim), crop-major (rows v*B ... v*B+B-1 are crop v); h (V*B, F) the backbone features (fp32,
            without gradient) when they are tapped, else None.
        """
        qs, hs = [], []
        for start, end in resolution_groups(crops):
            x = crops[start] if end - start == 1 else torch.cat(crops[start:end])
            qs.append(F.normalize(encoder_q(x), dim=1))
            if self.tap_q is not None:
                hs.append(self.tap_q.take().float())
        q = qs[0] if len(qs) == 1 else torch.cat(qs)
        return q, (torch.cat(hs) if hs else None)

    @torch.no_grad()
    def keys(self, im_k):
        """(B, 3, H, W) -> (B, dim) unit-norm keys, computed on a shuffled batch and unshuffled (shuffle-BN across
        processes, split-BN on one).

        Returns:
            ``(keys, h)``: h (B, feature dim) holds the unit-norm backbone features of the same keys, unshuffled with
            them (one all-gather for both), with a feature queue; else None.
        """
        im_k, idx_unshuffle = batch_shuffle(im_k)
        k = F.normalize(self.encoder_k(im_k), dim=1)
        if self.tap_k is None:
            return batch_unshuffle(k, idx_unshuffle), None
        h = F.normalize(self.tap_k.take().float(), dim=1)
        kh = batch_unshuffle(torch.cat([k.float(), h], dim=1), idx_unshuffle)
        return kh[:, :k.shape[1]], kh[:, k.shape[1]:]

    def logits(self, q, k):
        """InfoNCE logits in fp32: every query row against its image's key and the queue (before this step's
        enqueue). q (V*B, dim), k (B, dim) -> (V*B, 1+K), the positive in column 0."""
        return infonce_logits(q, k.repeat(q.shape[0] // k.shape[0], 1), self.queue.queue, self.T)

    @torch.no_grad()
    def enqueue(self, k):
        """The keys of the whole global batch go into the queue (after the loss: a key is never its own negative)."""
        self.queue.enqueue(dist.concat_all_gather(k.float()))

    @torch.no_grad()
    def enqueue_features(self, h_k):
        """The keys' backbone features go into the backbone-feature queue (same rows as :meth:`enqueue`)."""
        self.queue_backbone.enqueue(dist.concat_all_gather(h_k))

    def trunks(self):
        """The query and key trunks without their heads (copies), for an evaluation of the features."""
        return {"online": headless(self.encoder_q), "momentum": headless(self.encoder_k)}

    def trunk_state(self):
        """The query trunk's weights in torchvision names, without the head: what evaluations and detectron2
        export read (``trunk.pth``)."""
        return {k: v for k, v in self.encoder_q.state_dict().items() if not k.startswith("fc.")}


def headless(encoder):
    """A copy of ``encoder`` whose ``fc`` (the projection head) is the identity: the trunk's pooled features."""
    trunk = copy.deepcopy(encoder)
    trunk.fc = nn.Identity()
    return trunk


@torch.no_grad()
def load_for_restart(model, state):
    """SSL-small's ``--resume CKPT --restart`` (WOWNICE/ssl-small ``main_moco.py``): start a new run from a
    checkpoint's weights.

    A ``module.`` prefix (DDP) is stripped; tensors whose shape differs from the model's (another head,
    queue size or feature dim) are dropped; the rest is loaded non-strictly; then every parameter and
    buffer of ``encoder_q`` is copied into ``encoder_k``, so the key encoder starts from the loaded
    query encoder (a SEED-distilled student converted by ``experiments.convert-seed`` has no key encoder).
    The queue keeps the loaded keys when their shape fits, else its random initialisation.

    Args:
        model: a :class:`MoCo`.
        state: checkpoint state dict (``encoder_q.*`` / ``module.encoder_q.*`` keys, others ignored).
    Returns:
        dict: ``loaded`` (keys), ``mismatched`` ([(key, checkpoint shape, model shape)]), ``missing``
        (model keys left at initialisation, encoder_k excluded), ``ignored`` (checkpoint keys not in the model).
    Raises:
        UserError: no ``encoder_q`` tensor of the checkpoint fits the model.
    """

    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items() if torch.is_tensor(v)}
    own = model.state_dict()
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                  if k in own and v.shape != own[k].shape]
    usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    if not any(k.startswith("encoder_q.") for k in usable):
        raise UserError(f"no encoder_q weights of the checkpoint fit this model ({len(state)} tensors, "
                        f"{len(mismatched)} with other shapes): check -a/--arch, or convert a SEED checkpoint "
                        "with python -m experiments.convert-seed")
    model.load_state_dict(usable, strict=False)
    copy_params(model.encoder_q, model.encoder_k)
    return {"loaded": sorted(usable), "mismatched": mismatched,
            "missing": [k for k in own if k not in usable and not k.startswith("encoder_k.")],
            "ignored": sorted(k for k in state if k not in own)}


# ==== shuffle-BN and split-BN ====
@torch.no_grad()
def batch_shuffle(x):
    """Shuffle-BN, step 1 (MoCo, He et al. 2020 sec. 3.3): give each rank a random slice of the GLOBAL batch.

    All ranks gather the images, draw one permutation on rank 0 and broadcast it, and keep their slice.
    Only DDP spreads BN statistics over other samples; with one process this is a local permutation
    (useful together with :class:`SplitBatchNorm`). Warning: the result carries no gradient; use it
    only for the momentum encoder.

    Returns:
        (x_shuffled (B, ...), idx_unshuffle) to pass to :func:`batch_unshuffle`.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    x_all = dist.concat_all_gather(x)
    perm = torch.randperm(x_all.shape[0], device=x.device)
    perm = dist.broadcast(perm, src=0)
    idx_unshuffle = torch.argsort(perm)
    return x_all[perm.view(world, -1)[rank]], idx_unshuffle


@torch.no_grad()
def batch_unshuffle(x, idx_unshuffle):
    """Shuffle-BN, step 2: gather the encoded slices and take back this rank's samples in their order."""
    world, rank = dist.get_world_size(), dist.get_rank()
    x_all = dist.concat_all_gather(x)
    return x_all[idx_unshuffle.view(world, -1)[rank]]


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that normalises ``num_splits`` equal sub-batches separately in training mode.

    Simulates the per-GPU BN of an N-GPU run on one device (MoCo's CIFAR demo uses 8), which together
    with a key-side shuffle keeps queries and keys from sharing batch statistics. Running statistics
    are the mean over splits; evaluation uses them like plain BN, and the state dict is plain BN's.
    """

    def __init__(self, num_features, num_splits, **kwargs):
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x):
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        s = self.num_splits
        assert n % s == 0, f"batch {n} is not divisible by --bn-splits {s}"
        mean_split = self.running_mean.repeat(s)
        var_split = self.running_var.repeat(s)
        out = F.batch_norm(x.reshape(n // s, c * s, h, w), mean_split, var_split,
                           self.weight.repeat(s) if self.affine else None,
                           self.bias.repeat(s) if self.affine else None, True, self.momentum, self.eps)
        self.running_mean.copy_(mean_split.view(s, c).mean(dim=0))
        self.running_var.copy_(var_split.view(s, c).mean(dim=0))
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        return out.view(n, c, h, w)


def convert_split_bn(module, num_splits):
    """Replace every BatchNorm2d in ``module`` by a :class:`SplitBatchNorm` with the same state."""
    if num_splits <= 1:
        return module
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm):
            new = SplitBatchNorm(child.num_features, num_splits, eps=child.eps, momentum=child.momentum,
                                 affine=child.affine, track_running_stats=child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_split_bn(child, num_splits)
    return module
