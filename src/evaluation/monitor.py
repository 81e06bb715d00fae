"""Watching a run learn: an online kNN monitor and an online linear probe, for every pretraining script.

**kNN monitor** (``--monitor_data ROOT``, every ``--monitor_every`` epochs and after the last): the current trunks
(the online one, and the momentum one where the method has it) embed ROOT's ``train/`` and ``val/`` images with the
evaluation transform (Resize ``--monitor_resize``, CenterCrop ``--monitor_crop``) and are scored with exactly
``python -m eval.knn``'s protocol (:mod:`src.evaluation.knn`: Best-NN over odd k <= 5 in Euclidean distance of the
raw features, weighted kNN at k 20, T 0.07, both streamed): the last epoch's Best-NN equals ``python -m eval.knn
ROOT --pretrained RUN/checkpoint.pth.tar --resize R --crop-size C``. Under a process group every rank searches a
contiguous shard of the training images, as ``eval.knn -g WORLD`` does, and every rank merges the shards in order.

The pass leaves the run as it found it: each trunk's train/eval modes and every RNG state (torch, CUDA, numpy,
python) are restored after it, so a run with the monitor trains bit for bit like one without. Its rows are kept
in the checkpoint, so a resumed run has the whole history and no duplicate.

**Online linear probe** (``--online_linear``, solo-learn's online evaluation): a linear classifier trained on the
detached trunk features of the training batches (the step returns them as ``stats["features"]``) with the labels of
the training folders, by its own SGD (momentum 0.9, no weight decay, cosine from ``--online_linear_lr`` over the
run); it never touches the trunk, its gradients or the method's optimizer. Its val top-1, on the online trunk's
features of the monitor's val images, is printed and logged at every monitor pass.
"""
import argparse
import contextlib
import json
import math
import os
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms as T

from src.augment.image import eval_transform
from src.augment.views import IMAGENET_MEAN, IMAGENET_STD
from src.data.folders import array_layout, build_dataset, require_folder, resolve_split
from src.evaluation.knn import embed_queries, search_bank, shard_bounds, summarize
from src.run import dist
from src.run.args import NONNEG_INT, POSITIVE, POSITIVE_INT, add_arg
from src.run.checkpoint import atomic_write
from src.run.errors import UserError
from src.run.health import NonFiniteFeatures

CACHE_BYTES = 2 << 30  # a process keeps up to 2 GiB of decoded monitor images (uint8) between passes
MAX_K, KNN_K, KNN_T = 5, 20, 0.07  # eval.knn's defaults: Best-NN over odd k <= 5, weighted kNN k 20, T 0.07


def add_watch_args(parser, dash=False):
    """The watching flags of a pretraining script: the kNN monitor, the online linear probe, TensorBoard."""
    def name(snake):
        return snake.replace("_", "-") if dash else snake

    g = parser.add_argument_group("watching the run: online kNN monitor, online linear probe, TensorBoard")
    add_arg(g, name("--monitor_data"), default="", type=str, metavar="ROOT",
            help="labelled images with train/ and val/ class folders (video: the layout eval.retrieval reads): the "
                 "trunks are scored on them with eval.knn's protocol while training (default: off)")
    add_arg(g, name("--monitor_every"), default=1, type=NONNEG_INT,
            help="epochs between monitor passes, and one after the last epoch (1; 0: only after the last)")
    add_arg(g, name("--monitor_resize"), default=None, type=POSITIVE_INT,
            help="resize of the monitor's evaluation transform (default: the crop for crops up to 96 px, else "
                 "crop * 256 / 224, as the evaluations resize 224-px crops from 256)")
    add_arg(g, name("--monitor_crop"), default=None, type=POSITIVE_INT,
            help="centre crop of the monitor's evaluation transform (default: the recipe's global crop size)")
    add_arg(g, name("--online_linear"), action="store_true",
            help="also train a linear classifier on the detached trunk features of the training batches (the "
                 "training data needs class folders) and report its val top-1 at every monitor pass")
    add_arg(g, name("--online_linear_lr"), default=0.1, type=POSITIVE,
            help="learning rate of the online linear probe's SGD, cosine to 0 over the run (0.1)")
    add_arg(g, name("--tensorboard"), action=TensorBoardFlag, nargs=0, default=False,
            help="also write every log.txt value (loss, lr, images/s, epoch statistics, monitor figures) as "
                 "TensorBoard scalars to OUTPUT/tensorboard/ (needs: pip install tensorboard)")
    return g


