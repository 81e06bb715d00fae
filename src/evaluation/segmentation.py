"""Scoring a segmentation network (``eval_segmentation.py``): the confusion matrices of the val shard of every rank,
summed, their per-class IoU and mIoU (``src.metrics``); the record of every scored epoch is
``src.evaluation.results.SegResults``.

Two scores come from one pass, as the reference (Revisiting-Contrastive-SSL ``utils/evaluate_utils.py``) has them:
at full resolution (the prediction brought back to each image's own size, against its original mask: the reported
number) and at the network's input size (each mask resized to the input with nearest neighbours, against the
prediction as it is: the reference's online score, which picks the best epoch). With test images kept at their own
size the two are the same.
"""
import math
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from src.metrics import confusion_matrix, iou_from_confusion
from src.run import dist
from src.run.errors import UserError
from src.run.speed import autocast


@torch.no_grad()
def evaluate(net, loader, num_classes, device, amp):
    """Score the val shard of every rank: argmax at the network's input size, brought back to each image's own size
    (nearest, as the reference's ``save_results_to_disk``) against the full mask, and, as the reference's online
    evaluation, against the mask resized to the input (cv2 ``INTER_NEAREST``); each a confusion matrix summed over
    ranks.

    Returns:
        dict ``iou`` (C floats, None for a class absent from ground truth and predictions) and ``miou`` (percent) at
        full resolution; ``iou_input`` and ``miou_input`` at the network's input size; ``n`` (images scored),
        ``skipped`` (unreadable ones left out), ``seconds``; the same on every rank.
    Raises:
        UserError: non-finite logits (no score is computed from them).
    """
    net.eval()
    t0 = time.time()
    # [0]: full resolution, [1]: the network's input size
    conf = torch.zeros(2, num_classes, num_classes, dtype=torch.int64, device=device)
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
                mask, p = masks[i], pred[j]
                if p.shape == mask.shape:
                    both = confusion_matrix(p, mask.to(device, non_blocking=True), num_classes)
                    conf[0] += both
                    conf[1] += both
                    continue
                full = F.interpolate(p[None, None].float(), size=mask.shape, mode="nearest")[0, 0].long()
                conf[0] += confusion_matrix(full, mask.to(device, non_blocking=True), num_classes)
                small = cv2.resize(mask.numpy().astype(np.uint8), (p.shape[1], p.shape[0]),
                                   interpolation=cv2.INTER_NEAREST)  # class ids and 255 fit in uint8
                conf[1] += confusion_matrix(p, torch.from_numpy(small).to(device).long(), num_classes)
            counts[0] += len(group)
    dist.all_reduce(conf)
    dist.all_reduce(counts)
    n, skipped, bad = (int(v) for v in counts.tolist())
    if bad:
        raise UserError(f"the network produced NaN/inf logits on {bad} of {n} test images: its weights or BatchNorm "
                        "statistics are not finite (lower --lr or turn AMP off); no score is reported",
                        collective=True)
    res = {"n": n, "skipped": skipped, "seconds": time.time() - t0}
    for suffix, c in (("", conf[0]), ("_input", conf[1])):
        iou, miou = iou_from_confusion(c.cpu())
        res[f"iou{suffix}"] = [None if math.isnan(v) else 100.0 * v for v in iou.tolist()]
        res[f"miou{suffix}"] = 100.0 * miou
    return res


def iou_lines(classes, iou):
    """``IoU <class>: xx.xx`` lines (``n/a`` for a class absent from ground truth and predictions)."""
    width = max(len(c) for c in classes)
    return [f"IoU {c:<{width}} {'n/a (absent)' if v is None else f'{v:6.2f}'}" for c, v in zip(classes, iou)]
