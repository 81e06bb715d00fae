"""The positive-pair evaluations (``eval.instdisc``, ``eval.stats-dist``, ``experiments.tsne``): reading a static
positive-pair dataset as written by ``python -m experiments.sample-augs`` (whose views ``src.augment.pairs`` makes),
their model / data flags and the L2-normalised features of the views. The trunk is
``src.evaluation.pretrained.build_trunk``; the JSON results go through ``src.evaluation.results``.

Layout: ``root/<class>/<stem>-<v>.jpeg`` (``.jpg`` and ``.png`` are read too), where view 0 is the
original image ("domain" D) and views 1, 2, ... are augmented ``size`` x ``size`` views of it ("shifted
domain" SD). Which views an evaluation reads is named by a *view set* (SSL-small ``util.PositivePairDataset``):
``normal`` (0, 1, 2), ``g-mask`` (0, 3, 4), ``rand-g-mask`` (0, 5, 6),
``avg-mask`` (0, 7, 8), ``rand-avg-mask`` (0, 9, 10), ``all`` (0 to 10). View 0 is evaluated like a
validation image (Resize -> CenterCrop -> Normalize); the augmented views are only resized when they
are not already ``crop_size`` and normalised.

Differences from the reference: labels come from the class folders (any number of classes; the
reference cut ImageNet file names at '_'), a stem is the name before the *last* '-' (so stems may
contain '-'), and a missing view is one clear error instead of a crash mid-run.
"""
import argparse
import os

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from src.augment.image import eval_transform
from src.augment.views import IMAGENET_MEAN, IMAGENET_STD
from src.data.decode import to_rgb
from src.evaluation.features import extract_features
from src.evaluation.pretrained import TRUST_HELP
from src.models import KNOWN_ARCHS
from src.run.args import NONNEG_INT, POSITIVE_INT, add_amp_args, add_arg
from src.run.errors import UserError

VIEW_SETS = {"normal": (0, 1, 2), "g-mask": (0, 3, 4), "rand-g-mask": (0, 5, 6), "avg-mask": (0, 7, 8),
             "rand-avg-mask": (0, 9, 10), "all": tuple(range(11))}
EXTENSION = ".jpeg"


def view_name(stem, view):
    """File name of one view: ``<stem>-<view>.jpeg``."""
    return f"{stem}-{view}{EXTENSION}"


def split_view_name(name):
    """``"n01_123-2.jpeg"`` -> ``("n01_123", 2)``; None for names that are not views."""
    base, ext = os.path.splitext(name)
    stem, sep, view = base.rpartition("-")
    if ext.lower() not in (".jpeg", ".jpg", ".png") or not sep or not stem or not view.isdigit():
        return None
    return stem, int(view)


def _open_rgb(path):
    try:
        with open(path, "rb") as f:
            return to_rgb(Image.open(f))  # grayscale sources become 3 channels, 16-bit ones are scaled
    except Exception as exc:  # any decoder failure
        raise UserError(f"cannot read image '{path}' ({type(exc).__name__}: {exc}): re-run "
                        "experiments.sample-augs for it or remove its views") from None


class _Resized:
    """Resize to ``size`` x ``size`` only when the image is not already that size."""

    def __init__(self, size):
        self.size = size

    def __call__(self, img):
        return img if img.size == (self.size, self.size) else img.resize((self.size, self.size), Image.BILINEAR)


class PositivePairDataset(torch.utils.data.Dataset):
    """Groups of views of the same image, labelled by class folder.

    Args:
        root: folder with one subfolder per class, holding ``<stem>-<v>.jpeg`` files.
        view_set: key of ``VIEW_SETS`` (or a tuple of view ids).
        resize, crop_size: evaluation transform of view 0 (256 / 224 in the reference); the other
            views are brought to ``crop_size`` x ``crop_size``.
        per_class: keep the first ``per_class`` stems (sorted) of every class; None or 0 keeps all.
        max_classes: keep the first ``max_classes`` classes (sorted); None or 0 keeps all.
    Items:
        ``(list of (3, crop, crop) tensors in view-set order, class index)``.
    Raises:
        UserError: missing root, no class folders, a class without views, or a stem lacking a view.
    """

    def __init__(self, root, view_set="normal", resize=256, crop_size=224, per_class=None, max_classes=None):
        if isinstance(view_set, str):
            if view_set not in VIEW_SETS:
                raise UserError(f"unknown dataset mode {view_set!r}: choose one of {', '.join(VIEW_SETS)}")
            view_set = VIEW_SETS[view_set]
        self.root, self.views = str(root), tuple(view_set)
        if (per_class or 0) < 0 or (max_classes or 0) < 0:
            raise UserError(f"samples per class and number of classes must be >= 0, got {per_class} and "
                            f"{max_classes}")
        if not os.path.isdir(self.root):
            raise UserError(f"positive-pair folder '{self.root}' does not exist: create it with "
                            "python -m experiments.sample-augs SRC DST")
        self.classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir())[:max_classes or None]
        if not self.classes:
            raise UserError(f"positive-pair folder '{self.root}' has no class subfolders: pass the DST folder "
                            "of experiments.sample-augs")
        self.samples = []  # (class folder, stem, label)
        self.files = {}  # (class folder, stem) -> {view: file name}
        for label, cls in enumerate(self.classes):
            stems = self._stems(cls)
            self.samples += [(cls, s, label) for s in (stems[:per_class] if per_class else stems)]
        self.targets = [s[2] for s in self.samples]
        self.transforms = {0: eval_transform(resize, crop_size)}
        shifted = T.Compose([_Resized(crop_size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.transforms.update({v: shifted for v in self.views if v != 0})

    def _stems(self, cls):
        """Sorted stems of one class folder that have every view of the view set."""
        found = {}
        for name in os.listdir(os.path.join(self.root, cls)):
            parsed = split_view_name(name)
            if parsed:
                found.setdefault(parsed[0], {})[parsed[1]] = name
        if not found:
            raise UserError(f"class folder '{os.path.join(self.root, cls)}' holds no '<stem>-<view>.jpeg' files")
        for stem, have in sorted(found.items()):
            lacking = [v for v in self.views if v not in have]
            if lacking:
                raise UserError(f"view {lacking[0]} of '{stem}' in '{os.path.join(self.root, cls)}' is missing "
                                f"(the view set needs {', '.join(map(str, self.views))}): re-create the dataset "
                                "with experiments.sample-augs in a mode that writes these views")
            self.files[(cls, stem)] = have
        return sorted(found)

    def __len__(self):
        return len(self.samples)

    def path(self, index, view):
        """File of view ``view`` of sample ``index``."""
        cls, stem, _ = self.samples[index]
        return os.path.join(self.root, cls, self.files[(cls, stem)][view])

    def load(self, index, view):
        """View ``view`` of sample ``index`` as a normalised (3, crop, crop) tensor."""
        return self.transforms[view](_open_rgb(self.path(index, view)))

    def __getitem__(self, index):
        return [self.load(index, v) for v in self.views], self.samples[index][2]

    def view(self, view):
        """A map-style dataset of ``(tensor, label)`` for one view (for ``src.evaluation.features.extract_features``)."""
        if view not in self.views:
            raise ValueError(f"view {view} is not in this dataset's view set {self.views}")
        return _OneView(self, view)


class _OneView(torch.utils.data.Dataset):
    def __init__(self, pairs, view):
        self.pairs, self.v = pairs, view

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        return self.pairs.load(index, self.v), self.pairs.samples[index][2]


# ==== flags and features ====
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
