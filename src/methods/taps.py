"""Taps: what a module saw or gave during a forward, kept without changing what the module returns (hooks).

MoCo's nearest-neighbour loss reads the backbone feature that entered an encoder's head (:class:`InputTap`); an
online linear probe reads the trunk features of a training step (:class:`OutputTap`). Both work through DDP and for
every architecture of ``src.models``, and neither changes a state dict.
"""
import contextlib

import torch


class InputTap:
    """Remembers the input of ``module`` at its latest forward (a forward pre-hook).

    Put on an encoder's ``fc`` (the projection head), it records the backbone feature that entered the head, while
    the encoder keeps returning only the head's output. Read it with :meth:`take` right after the forward.
    """

    def __init__(self, module):
        self.value = None
        self.handle = module.register_forward_pre_hook(self._keep)

    def _keep(self, module, inputs):
        self.value = inputs[0]

    def take(self):
        """The recorded (B, feature dim) input, detached; cleared so a stale value is never read twice."""
        value, self.value = self.value, None
        assert value is not None, "no forward of the tapped module since the last take()"
        return value.detach()


class OutputTap:
    """Keeps the outputs of ``module`` (detached, fp32), only while :meth:`recording`: a step's trunk features,
    not those of an evaluation that calls the same module between steps."""

    def __init__(self, module):
        self.values, self.on = [], False
        self.handle = module.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        if self.on:
            self.values.append(output.detach().float())

    @contextlib.contextmanager
    def recording(self):
        self.on = True
        try:
            yield
        finally:
            self.on = False

    def take(self, rows):
        """The first ``rows`` recorded rows, in forward order (crop-major); the record is cleared."""
        values, self.values = self.values, []
        return torch.cat(values)[:rows]


def recording(tap):
    """``tap.recording()``, or a context that does nothing without a tap."""
    return tap.recording() if tap is not None else contextlib.nullcontext()
