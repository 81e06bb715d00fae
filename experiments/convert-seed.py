"""Turn a SEED-distilled checkpoint into one that ``main_moco.py --resume FILE --restart`` starts from.

SSL-small (Shi et al. 2021, WOWNICE/ssl-small ``util.distill_ckpt2moco_ckpt``; spec moco.md D.4) starts its
small-model runs from students distilled by SEED (Fang et al. 2021). The conversion: drop the teacher's
weights (``module.teacher*``), add a copy of every student tensor (``module.student*``) under
``module.encoder_q*`` (the student keys stay; ``--restart`` ignores them), and write
``<same folder>/converted_<last '-'-separated part of the file name>``. A folder converts every file in it
whose name does not start with ``convert``, as the reference's ``util.py`` does for ``./distill_checkpoints``.

    python -m experiments.convert-seed distill_checkpoints/seed-mobilenetv3_small-ep200.pth.tar
    python -m experiments.convert-seed distill_checkpoints/          # every checkpoint in the folder
    python main_moco.py /path/to/imagenet -a resnet18 ... --resume distill_checkpoints/converted_ep200.pth.tar --restart

The output holds only tensors, numbers and strings (loads with ``torch.load(weights_only=True)``).
Parameter names must match our backbones (torchvision's): a ResNet student does; a student from another
implementation of an architecture is reported by ``--restart`` as having no fitting encoder_q weights.
"""
import argparse
import os

import torch

from src.pretrained import TRUST_HELP
from src.run.checkpoint import save_checkpoint
from src.errors import UserError, exit_on_user_error
from src.pretrained import read_checkpoint


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


def output_path(path):
    """``<folder>/converted_<last '-'-separated part of the file name>``, as the reference names it."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, "converted_" + name.split("-")[-1])


def convert_file(path, output=None, trust=False):
    """Convert one checkpoint file; returns the path written."""
    ckpt = read_checkpoint(path, trust=trust)
    state = ckpt["state_dict"] if isinstance(ckpt.get("state_dict"), dict) else ckpt
    state = {k: v for k, v in state.items() if torch.is_tensor(v)}
    new_state, n_student, n_teacher = convert_state(state)
    result = {"state_dict": new_state, "source": os.path.abspath(path), "converted_by": "experiments.convert-seed"}
    for key in ("arch", "epoch"):  # plain values only, so the file loads with weights_only=True
        if isinstance(ckpt.get(key), (str, int)):
            result[key] = ckpt[key]
    output = output or output_path(path)
    save_checkpoint(output, result)
    print(f"{path} -> {output}: {n_student} student tensors copied to encoder_q, {n_teacher} teacher tensors "
          "dropped", flush=True)
    return output


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="CKPT_OR_FOLDER",
                   help="SEED checkpoint files, or folders whose files (not starting with 'convert') are converted")
    p.add_argument("--output", "-o", default=None, help="output file (one input file only; default: see above)")
    p.add_argument("--trust-checkpoint", "--trust_checkpoint", action="store_true",
                   help=TRUST_HELP)
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
    return [convert_file(f, args.output, args.trust_checkpoint) for f in files]


if __name__ == "__main__":
    exit_on_user_error(main)()
