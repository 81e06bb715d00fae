"""The run skeleton around every script's steps: start, restore, save, and the control between steps.

One object per run, in the spirit of DINO's ``restart_from_checkpoint(path, run_variables, **objects)`` and
``save_on_master``; the script keeps the method in plain sight (its ``train_one_epoch`` is a generator that
yields ``(iteration, loss)`` after each optimizer step)::

    run = Run(info, output_dir=args.dump_path, script="main_sce.py", config=vars(args), resume=args.resume,
              seed=args.seed, lr_flag="--base_lr")                  # folder, checkpoint, seed, args.json, git
    ... build data (run.seed), model, optimizer ...
    run.track(state_dict=model, optimizer=optimizer, scaler=scaler)   # restored now, saved at every checkpoint
    logger = run.progress(iters_per_epoch, args.epochs, images_per_step, print_freq=..., max_iters=...,
                          save_every=...)
    for epoch in run.epochs():                                         # resumes at run.start_iter
        sampler.set_epoch(epoch, start_index=run.start_iter * batch)
        if not run.steps(train_one_epoch(..., epoch, run.start_iter, ...)):
            break                                                      # stopped: signal or --max_iters, saved
        logger.end_epoch(...)
        run.end_epoch(replicated=..., numbered=...)                    # sync check, checkpoint

Between steps the run: counts iterations (``--max_iters`` is a total over every resume); every
``print_freq`` steps, in ONE all-reduce, learns whether any rank got SIGTERM / SIGUSR1 and whether a loss or a
BatchNorm statistic became non-finite; refreshes the checkpoint every ``save_every`` steps. A checkpoint is
written only after that check passed, by rank 0, atomically; a non-finite value stops the run with one
``error:`` line and the last good checkpoint kept.
"""
import json
import os
import subprocess

import torch

from src.run import dist
from src.run.checkpoint import (check_writable, load_checkpoint, load_rank_file, load_state_strict,
                                remove_stale_temp_files, save_checkpoint, save_rank_file, set_rng_state)
from src.run.errors import UserError
from src.run.health import Health
from src.run.logging import JsonLog, ProgressLogger, print_rank0
from src.run.signals import process_stop_signal
from src.run.sync import check_ranks_in_sync, gather_rng_states

CHECKPOINT = "checkpoint.pth.tar"
RUN_KEYS = ("epoch", "iter")  # what every checkpoint of a run holds (besides what the script tracks)


def git_commit(folder=None):
    """``<sha>`` (with `` (modified)`` when the work tree differs) of the checkout holding this file, or None."""
    folder = folder or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.exists(os.path.join(folder, ".git")):
        return None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if sha.returncode != 0:
        return None
    return sha.stdout.strip() + (" (modified)" if dirty.stdout.strip() else "")


def resume_source(output_dir, resume="", weights_only=False):
    """What a run starts from: ``(path or None, weights_only)``.

    ``resume`` or ``output_dir/checkpoint.pth.tar`` (auto-resume) continue a run (``weights_only`` False). With
    ``weights_only`` (MoCo's ``--restart``) the ``resume`` file only seeds the weights, unless this run already wrote
    its own ``output_dir/checkpoint.pth.tar``: then it was pre-empted (a requeued job) and continues from there.

    Raises:
        UserError: ``resume`` names a file that does not exist.
    """
    latest = os.path.join(output_dir, CHECKPOINT)
    if resume and not os.path.isfile(resume):
        raise UserError(f"--resume '{resume}' does not exist: pass a checkpoint file or leave it empty")
    if weights_only:
        if os.path.isfile(latest) and not os.path.samefile(latest, resume):
            return latest, False
        return resume, True
    if resume:
        return resume, False
    return (latest if os.path.isfile(latest) else None), False


