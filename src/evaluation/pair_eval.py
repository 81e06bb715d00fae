"""What ``eval.instdisc``, ``eval.stats-dist`` and ``experiments.tsne`` share: their model / data flags and the
L2-normalised features of the views of a static positive-pair dataset (``src.augment.pairs``). The trunk is
``src.evaluation.pretrained.build_trunk``; the JSON results go through ``src.evaluation.results``.
"""
import argparse

import torch
import torch.nn.functional as F

from src.data.pairs import VIEW_SETS
from src.evaluation.features import extract_features
from src.evaluation.pretrained import TRUST_HELP
from src.models import KNOWN_ARCHS
from src.run.args import NONNEG_INT, POSITIVE_INT, add_amp_args, add_arg
from src.run.errors import UserError


def add_pair_eval_args(parser, per_class_default, per_class_help):
    """The flags of SSL-small's static-set tools (``data -a -j -b --pretrained --gpu -s``) plus ours.

    Args:
        parser: an ArgumentParser.
        per_class_default: default of ``-s/--sample-per-class`` (100 for instdisc, 50 for stats-dist).
        per_class_help: what ``-s`` means for this tool.
    """
    parser.add_argument("data", metavar="DIR",
                        help="static positive-pair folder written by experiments.sample-augs (one folder per class)")
    g = parser.add_argument_group("model")
    add_arg(g, "-a", "--arch", default=None,
            help=f"trunk architecture (default: the checkpoint's, else resnet50); one of {', '.join(KNOWN_ARCHS)}")
    add_arg(g, "--cifar-stem", action=argparse.BooleanOptionalAction, default=None,
            help="ResNet 3x3 stride-1 stem for small images (default: as recorded in the checkpoint, else off)")
    add_arg(g, "--pretrained", default="", help="checkpoint to evaluate (default empty: random init seeded by --seed)")
    add_arg(g, "--trunk-pattern", default=None,
            help="regex cut out of the checkpoint keys to get trunk keys, e.g. '^trunk\\.' (default: automatic)")
    add_arg(g, "--trust-checkpoint", action="store_true",
            help=TRUST_HELP)
    add_arg(g, "--seed", default=0, type=int, help="seed of the random init and of any sampling (default 0)")
    g = parser.add_argument_group("data and device")
    add_arg(g, "-s", "--sample-per-class", default=per_class_default, type=NONNEG_INT, help=per_class_help)
    add_arg(g, "--dataset-mode", default="normal", choices=list(VIEW_SETS),
            help="views read: normal (0,1,2), g-mask (0,3,4), rand-g-mask (0,5,6), avg-mask (0,7,8), "
                 "rand-avg-mask (0,9,10) (default normal; the masks need an easy/hard/super-hard set)")
    add_arg(g, "-b", "--batch-size", default=128, type=POSITIVE_INT, help="images per forward pass (default 128)")
    add_arg(g, "-j", "--workers", default=1, type=NONNEG_INT, help="data loading workers (default 1)")
    add_arg(g, "--resize", default=256, type=POSITIVE_INT, help="view 0: shorter side after resizing (default 256)")
    add_arg(g, "--crop-size", default=224, type=POSITIVE_INT,
            help="view 0: centre crop side; the augmented views are brought to this size too (default 224)")
    add_arg(g, "--gpu", default=None, type=NONNEG_INT, help="GPU id (default: cuda:0 when available, else the CPU)")
    add_arg(g, "--device", default="", help="force a device: cpu, cuda, cuda:1 (overrides --gpu)")
    add_arg(g, "--output-json", default=None,
            help="results file (default: next to the checkpoint, or in the current folder without one)")
    add_amp_args(parser)
    return parser


def embed_views(model, pairs, views, batch_size, workers, device, amp_dtype=None):
    """L2-normalised trunk features of some views of every sample of ``pairs``.

    Args:
        model: trunk; moved to ``device``.
        pairs: PositivePairDataset.
        views: view ids to embed (each must be in ``pairs.views``).
        batch_size, workers: DataLoader settings. device: torch.device. amp_dtype: None or an autocast dtype.
    Returns:
        ``({view: (N, D) float32 CPU unit rows}, labels (N,) long)``, rows in dataset order.
    """
    if batch_size < 1 or workers < 0:
        raise UserError(f"need -b/--batch-size >= 1 and -j/--workers >= 0, got {batch_size} and {workers}")
    model = model.to(device)
    out, labels = {}, None
    for v in views:
        loader = torch.utils.data.DataLoader(pairs.view(v), batch_size=batch_size, shuffle=False,
                                             num_workers=workers, pin_memory=device.type == "cuda")
        feats, labels = extract_features(model, loader, device, amp_dtype, progress=f"view {v}")
        out[v] = F.normalize(feats, dim=1)
    return out, labels
