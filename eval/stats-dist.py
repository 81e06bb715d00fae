"""Alignment, intra-class alignment and uniformity of a frozen trunk on a static positive-pair set.

SSL-small ``eval/stats-dist.py`` (docs/evaluation.md "Static positive pairs"), after Wang & Isola 2020
("Understanding Contrastive Representation Learning through Alignment and Uniformity on the Hypersphere"). The views
of every image of the set (``python -m experiments.sample-augs``) are embedded and L2-normalised:
r0 = originals (view 0, centre-cropped: domain D), r1 and r2 = augmented views 1, 2 (shifted domain SD).

* ``D-SD align`` = align(r0, r1), ``SD-SD align`` = align(r1, r2): mean squared distance of positive pairs
  (``src.metrics.align``; 0 is perfect, 4 the worst on the sphere).
* ``D cls-align`` / ``SD cls-align``: ``src.metrics.intra_class_align`` of r0 / r1, the mean squared
  distance between images of one class, averaged over classes.
* ``D uniform`` / ``SD uniform``: ``src.metrics.uniformity`` with t = 2 of r0 / r1, averaged over
  ``--uniformity-chunks`` disjoint chunks of ``--uniformity-chunk-size`` images drawn with one random
  permutation (seeded by --seed; the same images for r0 and r1), as the reference estimates it. With
  fewer than chunks x size images the chunks shrink to fit.

Works for any number of classes (the reference requires ImageNet's 1000). The last three lines are
the reference's block (15-character columns, 4 decimals)::

    <ckpt>,<data>
    D-SD align     SD-SD align    D cls-align    SD cls-align   D uniform      SD uniform
    0.2273         0.2858         1.2955         1.3025         -3.4162        -3.3200

and the numbers go to ``--output-json`` (default ``stats-dist_<dataset-mode>.json`` next to the checkpoint).

    # CPU, a main_moco.py checkpoint, the demo pairs at 32 px
    python -m eval.stats-dist data/demo-pairs --pretrained runs/moco-demo/checkpoint.pth.tar --resize 32 --crop-size 32
    # one GPU, a MoCo release on the paper's set (ImageNet val, 50 per class)
    python -m eval.stats-dist /datasets/auged-imagenet/val -a resnet50 --pretrained moco_v2_800ep.pth.tar -b 256 -j 8
"""
import argparse

import torch

from src.evaluation.pair_eval import PositivePairDataset, add_pair_eval_args, embed_views
from src.evaluation.pretrained import build_trunk
from src.evaluation.results import results_file, write_json
from src.metrics import align, intra_class_align, uniformity
from src.run import dist
from src.run.args import POSITIVE_INT, ArgumentParser, add_arg, amp_dtype, number
from src.run.errors import UserError
from src.run.launch import exit_on_user_error

COLUMNS = ("D-SD align", "SD-SD align", "D cls-align", "SD cls-align", "D uniform", "SD uniform")
KEYS = ("d_sd_align", "sd_sd_align", "d_cls_align", "sd_cls_align", "d_uniform", "sd_uniform")


def get_args_parser(add_help=False):
    """Flags of SSL-small's ``eval/stats-dist.py`` (dash-case; two-word flags also in snake_case)."""
    parser = argparse.ArgumentParser("Alignment and uniformity", add_help=add_help)
    add_pair_eval_args(parser, 50, "images read per class, the first ones in sorted order; 0 reads all "
                                   "(default 50, the paper's set)")
    g = parser.add_argument_group("uniformity estimate")
    add_arg(g, "--uniformity-chunks", default=3, type=POSITIVE_INT,
            help="disjoint random chunks averaged for the uniformity, >= 1 (default 3)")
    add_arg(g, "--uniformity-chunk-size", default=128, type=number(int, low=2),
            help="images per chunk, >= 2 (default 128; cost grows with its square)")
    return parser


def chunked_uniformity(feats, chunk_ids, t=2):
    """Mean of :func:`src.metrics.uniformity` over the chunks ``chunk_ids`` (list of index tensors)."""
    return torch.stack([uniformity(feats[idx], t=t) for idx in chunk_ids]).mean()


def uniformity_chunks(n, chunks, size, seed):
    """``chunks`` disjoint index tensors of ``min(size, n // chunks)`` from one seeded permutation of n."""
    size = min(size, n // chunks)
    if chunks < 1 or size < 2:
        raise UserError(f"uniformity needs {max(chunks, 1)} chunk(s) of at least 2 images, but the set has {n} "
                        "images: use more images or fewer --uniformity-chunks")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [perm[i * size:(i + 1) * size] for i in range(chunks)]


def format_block(pretrained, data, values):
    """The reference's three-line block: ``<ckpt>,<data>``, the column names, the values (15-character
    left-aligned columns, 4 decimals)."""
    lines = [f"{pretrained},{data}", "".join(f"{c:<15}" for c in COLUMNS), "".join(f"{v:<15.4f}" for v in values)]
    return "\n".join(line.rstrip() for line in lines)  # no trailing blanks


@exit_on_user_error
def main(args):
    """Print the alignment / uniformity block and write the JSON results."""
    out = results_file(args.output_json, args.pretrained, f"stats-dist_{args.dataset_mode}.json")
    # ==== preparing data ====
    pairs = PositivePairDataset(args.data, args.dataset_mode, resize=args.resize, crop_size=args.crop_size,
                                per_class=args.sample_per_class)
    chunk_ids = uniformity_chunks(len(pairs), args.uniformity_chunks, args.uniformity_chunk_size, args.seed)
    print(f"data: {len(pairs)} images of {len(pairs.classes)} classes, views {pairs.views[:3]}; uniformity on "
          f"{len(chunk_ids)} chunks of {len(chunk_ids[0])}", flush=True)

    # ==== building the trunk ====
    model, args.arch, _ = build_trunk(args.pretrained, args.arch, args.cifar_stem, args.trunk_pattern,
                                      args.trust_checkpoint, args.seed, args.crop_size,
                                      log=lambda line: print(line, flush=True))

    # ==== embedding and statistics ====
    device = dist.pick_device(args.device, args.gpu)
    feats, labels = embed_views(model, pairs, pairs.views[:3], args.batch_size, args.workers, device,
                                amp_dtype(args))
    r0, r1, r2 = (feats[v].to(device).double() for v in pairs.views[:3])  # float64: sums of many small terms
    labels = labels.to(device)
    values = [align(r0, r1), align(r1, r2), intra_class_align(r0, labels), intra_class_align(r1, labels),
              chunked_uniformity(r0, chunk_ids), chunked_uniformity(r1, chunk_ids)]
    values = [float(v) for v in values]

    # ==== reporting ====
    res = {**dict(zip(KEYS, values)), "pretrained": args.pretrained, "data": args.data, "arch": args.arch,
           "dataset_mode": args.dataset_mode, "views": list(pairs.views[:3]), "n_images": len(pairs),
           "n_classes": len(pairs.classes), "uniformity_t": 2, "uniformity_chunks": len(chunk_ids),
           "uniformity_chunk_size": len(chunk_ids[0])}
    write_json(res, out)
    print(f"results written to {out}", flush=True)
    print(format_block(args.pretrained or "random-init", args.data, values), flush=True)
    return res


if __name__ == "__main__":
    main(ArgumentParser("Alignment and uniformity", parents=[get_args_parser()]).parse_args())