class Run:
    """Start a run: output folder, resume checkpoint, seed, ``args.json``, the git commit, ``log.txt``.

    Args:
        info: :class:`~src.run.dist.DistInfo` of this process.
        output_dir: the run's folder (created; must be writable: checked now, before any work).
        script: the script's file name, stored in and checked against checkpoints ("main_sce.py").
        config: the flags as a dict (stored in args.json and in every checkpoint).
        resume: ``--resume`` (default: ``output_dir/checkpoint.pth.tar`` when it exists).
        seed: the run's seed (a resumed run keeps its checkpoint's); None draws one on rank 0 and shares it.
        start_epoch: where a run without a checkpoint starts (MoCo's ``--start-epoch``).
        output_flag / lr_flag / max_iters_flag: flag spellings for messages.
        nan_hint: what to do when the loss becomes NaN (default: lower ``lr_flag`` or turn AMP off).
        weights_only_resume: ``resume`` seeds weights only (MoCo's ``--restart``): it is not read here, and the
            run continues from ``output_dir/checkpoint.pth.tar`` instead once that exists.
        must_resume: a run that needs a checkpoint (``-e/--evaluate``): the words saying so when there is none.
    Attributes:
        ckpt (dict or None), resume_path, seed, start_epoch, start_iter, total (iterations done), log (JsonLog).
    """

    def __init__(self, info, *, output_dir, script, config, resume="", seed=None, start_epoch=0,
                 output_flag="--dump_path",
                 lr_flag="--lr", max_iters_flag="--max_iters", nan_hint=None, weights_only_resume=False,
                 must_resume=None):
        self.info, self.device, self.rank = info, info.device, info.rank
        self.output_dir, self.script, self.config = output_dir, script, dict(config)
        self.output_flag, self.max_iters_flag = output_flag, max_iters_flag
        self.nan_hint = nan_hint or f"the learning rate is probably too high (lower {lr_flag}) or AMP overflowed " \
                                    "(turn it off)"
        self._prepare_folder()
        try:  # every rank reads the same file: a bad one is the same error everywhere, said once
            path, weights_only = resume_source(output_dir, resume, weights_only_resume)
            self.resume_path = None if weights_only else path
            self.ckpt = self._read(self.resume_path) if self.resume_path else None
            if must_resume and self.ckpt is None:
                raise UserError(f"{must_resume}: none in '{output_dir}' and no --resume given")
        except UserError as exc:
            exc.collective = True
            raise
        self.start_epoch = int(self.ckpt["epoch"]) if self.ckpt else start_epoch
        self.start_iter = int(self.ckpt["iter"]) if self.ckpt else 0
        self.seed = self._seed(seed)
        dist.seed_everything(self.seed, 0)  # the same initial weights (and queues) on every rank
        self.log = JsonLog(os.path.join(output_dir, "log.txt"), self.rank)
        self.objects, self.rank_states, self.exports, self.meta = {}, {}, {}, {}
        self.health = Health(self.device)
        self.stop = process_stop_signal()
        self.stopped = self.finished = False
        self.total = 0  # iterations done, over every resume (set by progress())
        self._stop_reason, self._signalled = None, False
        self.last_saved = f"{self.resume_path} (epoch {self.start_epoch}, iteration {self.start_iter})" \
            if self.ckpt else None
        if self.rank == 0:
            self._write_args()

    # ==== start ====
    def _prepare_folder(self):
        """Rank 0 proves the folder writable and removes leftover temporary files; every rank learns the outcome."""
        error = None
        if self.rank == 0:
            try:
                check_writable(self.output_dir, self.output_flag)
                remove_stale_temp_files(self.output_dir)
            except UserError as exc:
                error = exc
        failed = dist.all_reduce(torch.tensor([float(error is not None)], device=self.device), op="max")
        if float(failed) > 0:
            raise UserError(str(error) if error else "rank 0 cannot write the output folder", collective=True)

    def _read(self, path):
        ckpt = load_checkpoint(path)
        made_by = ckpt.get("script") if isinstance(ckpt, dict) else None
        if not isinstance(ckpt, dict) or any(k not in ckpt for k in RUN_KEYS) or made_by not in (None, self.script):
            what = f"a checkpoint of {made_by}" if made_by else "not a checkpoint of a run (no epoch / iteration)"
            raise UserError(f"'{path}' is {what}, not one of {self.script} that can be resumed: pass it as "
                            f"--pretrained to an evaluation, or pass another {self.output_flag} / --resume")
        return ckpt

    def _seed(self, seed):
        if self.ckpt is not None and self.ckpt.get("seed") is not None:
            return int(self.ckpt["seed"])
        if seed is None:  # a fresh seed, drawn on rank 0 and shared: the initial weights and the sampler's split of
            # the data derive from it and must agree on every rank
            seed = int(dist.broadcast(torch.tensor(int.from_bytes(os.urandom(4), "little") % 2 ** 31,
                                                   device=self.device)))
        return int(seed)

    def _write_args(self):
        with open(os.path.join(self.output_dir, "args.json"), "w") as f:
            json.dump({**self.config, "seed_used": self.seed, "world_size_used": self.info.world_size}, f, indent=2)
        print("args: " + json.dumps({**self.config, "seed_used": self.seed}, sort_keys=True), flush=True)
        commit = git_commit()
        if commit:
            print(f"git commit: {commit}", flush=True)

    # ==== restore ====
    def track(self, **objects):
        """Objects with ``state_dict`` / ``load_state_dict``, saved under their keyword in every checkpoint and
        restored now from the resumed one (modules strictly: a mismatch is one line naming keys). Modules also
        have their BatchNorm statistics watched for NaN/inf."""
        for key, obj in objects.items():
            self.objects[key] = obj
            if isinstance(obj, torch.nn.Module):
                self.health.watch(obj)
            if self.ckpt is None:
                continue
            if key not in self.ckpt:
                raise UserError(f"'{self.resume_path}' has no '{key}': it is not a checkpoint of {self.script} "
                                f"(or of another mode); pass another {self.output_flag}")
            if isinstance(obj, torch.nn.Module):
                load_state_strict(obj, self.ckpt[key], key, self.resume_path)
            else:
                obj.load_state_dict(self.ckpt[key])

    def track_rank_state(self, name, get):
        """A per-rank side file ``{name}{rank}.pth`` (SwAV's queue, DeepCluster's memory bank): ``get()`` returns
        its tensors (or None: nothing to save) at every checkpoint. Returns: this rank's file of the resumed
        checkpoint's step, or None."""
        self.rank_states[name] = get
        if self.ckpt is None:
            return None
        return load_rank_file(self.output_dir, name, self.rank, self.start_epoch, self.start_iter,
                              log=lambda line: print(line, flush=True))

    def export(self, filename, get):
        """Also write ``get()`` (e.g. the trunk's state dict in torchvision names) to ``output_dir/filename`` at every
        checkpoint."""
        self.exports[filename] = get

    def restore_rng(self, note=""):
        """Every rank takes back its own RNG states from the resumed checkpoint, and says where it resumed."""
        if self.ckpt is None:
            return
        rngs = self.ckpt.get("rng") or []
        if len(rngs) == self.info.world_size:
            set_rng_state(rngs[self.rank], self.device)
        elif self.start_iter:
            print_rank0(f"warning: the checkpoint was written by {len(rngs)} processes, this run has "
                        f"{self.info.world_size}: the rest of epoch {self.start_epoch} sees a different split of the "
                        "data", rank=self.rank)
        print_rank0(f"=> resumed from '{self.resume_path}' at epoch {self.start_epoch}, iteration {self.start_iter}"
                    + note, rank=self.rank)

    # ==== the loop ====
    def progress(self, iters_per_epoch, epochs, images_per_step, print_freq=10, max_iters=0, save_every=0,
                 formats=None, scaled=False, note=""):
        """Set the loop's bounds and return the :class:`ProgressLogger` that writes ``log.txt``.

        Args:
            iters_per_epoch, epochs: the run's length. images_per_step: global batch (for img/s).
            print_freq: progress line and stop / NaN check interval in iterations.
            max_iters: stop after this many iterations in total, over every resume (0: off).
            save_every: refresh the checkpoint every N iterations inside an epoch (0: epoch ends only).
            scaled: fp16 with a grad scaler (an isolated non-finite loss is a skipped step, not an error).
            note: appended to the ``=> resumed from ...`` line (e.g. ", queue restored").
        Every rank also takes back its RNG states from the resumed checkpoint here, after everything that draws
        from them at start-up (model init, the initial queue).
        """
        self.iters_per_epoch, self.epochs_total = iters_per_epoch, epochs
        self.check_every, self.max_iters, self.save_every = max(1, print_freq), max_iters, save_every
        self.health.scaled = scaled
        self.total = self.start_epoch * iters_per_epoch + self.start_iter
        if self.rank == 0:  # log.txt: exists from the first step, one row per logged step after any resume
            self.log.keep_until(self.total)
        self.restore_rng(note)
        return ProgressLogger(iters_per_epoch, epochs, images_per_step, print_freq, self.log, self.rank,
                              formats=formats)

    def epochs(self):
        """The epochs left to train (none, with a line saying why, when the run is already complete)."""
        if self.start_epoch >= self.epochs_total or (self.max_iters and self.total >= self.max_iters):
            done = (f"all {self.epochs_total} epochs are done" if self.start_epoch >= self.epochs_total else
                    f"{self.max_iters_flag} {self.max_iters} iterations are done (epoch {self.start_epoch}, "
                    f"iteration {self.start_iter}); raise {self.max_iters_flag} to go on")
            print_rank0(f"=> nothing to do: {done} in '{self.output_dir}'", rank=self.rank)
            self.finished = self.start_epoch >= self.epochs_total
            return
        for epoch in range(self.start_epoch, self.epochs_total):
            self.epoch = epoch
            yield epoch
            if self.stopped:
                return
            self.start_iter = 0
        self.finished = True

    def steps(self, steps):
        """Drive one epoch's step generator (it yields ``(it, loss)``): count, check, save, stop.

        Returns: False when the run stopped inside the epoch (a checkpoint of that iteration is saved and the
        ``=> stopped by ...`` line printed), else True. A stop requested at the epoch's last step is carried out by
        :meth:`end_epoch`, after the epoch-end work.
        """
        ipe = self.iters_per_epoch
        for it, loss in steps:
            self.health.update(loss, self.epoch * ipe + it)
            self.total += 1
            signalled = (it + 1) % self.check_every == 0 and self._check()
            limit = bool(self.max_iters) and self.total >= self.max_iters
            if signalled or limit:
                self._stop_reason = f"signal {self.stop.name}" if signalled else f"{self.max_iters_flag} {self.max_iters}"
                if it + 1 >= ipe:
                    return True  # end_epoch saves the epoch's end and stops
                self.save(self.epoch, it + 1)
                self._stopped(it + 1)
                return False
            if self.save_every and (it + 1) % self.save_every == 0 and it + 1 < ipe:
                self.save(self.epoch, it + 1)
        return True

    def end_epoch(self, replicated=None, what="encoder weights and queue", numbered=False):
        """After an epoch: check that ``replicated`` tensors agree on every rank, save (with a numbered copy when
        ``numbered``), and carry out a stop requested during the epoch's last steps."""
        if replicated is not None:
            check_ranks_in_sync(replicated, self.device, what=what)
        self.save(self.epoch + 1, 0, numbered=numbered)
        if self._stop_reason is None and self._signalled:  # a signal during the epoch's last steps
            self._stop_reason = f"signal {self.stop.name}"
        if self._stop_reason is not None:  # at the last epoch's end the run is complete all the same
            self._stopped(self.iters_per_epoch, last=self.epoch + 1 >= self.epochs_total)

    def check(self):
        """The stop / NaN check now (a collective), e.g. before an evaluation that would print a score: raises on a
        non-finite loss or BatchNorm statistic. Returns: whether a stop signal arrived (it is carried out by
        :meth:`end_epoch`)."""
        self._signalled = self._check() or self._signalled
        return self._signalled

    def write_log(self, record):
        """Append ``record`` to ``log.txt`` with the current global step (rank 0; kept across resumes like the
        progress rows)."""
        self.log.write({**record, "step": self.total})

    def require(self, key, value, flag):
        """A value the resumed checkpoint must have been made with (the trunk's content hash of an evaluation, its
        dataset), stored in every checkpoint under ``key``; a difference is one line naming ``flag``."""
        self.meta[key] = value
        if self.ckpt is not None and key in self.ckpt and self.ckpt[key] != value:
            raise UserError(f"'{self.resume_path}' was made with another {flag} ({key} {self.ckpt[key]!r}, this run "
                            f"has {value!r}): pass another {self.output_flag}, or the same {flag}", collective=True)

    def _stopped(self, it, last=False):
        self.stopped = not last
        then = "the run is complete" if last else "run the same command to resume"
        print_rank0(f"=> stopped by {self._stop_reason} at epoch {self.epoch}, iteration {it}; checkpoint saved, {then}",
                    rank=self.rank)

    def _check(self):
        """One MAX all-reduce of [stop flag, health flags]; raises on a non-finite loss / BN statistic.
        Returns: whether any rank received a stop signal."""
        flags = torch.cat([torch.tensor([float(self.stop.flag)], dtype=torch.float64, device=self.device),
                           self.health.flags()])
        reduced = dist.all_reduce(flags, op="max").tolist()
        kept = (f"the last good checkpoint is kept: {self.last_saved}" if self.last_saved else
                "no checkpoint was saved by this run")
        self.health.verdict(reduced[1:], self.iters_per_epoch, self.nan_hint, kept)
        return reduced[0] > 0

    # ==== save ====
    def save(self, epoch, it, numbered=False):
        """Checkpoint ``(epoch, it)`` (a collective: every rank calls it). Checks health first: a diverged model
        is never written. Every rank writes its side files, then rank 0 the checkpoint, the exports and, when
        ``numbered``, a numbered copy (``numbered`` may be a file name)."""
        self._signalled = self._check()
        for name, get in self.rank_states.items():
            tensors = get()
            if tensors is not None:
                save_rank_file(self.output_dir, name, self.rank, tensors, epoch, it)
        rngs = gather_rng_states(self.device)  # collective: also a barrier after the side files
        if self.rank != 0:
            return
        state = {"script": self.script, "arch": self.config.get("arch"), "epoch": epoch, "iter": it,
                 "args": self.config, "seed": self.seed,
                 "rng": rngs, "world_size": self.info.world_size, **self.meta,
                 **{k: obj.state_dict() for k, obj in self.objects.items()}}
        path = os.path.join(self.output_dir, CHECKPOINT)
        save_checkpoint(path, state, self.output_flag)
        self.last_saved = f"{path} (epoch {epoch}, iteration {it})"
        for filename, get in self.exports.items():
            save_checkpoint(os.path.join(self.output_dir, filename), get(), self.output_flag)
        if numbered:
            name = numbered if isinstance(numbered, str) else f"checkpoint_{epoch - 1:04d}.pth.tar"
            save_checkpoint(os.path.join(self.output_dir, name), state, self.output_flag)
