"""Turn a SEED-distilled checkpoint into one that ``main_moco.py --resume FILE --restart`` starts from.

SSL-small (Shi et al. 2021, WOWNICE/ssl-small ``util.distill_ckpt2moco_ckpt``; docs/moco.md) starts its
small-model runs from students distilled by SEED (Fang et al. 2021). The conversion: drop the teacher's
weights (``module.teacher*``), add a copy of every student tensor (``module.student*``) under
``module.encoder_q*`` (the student keys stay; ``--restart`` ignores them), and write
``<same folder>/converted_<last '-'-separated part of the file name>``. A folder converts every file in it
whose name does not start with ``convert``, as the reference's ``util.py`` does for ``./distill_checkpoints``.

    python -m experiments.convert-seed distill_checkpoints/seed-mobilenetv3_small-ep200.pth.tar
    python -m experiments.convert-seed distill_checkpoints/          # every checkpoint in the folder
    python main_moco.py /path/to/imagenet -a resnet18 ... --resume distill_checkpoints/converted_ep200.pth.tar --restart

The output holds only tensors, numbers and strings (loads with ``torch.load(weights_only=True)``).
SEED and SSL-small build their students with the same code (d-li14's MobileNetV3, lukemelas'
EfficientNet, SSL-small's DeiT-Tiny, a torchvision-style ResNet), and so do our ``mobilenetv3_small``,
``mobilenetv3_large``, ``efficientnet_b0``, ``deit_tiny`` and ResNets: their keys are copied unchanged.
Before writing, the student is checked against our trunk of the checkpoint's ``arch`` (SSL-small's name
``vit_tiny`` for its DeiT is read as our ``deit_tiny``) or of ``--arch``: every trunk tensor must be there
with its shape, otherwise ``--restart`` would silently start those layers from scratch. A student with NaN / inf
values (a diverged distillation) is refused whatever the flags, as every evaluation here refuses such a trunk.
"""
import argparse
import os

import torch

from src.evaluation.pretrained import TRUST_HELP, check_finite, read_checkpoint
from src.models import KNOWN_ARCHS, SMALL_ARCHS, TV_SMALL_ARCHS, VIDEO_ARCHS, build_backbone
from src.run.args import ArgumentParser
from src.run.checkpoint import check_output_file, save_checkpoint
from src.run.errors import UserError
from src.run.launch import exit_on_user_error

# SEED / SSL-small architecture names that differ from ours: SSL-small's DeiT-Tiny is ``vit_tiny`` there,
# our ``deit_tiny`` (our ``vit_tiny`` is torchvision's ViT-Ti, which no SEED student uses).
REFERENCE_NAMES = {"vit_tiny": "deit_tiny"}


def convert_state(state):
    """SEED state dict -> MoCo-style state dict.

    Args:
        state: dict of tensors with ``[module.]student.*`` and ``[module.]teacher.*`` keys (others kept).
    Returns:
        (new state, number of student tensors copied to ``encoder_q``, number of teacher tensors dropped).
    Raises:
        UserError: no student tensor in ``state``.
    """
    out, n_student, n_teacher = {}, 0, 0
    for key, value in state.items():
        bare = key[len("module."):] if key.startswith("module.") else key
        prefix = key[:len(key) - len(bare)]
        if bare.startswith("teacher"):
            n_teacher += 1
            continue
        out[key] = value
        if bare.startswith("student"):
            out[prefix + "encoder_q" + bare[len("student"):]] = value
            n_student += 1
    if n_student == 0:
        raise UserError(f"no 'student' weights among the {len(state)} tensors (first keys: "
                        f"{', '.join(list(state)[:3])}): is this a SEED checkpoint?")
    return out, n_student, n_teacher


def student_arch(ckpt_arch, state):
    """Our name for the student architecture a SEED checkpoint records (None when it records none we know).

    ``vit_tiny`` means SSL-small's DeiT-Tiny when the student has its patch embedding
    (``to_patch_embedding.1.weight``), as every SSL-small DeiT does.
    """
    if not isinstance(ckpt_arch, str):
        return None
    if ckpt_arch in REFERENCE_NAMES and any(k.endswith("student.to_patch_embedding.1.weight") for k in state):
        return REFERENCE_NAMES[ckpt_arch]
    return ckpt_arch if ckpt_arch in KNOWN_ARCHS else None


