"""The end of every ``main_<method>.py --demo``: kNN top-1 of the pretrained trunk against the same trunk at its
random initialisation, on the demo data, with the output contract of DESIGN.md (last two lines
``demo kNN top-1 pretrained: XX.XX%`` and ``demo kNN top-1 random-init: YY.YY%``).

The contract lines give Best-NN (docs/knn.md: majority vote over the k nearest training images in
Euclidean distance of the raw features, the best odd k up to 5), the protocol of ``python -m eval.knn``,
so that evaluating the demo's checkpoint again prints the same figure. Weighted kNN (cosine, k 20, T 0.07)
is printed above them and saved in ``demo.json``. The two rank the trunks differently on the demo data
(v4, seed 42, SCE recipe: Best-NN 45.9% pretrained vs 38.6% random init; weighted kNN 41.0% vs 46.6%).
"""
import copy
import json
import os
import time

import torch

from src.augment.image import eval_transform
from src.data.demo import make_demo_dataset
from src.data.folders import build_dataset
from src.evaluation.features import extract_features
from src.metrics import best_nn, weighted_knn
from src.run import dist


def run_demo(args, recipe, train, trunks, data_flag, output_flag, default_output, check=None):
    """A whole ``main_<method>.py --demo`` in this process: the demo data, the recipe's flags, training, then
    :func:`knn_vs_random_init` on the trunk of the trained model and on the same trunk at initialisation.

    Args:
        args: the script's flags (updated with ``recipe``). recipe: {flag dest: value}, with ``eval_size``.
        train: the script's ``train(args, info)`` (returns its parts: ``model``, ``finished``). trunks: ``(model, args)
            -> (trained trunk,
            random-init trunk)``, called right after the run's seed is set again (so a rebuilt model has the
            run's initial weights). data_flag / output_flag: dests of the data folder and output folder flags.
        default_output: the output folder when none was given. check: optional flag check to run first.
    Returns:
        :func:`knn_vs_random_init`'s results, or None when a stop signal ended the training early.
    """
    t0 = time.time()
    root = make_demo_dataset(args.demo_dir)
    for key, value in recipe.items():
        if key != "eval_size":
            setattr(args, key, value)
    setattr(args, data_flag, str(root))
    if getattr(args, output_flag) == ".":
        setattr(args, output_flag, default_output)
    if check is not None:
        check(args)
    out = getattr(args, output_flag)
    print(f"demo: data in {root}, run in {out}", flush=True)
    info = dist.init_distributed(device=args.device or None)
    parts = train(args, info)
    if not parts.finished:  # stopped by a signal: the run said so; a half-trained trunk gets no contract lines
        dist.cleanup()
        return None
    dist.seed_everything(args.seed, 0)  # rebuilding with the run's seed reproduces the initial weights
    pretrained, random_init = trunks(parts.model, args)
    results = knn_vs_random_init(pretrained, random_init, root, recipe["eval_size"], info.device, out,
                                 os.path.join(out, "checkpoint.pth.tar"), t0)
    dist.cleanup()
    return results


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
        top1, k, _ = best_nn(ftr, ltr, fva, lva, max_k=5)
        results[name] = {"best_nn": top1, "best_k": k,
                         "weighted_knn_top1": weighted_knn(ftr, ltr, fva, lva, k=20, temperature=0.07)}
        print(f"demo {name}: best-NN {top1:.2f}% (k={k}), weighted kNN (k=20, T=0.07) "
              f"{results[name]['weighted_knn_top1']:.2f}%", flush=True)
    results["seconds"] = time.time() - t0
    with open(os.path.join(out_dir, "demo.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"demo finished in {results['seconds']:.0f} s; evaluate the checkpoint again with: python -m eval.knn {root} "
          f"--pretrained {checkpoint} --resize {eval_size} --crop-size {eval_size}", flush=True)
    print(f"demo kNN top-1 pretrained: {results['pretrained']['best_nn']:.2f}%", flush=True)
    print(f"demo kNN top-1 random-init: {results['random-init']['best_nn']:.2f}%", flush=True)
    return results
