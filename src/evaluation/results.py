"""An evaluation's results: the record of its scored epochs, :class:`History` (every epoch, the best and the last,
as plain lists and dicts that checkpoints and JSON hold), :class:`Results` (a classifier's top-1 / top-5 / loss),
:class:`SegResults` (a segmentation network's mIoU and per-class IoU); and its JSON file, :func:`results_file`
(where it goes, proven writable before any work) and :func:`write_json`.
"""
import copy
import json
import os

from src.run.checkpoint import atomic_write, check_writable
from src.run.errors import UserError


class History:
    """Per-epoch scores, the best one (highest ``metric``; the earliest on ties) and the last one.

    ``add`` returns True when the new entry is the best; ``state_dict()`` / ``load_state_dict()`` hold plain lists
    and dicts (checkpoint- and JSON-safe). Subclasses say which fields an entry keeps (:meth:`entry`).
    """
    metric = None

    def __init__(self):
        self.history = []

    def entry(self, epoch, res):
        raise NotImplementedError

    def add(self, epoch, res):
        entry = self.entry(epoch, res)
        is_best = self.best is None or entry[self.metric] > self.best[self.metric]
        self.history.append(entry)
        return is_best

    @property
    def best(self):
        return max(self.history, key=lambda e: (e[self.metric], -e["epoch"])) if self.history else None

    @property
    def last(self):
        return self.history[-1] if self.history else None

    def state_dict(self):
        return {"history": copy.deepcopy(self.history)}

    def load_state_dict(self, state):
        self.history = copy.deepcopy(state["history"])


class Results(History):
    """:class:`History` of :func:`evaluate`'s dicts (top-1, top-5, loss), best by top-1."""
    metric = "top1"

    def entry(self, epoch, res):
        return {"epoch": int(epoch), **{k: float(res[k]) for k in ("top1", "top5", "loss")},
                "skipped": int(res.get("skipped", 0))}

    def summary(self):
        """dict with ``best`` and ``last`` (epoch, top1, top5, loss) and the ``history``."""
        return {"best": self.best, "last": self.last, "history": self.history}

    def final_line(self):
        """``best Acc@1 .. Acc@5 .. (epoch e); last Acc@1 .. Acc@5 .. (epoch e)`` (and the unreadable images left
        out of the last test, when there were any)."""
        b, last = self.best, self.last
        skipped = f"; {last['skipped']} unreadable test images skipped" if last.get("skipped") else ""
        return (f"best Acc@1 {b['top1']:.3f} Acc@5 {b['top5']:.3f} (epoch {b['epoch']}); "
                f"last Acc@1 {last['top1']:.3f} Acc@5 {last['top5']:.3f} (epoch {last['epoch']}){skipped}")


class SegResults(History):
    """:class:`History` of a segmentation network's scored epochs (``src.evaluation.segmentation.evaluate``: mIoU and
    per-class IoU in percent at full resolution and at the network's input, images scored and skipped).

    Args:
        classes: class names.
        input_size: the side the test images are resized to (``--test_size``); 0: kept at their own size.
    The best epoch is the one of highest mIoU at the network's input, as the reference picks it (with
    ``input_size`` 0 that is the full-resolution mIoU); the earliest on ties.
    """
    metric = "miou"

    def __init__(self, classes, input_size=0):
        super().__init__()
        self.classes = list(classes)
        self.input_size = int(input_size)
        self.metric = "miou_input" if self.input_size else "miou"

    def entry(self, epoch, res):
        return {"epoch": int(epoch), **{k: res[k] for k in ("miou", "iou", "miou_input", "iou_input", "n", "skipped")}}

    def load_state_dict(self, state):
        if any(self.metric not in e for e in state["history"]):
            raise UserError(f"the checkpoint's scores have no '{self.metric}' (it was written before the best epoch "
                            "was chosen on the mIoU at the network's input): start this run in a new --output_dir",
                            collective=True)
        super().load_state_dict(state)

    def input_words(self):
        """``at the 512x512 input`` (the network's input the test images are resized to)."""
        return f"at the {self.input_size}x{self.input_size} input"

    def test_line(self):
        e, b = self.last, self.best
        skipped = f", {e['skipped']} unreadable left out" if e["skipped"] else ""
        head = f"Test: epoch {e['epoch']}, {e['n']} images{skipped}: mIoU {e['miou']:.2f}"
        if not self.input_size:
            return f"{head} (best {b['miou']:.2f} at epoch {b['epoch']})"
        words = self.input_words()
        return (f"{head} at full resolution, {e['miou_input']:.2f} {words} (best {words}: {b['miou_input']:.2f} at "
                f"epoch {b['epoch']})")


def results_file(output_json, pretrained, name):
    """Where an evaluation's JSON results go: ``output_json``, or ``name`` next to the checkpoint (or in the
    current folder). The folder is proven writable now, before any work (not after an hour of feature extraction).

    Returns:
        the path.
    Raises:
        UserError: the folder cannot be written.
    """
    out = output_json or os.path.join(os.path.dirname(os.path.abspath(pretrained)) if pretrained else os.getcwd(),
                                      name)
    if os.path.isdir(out):
        raise UserError(f"--output-json '{out}' is a folder: pass a file path, e.g. {os.path.join(out, name)}")
    check_writable(os.path.dirname(os.path.abspath(out)), "--output-json")
    return out


def write_json(results, out):
    """Write ``results`` to ``out`` atomically, before anything is printed. Returns: ``out``."""
    atomic_write(out, lambda f: f.write(json.dumps(results, indent=2).encode()), "--output-json")
    return out
