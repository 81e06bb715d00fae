"""The end of every ``main_<method>.py --demo``: kNN top-1 of the pretrained trunk against the same trunk at its
random initialisation, on the demo data, with the output contract of DESIGN.md (last two lines
``demo kNN top-1 pretrained: XX.XX%`` and ``demo kNN top-1 random-init: YY.YY%``).
"""
import copy
import json
import os
import time

import torch

from .augment import eval_transform
from .data import build_dataset
from .features import extract_features
from .metrics import best_nn, weighted_knn


def knn_vs_random_init(pretrained, random_init, root, eval_size, device, out_dir, checkpoint, t0):
    """Embed the demo's train and val splits with both trunks, print and save the comparison.

    Args:
        pretrained, random_init: trunks mapping (B, 3, s, s) images to (B, D) features (copied, not modified).
        root: demo dataset root (``train/`` and ``val/``); eval_size: resize and centre-crop side in pixels.
        device: where to embed; out_dir: where ``demo.json`` goes; checkpoint: path printed for a later eval.knn.
        t0: ``time.time()`` at the start of the demo (for the duration line).
    Returns:
        dict {"pretrained": {...}, "random-init": {...}, "seconds": s}.
    """
    tf = eval_transform(resize=eval_size, crop_size=eval_size)
    sets = [build_dataset(os.path.join(root, split), tf) for split in ("train", "val")]
    loaders = [torch.utils.data.DataLoader(s, batch_size=256, shuffle=False, num_workers=1) for s in sets]
    results = {}
    for name, trunk in (("pretrained", pretrained), ("random-init", random_init)):
        trunk = copy.deepcopy(trunk).to(device)
        (ftr, ltr), (fva, lva) = [extract_features(trunk, ld, device) for ld in loaders]
        results[name] = {"weighted_knn_top1": weighted_knn(ftr, ltr, fva, lva, k=20, temperature=0.07),
                         "best_nn": best_nn(ftr, ltr, fva, lva, max_k=5)[0]}
        print(f"demo {name}: weighted kNN {results[name]['weighted_knn_top1']:.2f}%, "
              f"best-NN {results[name]['best_nn']:.2f}%", flush=True)
    results["seconds"] = time.time() - t0
    with open(os.path.join(out_dir, "demo.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"demo finished in {results['seconds']:.0f} s; evaluate the checkpoint again with: python -m eval.knn {root} "
          f"--pretrained {checkpoint} --resize {eval_size} --crop-size {eval_size}", flush=True)
    print(f"demo kNN top-1 pretrained: {results['pretrained']['weighted_knn_top1']:.2f}%", flush=True)
    print(f"demo kNN top-1 random-init: {results['random-init']['weighted_knn_top1']:.2f}%", flush=True)
    return results
