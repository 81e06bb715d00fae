"""Retrieval from a bank: nearest train-split videos of every test-split video (video SCE; docs/video.md).

Two steps, as the reference's ``extract_features.py`` + ``retrieval_from_bank.py``:

1. features: the frozen trunk (eval mode, global average pool, no projector) embeds both splits with the test
   protocol (10 clips x 3 crops of 256 px, 8 or 16 frames) and the raw features are averaged over the 30 views;
   saved as ``OUTPUT_DIR/{train,val}_{features,labels}.pth``;
2. retrieval (``src.metrics.retrieval_at_k``): queries = test split, bank = train split, each centred by its own
   mean, L2-normalised, cosine; a hit at k when any of the k nearest bank videos has the query's label, for k in
   1, 5, 10, 15, 20, 25. ``--from_bank DIR`` runs step 2 alone on saved features.

Prints ``R@k xx.xx`` per k, and last ``retrieval R@1=xx.xx%, R@5=xx.xx%, ...``; writes ``OUTPUT_DIR/retrieval.json``.
With ``--modality image`` the same runs on train/ and val/ image folders (Resize + CenterCrop, one view).

    # CPU, the demo videos and a main_sce.py --modality video checkpoint
    python -m eval.retrieval data/video_demo/ucf/videos --splits_dir data/video_demo/ucf/splits \\
        --pretrained runs/video-sce-cpu/checkpoint.pth.tar --num_frames 4 --resize 40 -b 2 -j 1 \\
        --output_dir runs/video-retrieval
    # one GPU, UCF101 split 1, an R3D-50 at 8 frames (paper R@1 81.5); see scripts/video_retrieval_*.sh
    python -m eval.retrieval /datasets/UCF-101 --splits_dir /datasets/ucfTrainTestlist --split_id 1 \\
        --pretrained runs/video_sce_r3d50/checkpoint.pth.tar --num_frames 8 --resize 256 -b 8 -j 8
"""
import argparse
import os

import torch

from src.augment.image import eval_transform
from src.data.folders import SafeImageFolder, require_folder
from src.evaluation.features import extract_features
from src.evaluation.pretrained import add_pretrained_args, build_trunk
from src.evaluation.results import write_json
from src.evaluation.video import VideoEval, ViewAverage, add_video_eval_args, bank_sets
from src.metrics import RETRIEVAL_KS, retrieval_at_k
from src.run import dist
from src.run.args import NONNEG_INT, POSITIVE_INT, ArgumentParser, add_amp_args, add_arg, amp_dtype
from src.run.checkpoint import check_writable, load_checkpoint, save_checkpoint
from src.run.errors import UserError
from src.run.health import check_finite_features
from src.run.launch import exit_on_user_error


def get_args_parser(add_help=False):
    parser = argparse.ArgumentParser("Retrieval from a bank", add_help=add_help)
    parser.add_argument("data", nargs="?", default=None, metavar="DIR",
                        help="videos: DIR/train and DIR/val class folders, or the class folders of UCF101 / HMDB51 "
                             "with --splits_dir; images: DIR/train and DIR/val (not needed with --from_bank)")
    g = parser.add_argument_group("features")
    add_pretrained_args(g, snake=True)
    add_arg(g, "--resize", default=256, type=POSITIVE_INT,
            help="short side of the test views, and their crop side (256; 32-64 on a CPU)")
    add_arg(g, "--crop_size", default=224, type=POSITIVE_INT, help="images only: centre crop after --resize (224)")
    add_arg(g, "-b", "--batch_size", default=8, type=POSITIVE_INT, help="videos (or images) per forward batch (8)")
    add_arg(g, "-j", "--workers", default=8, type=NONNEG_INT, help="data loading workers (8)")
    add_arg(g, "--seed", default=0, type=int, help="seed of a random-init trunk when no --pretrained is given (0)")
    add_arg(g, "--device", default="", help="cpu, cuda, cuda:1 (default: cuda if available)")
    g = parser.add_argument_group("retrieval")
    add_arg(g, "--from_bank", default="", help="folder of saved {train,val}_{features,labels}.pth: skip step 1")
    add_arg(g, "--ks", default=list(RETRIEVAL_KS), type=POSITIVE_INT, nargs="+", help="k values (1 5 10 15 20 25)")
    add_arg(g, "--output_dir", default=".",
            help="where the features and retrieval.json go (.; with --from_bank, retrieval.json goes to that folder)")
    add_video_eval_args(parser).set_defaults(modality="video")
    add_amp_args(parser)
    return parser


