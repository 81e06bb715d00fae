"""Write a pretrained ResNet trunk as a detectron2 weights file (``MODEL.WEIGHTS``), for the detection transfer
of MoCo (He et al. 2020, section 4.2; facebookresearch/moco ``detection/convert-pretrain-to-detectron2.py``).

The trunk is found in any checkpoint ``src.evaluation.pretrained`` reads (``main_*.py`` checkpoints and ``trunk.pth``, MoCo
releases ``module.encoder_q.*``, SwAV releases ``module.*``, eztorch / SCE Lightning ``trunk.*``, plain torchvision
state dicts), loaded strictly into our ResNet of that architecture, and written under detectron2's ResNet names
(``detectron2/modeling/backbone/resnet.py``: ``BasicStem.conv1`` with its ``norm``, stages ``res2``-``res5`` of
``BottleneckBlock`` / ``BasicBlock`` with ``conv1``-``conv3`` + ``norm`` and a ``shortcut`` conv + ``norm``):

    conv1.*                       -> stem.conv1.*            bn1.*                -> stem.conv1.norm.*
    layer{N}.{M}.conv{K}.*        -> res{N+1}.{M}.conv{K}.*  layer{N}.{M}.bn{K}.* -> res{N+1}.{M}.conv{K}.norm.*
    layer{N}.{M}.downsample.0.*   -> res{N+1}.{M}.shortcut.*
    layer{N}.{M}.downsample.1.*   -> res{N+1}.{M}.shortcut.norm.*

The classifier / projection head is not written (the reference renames whatever it finds, so MoCo's ``fc`` head
reached the file as ``stem.fc.*`` for detectron2 to ignore), nor BN's ``num_batches_tracked`` counters
(detectron2's default FrozenBatchNorm2d has none, and BN with a momentum never reads them). The output is the
reference's pickle, ``{"model": {name: float32 numpy array}, "__author__": str, "matching_heuristics": True}``;
detectron2 reads a ``.pkl`` ``MODEL.WEIGHTS`` with ``pickle.load`` and, with ``matching_heuristics``, matches
names by suffix, so ``res5.*`` finds ``roi_heads.res5.*`` in a C4 model. The file holds only dicts, strings, a
bool and arrays, and names numpy's array rebuilder by its numpy-1 path (``numpy.core.multiarray._reconstruct``,
which numpy 2 keeps importable for old pickles), so detectron2 environments on numpy 1.x read it as well; a
restricted unpickler that allows only ``_reconstruct``, ``numpy.ndarray`` and ``numpy.dtype`` loads it.

    python -m experiments.convert-detectron2 runs/moco/checkpoint.pth.tar moco_r50.pkl
    python -m experiments.convert-detectron2 moco_v2_800ep_pretrain.pth.tar moco_v2.pkl
    python -m experiments.convert-detectron2 lightning.ckpt sce.pkl --trunk-pattern '^(trunk\\.)' --trust-checkpoint
    cd detection && python train_net.py --config-file configs/pascal_voc_R_50_C4_24k_moco.yaml \\
        --num-gpus 8 MODEL.WEIGHTS ../moco_r50.pkl

Only ResNet trunks of a depth detectron2 builds (18, 34, 50, 101, 152; ``DETECTRON2_ARCHS``) with the ImageNet
stem convert (detectron2's stem is a 7x7 stride-2 conv and a max-pool). The configs in ``detection/configs``
build an R50-C4 (bottleneck res5 head); resnet18/34 files suit detectron2 configs with ``RESNETS.DEPTH: 18/34``
and ``RES2_OUT_CHANNELS: 64``, wide_resnet50_2/101_2 ``WIDTH_PER_GROUP: 128``, SwAV's resnet50wW
``WIDTH_PER_GROUP``, ``STEM_OUT_CHANNELS`` and ``RES2_OUT_CHANNELS`` of 64, 64 and 256 times W.
Every torchvision-style ResNet needs ``RESNETS.STRIDE_IN_1X1: False`` and RGB input in torchvision's
normalisation, as the ``*_moco.yaml`` configs set.
"""
import argparse
import os
import pickle
import re

