"""Compute options shared by the scripts (docs/speed.md "Speed options"): mixed precision (:func:`autocast`, the dtype
chosen by ``src.run.args.autocast_dtype``), channels-last weights, ``torch.compile`` with an eager fallback, fused
optimizer steps. The input side (device augmentation, channels-last images, non-blocking copies) is
``src.augment.split``.

    model = to_channels_last(model.to(device), args.channels_last)     # before DDP wraps it
    step_module = maybe_compile(ddp_model, args.compile, rank)         # what the training step calls
    optimizer = torch.optim.SGD(params, lr, **fused_kwargs(device))
"""
import contextlib

import torch

from src.run.logging import print_rank0


def autocast(device, dtype):
    """``torch.autocast`` on ``device``'s type with ``dtype`` (fp16 / bf16), or a no-op context for None (fp32).
    Losses are computed outside it, in fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def to_channels_last(model, enabled):
    """Put every conv weight of ``model`` in channels-last layout, in place: NHWC for a 2-D model, NDHWC
    (``torch.channels_last_3d``) for a video model with 5-D weights (R3D); a no-op when not ``enabled``.

    Call it before DistributedDataParallel wraps the model (DDP's gradient buckets follow the layout it sees).

    Returns:
        model.
    """
    if not enabled:
        return model
    video = any(p.dim() == 5 for p in model.parameters())
    return model.to(memory_format=torch.channels_last_3d if video else torch.channels_last)


def fused_kwargs(device):
    """Keyword arguments for ``torch.optim.SGD`` / ``AdamW``: one fused kernel per step on CUDA (``fused=True``);
    on other devices torch's default (a per-parameter loop on the CPU)."""
    return {"fused": True} if torch.device(device).type == "cuda" else {}


class CompiledOrEager:
    """Calls ``torch.compile(module)``; if compiling or running the compiled graph raises, prints one warning line
    and calls ``module`` itself from then on. Every other attribute (``parameters``, ``module``, ...) is the
    module's, so the object stands in wherever the script used the module.

    Args:
        module: an ``nn.Module`` (possibly DDP-wrapped). rank: only rank 0 prints.
    """

    def __init__(self, module, rank=0):
        self.eager, self.rank, self.compiled = module, rank, None
        try:
            self.compiled = torch.compile(module)
        except Exception as exc:  # e.g. a Python version dynamo does not support
            self._give_up(exc)

    def _give_up(self, exc):
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        print_rank0(f"warning: --compile failed ({type(exc).__name__}: {first}); running eagerly", rank=self.rank)
        self.compiled = None

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # compilation happens at the first call (and at new input shapes)
                self._give_up(exc)
        return self.eager(*args, **kwargs)

    def __getattr__(self, name):
        if "eager" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["eager"], name)


def maybe_compile(module, enabled, rank=0):
    """``module`` itself, or a :class:`CompiledOrEager` around it when ``enabled`` (``--compile``)."""
    return CompiledOrEager(module, rank) if enabled else module