def extract_bank(args):
    """Step 1: {"train": (features, labels), "val": (...), "skipped": unreadable images left out} of the frozen
    trunk, saved to OUTPUT_DIR."""
    if not args.data:
        raise UserError("no dataset given: pass DIR, or --from_bank with saved features")
    device = dist.pick_device(args.device)
    trunk, args.arch, _ = build_trunk(args.pretrained, args.arch, args.cifar_stem, args.trunk_pattern,
                                      args.trust_checkpoint, args.seed, image_size=args.crop_size)
    if args.modality == "video":
        sets = bank_sets(VideoEval.from_flags(args), args.data, args.resize)
        model = ViewAverage(trunk)
    else:
        tf = eval_transform(args.resize, args.crop_size)
        sets = [SafeImageFolder(os.path.join(args.data, split), tf, skip_unreadable=True) for split in ("train", "val")]
        model = trunk
    model = model.to(device).eval()
    os.makedirs(args.output_dir, exist_ok=True)
    out, stats = {"skipped": 0}, {}
    for split, dataset in zip(("train", "val"), sets):
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False,
                                             num_workers=args.workers, pin_memory=device.type == "cuda")
        feats, labels = extract_features(model, loader, device, amp_dtype(args), progress=f"features {split}",
                                         stats=stats)
        out["skipped"] = stats.get("skipped", 0)
        save_checkpoint(os.path.join(args.output_dir, f"{split}_features.pth"), feats)
        save_checkpoint(os.path.join(args.output_dir, f"{split}_labels.pth"), labels)
        out[split] = (feats, labels)
    return out


def load_bank(folder, flag="--from_bank"):
    """Step 1's files of ``folder``: ``{"train": (features (N, D), labels (N,)), "val": (...)}``.

    Raises:
        UserError: ``folder`` is not a folder, a file is missing or unreadable, or holds something else than a
        float (N, D) feature matrix / an integer (N,) label vector of the same N (each naming ``flag``).
    """
    require_folder(folder, f"pass to {flag} the folder holding train_features.pth, train_labels.pth, "
                           "val_features.pth and val_labels.pth (written by a run without it)", what=f"{flag}")
    bank = {}
    for split in ("train", "val"):
        paths = [os.path.join(folder, f"{split}_{what}.pth") for what in ("features", "labels")]
        feats, labels = (load_checkpoint(p, flag) for p in paths)
        if not (torch.is_tensor(feats) and feats.ndim == 2 and feats.is_floating_point()):
            raise UserError(f"'{paths[0]}' holds {_describe(feats)}, not a (N, D) float tensor of features: pass to "
                            f"{flag} a folder written by eval.retrieval")
        if not (torch.is_tensor(labels) and labels.ndim == 1 and not labels.is_floating_point()
                and len(labels) == len(feats)):
            raise UserError(f"'{paths[1]}' holds {_describe(labels)}, not the ({len(feats)},) integer labels of "
                            f"'{paths[0]}': pass to {flag} a folder written by eval.retrieval")
        bank[split] = (feats, labels)
    return bank


def _describe(obj):
    return f"a {tuple(obj.shape)} {obj.dtype} tensor" if torch.is_tensor(obj) else f"a {type(obj).__name__}"


@exit_on_user_error
def main(args):
    out_dir, flag = (args.from_bank, "--from_bank") if args.from_bank else (args.output_dir, "--output_dir")
    if args.from_bank:
        require_folder(args.from_bank, "pass to --from_bank the folder of saved {train,val}_{features,labels}.pth",
                       what="--from_bank")
    check_writable(out_dir, flag)  # retrieval.json goes there; checked before the features are extracted
    bank = load_bank(args.from_bank) if args.from_bank else extract_bank(args)
    (bank_f, bank_y), (query_f, query_y) = bank["train"], bank["val"]
    check_finite_features(bank_f, "bank features")
    check_finite_features(query_f, "query features")
    print(f"bank: {len(bank_f)} train, queries: {len(query_f)} test, {bank_f.shape[1]}-d features", flush=True)
    results = retrieval_at_k(query_f, query_y, bank_f, bank_y, ks=tuple(args.ks))
    skipped = bank.get("skipped", 0)
    write_json({"recall": {str(k): v for k, v in results.items()}, "pretrained": args.pretrained, "arch": args.arch,
                "n_bank": len(bank_f), "n_query": len(query_f), "skipped_unreadable": skipped},
               os.path.join(out_dir, "retrieval.json"))
    for k, acc in results.items():
        print(f"R@{k} {acc:.2f}", flush=True)
    print("retrieval " + ", ".join(f"R@{k}={acc:.2f}%" for k, acc in results.items())
          + (f" ({skipped} unreadable images skipped)" if skipped else ""), flush=True)
    return results


if __name__ == "__main__":
    main(ArgumentParser("Retrieval from a bank", parents=[get_args_parser()]).parse_args())
