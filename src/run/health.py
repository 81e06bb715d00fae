"""Non-finite guards: a NaN / inf loss or BatchNorm statistic stops a run with one line, and no evaluation
prints a score computed from non-finite features.

:class:`Health` records on the device, without a host sync, the first step whose loss was not finite; the run
loop reads it (in the one all-reduce it does every ``--print_freq`` steps and before every checkpoint) together
with a test of every BatchNorm running statistic, so a diverged model is never saved over the last good one.
"""
import torch

from src.run.errors import UserError


class NonFiniteError(UserError):
    """The run diverged. Raised on every rank at once (the decision comes from an all-reduce), so only rank 0
    prints it."""

    collective = True


class NonFiniteFeatures(UserError):
    """A monitored trunk gave NaN/inf features (``src.evaluation.monitor``): the run diverged; the run loop turns it
    into its :class:`NonFiniteError`."""


def bn_buffers(*modules):
    """``[(name, tensor)]`` of every BatchNorm running mean / variance in ``modules``."""
    out = []
    for m in modules:
        for name, b in m.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                out.append((name, b))
    return out


class Health:
    """Device-side record of non-finite losses, and the BatchNorm statistics to test.

    Args:
        device: where the losses live.
        scaled: fp16 with a grad scaler: an overflowing step is skipped by the scaler, so a non-finite loss is an
            error only when EVERY step since the last check had one.
    """

    def __init__(self, device, scaled=False):
        self.device, self.scaled = device, scaled
        self.buffers = []
        self._reset()

    def _reset(self):
        self.first_bad = torch.full((), -1, dtype=torch.float64, device=self.device)  # index in the window
        self.n_bad = torch.zeros((), dtype=torch.float64, device=self.device)
        self.window, self.window_start = 0, 0

    def watch(self, *modules):
        """Test the BatchNorm statistics of ``modules`` at every check."""
        self.buffers += bn_buffers(*modules)

    def update(self, loss, step):
        """Record one step's loss (0-d tensor) at global step ``step``; no host sync."""
        if self.window == 0:
            self.window_start = step
        bad = ~torch.isfinite(loss.detach().float())
        # the index is a Python scalar: no host-to-device copy, so no sync, at any step
        self.first_bad = torch.where(bad & (self.first_bad < 0), float(self.window), self.first_bad)
        self.n_bad += bad.double()
        self.window += 1

    def flags(self):
        """``[-first bad step (or -1e18), bad steps, all steps bad (0/1), non-finite BN tensors]`` for a MAX
        all-reduce (the max of minus the first bad step is minus the earliest over ranks)."""
        first = torch.where(self.first_bad >= 0, -(self.first_bad + self.window_start), -1e18)
        all_bad = (self.n_bad >= self.window) & (self.window > 0)
        bn_bad = torch.zeros((), dtype=torch.float64, device=self.device)
        if self.buffers:
            bn_bad = torch.stack([~torch.isfinite(b).all() for _, b in self.buffers]).sum().double()
        return torch.stack([first, self.n_bad, all_bad.double(), bn_bad])

    def verdict(self, reduced, iters_per_epoch, hint, last_good):
        """Raise :class:`NonFiniteError` if the reduced flags say the run diverged; else start a new window.

        Args:
            reduced: :meth:`flags` after a MAX all-reduce (as a list of floats).
            iters_per_epoch: to name the epoch and iteration of a global step.
            hint: the likely cause and its fix, e.g. "lower --base_lr or turn off --use_fp16".
            last_good: words naming the checkpoint that is kept.
        """
        first, n_bad, all_bad, bn_bad = reduced
        if n_bad > 0 and (not self.scaled or all_bad > 0):
            step = int(-first)
            raise NonFiniteError(f"the loss became NaN/inf at epoch {step // iters_per_epoch}, iteration "
                                 f"{step % iters_per_epoch + 1}: {hint}; {last_good}")
        if bn_bad > 0:
            names = [n for n, b in self.buffers if not bool(torch.isfinite(b).all())]
            raise NonFiniteError(f"BatchNorm statistics became NaN/inf ({', '.join(names[:3])}"
                                 f"{' ...' if len(names) > 3 else ''}): {hint}; {last_good}")
        self._reset()


def check_finite_features(feats, what="features"):
    """Refuse to score non-finite features (a diverged or corrupted trunk).

    Args:
        feats: (N, D) tensor (any device).
        what: words for the message, e.g. "train features".
    Raises:
        UserError: naming how many rows are not finite and what to check.
    """
    finite = torch.isfinite(feats.reshape(len(feats), -1)).all(dim=1) if feats.numel() else torch.ones(0, dtype=bool)
    bad = int((~finite).sum())
    if bad:
        raise UserError(f"the trunk produced NaN/inf {what} ({bad} of {len(feats)} rows): its weights or BatchNorm "
                        "statistics are not finite (a diverged run?); check the checkpoint, no score is computed")
    return feats
