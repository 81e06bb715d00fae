"""VOC07 SVM: per-class linear SVMs on frozen features, mean average precision (Revisiting-Contrastive-SSL's
``evaluation/voc_svm``; the headline metric of Van Gansbeke et al. 2021).

Protocol: the trunk (classifier head dropped) embeds every image of the train split (``trainval``) and the test
split (``test``) after Resize(256) -> CenterCrop(224) -> ImageNet normalisation; features are L2-normalised
(``x / (||x|| + 1e-5)``). For each class, ``LinearSVC(C=0.5, class_weight={1: 2, -1: 1}, squared hinge, L2
penalty, dual, tol 1e-4, max_iter 2000)`` is fitted on the train features with labels +1 / -1, its decision values
on the test features are ranked, and VOC's average precision (monotone precision envelope, all recall steps) is
reported per class and averaged ("Mean AP"). As in the reference, "difficult" labels (0) count as negatives in
training and testing; ``--ignore-difficult`` leaves them out of both, as the VOC devkit's evaluation does.

The reference script does not run as shipped: it prints ``msg`` after assigning ``sg``, scores ``test_feats``
after naming them ``val_feats``, and names ``args.pretrained`` where the flag is ``--pretrained-weights``. Here the
features and labels of each split have one name, both flag spellings work, the SVM's ``random_state`` is fixed
(``--seed``) so results repeat, and the checkpoint may be any layout ``src.evaluation.pretrained`` reads.

Last line: ``Mean AP: XX.XX``; per-class APs and the settings also go to ``--output-json``.

    # CPU, the fake or real VOC2007 folder and a main_moco.py checkpoint (arch and stem read from it)
    python -m eval.voc_svm /datasets/voc --pretrained runs/moco/checkpoint.pth.tar
    # the reference's spelling, one GPU, a MoCo release
    python -m eval.voc_svm --data /datasets/voc --pretrained-weights moco_v2_800ep_pretrain.pth.tar -a resnet50
"""
import argparse
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from src.augment.image import eval_transform
from src.data.voc import VOCImages, find_voc_dir, read_split, voc_ap, voc_classes
from src.evaluation.features import extract_features
from src.evaluation.pretrained import add_pretrained_args, build_trunk
from src.evaluation.results import results_file, write_json
from src.run import dist
from src.run.args import NONNEG_INT, POSITIVE, POSITIVE_INT, ArgumentParser, add_amp_args, add_arg, amp_dtype
from src.run.errors import UserError
from src.run.launch import exit_on_user_error


def get_args_parser(add_help=False):
    parser = argparse.ArgumentParser("VOC07 SVM evaluation", add_help=add_help)
    parser.add_argument("data", nargs="?", default=None, metavar="DIR",
                        help="folder holding VOCdevkit/VOC2007 (or VOC2007, or the VOC2007 folder itself)")
    add_arg(parser, "--data", dest="data_flag", default=None, help="the reference's spelling of DIR")
    g = parser.add_argument_group("trunk")
    add_pretrained_args(g)
    add_arg(g, "--pretrained-weights", dest="pretrained", default=argparse.SUPPRESS,
            help="the reference's spelling of --pretrained")
    add_arg(g, "--seed", default=0, type=int, help="seed of a random-init trunk and of the SVM solver (0)")
    g = parser.add_argument_group("data")
    add_arg(g, "--year", default="VOC2007", help="subfolder of VOCdevkit (VOC2007)")
    add_arg(g, "--train-split", default="trainval", help="split the SVMs are fitted on (trainval)")
    add_arg(g, "--test-split", default="test", help="split the APs are measured on (test)")
    add_arg(g, "--resize", default=256, type=POSITIVE_INT, help="shorter side before the centre crop, px (256)")
    add_arg(g, "--crop-size", default=224, type=POSITIVE_INT, help="centre crop side, px (224)")
    add_arg(g, "-b", "--batch-size", default=64, type=POSITIVE_INT,
            help="images per forward pass (64; the reference 16)")
    add_arg(g, "-j", "--workers", default=4, type=NONNEG_INT, help="data loading workers (4)")
    add_arg(g, "--gpu", default=None, type=int, help="GPU id (default: cuda:0 when available, else the CPU)")
    add_arg(g, "--device", default="", help="force a device: cpu, cuda, cuda:1 (overrides --gpu)")
    g = parser.add_argument_group("svm")
    add_arg(g, "--svm-c", default=0.5, type=POSITIVE, help="SVM cost C (0.5)")
    add_arg(g, "--pos-weight", default=2.0, type=POSITIVE, help="class weight of positives; negatives have 1 (2)")
    add_arg(g, "--max-iter", default=2000, type=POSITIVE_INT, help="liblinear iterations (2000)")
    add_arg(g, "--tol", default=1e-4, type=POSITIVE, help="liblinear tolerance (1e-4)")
    add_arg(g, "--ignore-difficult", action="store_true",
            help="leave images labelled 0 (only difficult objects) out of each class's SVM and AP, as the VOC "
                 "devkit does (default: negatives, as the reference)")
    add_arg(g, "--svm-jobs", default=1, type=int, help="classes fitted in parallel (joblib processes; 1)")
    add_arg(g, "--output-json", default=None, help="results file (default: voc_svm.json next to the checkpoint)")
    add_amp_args(parser)
    return parser


