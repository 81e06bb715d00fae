"""The run skeleton around every script's steps: start, restore, save, and the control between steps.

A script calls it in this order; a call out of order is an error, so the order is the code's, not a convention::

    run = Run(info, args, script="main_sce.py", flags=FLAGS)     # lock the folder, read the checkpoint, seed, args.json
    args.seed = run.seed                                          # a resumed run keeps its checkpoint's seed
    parts = build(args, info)                                     # the script's data, model, optimizer ...
    run.track(state_dict=model, optimizer=optimizer)              # restored now, saved in every checkpoint
    run.export("trunk.pth", lambda: model.trunk.state_dict())     # also written at every checkpoint
    run.start(iters_per_epoch, images_per_step)                   # RNG states restored: the loop may draw from now on
    for epoch in run.epochs():                                    # from the resumed epoch
        sampler.set_epoch(epoch, start_index=run.start_iter * batch)
        if not run.steps(train_one_epoch(parts, loader, run, epoch)):
            break                                                 # stopped (signal, --max_iters): saved
        run.end_epoch(extra={"lr": ...})                          # epoch log row, sync check, checkpoint

``train_one_epoch`` iterates ``run.batches(loader)`` and yields ``(iteration, stats)`` after each optimizer step;
``stats`` maps names to 0-d tensors or floats, the loss under ``"Loss"`` and the step's learning rate under
``"lr"``. Between steps the run: counts iterations (``--max_iters`` is a total over every resume); logs the stats
(a progress line and a ``log.txt`` row every ``--print_freq`` steps); every ``--print_freq`` steps, in ONE
all-reduce, learns whether any rank got SIGTERM / SIGUSR1 and whether a loss or a BatchNorm statistic became
non-finite; refreshes the checkpoint every ``--save_every_iters`` steps. A checkpoint is written only after that
check passed, by rank 0, atomically; a non-finite value stops the run with one ``error:`` line and the last good
checkpoint kept.
"""
import json
import os
import subprocess
from dataclasses import dataclass

import torch

from src.run import dist
from src.run.checkpoint import (check_writable, load_checkpoint, load_rank_file, load_state_strict,
                                remove_stale_temp_files, save_checkpoint, save_rank_file, set_rng_state)
from src.run.errors import UserError
from src.run.health import Health, NonFiniteError, NonFiniteFeatures
from src.run.lock import lock_folder
from src.run.logging import JsonLog, ProgressLogger, print_rank0
from src.run.signals import process_stop_signal
from src.run.sync import check_ranks_in_sync, gather_rng_states

CHECKPOINT = "checkpoint.pth.tar"
RUN_KEYS = ("epoch", "iter")  # what every checkpoint of a run holds (besides what the script tracks)
# flags a resumed run may change without changing its maths: where and how it runs, how long, what it logs
SAFE_TO_CHANGE = {
    "epochs", "resume", "print_freq", "save_every_iters", "max_iters", "workers", "num_workers", "checkpoint_freq",
    "save_freq", "world_size", "rank", "dist_url", "dist_backend", "multiprocessing_distributed", "nproc_per_node",
    "local_rank", "gpu", "device", "demo", "demo_dir", "trust_checkpoint", "compile", "allow_changed_flags",
    "monitor_data", "monitor_every", "monitor_resize", "monitor_crop", "online_linear", "online_linear_lr",
    "tensorboard", "evaluate", "data",
    "data_path", "dump_path", "output_dir", "restart", "start_epoch"}


@dataclass(frozen=True)
class Flags:
    """How a script spells the flags that the run's messages name (its output folder, learning rate, iteration
    limit). The output folder's value is read from ``args`` under the first spelling's dest."""

    output: str = "--dump_path"
    lr: str = "--lr"
    max_iters: str = "--max_iters"

    @property
    def output_dest(self):
        return self.output.split("/")[0].lstrip("-").replace("-", "_")

    def name(self, dest):
        """A flag's name in this script's spelling (dash-case when its output flag is, else snake_case)."""
        dash = "-" in self.output.lstrip("-")
        return "--" + (dest.replace("_", "-") if dash else dest)


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


