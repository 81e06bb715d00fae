"""MoCo v1 / v2 model (He et al. 2020; Chen et al. 2020), after facebookresearch/moco ``moco/builder.py``.

A query encoder, a momentum key encoder (same architecture, never receives gradients) and a queue.
Each encoder is a trunk whose ``fc`` is the projection head (a Linear for v1, the 2-layer MLP for
v2), so the state dict has MoCo's released layout: ``encoder_q.conv1.weight`` ... ``encoder_q.fc.0.weight``.
The training step itself (momentum update, shuffled key forward, loss, enqueue) is written out in
``main_moco.py``'s ``train_one_epoch``; this module only assembles the pieces and names them.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from src.methods.common import KeyQueue, batch_shuffle, batch_unshuffle, convert_split_bn, copy_params
from src.models import build_backbone
from src.models.heads import build_moco_head
from src.run.errors import UserError


class MoCo(nn.Module):
    """Query encoder, momentum key encoder and the key queue.

    Args:
        arch: backbone name (see ``src.models.KNOWN_ARCHS``).
        dim: output feature dimension (128).
        K: queue size (65536).
        head: "none" (MoCo v1 Linear), "simple" (v2 MLP), or SSL-small's "deep" / "dropout" / "wide".
        bn_splits: >1 replaces BN by SplitBatchNorm (single-process shuffle-BN simulation).
        cifar_stem, image_size: passed to ``build_backbone``.
        feature_queue: also keep a queue of the keys' unit-norm BACKBONE features (``queue_backbone``,
            K x feature dim, same pointer as ``queue``) and record the backbone feature of every
            forward (``tap_q`` / ``tap_k``), for the nearest-neighbour loss of Van Gansbeke et al. 2021.
    """

    def __init__(self, arch="resnet50", dim=128, K=65536, head="none", bn_splits=1, cifar_stem=False, image_size=224,
                 feature_queue=False):
        super().__init__()
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
            self.tap_q, self.tap_k = InputTap(self.encoder_q.fc), InputTap(self.encoder_k.fc)

    def key(self, im_k, with_features=False):
        """(B, 3, H, W) -> (B, dim) unit-norm keys, computed on a shuffled batch and unshuffled (no gradient).

        With ``with_features`` (needs ``feature_queue``): ``(keys, h)`` where h (B, feature dim) holds the
        unit-norm backbone features of the same keys, unshuffled with them (one all-gather for both).
        """
        im_k, idx_unshuffle = batch_shuffle(im_k)
        k = F.normalize(self.encoder_k(im_k), dim=1)
        if not with_features:
            return batch_unshuffle(k, idx_unshuffle)
        h = F.normalize(self.tap_k.take().float(), dim=1)
        kh = batch_unshuffle(torch.cat([k.float(), h], dim=1), idx_unshuffle)
        return kh[:, :k.shape[1]], kh[:, k.shape[1]:]


class InputTap:
    """Remembers the input of ``module`` at its latest forward (a forward pre-hook).

    Put on an encoder's ``fc`` (the projection head), it records the backbone feature that entered
    the head, for every architecture of ``src.models`` and through DDP, while the encoder keeps
    returning only the head's output (the released state-dict layout is unchanged). Read it with
    :meth:`take` right after the forward.
    """

    def __init__(self, module):
        self.value = None
        self.handle = module.register_forward_pre_hook(self._keep)

    def _keep(self, module, inputs):
        self.value = inputs[0]

    def take(self):
        """The recorded (B, feature dim) input, detached; cleared so a stale value is never read twice."""
        value, self.value = self.value, None
        assert value is not None, "no forward of the tapped module since the last take()"
        return value.detach()


@torch.no_grad()
def load_for_restart(model, state):
    """SSL-small's ``--resume CKPT --restart`` (spec moco.md D.4): start a new run from a checkpoint's weights.

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
