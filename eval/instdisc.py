"""Instance discrimination on a static positive-pair set: does a query find its own positive view?

SSL-small ``eval/instdisc.py`` (docs/evaluation.md "Static positive pairs"). Every image of the set (written by
``python -m experiments.sample-augs``) is embedded by the frozen trunk and L2-normalised. Mode ``d-sd``:
the queries are the originals (view 0, centre-cropped: the "domain" D) and each query's positive is its
augmented view 1 (the "shifted domain" SD); ``sd-sd``: queries are view 1, positives view 2. The
negatives of a query are the queries of all other images. Top-k accuracy: the share of queries whose
positive is among the k most similar candidates (``src.metrics.instdisc_topk``; ties count against the
positive). Works for any number of classes and images; ``-s`` caps the images read per class.

Last line of the output (the reference's format; percentages):
``Masked: normal; Mode: d-sd; Top1-5: [a1, a2, a3, a4, a5]; CKPT: <ckpt>; Dataset: <path>``;
the numbers also go to ``--output-json`` (default ``instdisc_<mode>_<dataset-mode>.json`` next to the
checkpoint).

    # CPU, a main_moco.py checkpoint (arch and stem are read from it), the demo pairs at 32 px
    python -m eval.instdisc data/demo-pairs --pretrained runs/moco-demo/checkpoint.pth.tar --resize 32 \
        --crop-size 32 --mode d-sd
    # one GPU, a MoCo release on the paper's set (ImageNet val, 50 per class)
    python -m eval.instdisc /datasets/auged-imagenet/val -a resnet50 --pretrained moco_v2_800ep.pth.tar \
        -b 256 -j 8 -s 50 --mode sd-sd
"""
import argparse

import torch

from src.evaluation.pair_eval import PositivePairDataset, add_pair_eval_args, embed_views
from src.evaluation.pretrained import build_trunk
from src.evaluation.results import results_file, write_json
from src.metrics import instdisc_topk
from src.run import dist
from src.run.args import ArgumentParser, amp_dtype
from src.run.errors import UserError
from src.run.launch import exit_on_user_error

MODES = ("d-sd", "sd-sd")


def get_args_parser(add_help=False):
    """Flags of SSL-small's ``eval/instdisc.py`` (dash-case; two-word flags also in snake_case)."""
    parser = argparse.ArgumentParser("Instance-discrimination accuracy", add_help=add_help)
    add_pair_eval_args(parser, 100, "images read per class, the first ones in sorted order; 0 reads all "
                                    "(default 100: every image of a 50 or 100 per class set)")
    g = parser.add_argument_group("instance discrimination")
    g.add_argument("--topk", default=5, type=int, help="report top-1 ... top-K accuracy (default 5)")
    g.add_argument("--mode", default="d-sd", choices=MODES,
                   help="d-sd: originals query their view 1; sd-sd: view 1 queries view 2 (default d-sd)")
    return parser


@exit_on_user_error
def main(args):
    """Print the top-1..K accuracies line and write the JSON results."""
    if args.topk < 1:
        raise UserError(f"--topk must be >= 1, got {args.topk}")
    out = results_file(args.output_json, args.pretrained, f"instdisc_{args.mode}_{args.dataset_mode}.json")
    # ==== preparing data ====
    pairs = PositivePairDataset(args.data, args.dataset_mode, resize=args.resize, crop_size=args.crop_size,
                                per_class=args.sample_per_class)
    query_view, pos_view = pairs.views[:2] if args.mode == "d-sd" else pairs.views[1:3]
    if len(pairs) < 2:
        raise UserError(f"'{args.data}' holds {len(pairs)} image: instance discrimination needs at least 2")
    print(f"data: {len(pairs)} images of {len(pairs.classes)} classes; mode {args.mode}: view {query_view} queries, "
          f"view {pos_view} positives", flush=True)

    # ==== building the trunk ====
    model, args.arch, _ = build_trunk(args.pretrained, args.arch, args.cifar_stem, args.trunk_pattern,
                                      args.trust_checkpoint, args.seed, args.crop_size,
                                      log=lambda line: print(line, flush=True))

    # ==== embedding and retrieval ====
    device = dist.pick_device(args.device, args.gpu)
    feats, _ = embed_views(model, pairs, (query_view, pos_view), args.batch_size, args.workers, device,
                           amp_dtype(args))
    with torch.no_grad():
        acc = instdisc_topk(feats[query_view].to(device), feats[pos_view].to(device), topk=args.topk)
    acc = [round(a, 3) for a in acc]

    # ==== reporting ====
    res = {"masked": args.dataset_mode, "mode": args.mode, "topk": acc, "pretrained": args.pretrained,
           "data": args.data, "arch": args.arch, "n_images": len(pairs), "n_classes": len(pairs.classes),
           "query_view": query_view, "positive_view": pos_view}
    write_json(res, out)
    print(f"results written to {out}", flush=True)
    print(f"Masked: {args.dataset_mode}; Mode: {args.mode}; Top1-{args.topk}: {acc}; "
          f"CKPT: {args.pretrained or 'random-init'}; Dataset: {args.data}", flush=True)
    return res


if __name__ == "__main__":
    main(ArgumentParser("Instance-discrimination accuracy", parents=[get_args_parser()]).parse_args())