class TensorBoardFlag(argparse.Action):
    """``--tensorboard``: refused where it is parsed when the optional ``tensorboard`` package is missing."""

    def __call__(self, parser, namespace, values, option_string=None):
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            parser.error(f"{option_string} needs the tensorboard package, which is not installed: pip install "
                         "tensorboard")
        setattr(namespace, self.dest, True)


def check_watch_args(args):
    """Watching flags that cannot work, as one UserError line (before any process group or data)."""
    if args.online_linear and not args.monitor_data:
        raise UserError("--online_linear reports its val top-1 at the monitor passes: give --monitor_data ROOT "
                        "(its val/ images are the probe's test set)")
    if args.monitor_data:
        if getattr(args, "modality", "image") == "video":
            return  # the video layouts (train/ + val/ or the official splits) are checked when they are read
        require_folder(args.monitor_data, what="--monitor_data", hint="pass a root holding train/ and val/ class "
                       "folders, or an extracted CIFAR / STL-10 archive")
        if array_layout(args.monitor_data) is not None:
            return  # its train and test splits: the reader names any missing file
        for split in ("train", "val"):
            require_folder(os.path.join(args.monitor_data, split), what="--monitor_data split",
                           hint="pass a root holding train/ and val/ class folders")


@contextlib.contextmanager
def untouched(modules, device):
    """Run a block without a trace on ``modules`` and the RNGs: every module's train/eval mode and every RNG state
    (torch CPU and ``device``'s CUDA generator, numpy, python) are put back afterwards."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    cpu, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        torch.set_rng_state(cpu)
        np.random.set_state(np_state)
        random.setstate(py_state)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


class OnlineLinear:
    """The online linear probe: a Linear on detached trunk features, its own SGD and per-step cosine lr.

    Args:
        num_classes: classes of the training folders. lr: peak learning rate. total_steps: the run's steps.
        device: where the probe lives.
    The Linear layer is made at the first batch (the trunk's feature size is known then), from a generator of its
    own: making it never draws from the run's RNG.
    """

    def __init__(self, num_classes, lr, total_steps, device):
        self.num_classes, self.lr, self.total_steps, self.device = num_classes, lr, max(total_steps, 1), device
        self.linear = self.optimizer = None

    def _make(self, dim):
        g = torch.Generator().manual_seed(0)
        bound = 1 / math.sqrt(dim)  # nn.Linear's default range
        self.linear = nn.utils.skip_init(nn.Linear, dim, self.num_classes, device=self.device)  # no global draw
        with torch.no_grad():
            for p in self.linear.parameters():
                p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=g))
        self.optimizer = torch.optim.SGD(self.linear.parameters(), lr=self.lr, momentum=0.9, weight_decay=0.0)

    def observe(self, features, labels, step):
        """One SGD step on ``features`` (V*B, D), detached, crop-major, and ``labels`` (B,) repeated V times; under a
        process group the gradients are averaged over ranks, so every rank keeps the same probe."""
        features = features.detach().float()
        if self.linear is None:
            self._make(features.shape[1])
        labels = labels.to(features.device).long().repeat(features.shape[0] // labels.shape[0])
        for group in self.optimizer.param_groups:
            group["lr"] = 0.5 * self.lr * (1 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))
        with torch.enable_grad():  # unlabelled images (label -1, STL-10's) are left out; none at all: a zero loss
            loss = F.cross_entropy(self.linear(features), labels, ignore_index=-1, reduction="sum")
            loss = loss / (labels >= 0).sum().clamp(min=1)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if dist.is_dist():
            for p in self.linear.parameters():
                p.grad = dist.all_reduce(p.grad) / dist.get_world_size()
        self.optimizer.step()

    @torch.no_grad()
    def top1(self, features, labels):
        """Top-1 (%) on ``features`` (N, D) with ``labels`` (N,); None before the first training batch."""
        if self.linear is None:
            return None
        pred = self.linear(features.float()).argmax(dim=1)
        return 100.0 * float((pred.cpu() == labels.cpu()).float().mean())

    def state_dict(self):
        if self.linear is None:
            return {}
        return {"linear": self.linear.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        if state:
            self._make(state["linear"]["weight"].shape[1])
            self.linear.load_state_dict(state["linear"])
            self.optimizer.load_state_dict(state["optimizer"])


class Monitor:
    """The kNN monitor (and the online probe), called by :class:`~src.run.loop.Run` at epoch ends.

    Args:
        trunks: callable returning ``{"online": module, "momentum": module}`` (the second where the method has one):
            modules mapping a batch of images (or clips) to pooled features; live trunks or copies.
        train_set, val_set: the monitor's datasets (``(image, label)`` items, evaluation transform, in order).
        info: :class:`~src.run.dist.DistInfo`. every: epochs between passes (0: only after the last).
        batch_size, workers: the loaders of a pass (eval.knn's default batch). probe: an :class:`OnlineLinear` or None.
        output_dir: where ``monitor.json`` (every row so far) is written, rank 0.
        normalize: ``(mean, std)`` when the datasets give uint8 images (the evaluation transform without its last
            two steps): the images of a split are then decoded once and kept in memory, up to ``cache_bytes`` per
            process, and ToTensor + Normalize are applied per batch (the same operations, so the same values).
    """

    def __init__(self, trunks, train_set, val_set, info, every=1, batch_size=512, workers=2, probe=None,
                 output_dir=None, normalize=None, cache_bytes=CACHE_BYTES):
        self.trunks, self.train_set, self.val_set, self.info = trunks, train_set, val_set, info
        self.every, self.batch_size, self.workers, self.probe = every, batch_size, workers, probe
        self.output_dir, self.normalize, self.cache_bytes = output_dir, normalize, cache_bytes
        self.rows, self._cache = [], {}

    @classmethod
    def from_args(cls, args, info, trunks, crop_size, total_steps, output_dir, modality="image"):
        """The monitor the flags ask for, or None without ``--monitor_data``.

        Args:
            crop_size: the recipe's global crop side (the default ``--monitor_crop``).
            total_steps: the run's optimizer steps (the probe's cosine). output_dir: the run's folder.
        """
        if not getattr(args, "monitor_data", ""):
            return None
        crop = args.monitor_crop or crop_size
        resize = args.monitor_resize or (crop if crop <= 96 else round(crop * 256 / 224))
        if modality == "video":  # one central clip per video, eval.retrieval's test views otherwise
            from src.evaluation.video import VideoEval, ViewAverage, bank_sets

            cfg = VideoEval(num_frames=args.num_frames, clip_duration=args.clip_duration, frames_fps=args.frames_fps,
                            test_clips=1, test_crops=1)
            train_set, val_set = bank_sets(cfg, args.monitor_data, resize)
            clip_trunks = trunks
            trunks = lambda: {name: ViewAverage(t) for name, t in clip_trunks().items()}  # noqa: E731
        else:  # class folders, CIFAR pickles, STL-10 binaries, through eval.knn's transform, ToTensor per batch
            tf = T.Compose(eval_transform(resize=resize, crop_size=crop).transforms[:-2] + [T.PILToTensor()])
            train_set, val_set = (build_dataset(resolve_split(args.monitor_data, s, labelled=True), tf)
                                  for s in ("train", "val"))
        classes = getattr(train_set, "classes", None)
        if classes is not None and classes != getattr(val_set, "classes", classes):
            raise UserError(f"train/ and val/ of --monitor_data '{args.monitor_data}' have different class folders: "
                            "labels would not match")
        if classes is not None and len(classes) < 2:
            raise UserError(f"--monitor_data '{args.monitor_data}' has {len(classes)} class: kNN accuracy needs at "
                            "least 2 classes")
        probe = None
        if args.online_linear:
            probe = OnlineLinear(len(classes) if classes else 1, args.online_linear_lr, total_steps, info.device)
        if info.rank == 0:
            print(f"=> monitor: {len(train_set)} train / {len(val_set)} val {modality}s of '{args.monitor_data}' at "
                  f"{resize}/{crop} px, every {args.monitor_every or 'last'} epoch(s)"
                  + (", online linear probe" if probe else ""), flush=True)
        return cls(trunks, train_set, val_set, info, every=args.monitor_every, workers=min(args.workers, 4),
                   probe=probe, output_dir=output_dir,
                   normalize=None if modality == "video" else (IMAGENET_MEAN, IMAGENET_STD))

    # ==== what the run calls ====
    def due(self, epoch, epochs_total):
        """Whether a pass belongs at the end of ``epoch`` (0-based) and has not been made yet."""
        last = epoch + 1 >= epochs_total
        wanted = last or (self.every > 0 and (epoch + 1) % self.every == 0)
        return wanted and not any(r["epoch"] == epoch for r in self.rows)

    def observe(self, features, labels, step):
        """Train the probe on one step's features (no-op without a probe)."""
        if self.probe is not None and features is not None:
            self.probe.observe(features, labels, step)

    def after_epoch(self, epoch):
        """One pass at the end of ``epoch``: every trunk scored; returns the new rows (also kept, printed on rank 0
        and written to ``monitor.json``)."""
        device = self.info.device
        trunks = self.trunks()
        rows, probe = [], None
        with untouched(list(trunks.values()), device), torch.no_grad():
            val_loader = Batches(self, "val", self.val_set)
            lo, hi = shard_bounds(len(self.train_set), self.info.world_size)[self.info.rank]
            train_loader = Batches(self, "train", torch.utils.data.Subset(self.train_set, range(lo, hi)))
            for name, trunk in trunks.items():
                trunk = trunk.to(device)
                try:
                    query, cos_query, val_labels = embed_queries(trunk, val_loader, device, "original")
                    part = search_bank(trunk, train_loader, query, device, MAX_K, cos_query=cos_query, knn_k=KNN_K)
                except UserError as exc:
                    if "NaN" in str(exc) or "inf" in str(exc):
                        raise NonFiniteFeatures(f"the {name} trunk's features became NaN/inf (monitor pass after "
                                                f"epoch {epoch})") from None
                    raise
                parts = _all_gather(part)
                res = summarize(parts, val_labels, MAX_K, KNN_K, KNN_T)
                rows.append({"type": "monitor", "epoch": epoch, "trunk": name, "best_nn": res["best_nn"],
                             "best_k": res["best_k"], "weighted_knn": res["weighted_knn_top1"]})
                if name == "online" and self.probe is not None and self.probe.linear is not None:
                    probe = {"type": "online_linear", "epoch": epoch, "val_top1": self.probe.top1(query, val_labels)}
            rows += [probe] if probe else []
        self.rows += rows
        if self.info.rank == 0:
            for row in rows:
                if row["type"] == "online_linear":
                    print(f"   online linear probe: val top-1 {row['val_top1']:.2f}%", flush=True)
                    continue
                head = f"=> monitor epoch {epoch}:" if row["trunk"] == "online" else f"   {row['trunk']} trunk:"
                print(f"{head} best-NN {row['best_nn']:.2f}% (k={row['best_k']}), weighted kNN (k={KNN_K}) "
                      f"{row['weighted_knn']:.2f}%", flush=True)
            if self.output_dir:
                atomic_write(os.path.join(self.output_dir, "monitor.json"),
                             lambda f: f.write(json.dumps(self.rows, indent=1).encode()))
        return rows

    def batches(self, name, dataset):
        """``(images, labels)`` batches of ``dataset`` in order, as eval.knn's loader gives them: from memory after
        the first pass when the split's uint8 images fit ``cache_bytes``, else read again."""
        if name in self._cache:
            yield from ((self._to_input(x), y) for x, y in self._cache[name])
            return
        keep, size = ([], 0) if self.normalize is not None else (None, 0)
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=False,
                                             num_workers=self.workers, pin_memory=self.info.device.type == "cuda")
        for x, y in loader:
            if keep is not None:
                size += x.numel() * x.element_size()
                keep = keep + [(x, y)] if size <= self.cache_bytes else None
            yield self._to_input(x), y
        if keep is not None:
            self._cache[name] = keep

    def _to_input(self, x):
        """uint8 images -> what ToTensor + Normalize would have made of each (float, /255, minus mean, over std)."""
        if self.normalize is None:
            return x
        mean, std = (torch.as_tensor(v, dtype=torch.get_default_dtype()).view(1, -1, 1, 1) for v in self.normalize)
        return x.to(torch.get_default_dtype()).div(255).sub_(mean).div_(std)

    def state_dict(self):
        return {"rows": list(self.rows), "probe": self.probe.state_dict() if self.probe is not None else {}}

    def load_state_dict(self, state):
        self.rows = list(state.get("rows", []))
        if self.probe is not None:
            self.probe.load_state_dict(state.get("probe") or {})


class Batches:
    """A split's batches for :mod:`src.evaluation.knn` (an iterable with a ``dataset``, like a DataLoader)."""

    def __init__(self, monitor, name, dataset):
        self.monitor, self.name, self.dataset = monitor, name, dataset

    def __iter__(self):
        return self.monitor.batches(self.name, self.dataset)


def _all_gather(part):
    """Every rank's search result, in rank order (the shards of eval.knn -g WORLD)."""
    if not dist.is_dist():
        return [part]
    out = [None] * dist.get_world_size()
    torch.distributed.all_gather_object(out, part)
    return out