import numpy as np

from src.evaluation.pretrained import add_pretrained_args, checkpoint_arch, load_trunk, read_checkpoint
from src.models import build_backbone
from src.models.resnet import RESNET_CONFIGS
from src.run.args import ArgumentParser, add_arg
from src.run.checkpoint import atomic_write, check_output_file
from src.run.errors import UserError
from src.run.launch import exit_on_user_error

_STEM = re.compile(r"^(conv1|bn1)\.(\w+)$")
_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(conv[1-3]|bn[1-3]|downsample\.[01])\.(\w+)$")
# block counts of the depths detectron2's build_resnet_backbone knows (18, 34 / 50, 101, 152); resnet_tiny has none
_DETECTRON2_BLOCKS = ([2, 2, 2, 2], [3, 4, 6, 3], [3, 4, 23, 3], [3, 8, 36, 3])
DETECTRON2_ARCHS = tuple(a for a, (_, blocks, *_) in RESNET_CONFIGS.items() if blocks in _DETECTRON2_BLOCKS)
# the function numpy's ndarray.__reduce__ rebuilds arrays with, whatever its module is called in this numpy
_RECONSTRUCT = np.zeros(0).__reduce__()[0]


def detectron2_name(key):
    """torchvision ResNet key -> detectron2 ResNet key (see the module docstring).

    Args:
        key: e.g. ``layer1.0.bn2.running_var``.
    Returns:
        e.g. ``res2.0.conv2.norm.running_var``.
    Raises:
        UserError: the key is not part of a torchvision ResNet trunk.
    """
    m = _STEM.match(key)
    if m:
        return f"stem.conv1.{'norm.' if m.group(1) == 'bn1' else ''}{m.group(2)}"
    m = _BLOCK.match(key)
    if not m:
        raise UserError(f"trunk key {key!r} has no detectron2 ResNet name: only torchvision-style ResNet "
                        "trunks convert")
    stage, block, layer, attr = m.groups()
    layer = {"downsample.0": "shortcut", "downsample.1": "shortcut.norm"}.get(layer) or \
        (f"conv{layer[2]}.norm" if layer.startswith("bn") else layer)
    return f"res{int(stage) + 1}.{block}.{layer}.{attr}"


def convert_state(state):
    """A torchvision-named ResNet trunk state -> detectron2's ``{name: float32 numpy array}``.

    Args:
        state: {key: tensor} of the trunk (no head); ``num_batches_tracked`` counters are dropped.
    Returns:
        dict of C-contiguous float32 arrays, in ``state``'s order.
    """
    return {detectron2_name(k): np.ascontiguousarray(v.detach().cpu().float().numpy())
            for k, v in state.items() if not k.endswith("num_batches_tracked")}


class _PortablePickler(pickle._Pickler):
    """Pickler that writes numpy's array rebuilder as ``numpy.core.multiarray._reconstruct``.

    numpy 2 names it ``numpy._core.multiarray._reconstruct``, a module numpy before 1.26.1 lacks; the old path
    resolves in every numpy (numpy 2 keeps it, without a warning, to read old pickles). The pure-Python pickler
    is used because only its ``save_global`` can be told the name to write.
    """

    def save_global(self, obj, name=None):
        if obj is _RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def write_pickle(obj, path):
    """Pickle ``obj`` (protocol 4, arrays portable across numpy 1 / 2) to ``path`` atomically."""
    # protocol 5 would rebuild arrays with numpy._core.numeric._frombuffer instead of _reconstruct
    atomic_write(path, lambda f: _PortablePickler(f, protocol=4).dump(obj), flag="OUT")


