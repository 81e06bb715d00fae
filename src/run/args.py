"""Shared flag groups, the parser class and the value checks. Every long flag is accepted in both spellings
(``--batch-size`` and ``--batch_size``): users paste commands from MoCo-style (dash-case) and DINO-style (snake_case) scripts
alike. Parsing has no side effects (no files, no CUDA queries); a bad value is refused where it is parsed, with one
line (``error: argument --lr: must be > 0, got -1``) and exit status 2."""
import argparse
import math
import sys

from src.run import dist


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one ``error:`` line (no usage block) and exit status 2."""

    def error(self, message):
        if dist.process_rank() == 0:
            print(f"error: {message} (see {self.prog} --help)", file=sys.stderr, flush=True)
        sys.exit(2)


def number(kind=float, low=None, high=None, low_open=False, high_open=False):
    """An argparse ``type`` that converts with ``kind`` and refuses values outside the interval.

    Args:
        kind: int or float. low / high: bounds (None: unbounded); *_open: the bound itself is refused.
    Returns:
        callable str -> number raising ``argparse.ArgumentTypeError("must be > 0, got -1")``.
    """
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low}, got {text}")
        if high is not None and (value > high or (high_open and value == high)):
            raise argparse.ArgumentTypeError(f"must be {'<' if high_open else '<='} {high}, got {text}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


POSITIVE_INT = number(int, low=1)  # batch sizes, epochs, crop sizes
NONNEG_INT = number(int, low=0)  # workers, iteration counts where 0 means off
POSITIVE = number(float, low=0, low_open=True)  # learning rates, temperatures
NONNEG = number(float, low=0)  # weight decay, final lr
MOMENTUM = number(float, low=0, high=1, high_open=True)  # SGD / EMA momentum in [0, 1)
PROBABILITY = number(float, low=0, high=1)


def add_arg(parser, *names, **kwargs):
    """``parser.add_argument`` that also registers the other spelling of every long option."""
    all_names = list(names)
    for name in names:
        if name.startswith("--"):
            body = name[2:]
            for alt in (body.replace("-", "_"), body.replace("_", "-")):
                if "--" + alt not in all_names:
                    all_names.append("--" + alt)
    return parser.add_argument(*all_names, **kwargs)


def bool_flag(text):
    """``True/False/1/0/yes/no`` -> bool, for ``--flag True`` arguments (DINO-style scripts)."""
    value = str(text).lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def add_dist_args(parser):
    """Launch flags understood by ``src.run.dist.init_distributed`` (all launch styles, docs/launching.md)."""
    g = parser.add_argument_group("distributed")
    add_arg(g, "--world-size", default=-1, type=int,
            help="number of NODES for --multiprocessing-distributed (MoCo style); ignored under torchrun/srun")
    add_arg(g, "--rank", default=-1, type=int, help="node rank for --multiprocessing-distributed (MoCo style)")
    add_arg(g, "--dist-url", default="env://", type=str,
            help="init URL, e.g. tcp://localhost:10001 (MoCo style); torchrun/srun use env://")
    add_arg(g, "--dist-backend", default="", type=str, help="nccl or gloo (default: nccl with CUDA, gloo on CPU)")
    add_arg(g, "--multiprocessing-distributed", action="store_true",
            help="spawn one process per GPU on this node (MoCo style; on a CPU-only node see --nproc-per-node)")
    add_arg(g, "--nproc-per-node", default=0, type=int,
            help="processes to spawn per node with --multiprocessing-distributed (default: #GPUs, or 1 on CPU)")
    add_arg(g, "--local-rank", default=None, type=int, help="set by torch.distributed.launch; do not pass by hand")
    add_arg(g, "--gpu", default=None, type=int, help="GPU id for a single-process run (default: cuda:0 if any)")
    add_arg(g, "--device", default="", type=str, help="force a device: cpu, cuda, cuda:1 (default: auto)")
    return g


def add_demo_args(parser, dash=False):
    """``--demo`` and ``--demo_dir`` (``--demo-dir`` shown with ``dash``) of the method scripts."""
    g = parser.add_argument_group("demo")
    add_arg(g, "--demo", action="store_true", help="build the demo dataset, pretrain on CPU, report kNN vs random init")
    add_arg(g, "--demo-dir" if dash else "--demo_dir", default="./data/demo", type=str,
            help="where the demo dataset is written")
    return g


def add_amp_args(parser):
    """Mixed precision: ``--amp fp16`` (autocast + grad scaler), ``--amp bf16``, or ``--use_fp16 true``."""
    g = parser.add_argument_group("mixed precision")
    add_arg(g, "--amp", default="none", choices=["none", "fp16", "bf16"],
            help="autocast dtype for forward passes; losses stay fp32 (default none; bf16 on CPU/Ampere+)")
    add_arg(g, "--use-fp16", default=False, type=bool_flag, nargs="?", const=True,
            help="DINO-style spelling of --amp fp16")
    return g


def add_speed_args(parser):
    """Input-pipeline and compute options: ``--device-aug``, ``--channels-last``, ``--compile`` (docs/speed.md
    "Speed options"). All off by default: the per-sample path and eager fp32 stay the reference."""
    g = parser.add_argument_group("speed")
    add_arg(g, "--device-aug", action="store_true",
            help="split pipeline: loader workers only decode (reduced-size JPEG decoding when the crops allow), crop "
                 "and resize to uint8; colour jitter, grayscale, blur, solarize, flip and normalisation run batched "
                 "on the training device with per-sample parameters (video clips: one draw per clip, shared by "
                 "its frames; default off: per-sample augmentation in the loader workers)")
    add_arg(g, "--channels-last", action="store_true",
            help="model weights and input images in channels-last memory layout (NHWC; NDHWC for video trunks): "
                 "faster convolutions on tensor-core GPUs, usually with --amp (default off)")
    add_arg(g, "--compile", action="store_true",
            help="torch.compile the module the training step calls (slow first steps; falls back to eager with a "
                 "warning line if compilation fails; default off)")
    return g


def autocast_dtype(args, device, rank=0):
    """Resolve ``--amp`` / ``--use_fp16`` for ``device``: an explicit ``--amp fp16|bf16`` wins, else
    ``--use_fp16 true`` means fp16 (with a grad scaler), else None (fp32).

    fp16 without CUDA falls back to fp32 with one warning line: CPU fp16 autocast is emulated and far slower than
    fp32 (docs/speed.md), and the references' fp16 is a GPU setting, so their published commands still run on a
    CPU; ``--amp bf16`` is honoured everywhere (on a CPU with ``--channels-last``, without oneDNN: one warning line). The effective choice is written back to ``args.amp`` /
    ``args.use_fp16`` so that later :func:`amp_dtype` calls agree.

    Returns:
        torch.float16, torch.bfloat16 or None.
    """
    import torch

    name = _amp_name(args)
    if name == "fp16" and torch.device(device).type != "cuda":
        if rank == 0:
            print("warning: --amp fp16 / --use_fp16 needs CUDA (CPU fp16 autocast is about 21x slower): this run "
                  "computes in fp32; --amp bf16 forces bf16 autocast", flush=True)
        name = "none"
    if name == "bf16" and torch.device(device).type == "cpu" and getattr(args, "channels_last", False):
        # oneDNN's bf16 channels-last convolutions on the CPU gave NaN gradients in about 1 run in 4 (torch 2.14);
        # torch's own kernels never did: slower, but a CPU run of these options is a test, not a training run
        torch.backends.mkldnn.enabled = False
        if rank == 0:
            print("warning: --amp bf16 with --channels-last on a CPU: oneDNN is turned off for this run (its bf16 "
                  "channels-last kernels return NaN gradients at random); drop one of the two for full speed",
                  flush=True)
    args.amp, args.use_fp16 = name, name == "fp16"
    return amp_dtype(args)


def _amp_name(args):
    """"none", "fp16" or "bf16": an explicit ``--amp`` wins, else ``--use_fp16 true`` means fp16."""
    return "fp16" if getattr(args, "use_fp16", False) and args.amp == "none" else args.amp


def amp_dtype(args):
    """Resolve the AMP flags to a torch dtype or None (no device check: see :func:`autocast_dtype`)."""
    import torch

    return {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[_amp_name(args)]


def add_run_args(parser, output=("--dump_path", "--output_dir"), output_help="the run's folder", print_freq=10,
                 dash=False, short_print=False, evaluate=None, launch=True):
    """The run skeleton's flags (``src.run.loop.Run``), one group in every training script: the output folder,
    ``--resume``, ``--print_freq`` (also the stop / NaN check interval), ``--save_every_iters``, ``--max_iters``.

    Args:
        parser: the script's parser. output: the output folder's names (the first gives the dest).
        output_help: what the folder holds. print_freq: its default. dash: show dash-case names first (MoCo's
            scripts; both spellings always work). short_print: also ``-p``.
        evaluate: the help of ``-e/--evaluate`` (only test the resumed checkpoint), for scripts that have it.
        launch: also the launch flags (:func:`add_dist_args`) and mixed precision (:func:`add_amp_args`).
    Returns:
        the argument group (scripts add their own checkpoint flags to it).
    """
    def name(snake):
        return snake.replace("_", "-") if dash else snake

    g = parser.add_argument_group("run: output, resume, checkpoints (src.run)")
    dest = output[0].lstrip("-").replace("-", "_")
    add_arg(g, *output, default=".", type=str, dest=dest, help=output_help + " (.)")
    add_arg(g, "--resume", default="", type=str,
            help=f"checkpoint to resume from (default: {dest.upper()}/checkpoint.pth.tar if it exists: auto-resume)")
    add_arg(g, *(("-p",) if short_print else ()), name("--print_freq"), default=print_freq, type=POSITIVE_INT,
            help=f"progress line, and the stop-signal / NaN check, every N iterations ({print_freq})")
    add_arg(g, name("--save_every_iters"), default=0, type=NONNEG_INT,
            help="also refresh checkpoint.pth.tar every N iterations inside an epoch (0: epoch ends only)")
    add_arg(g, name("--max_iters"), default=0, type=NONNEG_INT,
            help="stop with a checkpoint once this many iterations are done in total, counted over every resume "
                 "(smoke tests; 0: off)")
    add_arg(g, name("--allow_changed_flags"), action="store_true",
            help="resume even though flags that change the run (batch size, lr, crops, temperatures ...) differ "
                 "from the checkpoint's (default: such a resume is refused with the list; --epochs may always "
                 "change)")
    if evaluate:
        add_arg(g, "-e", "--evaluate", action="store_true", help=evaluate)
    if launch:
        add_dist_args(parser)
        add_amp_args(parser)
    return g