def embed(model, voc_dir, ids, args, device, name):
    """L2-normalised features (N, D) of the images ``ids`` (numpy float32), in order."""
    dataset = VOCImages(voc_dir, ids, eval_transform(args.resize, args.crop_size))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False,
                                         num_workers=args.workers, pin_memory=device.type == "cuda")
    feats, _ = extract_features(model, loader, device, amp_dtype(args), progress=f"features {name}")
    feats = feats.numpy()
    return feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-5)  # the reference's normalisation


def fit_and_score(train_x, train_y, test_x, test_y, args):
    """One class: fit the SVM on labels +1 / -1 and return (AP on the test split, whether liblinear converged).

    Labels 0 (difficult) are negatives, or dropped with ``--ignore-difficult``."""
    keep_tr = train_y != 0 if args.ignore_difficult else np.ones(len(train_y), bool)
    keep_te = test_y != 0 if args.ignore_difficult else np.ones(len(test_y), bool)
    y = np.where(train_y[keep_tr] > 0, 1, -1)
    svm = LinearSVC(C=args.svm_c, class_weight={1: args.pos_weight, -1: 1.0}, penalty="l2", loss="squared_hinge",
                    dual=True, tol=args.tol, max_iter=args.max_iter, intercept_scaling=1.0, random_state=args.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        svm.fit(train_x[keep_tr], y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return voc_ap(svm.decision_function(test_x[keep_te]), test_y[keep_te]), converged


@exit_on_user_error
def main(args):
    """Fit the per-class SVMs and print per-class AP and ``Mean AP: XX.XX`` last; returns the results dict."""
    root = args.data or args.data_flag
    if not root:
        raise UserError("no dataset given: pass DIR (or --data DIR) holding VOCdevkit/VOC2007")
    out = results_file(args.output_json, args.pretrained, "voc_svm.json")
    # ==== reading the splits ====
    voc_dir = find_voc_dir(root, args.year)
    classes = voc_classes(voc_dir, [args.train_split, args.test_split])
    train_ids, train_y, source = read_split(voc_dir, args.train_split, classes)
    test_ids, test_y, _ = read_split(voc_dir, args.test_split, classes)
    print(f"data: {voc_dir}: {len(train_ids)} {args.train_split} / {len(test_ids)} {args.test_split} images, "
          f"{len(classes)} classes (labels from {source})", flush=True)

    # ==== embedding ====
    device = dist.pick_device(args.device, args.gpu)
    model, args.arch, _ = build_trunk(args.pretrained, args.arch, args.cifar_stem, args.trunk_pattern,
                                      args.trust_checkpoint, args.seed, image_size=args.crop_size,
                                      log=lambda line: print(line, flush=True))
    model = model.to(device)
    train_x = embed(model, voc_dir, train_ids, args, device, args.train_split)
    test_x = embed(model, voc_dir, test_ids, args, device, args.test_split)

    # ==== one SVM per class ====
    usable = [j for j in range(len(classes)) if (train_y[:, j] > 0).any() and (train_y[:, j] < 0).any()
              and (test_y[:, j] > 0).any()]
    for j in sorted(set(range(len(classes))) - set(usable)):
        print(f"warning: class {classes[j]} skipped: it needs positive and negative {args.train_split} images and a "
              f"positive {args.test_split} image", flush=True)
    if not usable:
        raise UserError("no class has both positive and negative images: check the labels of the VOC folder")
    jobs = [(train_x, train_y[:, j], test_x, test_y[:, j], args) for j in usable]
    if args.svm_jobs > 1:
        from joblib import Parallel, delayed

        scored = Parallel(n_jobs=args.svm_jobs)(delayed(fit_and_score)(*job) for job in jobs)
    else:
        scored = [fit_and_score(*job) for job in jobs]

    # ==== reporting: the JSON first, then the lines ====
    aps = {classes[j]: 100.0 * ap for j, (ap, _) in zip(usable, scored)}
    not_converged = [classes[j] for j, (_, ok) in zip(usable, scored) if not ok]
    mean_ap = float(np.mean(list(aps.values())))
    results = {"mean_ap": mean_ap, "ap": aps, "skipped": [classes[j] for j in range(len(classes)) if j not in usable],
               "not_converged": not_converged, "pretrained": args.pretrained, "arch": args.arch, "data": voc_dir,
               "n_train": len(train_ids), "n_test": len(test_ids), "svm_c": args.svm_c, "pos_weight": args.pos_weight,
               "ignore_difficult": args.ignore_difficult, "feat_dim": int(train_x.shape[1])}
    write_json(results, out)
    width = max(len(c) for c in aps)
    for name, ap in aps.items():
        print(f"AP {name:<{width}}  {ap:6.2f}", flush=True)
    if not_converged:
        print(f"note: liblinear stopped at --max-iter {args.max_iter} before converging for "
              f"{', '.join(not_converged)}", flush=True)
    print(f"results written to {out}", flush=True)
    print(f"Mean AP: {mean_ap:.2f}", flush=True)
    return results


if __name__ == "__main__":
    main(ArgumentParser("VOC07 SVM evaluation", parents=[get_args_parser()]).parse_args())