def load_resnet_trunk(path, arch=None, cifar_stem=None, trunk_pattern=None, trust=False):
    """Read a checkpoint and load its trunk, strictly, into our ResNet of its architecture.

    Args:
        path: checkpoint file.
        arch: ResNet name; None takes the one recorded in the checkpoint, else resnet50.
        cifar_stem: None takes the checkpoint's; True is refused (no detectron2 equivalent).
        trunk_pattern, trust: see ``src.evaluation.pretrained.extract_trunk_state`` / ``read_checkpoint``.
    Returns:
        ``(trunk state dict, arch, info)`` with ``info`` from ``src.evaluation.pretrained.load_trunk`` (``prefix``, ...).
    Raises:
        UserError: unreadable file, a non-ResNet or small-image-stem trunk, keys that do not fit the arch.
    """
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        # read_checkpoint would fail on the message-less EOFError torch.load raises for an empty file
        raise UserError(f"checkpoint '{path}' is empty (0 bytes): the copy or download did not finish")
    ckpt = read_checkpoint(path, trust=trust)
    ckpt_arch, ckpt_stem = checkpoint_arch(ckpt)
    arch = arch or ckpt_arch or "resnet50"
    if arch not in DETECTRON2_ARCHS:
        raise UserError(f"arch {arch!r} has no detectron2 counterpart: only ResNet trunks convert "
                        f"({', '.join(DETECTRON2_ARCHS)})")
    if ckpt_stem if cifar_stem is None else cifar_stem:
        raise UserError(f"'{path}' is a {arch} with the small-image 3x3 stem, which detectron2's 7x7 stride-2 stem "
                        "cannot hold: convert a trunk trained with the ImageNet stem")
    model, _ = build_backbone(arch)
    try:
        info = load_trunk(model, ckpt, trunk_pattern=trunk_pattern, arch=arch, source=str(path), log=None)
    except UserError as exc:
        raise UserError(f"{exc} (only ResNet trunks convert to detectron2)") from None
    return model.state_dict(), arch, info


def get_args_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", nargs="?", metavar="CKPT",
                   help="checkpoint holding a ResNet trunk (any layout src.evaluation.pretrained reads; or --pretrained)")
    p.add_argument("output", metavar="OUT.pkl",
                   help="detectron2 weights file to write; must end in .pkl, which is how detectron2 tells this "
                        "format from a torch checkpoint")
    add_pretrained_args(p.add_argument_group("trunk"))
    add_arg(p, "--author", default="experiments.convert-detectron2",
            help="the file's '__author__', which detectron2 logs when reading it (default: this tool's name)")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.ckpt and args.pretrained and args.ckpt != args.pretrained:
        raise UserError(f"two checkpoints given ({args.ckpt} and --pretrained {args.pretrained}): pass one")
    path = args.ckpt or args.pretrained
    if not path:
        raise UserError("no checkpoint given: python -m experiments.convert-detectron2 CKPT OUT.pkl")
    if not args.output.endswith(".pkl"):
        raise UserError(f"output '{args.output}' does not end in .pkl: detectron2 reads its MODEL.WEIGHTS as this "
                        "pickle only under that suffix")
    if os.path.abspath(args.output) == os.path.abspath(path):
        raise UserError(f"output '{args.output}' is the input checkpoint: name another file")
    check_output_file(args.output, "OUT", "model.pkl")  # before the checkpoint is read, not after
    state, arch, info = load_resnet_trunk(path, arch=args.arch, cifar_stem=args.cifar_stem,
                                          trunk_pattern=args.trunk_pattern, trust=args.trust_checkpoint)
    weights = convert_state(state)
    write_pickle({"model": weights, "__author__": args.author, "matching_heuristics": True}, args.output)
    print(f"wrote {len(weights)} tensors of the {arch} trunk of {path} (prefix {info['prefix']!r}) to {args.output}",
          flush=True)
    return args.output


if __name__ == "__main__":
    exit_on_user_error(main)()
