"""Scoring a segmentation network (``eval_segmentation.py``): the confusion matrix of the val shard of every rank,
summed, its per-class IoU and mIoU (``src.metrics``), and the record of every scored epoch."""
import math
import time

import torch
import torch.nn.functional as F

from src.evaluation.classifier import History
from src.metrics import confusion_matrix, iou_from_confusion
from src.run import dist
from src.run.errors import UserError
from src.run.speed import autocast


@torch.no_grad()
def evaluate(net, loader, num_classes, device, amp):
    """Score the val shard of every rank: argmax at the network's input size, brought back to each image's own size
    (nearest, as the reference's ``save_results_to_disk``), one confusion matrix summed over ranks.

    Returns:
        dict ``iou`` (C floats, None for a class absent from ground truth and predictions), ``miou`` (percent),
        ``n`` (images scored), ``skipped`` (unreadable ones left out), ``seconds``; the same on every rank.
    Raises:
        UserError: non-finite logits (no score is computed from them).
    """
    net.eval()
    t0 = time.time()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # images scored, unreadable, non-finite
    for images, masks, readable in loader:
        keep = [i for i, ok in enumerate(readable) if ok]
        counts[1] += len(readable) - len(keep)
        same = len({tuple(images[i].shape) for i in keep}) <= 1
        for group in ([keep] if same else [[i] for i in keep]) if keep else []:
            x = torch.stack([images[i] for i in group]).to(device, non_blocking=True)
            with autocast(device, amp):
                logits = net(x).float()  # (b, C, h, w)
            counts[2] += (~torch.isfinite(logits).flatten(1).all(dim=1)).sum()
            pred = logits.argmax(dim=1)
            for j, i in enumerate(group):
                mask = masks[i].to(device, non_blocking=True)
                p = pred[j]
                if p.shape != mask.shape:
                    p = F.interpolate(p[None, None].float(), size=mask.shape, mode="nearest")[0, 0].long()
                conf += confusion_matrix(p, mask, num_classes)
            counts[0] += len(group)
    dist.all_reduce(conf)
    dist.all_reduce(counts)
    n, skipped, bad = (int(v) for v in counts.tolist())
    if bad:
        raise UserError(f"the network produced NaN/inf logits on {bad} of {n} test images: its weights or BatchNorm "
                        "statistics are not finite (lower --lr or turn AMP off); no score is reported",
                        collective=True)
    iou, miou = iou_from_confusion(conf.cpu())
    return {"iou": [None if math.isnan(v) else 100.0 * v for v in iou.tolist()], "miou": 100.0 * miou, "n": n,
            "skipped": skipped, "seconds": time.time() - t0}


class SegResults(History):
    """:class:`~src.evaluation.classifier.History` of scored epochs (mIoU, per-class IoU in percent, images
    scored and skipped), best by mIoU."""
    metric = "miou"

    def __init__(self, classes):
        super().__init__()
        self.classes = list(classes)

    def entry(self, epoch, res):
        return {"epoch": int(epoch), **{k: res[k] for k in ("miou", "iou", "n", "skipped")}}

    def test_line(self):
        e, b = self.last, self.best
        skipped = f", {e['skipped']} unreadable left out" if e["skipped"] else ""
        return (f"Test: epoch {e['epoch']}, {e['n']} images{skipped}: mIoU {e['miou']:.2f} (best {b['miou']:.2f} at "
                f"epoch {b['epoch']})")


def iou_lines(classes, iou):
    """``IoU <class>: xx.xx`` lines (``n/a`` for a class absent from ground truth and predictions)."""
    width = max(len(c) for c in classes)
    return [f"IoU {c:<{width}} {'n/a (absent)' if v is None else f'{v:6.2f}'}" for c, v in zip(classes, iou)]