def changed_flags(saved, now, safe=()):
    """The flags whose value differs between a checkpoint's ``args`` and this run's.

    Args:
        saved, now: flag dicts (dest -> value); a dest missing from ``saved`` (a flag added since) is not compared.
        safe: more dests that may change without changing the run's maths (besides :data:`SAFE_TO_CHANGE`).
    Returns:
        ``(refused, allowed)``: lists of ``(dest, saved value, new value)``.
    """
    refused, allowed = [], []
    for key, value in now.items():
        if key not in saved or _same(saved[key], value):
            continue
        (allowed if key in SAFE_TO_CHANGE or key in safe else refused).append((key, saved[key], value))
    return refused, allowed


def _same(a, b):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or str(a) == str(b)


def _describe(changes, flags):
    return ", ".join(f"{flags.name(k)} {v0!r} -> {v1!r}" for k, v0, v1 in changes)


class Run:
    """Start a run: the folder's lock, the resume checkpoint, the seed, ``args.json``, the git commit, ``log.txt``.

    Args:
        info: :class:`~src.run.dist.DistInfo` of this process.
        args: the parsed flags (stored in args.json and every checkpoint; ``resume``, ``seed``, ``print_freq``,
            ``max_iters``, ``save_every_iters``, ``allow_changed_flags`` and the output folder are read from it).
        script: the script's file name, stored in and checked against checkpoints ("main_sce.py").
        flags: :class:`Flags`, the script's spellings.
        start_epoch: where a run without a checkpoint starts (MoCo's ``--start-epoch``).
        weights_only_resume: ``args.resume`` seeds weights only (MoCo's ``--restart``): it is not read here, and the
            run continues from ``output_dir/checkpoint.pth.tar`` instead once that exists.
        must_resume: a run that needs a checkpoint (``-e/--evaluate``): the words saying so when there is none.
        nan_hint: what to do when the loss becomes NaN (default: lower the lr flag or turn AMP off).
        safe: dests of this script's flags that a resume may change (besides :data:`SAFE_TO_CHANGE`).
    Attributes:
        ckpt (dict or None), resume_path, seed, start_epoch, start_iter, total (iterations done), log (JsonLog),
        stopped (a stop request ended the run early), finished (every epoch is done).
    """

    def __init__(self, info, args, *, script, flags=Flags(), start_epoch=0, weights_only_resume=False,
                 must_resume=None, nan_hint=None, safe=()):
        self.info, self.device, self.rank = info, info.device, info.rank
        self.args, self.flags, self.script = args, flags, script
        self.config = dict(vars(args))
        self.output_dir = getattr(args, flags.output_dest)
        self.nan_hint = nan_hint or f"the learning rate is probably too high (lower {flags.lr}) or AMP overflowed " \
                                    "(turn it off)"
        self._prepare_folder()
        try:  # every rank reads the same file: a bad one is the same error everywhere, said once
            path, weights_only = resume_source(self.output_dir, getattr(args, "resume", ""), weights_only_resume)
            self.resume_path = None if weights_only else path
            self.ckpt = self._read(self.resume_path) if self.resume_path else None
            if must_resume and self.ckpt is None:
                raise UserError(f"{must_resume}: none in '{self.output_dir}' and no --resume given")
            if self.ckpt is not None:
                self._check_flags(safe)
        except UserError as exc:
            exc.collective = True
            raise
        self.start_epoch = int(self.ckpt["epoch"]) if self.ckpt else start_epoch
        self.start_iter = int(self.ckpt["iter"]) if self.ckpt else 0
        self.seed = self._seed(getattr(args, "seed", None))
        dist.seed_everything(self.seed, 0)  # the same initial weights (and queues) on every rank
        self.log = JsonLog(os.path.join(self.output_dir, "log.txt"), self.rank)
        self.objects, self.rank_states, self.exports, self.meta = {}, {}, {}, {}
        self.health = Health(self.device)
        self.stop = process_stop_signal()
        self.started = self.stopped = self.finished = False
        self.total = 0  # iterations done, over every resume (set by start())
        self.logger = self.epoch = self.monitor = self._labels = None
        self._stop_reason, self._signalled = None, False
        self.last_saved = f"{self.resume_path} (epoch {self.start_epoch}, iteration {self.start_iter})" \
            if self.ckpt else None
        if self.rank == 0:
            self._write_args()

    # ==== 1. start: the folder, the checkpoint, the seed ====
    def _prepare_folder(self):
        """Rank 0 takes the folder's lock (before anything is written there), proves it writable and removes
        leftover temporary files; every rank learns the outcome."""
        error = None
        if self.rank == 0:
            try:
                lock_folder(self.output_dir, self.flags.output, wait=600.0 if dist.requeued() else 0.0,
                            log=lambda line: print(line, flush=True))
                check_writable(self.output_dir, self.flags.output)
                remove_stale_temp_files(self.output_dir)
            except UserError as exc:
                error = exc
        failed = dist.all_reduce(torch.tensor([float(error is not None)], device=self.device), op="max")
        if float(failed) > 0:
            raise UserError(str(error) if error else "rank 0 cannot use the output folder", collective=True)

    def _read(self, path):
        ckpt = load_checkpoint(path)
        made_by = ckpt.get("script") if isinstance(ckpt, dict) else None
        if not isinstance(ckpt, dict) or any(k not in ckpt for k in RUN_KEYS) or made_by not in (None, self.script):
            what = f"a checkpoint of {made_by}" if made_by else "not a checkpoint of a run (no epoch / iteration)"
            raise UserError(f"'{path}' is {what}, not one of {self.script} that can be resumed: pass it as "
                            f"--pretrained to an evaluation, or pass another {self.flags.output} / --resume")
        return ckpt

    def _check_flags(self, safe):
        """A resume lists the flags that differ from the checkpoint's; those that change the run's maths are refused
        unless ``--allow_changed_flags`` is given."""
        saved = self.ckpt.get("args")
        if not isinstance(saved, dict):
            return
        refused, allowed = changed_flags(saved, self.config, safe)
        if refused and not getattr(self.args, "allow_changed_flags", False):
            raise UserError(f"'{self.resume_path}' was made with other values of flags that change the run: "
                            f"{_describe(refused, self.flags)}; rerun with the checkpoint's values, pass another "
                            f"{self.flags.output}, or add {self.flags.name('allow_changed_flags')} to continue with "
                            "the new ones")
        if refused or allowed:
            print_rank0(f"warning: resuming with flags that differ from the checkpoint's: "
                        f"{_describe(refused + allowed, self.flags)}", rank=self.rank)

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

    def _before_start(self, what):
        if self.started:
            raise RuntimeError(f"Run.{what}() after Run.start(): the RNG states were restored and the loop may have "
                               "drawn from them; track, export and side files come first")

    # ==== 2. what a checkpoint holds ====
    def track(self, **objects):
        """Objects with ``state_dict`` / ``load_state_dict``, saved under their keyword in every checkpoint and
        restored now from the resumed one (modules strictly: a mismatch is one line naming keys). Modules also
        have their BatchNorm statistics watched for NaN/inf."""
        self._before_start("track")
        for key, obj in objects.items():
            self.objects[key] = obj
            if isinstance(obj, torch.nn.Module):
                self.health.watch(obj)
            if self.ckpt is None:
                continue
            if key not in self.ckpt:
                raise UserError(f"'{self.resume_path}' has no '{key}': it is not a checkpoint of {self.script} "
                                f"(or of another mode); pass another {self.flags.output}")
            if isinstance(obj, torch.nn.Module):
                load_state_strict(obj, self.ckpt[key], key, self.resume_path)
            else:
                obj.load_state_dict(self.ckpt[key])

    def track_rank_state(self, name, get):
        """A per-rank side file ``{name}{rank}.pth`` (a queue or a memory bank each rank keeps): ``get()`` returns
        its tensors (or None: nothing to save) at every checkpoint. Returns: this rank's file of the resumed
        checkpoint's step, or None."""
        self._before_start("track_rank_state")
        self.rank_states[name] = get
        if self.ckpt is None:
            return None
        return load_rank_file(self.output_dir, name, self.rank, self.start_epoch, self.start_iter,
                              log=lambda line: print(line, flush=True))

    def export(self, filename, get):
        """Also write ``get()`` (e.g. the trunk's state dict in torchvision names) to ``output_dir/filename`` at every
        checkpoint."""
        self._before_start("export")
        self.exports[filename] = get

    # ==== 3. the loop ====
    def start(self, iters_per_epoch, images_per_step, *, epochs=None, formats=None, scaled=False, note="",
              monitor=None):
        """Restore every rank's RNG states from the resumed checkpoint (after everything that draws at start-up:
        model init, initial queues), say where the run resumed, and set the loop's bounds.

        Args:
            iters_per_epoch: steps per epoch. images_per_step: global batch (for img/s).
            epochs: the run's length (default ``args.epochs``).
            formats: {stat: format spec} for the progress line (default ``.4f``).
            scaled: fp16 with a grad scaler (an isolated non-finite loss is a skipped step, not an error).
            note: appended to the ``=> resumed from ...`` line (e.g. ", queue restored").
            monitor: a :class:`~src.evaluation.monitor.Monitor` (or None): scored at the end of its epochs, before
                the checkpoint, which keeps its rows; fed every step's ``stats["features"]`` for its probe.
        With ``args.tensorboard`` every ``log.txt`` row is also written as TensorBoard scalars to
        ``OUTPUT/tensorboard/`` (rank 0).
        """
        self._before_start("start")
        args = self.args
        self.iters_per_epoch = iters_per_epoch
        self.epochs_total = args.epochs if epochs is None else epochs
        self.check_every = max(1, getattr(args, "print_freq", 10))
        self.max_iters, self.save_every = getattr(args, "max_iters", 0), getattr(args, "save_every_iters", 0)
        self.health.scaled = scaled
        self.total = self.start_epoch * iters_per_epoch + self.start_iter
        if self.rank == 0:  # log.txt: exists from the first step, one row per logged step after any resume
            self.log.keep_until(self.total)
            if getattr(args, "tensorboard", False):
                self.log.mirror_to_tensorboard(os.path.join(self.output_dir, "tensorboard"), self.total)
        self.monitor = monitor
        if monitor is not None and self.ckpt is not None and "monitor" in self.ckpt:
            monitor.load_state_dict(self.ckpt["monitor"])
        if self.ckpt is not None:
            rngs = self.ckpt.get("rng") or []
            if len(rngs) == self.info.world_size:
                set_rng_state(rngs[self.rank], self.device)
            elif self.start_iter:
                print_rank0(f"warning: the checkpoint was written by {len(rngs)} processes, this run has "
                            f"{self.info.world_size}: the rest of epoch {self.start_epoch} sees a different split of "
                            "the data", rank=self.rank)
            print_rank0(f"=> resumed from '{self.resume_path}' at epoch {self.start_epoch}, iteration "
                        f"{self.start_iter}" + note, rank=self.rank)
        self.logger = ProgressLogger(iters_per_epoch, self.epochs_total, images_per_step, self.check_every, self.log,
                                     self.rank, formats=formats)
        self.started = True

    def epochs(self):
        """The epochs left to train (none, with a line saying why, when the run is already complete)."""
        self._after_start("epochs")
        if self.start_epoch >= self.epochs_total or (self.max_iters and self.total >= self.max_iters):
            flag = self.flags.max_iters
            done = (f"all {self.epochs_total} epochs are done" if self.start_epoch >= self.epochs_total else
                    f"{flag} {self.max_iters} iterations are done (epoch {self.start_epoch}, iteration "
                    f"{self.start_iter}); raise {flag} to go on")
            print_rank0(f"=> nothing to do: {done} in '{self.output_dir}'", rank=self.rank)
            self.finished = self.start_epoch >= self.epochs_total
            return
        for epoch in range(self.start_epoch, self.epochs_total):
            self.epoch = epoch
            self.logger.start_epoch(epoch, self.start_iter)
            yield epoch
            if self.stopped:
                return
            self.start_iter = 0
        self.finished = True

    def batches(self, loader):
        """This epoch's batches from the resumed iteration on, as ``(iteration, batch)``, each step timed. A batch
        is ``(crops, labels, ...)``: the labels feed the monitor's online probe."""
        for it, batch in self.logger.batches(loader, self.start_iter):
            self._labels = batch[1]
            yield it, batch

    def steps(self, steps):
        """Drive one epoch's step generator (it yields ``(it, stats)``): count, log, check, save, stop.

        Returns: False when the run stopped inside the epoch (a checkpoint of that iteration is saved and the
        ``=> stopped by ...`` line printed), else True. A stop requested at the epoch's last step is carried out by
        :meth:`end_epoch`, after the epoch-end work.
        """
        self._after_start("steps")
        ipe = self.iters_per_epoch
        for it, stats in steps:
            stats = dict(stats)
            lr, features = stats.pop("lr", 0.0), stats.pop("features", None)
            self.health.update(stats["Loss"], self.epoch * ipe + it)
            if self.monitor is not None:
                self.monitor.observe(features, self._labels, self.epoch * ipe + it)
            self.logger.update(**stats)
            self.logger.maybe_print(it, lr)
            self.total += 1
            signalled = (it + 1) % self.check_every == 0 and self._check()
            limit = bool(self.max_iters) and self.total >= self.max_iters
            if signalled or limit:
                self._stop_reason = f"signal {self.stop.name}" if signalled else \
                    f"{self.flags.max_iters} {self.max_iters}"
                if it + 1 >= ipe:
                    return True  # end_epoch saves the epoch's end and stops
                self._save(self.epoch, it + 1)
                self._stopped(it + 1)
                return False
            if self.save_every and (it + 1) % self.save_every == 0 and it + 1 < ipe:
                self._save(self.epoch, it + 1)
        return True

    def end_epoch(self, replicated=None, what="encoder weights and queue", numbered=False, extra=None):
        """After an epoch: log its averages (``extra`` added, e.g. the last lr), check that ``replicated`` tensors
        agree on every rank, save (with a numbered copy when ``numbered``: True or a file name), and carry out a
        stop requested during the epoch's last steps.

        Returns: the epoch's log record."""
        self._after_start("end_epoch")
        record = self.logger.end_epoch(extra)
        if replicated is not None:
            check_ranks_in_sync(replicated, self.device, what=what)
        if self.monitor is not None and self.monitor.due(self.epoch, self.epochs_total):
            self._monitor_pass()
        self._save(self.epoch + 1, 0, numbered=numbered)
        if self._stop_reason is None and self._signalled:  # a signal during the epoch's last steps
            self._stop_reason = f"signal {self.stop.name}"
        if self._stop_reason is not None:  # at the last epoch's end the run is complete all the same
            self._stopped(self.iters_per_epoch, last=self.epoch + 1 >= self.epochs_total)
        return record

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
                            f"has {value!r}): pass another {self.flags.output}, or the same {flag}",
                            collective=True)

    def _monitor_pass(self):
        """The monitor's pass at this epoch's end (before the checkpoint that keeps its rows); a NaN feature is the
        run's NaN error."""
        try:
            rows = self.monitor.after_epoch(self.epoch)
        except NonFiniteFeatures as exc:
            kept = f"the last good checkpoint is kept: {self.last_saved}" if self.last_saved else \
                "no checkpoint was saved by this run"
            raise NonFiniteError(f"{exc}: {self.nan_hint}; {kept}") from None
        for row in rows:
            self.write_log(row)

    def _after_start(self, what):
        if not self.started:
            raise RuntimeError(f"Run.{what}() before Run.start(): call track / export first, then start(...)")

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

    # ==== 4. save ====
    def _save(self, epoch, it, numbered=False):
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
        flag = self.flags.output
        state = {"script": self.script, "arch": self.config.get("arch"), "epoch": epoch, "iter": it,
                 "args": self.config, "seed": self.seed,
                 "rng": rngs, "world_size": self.info.world_size, **self.meta,
                 **{k: obj.state_dict() for k, obj in self.objects.items()}}
        if self.monitor is not None:
            state["monitor"] = self.monitor.state_dict()
        path = os.path.join(self.output_dir, CHECKPOINT)
        save_checkpoint(path, state, flag)
        self.last_saved = f"{path} (epoch {epoch}, iteration {it})"
        for filename, get in self.exports.items():
            save_checkpoint(os.path.join(self.output_dir, filename), get(), flag)
        if numbered:
            name = numbered if isinstance(numbered, str) else f"checkpoint_{epoch - 1:04d}.pth.tar"
            save_checkpoint(os.path.join(self.output_dir, name), state, flag)