def check_student(state, arch):
    """Check that the student holds every tensor of our ``arch`` trunk (its ``fc`` head excluded).

    Args:
        state: SEED state dict (``[module.]student.*`` keys).
        arch: one of ``src.models.KNOWN_ARCHS``.
    Returns:
        number of trunk tensors found with the right shape.
    Raises:
        UserError: trunk tensors missing or of another shape (the message lists the first ones and the
            small architectures whose trunk the student does fit).
    """
    student = {k.split("student.", 1)[1]: v for k, v in state.items()
               if k.startswith(("student.", "module.student."))}
    trunk, _ = build_backbone(arch)
    missing, shapes = _compare(student, trunk.state_dict())
    if missing or shapes:
        candidates = [a for a in SMALL_ARCHS + TV_SMALL_ARCHS + ("resnet18",) if a != arch]
        fits = [a for a in candidates if _compare(student, build_backbone(a)[0].state_dict()) == ([], [])]
        parts = ([f"missing {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else "")] if missing else []) + \
                ([f"other shapes {', '.join(shapes[:3])}"] if shapes else [])
        raise UserError(f"the SEED student does not fit our {arch!r} trunk ({'; '.join(parts)}; {len(missing)} "
                        f"missing, {len(shapes)} other shapes): "
                        + (f"it fits {', '.join(fits)}: pass --arch {fits[0]}" if fits else
                           "pass the student's --arch, or --no-check to convert it unchecked"))
    return len(trunk.state_dict())


def _compare(student, own):
    """(missing keys, 'key (ckpt shape) vs (model shape)' strings) of trunk ``own`` against ``student``;
    BN ``num_batches_tracked`` counters may be absent (older checkpoints)."""
    missing = [k for k in own if k not in student and not k.endswith("num_batches_tracked")]
    shapes = [f"{k} {tuple(student[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in student and student[k].shape != v.shape]
    return missing, shapes


def output_path(path):
    """``<folder>/converted_<last '-'-separated part of the file name>``, as the reference names it."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, "converted_" + name.split("-")[-1])


def convert_file(path, output=None, trust=False, arch=None, check=True):
    """Convert one checkpoint file; returns the path written.

    Args:
        path: SEED checkpoint (``{"state_dict": ..., "arch": ...}`` or a bare state dict).
        output: output file (default :func:`output_path`).
        trust: allow pickled objects in the input.
        arch: our architecture name to check the student against (default: the checkpoint's ``arch``).
        check: verify the student against that trunk (:func:`check_student`) before writing.
    """
    output = output or output_path(path)
    check_output_file(output, "--output", "converted.pth.tar")  # before the checkpoint is read, not after
    ckpt = read_checkpoint(path, trust=trust)
    state = ckpt["state_dict"] if isinstance(ckpt.get("state_dict"), dict) else ckpt
    state = {k: v for k, v in state.items() if torch.is_tensor(v)}
    new_state, n_student, n_teacher = convert_state(state)
    check_finite({k: v for k, v in state.items() if k.startswith(("student.", "module.student."))},
                 f"the SEED student in '{path}'", "nothing is written: convert a checkpoint saved before it diverged")
    arch = arch or student_arch(ckpt.get("arch"), state)
    note = ""
    if check and arch:
        note = f"; all {check_student(state, arch)} tensors of our {arch} trunk present (restart with -a {arch})"
    elif check:
        note = f"; not checked: the file records no architecture we know ({ckpt.get('arch')!r}), pass --arch"
    result = {"state_dict": new_state, "source": os.path.abspath(path), "converted_by": "experiments.convert-seed"}
    if isinstance(ckpt.get("epoch"), int):  # plain values only, so the file loads with weights_only=True
        result["epoch"] = ckpt["epoch"]
    if isinstance(ckpt.get("arch"), str):
        result["arch"] = arch or ckpt["arch"]  # our name for it (main_moco -a)
        if result["arch"] != ckpt["arch"]:
            result["source_arch"] = ckpt["arch"]
    save_checkpoint(output, result, flag="--output")
    print(f"{path} -> {output}: {n_student} student tensors copied to encoder_q, {n_teacher} teacher tensors "
          f"dropped{note}", flush=True)
    return output


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="CKPT_OR_FOLDER",
                   help="SEED checkpoint files, or folders whose files (not starting with 'convert') are converted")
    p.add_argument("--output", "-o", default=None, help="output file (one input file only; default: see above)")
    p.add_argument("--trust-checkpoint", "--trust_checkpoint", action="store_true",
                   help=TRUST_HELP)
    p.add_argument("--arch", "-a", default=None, choices=[a for a in KNOWN_ARCHS if a not in VIDEO_ARCHS],
                   metavar="ARCH", help="our architecture the student must fit (default: the checkpoint's "
                   "'arch'; SSL-small's vit_tiny is our deit_tiny)")
    p.add_argument("--no-check", "--no_check", action="store_true",
                   help="write the converted file without checking the student against the trunk")
    args = p.parse_args(argv)
    files = []
    for path in args.paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(path, n) for n in os.listdir(path)
                            if not n.startswith("convert") and os.path.isfile(os.path.join(path, n)))
        else:
            files.append(path)
    if not files:
        raise UserError(f"no checkpoint to convert in {' '.join(args.paths)}")
    if args.output and len(files) > 1:
        raise UserError(f"--output names one file but {len(files)} checkpoints were given")
    return [convert_file(f, args.output, args.trust_checkpoint, args.arch, not args.no_check) for f in files]


if __name__ == "__main__":
    exit_on_user_error(main)()
