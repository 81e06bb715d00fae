"""SwAV's pieces (Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments",
NeurIPS 2020; facebookresearch/swav ``main_swav.py`` and ``src/resnet50.py``), shared with DeepCluster-v2 and SeLa-v2.

The training step itself (normalise prototypes, grouped forward, queue + Sinkhorn codes, swapped loss, frozen
prototype gradients, LARC step) is written out in ``main_swav.py``'s ``step``; this module names the pieces:

* :class:`SwAVModel`: trunk -> projection head -> L2-normalise -> prototypes, with the state-dict layout
  ``backbone.*`` (torchvision names), ``projection_head.*``, ``prototypes.weight`` (one head) or
  ``prototypes.<h>.weight`` (several heads, DeepCluster-v2 / SeLa-v2);
* :func:`normalize_prototypes`, :func:`cancel_prototype_grads`: what happens to the prototypes each step;
* :class:`SwAVQueue`: the assignment-only FIFO of past embeddings (never in the loss);
* :func:`code_entropies`, :class:`LossWatch`: the collapse guards.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from src.methods.multicrop import resolution_groups
from src.models import build_backbone
from src.models.heads import build_mlp
from src.run import dist
from src.run.errors import UserError
from src.run.speed import maybe_compile, to_channels_last


class SwAVModel(nn.Module):
    """Trunk, projection head and prototypes (facebookresearch/swav ``src/resnet50.py``).

    "a projection head ... Linear(2048, 2048) - BN - ReLU - Linear(2048, 128)" whose output is L2-normalised,
    then "prototypes ... a linear layer without bias" (facebookresearch/swav ``src/resnet50.py``).

    Args:
        arch: trunk name (``resnet50``, ``resnet50w2/w4/w5`` ...).
        feat_dim: output of the projection head (128).
        hidden_mlp: hidden width of the projection head (2048; 8192 for the wide ResNets); 0: a single Linear.
        nmb_prototypes: K (3000), or a list of K per head (DeepCluster-v2 / SeLa-v2: [3000, 3000, 3000]).
        cifar_stem: ResNet 3x3 stride-1 stem for small (32-96 px) images.
    """

    def __init__(self, arch="resnet50", feat_dim=128, hidden_mlp=2048, nmb_prototypes=3000, cifar_stem=False):
        super().__init__()
        self.backbone, dim = build_backbone(arch, cifar_stem=cifar_stem)
        self.projection_head = build_mlp(dim, [hidden_mlp] if hidden_mlp > 0 else [], feat_dim, bn=True)
        if isinstance(nmb_prototypes, (list, tuple)):
            self.prototypes = nn.ModuleList([nn.Linear(feat_dim, k, bias=False) for k in nmb_prototypes])
        else:
            self.prototypes = nn.Linear(feat_dim, nmb_prototypes, bias=False)

    def prototype_layers(self):
        """The prototype Linear layers, as a list (one entry for SwAV)."""
        return list(self.prototypes) if isinstance(self.prototypes, nn.ModuleList) else [self.prototypes]

    def forward(self, crops):
        """Grouped forward: one trunk pass per run of same-resolution crops (BN statistics per group, as the
        reference), then one head pass over everything.

        Args:
            crops: list of V tensors (B, 3, H_i, W_i), or one tensor.
        Returns:
            ``(z, scores)``: z (V * B, feat_dim) unit rows, crop-major (crop 0's B rows first); scores
            ``z @ C^T`` (V * B, K), or a list of those, one per head, when there are several heads.
        """
        if torch.is_tensor(crops):
            crops = [crops]
        feats = torch.cat([self.backbone(torch.cat(crops[s:e])) for s, e in resolution_groups(crops)])
        z = F.normalize(self.projection_head(feats), dim=1)
        if isinstance(self.prototypes, nn.ModuleList):
            return z, [p(z) for p in self.prototypes]
        return z, self.prototypes(z)


@torch.no_grad()
def normalize_prototypes(model):
    """Put every prototype on the unit sphere (before each forward, frozen or not, as the reference's loop)."""
    for layer in model.prototype_layers():
        layer.weight.copy_(F.normalize(layer.weight, dim=1, p=2))


def cancel_prototype_grads(model):
    """Drop the prototypes' gradients: SGD / LARC then skip them (no update, no weight decay, no momentum)."""
    for layer in model.prototype_layers():
        layer.weight.grad = None


def convert_sync_bn(model, mode, group_size, info):
    """SwAV's ``--sync_bn``: ``pytorch`` (all processes), ``apex`` (groups of ``group_size`` consecutive
    ranks, e.g. one node of 8, with torch's SyncBatchNorm), anything else: per-process BN.

    SyncBatchNorm needs CUDA; on a CPU run with several processes it is skipped with one warning line.

    Args:
        model: module whose BatchNorm layers are converted.
        mode: "pytorch", "apex" or another string (none).
        group_size: ranks per BN group for "apex" (8).
        info: DistInfo of this process.
    Returns:
        the (possibly converted) model.
    """
    if mode not in ("pytorch", "apex") or not info.distributed:
        return model
    if info.device.type != "cuda":
        if info.rank == 0:
            print(f"warning: --sync_bn {mode} needs CUDA (gloo cannot sync BN on a CPU): each process "
                  "normalises its own batch", flush=True)
        return model
    group = None
    if mode == "apex" and group_size < info.world_size:
        if info.world_size % group_size:
            raise UserError(f"--syncbn_process_group_size {group_size} must divide the {info.world_size} processes")
        # every rank must create every group, in the same order
        groups = [torch.distributed.new_group(list(range(s, s + group_size)))
                  for s in range(0, info.world_size, group_size)]
        group = groups[info.rank // group_size]
    return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)


def prepare_model(model, info, sync_bn="pytorch", group_size=8, channels_last=False, compile=False):
    """A SwAV-family model ready to train: SyncBN (:func:`convert_sync_bn`), on the device, channels-last weights,
    DDP under a process group, ``torch.compile``.

    Returns: ``(model, step_model)``: the module whose state is saved, and what the training step calls.
    """
    model = to_channels_last(convert_sync_bn(model, sync_bn, group_size, info).to(info.device), channels_last)
    return model, maybe_compile(dist.wrap_ddp(model, info.device), compile, info.rank)


class SwAVQueue:
    """Assignment-only memory of past embeddings (the reference's ``queue``): one (L, D) FIFO per assignment crop.

    Its rows only enlarge the Sinkhorn problem (scored with the CURRENT prototypes); they never enter the loss.
    ``in_use`` becomes true once the queue has been filled (the reference checks its last row), and
    :meth:`scores` prepends the queue's scores from then on. Kept on this process: ranks hold different rows.

    Args:
        n_assign: number of assignment crops (``len(crops_for_assign)``).
        length: rows per process (``queue_length // world_size``, a multiple of the per-process batch).
        dim: embedding size (128).
        device: where the queue lives.
    """

    def __init__(self, n_assign, length, dim, device):
        self.queue = torch.zeros(n_assign, length, dim, device=device)
        self.filled = 0  # rows written so far (capped at length): no device sync needed to know it is full
        self.in_use = False

    def load(self, queue):
        """Take a saved (n_assign, L, D) queue; rows are filled from the top, so zero rows are unfilled."""
        self.queue.copy_(queue)
        self.filled = int((self.queue[0].abs().sum(dim=1) > 0).sum())
        self.in_use = False

    @torch.no_grad()
    def scores(self, i, batch_scores, prototypes):
        """Args: i: assignment-crop slot; batch_scores: (B, K) fp32; prototypes: (K, D) weight.
        Returns: ``[queue[i] @ C^T ; batch_scores]`` ((L + B, K)) once the queue is in use, else batch_scores."""
        self.in_use = self.in_use or self.filled >= self.queue.shape[1]
        if not self.in_use:
            return batch_scores
        return torch.cat([self.queue[i] @ prototypes.detach().float().t(), batch_scores])

    @torch.no_grad()
    def push(self, i, z):
        """FIFO: shift slot ``i`` down by B rows and write the batch's embeddings z (B, D) on top."""
        B = z.shape[0]
        self.queue[i, B:] = self.queue[i, :-B].clone()
        self.queue[i, :B] = z.float()
        if i == self.queue.shape[0] - 1:
            self.filled = min(self.filled + B, self.queue.shape[1])


@torch.no_grad()
def code_entropies(codes):
    """Two collapse indicators of a batch of codes, in nats (both at most ln K).

    Args:
        codes: (B, K) rows summing to 1 (or a list of those, averaged).
    Returns:
        ``(h_avg, h_row)``: entropy of the average code (ln K when the prototypes are used equally) and the
        mean entropy of one code (ln K when codes are uniform, i.e. the collapse of the tracker's issues).
    """
    codes = torch.cat(codes) if isinstance(codes, (list, tuple)) else codes
    codes = codes.float().clamp_min(1e-12)
    avg = codes.mean(dim=0)
    return -(avg * avg.log()).sum(), -(codes * codes.log()).sum(dim=1).mean()


class LossWatch:
    """Collapse guard on the loss (the non-finite guard is the run loop's, ``src.run.health``).

    ``update(loss)`` keeps, on the loss's device (no sync), the largest distance of the epoch's finite losses from
    ``uniform_loss`` (ln K: the loss of uniform codes / predictions); :meth:`end_epoch` returns a warning when the
    loss sat within ``tol`` of ln K for the whole epoch.

    Args:
        uniform_loss: ln K (for several heads of sizes K_h, the mean of ln K_h).
        device: device of the losses.
        tol: relative tolerance (0.005: 0.04 nats at K = 3000).
    """

    def __init__(self, uniform_loss, device, tol=0.005):
        self.uniform, self.tol, self.device = uniform_loss, tol, device
        self.start_epoch()

    def start_epoch(self):
        self.max_dev = torch.zeros((), device=self.device)
        self.steps = 0

    def update(self, loss):
        loss = loss.detach().float()
        finite = torch.isfinite(loss)
        self.max_dev = torch.maximum(self.max_dev, torch.where(finite, (loss - self.uniform).abs(), self.max_dev))
        self.steps += 1

    def end_epoch(self, rank=0):
        """Print (rank 0) and return a warning if the loss stayed at ln K all epoch (collapsed codes), else None."""
        if self.steps == 0 or float(self.max_dev) > self.tol * self.uniform:
            return None
        warning = (f"warning: the loss stayed within {self.tol * self.uniform:.3f} of ln K = {self.uniform:.3f} for "
                   "the whole epoch: the codes are uniform (collapse). Known remedies (facebookresearch/swav README): "
                   "--epsilon 0.03, freeze the prototypes longer (--freeze_prototypes_niters), a smaller or later "
                   "queue, a different lr")
        if rank == 0:
            print(warning, flush=True)
        return warning


def uniform_loss(nmb_prototypes):
    """ln K, or the mean of ln K_h over heads: the loss of uniform predictions."""
    ks = nmb_prototypes if isinstance(nmb_prototypes, (list, tuple)) else [nmb_prototypes]
    return sum(math.log(k) for k in ks) / len(ks)
