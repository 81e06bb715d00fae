"""MoCo v1 / v2 model (He et al. 2020; Chen et al. 2020), after facebookresearch/moco ``moco/builder.py``.

A query encoder, a momentum key encoder (same architecture, never receives gradients) and a queue.
Each encoder is a trunk whose ``fc`` is the projection head (a Linear for v1, the 2-layer MLP for
v2), so the state dict has MoCo's released layout: ``encoder_q.conv1.weight`` ... ``encoder_q.fc.0.weight``.
The training step itself (momentum update, shuffled key forward, loss, enqueue) is written out in
``main_moco.py``'s ``train_one_epoch``; this module only assembles the pieces and names them.
"""
import copy

import torch.nn.functional as F
from torch import nn

from ..models import build_backbone
from ..models.heads import build_moco_head
from .common import KeyQueue, batch_shuffle, batch_unshuffle, convert_split_bn, copy_params


class MoCo(nn.Module):
    """Query encoder, momentum key encoder and the key queue.

    Args:
        arch: backbone name (see ``src.models.KNOWN_ARCHS``).
        dim: output feature dimension (128).
        K: queue size (65536).
        head: "none" (MoCo v1 Linear), "simple" (v2 MLP), or SSL-small's "deep" / "dropout" / "wide".
        bn_splits: >1 replaces BN by SplitBatchNorm (single-process shuffle-BN simulation).
        cifar_stem, image_size: passed to ``build_backbone``.
    """

    def __init__(self, arch="resnet50", dim=128, K=65536, head="none", bn_splits=1, cifar_stem=False, image_size=224):
        super().__init__()
        self.encoder_q, feat_dim = build_backbone(arch, cifar_stem=cifar_stem, image_size=image_size)
        self.encoder_q.fc = build_moco_head(head, feat_dim, dim)
        convert_split_bn(self.encoder_q, bn_splits)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        copy_params(self.encoder_q, self.encoder_k)
        self.queue = KeyQueue(K, dim)
        self.feat_dim = feat_dim

    def key(self, im_k):
        """(B, 3, H, W) -> (B, dim) unit-norm keys, computed on a shuffled batch and unshuffled (no gradient)."""
        im_k, idx_unshuffle = batch_shuffle(im_k)
        k = F.normalize(self.encoder_k(im_k), dim=1)
        return batch_unshuffle(k, idx_unshuffle)
