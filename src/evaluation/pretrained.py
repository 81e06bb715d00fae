"""Load a pretrained trunk from any checkpoint layout we know, with one clear error when it does not fit.

Layouts recognised (the trunk's parameter names follow torchvision: ``conv1.weight``, ``layer1.0.bn1.*``):

* ours (``main_moco.py``): ``{"arch", "args", "state_dict": {"encoder_q.*", "encoder_k.*", "queue"}}``;
  later scripts keep the trunk under ``backbone.`` / ``trunk.`` (and a ``momentum_backbone.`` copy);
* MoCo official releases: ``state_dict`` with ``module.encoder_q.*`` (``module.encoder_q.fc.*`` is the head);
* SwAV official releases: ``module.*`` plus ``module.projection_head.*`` and ``module.prototypes.*``;
* a plain torchvision state dict (no prefix, ``fc.*`` classifier);
* DINO-like files whose weights sit under ``teacher`` / ``student`` / ``model`` / ``network``.

:func:`extract_trunk_state` finds the weights and the key prefix that covers the most trunk keys;
:func:`load_trunk` loads them strictly (every trunk tensor present with its shape, no unknown
non-head keys under the prefix) and logs one line saying what was loaded and what was ignored;
:func:`build_trunk` makes the trunk every evaluation scores (the checkpoint's arch and stem, or a seeded random
init) and loads it.
Files are read with ``weights_only=True``; pickled objects are only unpickled when the user says
the file is trusted (``--trust-checkpoint``).
"""
import argparse
import os
import re

import torch

from src.models import KNOWN_ARCHS, build_backbone
from src.run.args import add_arg
from src.run.errors import UserError

STATE_KEYS = ("state_dict", "model", "teacher", "student", "network")
PREFIXES = ("module.encoder_q.", "encoder_q.", "module.backbone.", "backbone.", "module.trunk.", "trunk.",
            "module.", "")
# Heads of the layouts above; ``classifier.3.`` is the last Linear of torchvision's MobileNetV3, which
# our MobileNetV3 trunk drops (it keeps classifier.0 as the feature layer).
HEAD_PREFIXES = ("fc.", "projection_head.", "prototypes.", "head.", "heads.", "predictor.", "projector.",
                 "classifier.3.")


TRUST_HELP = ("unpickle the Python objects a checkpoint holds (Lightning hyper-parameters, an argparse Namespace). "
              "Unpickling RUNS ARBITRARY CODE from the file: use it only for files from a source you trust; without "
              "it a file with such objects is refused with the list of everything it would import (default: off, "
              "weights only)")


# ==== reading ====
def read_checkpoint(path, trust=False):
    """Read a checkpoint file on the CPU.

    Args:
        path: file path.
        trust: allow unpickling arbitrary objects (``weights_only=False``) when the file holds some,
            e.g. an argparse Namespace. Only for files from a trusted source: unpickling runs code.
    Returns:
        dict (a pickled ``nn.Module`` read with ``trust`` is returned as its state dict).
    Raises:
        UserError: missing, unreadable or corrupt file, pickled objects without ``trust``, a pickle that calls a
            command or code runner (``CODE_EXECUTION``, even with ``trust``), not a dict.
    """
    path = str(path)
    if os.path.isdir(path):
        raise UserError(f"checkpoint '{path}' is a folder, not a file: pass the checkpoint file in it to --pretrained")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint '{path}' does not exist: check the path given to --pretrained")
    if os.path.getsize(path) == 0:
        raise UserError(f"checkpoint '{path}' is empty (0 bytes; an interrupted copy?): pass another file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every unpickling failure becomes one line
        found = unsafe_globals(path, exc)
        if not found:
            raise UserError(f"cannot read checkpoint '{path}' ({_first_line(exc)}): the file is truncated or not "
                            "a PyTorch checkpoint") from None
        calls = [g for g in found if CODE_EXECUTION.match(g)]
        if calls:  # refused with or without trust: no training run pickles these, a crafted file does
            raise UserError(f"checkpoint '{path}' contains pickled Python objects ({', '.join(found)}), among them "
                            f"{', '.join(calls)}, which a pickle calls to run commands or code on this machine: no "
                            "checkpoint needs that, so it is not read, even with --trust-checkpoint; get the file "
                            "again from a source you trust") from None
        if not trust:
            raise UserError(f"checkpoint '{path}' contains pickled Python objects ({', '.join(found)}) "
                            "and unpickling them runs code from the file: pass --trust-checkpoint only if you "
                            "trust its source") from None
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001
            raise UserError(f"cannot read checkpoint '{path}' even as a trusted file ({_first_line(exc2)})") from None
    if isinstance(ckpt, torch.nn.Module):
        ckpt = ckpt.state_dict()
    if not isinstance(ckpt, dict):
        raise UserError(f"checkpoint '{path}' holds a {type(ckpt).__name__}, not a dict of weights: "
                        "pass a state dict or a training checkpoint")
    return ckpt


def _first_line(exc):
    """``Type: first line of the message`` (just the type when the message is empty, as an EOFError's)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


# Callables that a pickle can CALL to run commands or code: no training run pickles them, a crafted file does.
CODE_EXECUTION = re.compile(r"^(builtins\.(exec|eval|compile|__import__|breakpoint)|"
                            r"(os|posix|nt)\.(system|popen|exec\w*|spawn\w*|posix_spawn\w*|fork\w*)|"
                            r"(subprocess|pty|runpy|code|ctypes|webbrowser|importlib|shutil)\..+)$")


def unsafe_globals(path, exc=None):
    """Every global (class or function) a checkpoint file would import when unpickled, beyond the tensors and
    containers that ``weights_only`` allows: what ``--trust-checkpoint`` lets run. Read from the file's pickle
    opcodes, nothing is executed.

    Args:
        path: the file. exc: the ``weights_only`` load's error, whose message names the first such global (a
            last resort when the file cannot be scanned).
    Returns:
        sorted list of ``module.name`` strings; [] when there are none (or none could be found).
    """
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - a legacy (non-zip) file: scan its pickles instead
        found = _legacy_unsafe_globals(path)
    if not found and exc is not None:
        found = re.findall(r"GLOBAL ([\w.]+\.[\w]+)", str(exc))
    return sorted(set(found))


def _legacy_unsafe_globals(path):
    """The not-allowed globals of a legacy (pre-zip) torch file: its first four pickles (magic number, protocol,
    system info, the object; the storages' bytes follow), opcodes only."""
    import pickletools

    try:
        from torch._weights_only_unpickler import _get_allowed_globals
        allowed = set(_get_allowed_globals())
    except Exception:  # noqa: BLE001 - a private API: without it, name every global
        allowed = set()
    found = []
    try:
        with open(path, "rb") as f:
            for _ in range(4):
                strings = []
                for op, arg, _ in pickletools.genops(f):
                    if op.name == "GLOBAL":
                        found.append(arg.replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(".".join(strings[-2:]))
                    elif isinstance(arg, str) and "UNICODE" in op.name:
                        strings.append(arg)
    except Exception:  # noqa: BLE001 - truncated or not a pickle: what was found so far
        pass
    return [g for g in found if g not in allowed]


def checkpoint_arch(ckpt):
    """Architecture recorded in a checkpoint.

    Args:
        ckpt: dict from :func:`read_checkpoint`.
    Returns:
        ``(arch, cifar_stem)``: ``ckpt["arch"]`` or ``ckpt["args"]["arch"]`` (None when absent) and
        ``ckpt["args"]["cifar_stem"]`` (False when absent).
    """
    args = ckpt.get("args", {})
    if not isinstance(args, dict):
        args = vars(args) if hasattr(args, "__dict__") else {}
    arch = ckpt.get("arch") or args.get("arch")
    return (arch if isinstance(arch, str) else None), bool(args.get("cifar_stem", False))


# ==== finding the trunk ====
def _is_state_dict(obj):
    return isinstance(obj, dict) and any(torch.is_tensor(v) for v in obj.values())


def _candidate_states(ckpt):
    """(name, state dict) pairs to try, in order of preference."""
    out = [(k, ckpt[k]) for k in STATE_KEYS if _is_state_dict(ckpt.get(k))]
    if _is_state_dict(ckpt):
        out.append(("", ckpt))
    return out


def _strip(keys, prefix=None, pattern=None):
    """{stripped key: original key} for keys carrying ``prefix`` (or matching regex ``pattern``)."""
    out = {}
    for key in keys:
        if pattern is not None:
            m = re.search(pattern, key)
            if m:
                out.setdefault(key[:m.start()] + key[m.end():], key)
        elif key.startswith(prefix):
            out.setdefault(key[len(prefix):], key)
    return out


def _select(ckpt, model_keys, trunk_pattern=None):
    """Best (state dict, prefix, {stripped key: original key}) for ``model_keys``; see extract_trunk_state."""
    candidates = _candidate_states(ckpt)
    if not candidates:
        raise UserError(f"no weights found in the checkpoint (top-level keys: {', '.join(map(str, list(ckpt)[:8]))}): "
                        f"expected a state dict or one under {', '.join(STATE_KEYS)}")
    if trunk_pattern:
        try:
            re.compile(trunk_pattern)
        except re.error as exc:
            raise UserError(f"--trunk-pattern {trunk_pattern!r} is not a valid regex ({exc})") from None
    best = None
    for _, sd in candidates:
        for prefix in ([trunk_pattern] if trunk_pattern else PREFIXES):
            mapping = _strip(sd, pattern=prefix) if trunk_pattern else _strip(sd, prefix=prefix)
            cover = len(model_keys & set(mapping))
            if best is None or cover > best[0]:
                best = (cover, sd, prefix, mapping)
    return best[1:]


def extract_trunk_state(ckpt, model_keys, trunk_pattern=None):
    """Find the trunk's weights in a checkpoint and strip their prefix.

    Every state dict found (top-level ``state_dict``, ``model``, ``teacher``, ``student``, ``network``,
    or the checkpoint itself) is tried with every prefix of ``PREFIXES``; the pair whose stripped keys
    cover the most ``model_keys`` wins (earlier ones on ties, so ``encoder_q`` beats ``encoder_k`` and
    ``teacher`` beats ``student``). With ``trunk_pattern`` only that regex is tried: the first match in
    each key is cut out and keys without a match are ignored. Head keys (``fc.*``, ``projection_head.*``,
    ``prototypes.*``, ...) and everything else the model does not have are dropped.

    Args:
        ckpt: dict from :func:`read_checkpoint`.
        model_keys: set of the trunk's state-dict keys.
        trunk_pattern: optional regex, e.g. ``r"^trunk\\."``, overriding the prefix search.
    Returns:
        ``(state, prefix, ignored)``: {model key: tensor} for the keys present in the model, the prefix
        (or regex) used, and the original names of the checkpoint keys not loaded (head, momentum copy,
        queue, ...), those under the prefix first.
    Raises:
        UserError: no state dict in the checkpoint, or an invalid ``trunk_pattern``.
    """
    model_keys = set(model_keys)
    sd, prefix, mapping = _select(ckpt, model_keys, trunk_pattern)
    state, ignored = _partition(sd, mapping, model_keys)
    return state, prefix, ignored


def _partition(sd, mapping, model_keys):
    """({model key: tensor} to load, [original keys ignored, those under the prefix first])."""
    state = {k: sd[orig] for k, orig in mapping.items() if k in model_keys}
    under = [orig for k, orig in mapping.items() if k not in model_keys]
    used = {mapping[k] for k in state} | set(under)
    return state, under + [k for k in sd if k not in used]


def _unexpected(mapping, own):
    """Stripped keys under the prefix that look like trunk layers the model lacks (a bigger sibling arch,
    e.g. resnet34 weights for a resnet18): same top-level module as a model key, not a head key."""
    top = {k.split(".")[0] for k in own}
    return [k for k in mapping
            if k not in own and k.split(".")[0] in top and not k.startswith(HEAD_PREFIXES)
            and not k.endswith("num_batches_tracked")]


def load_trunk(model, path_or_ckpt, trunk_pattern=None, trust=False, log=print, arch=None, source=None):
    """Load pretrained trunk weights into ``model``, strictly.

    Args:
        model: the trunk (e.g. from ``build_backbone``; its ``fc`` is an Identity without parameters).
        path_or_ckpt: checkpoint path, or a dict already read with :func:`read_checkpoint`.
        trunk_pattern: optional regex selecting / stripping the trunk keys (see :func:`extract_trunk_state`).
        trust: allow pickled objects in the file (see :func:`read_checkpoint`).
        log: callable taking one string (``print`` by default; None for silence).
        arch: architecture name, used in error messages.
        source: name of the checkpoint in messages when a dict is passed (e.g. its path).
    Returns:
        dict with ``path``, ``prefix``, ``n_loaded``, ``ignored`` (list of keys) and ``arch`` (the
        checkpoint's recorded arch or None).
    Raises:
        UserError: unreadable file, or a trunk key missing / of another shape / unexpected (wrong arch).
    """
    if isinstance(path_or_ckpt, dict):
        ckpt, where = path_or_ckpt, source or "the checkpoint"
    else:
        ckpt, where = read_checkpoint(path_or_ckpt, trust=trust), str(path_or_ckpt)
    own = model.state_dict()
    sd, prefix, mapping = _select(ckpt, set(own), trunk_pattern)
    state, ignored = _partition(sd, mapping, set(own))
    ckpt_arch, _ = checkpoint_arch(ckpt)
    name = arch or type(model).__name__
    hint = "pass the right -a/--arch" + (f" (the checkpoint says {ckpt_arch!r})" if ckpt_arch else "")
    if not state:
        raise UserError(f"no trunk weights for arch {name!r} in {where} (first keys: {', '.join(list(sd)[:5])}): "
                        f"{hint}, or select the trunk keys with --trunk-pattern")
    # old checkpoints have no BN ``num_batches_tracked`` counters: the model keeps its own
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    extra = _unexpected(mapping, own)
    if missing or shapes or extra:
        parts = ([f"missing {', '.join(missing[:5])}"] if missing else []) + \
                ([f"shape mismatch {', '.join(shapes[:5])}"] if shapes else []) + \
                ([f"unexpected {', '.join(extra[:5])}"] if extra else [])
        raise UserError(f"checkpoint keys do not match arch {name!r}: {'; '.join(parts)}; {hint}")
    check_finite(state, f"the trunk in {where}")
    full = dict(own)
    full.update(state)
    model.load_state_dict(full, strict=True)
    if log is not None:
        log(f"loaded {len(state)} trunk tensors from {where} (prefix {prefix!r}): {used_modules(state)}; "
            f"ignored {len(ignored)} keys" + (f": {summarize_keys(ignored, mapping)}" if ignored else ""))
    return {"path": where, "prefix": prefix, "n_loaded": len(state), "ignored": ignored, "arch": ckpt_arch}


def build_trunk(pretrained="", arch=None, cifar_stem=None, trunk_pattern=None, trust=False, seed=0,
                image_size=224, log=print):
    """A trunk with pretrained (or seeded random-init) weights, on the CPU, in eval mode.

    Args:
        pretrained: checkpoint path; empty for a random init seeded by ``seed``.
        arch, cifar_stem: None takes them from the checkpoint (``arch`` / ``args``), else resnet50 / off.
        trunk_pattern, trust: see :func:`load_trunk` / :func:`read_checkpoint`.
        image_size: input side (DeiT only).
        log: callable for the one "loaded ..." line.
    Returns:
        ``(model, arch, cifar_stem)``.
    """
    ckpt = read_checkpoint(pretrained, trust=trust) if pretrained else {}
    ckpt_arch, ckpt_stem = checkpoint_arch(ckpt)
    arch = arch or ckpt_arch or "resnet50"
    cifar_stem = ckpt_stem if cifar_stem is None else cifar_stem
    torch.manual_seed(seed)
    model, _ = build_backbone(arch, cifar_stem=cifar_stem, image_size=image_size)
    if ckpt:
        load_trunk(model, ckpt, trunk_pattern=trunk_pattern, arch=arch, source=pretrained, log=log)
    else:
        log(f"no --pretrained: a random-init {arch} (seed {seed})")
    return model.eval(), arch, cifar_stem


def check_finite(state, what, consequence="no score is computed from it"):
    """Refuse weights with NaN / inf values: they come from a diverged run.

    Args:
        state: {name: tensor}; floating-point tensors are checked, others skipped.
        what: the weights, for the message (e.g. "the trunk in ckpt.pth").
        consequence: what the caller does not do with them, for the message.
    Raises:
        UserError: naming the first non-finite tensors.
    """
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"{what} has NaN/inf weights or BatchNorm statistics ({', '.join(bad[:3])}"
                        f"{' ...' if len(bad) > 3 else ''}): it comes from a diverged run; {consequence}")


# ==== describing what was loaded ====
def used_modules(state):
    """Top-level modules of the loaded trunk keys, in order: ``"conv1, bn1, layer1, ..., layer4"``."""
    return ", ".join(dict.fromkeys(k.split(".")[0] for k in state))


def summarize_keys(keys, mapping=None, max_groups=8):
    """Checkpoint keys grouped by module, for a log line: ``"momentum_trunk.* (122), projector.* (9), queue"``.

    A key under the trunk prefix (``mapping``: {stripped key: original key}) is grouped by the prefix plus
    its first module (``module.encoder_q.fc.*``); any other key by its first name, or its first two when
    the first is a wrapper (``module.encoder_k.*``). A group of one key shows the key itself.

    Args:
        keys: original checkpoint key names.
        mapping: optional {stripped key: original key} of the keys under the prefix.
        max_groups: groups shown before ``...``.
    Returns:
        str.
    """
    under = {orig: stripped for stripped, orig in (mapping or {}).items()}
    groups = {}
    for key in keys:
        stripped = under.get(key)
        if stripped is not None and key.endswith(stripped) and "." in stripped:
            group = key[:len(key) - len(stripped)] + stripped.split(".")[0]
        else:
            parts = key.split(".")
            group = ".".join(parts[:2] if parts[0] in ("module", "model", "_orig_mod") and len(parts) > 2
                             else parts[:1])
        groups.setdefault(group, []).append(key)
    shown = [members[0] if len(members) == 1 and members[0] == group else f"{group}.* ({len(members)})"
             for group, members in groups.items()]
    return ", ".join(shown[:max_groups]) + (", ..." if len(shown) > max_groups else "")


# ==== command-line flags ====
def add_pretrained_args(group, snake=False):
    """The trunk flags shared by evaluation scripts: ``-a/--arch``, ``--cifar-stem``, ``--pretrained``,
    ``--trunk-pattern``, ``--trust-checkpoint`` (each also in the other spelling; ``snake`` chooses the one
    shown in ``--help``: SwAV / SCE scripts use snake_case, MoCo / SSL-small tools dash-case).

    Args:
        group: an ArgumentParser or argument group.
        snake: show snake_case names.
    Returns:
        ``group``.
    """
    def name(flag):
        return flag.replace("-", "_").replace("__", "--", 1) if snake else flag

    add_arg(group, "-a", name("--arch"), default=None,
            help=f"trunk architecture (default: the one recorded in the checkpoint, else resnet50); one of "
                 f"{', '.join(KNOWN_ARCHS)}")
    add_arg(group, name("--cifar-stem"), action=argparse.BooleanOptionalAction, default=None,
            help="ResNet 3x3 stride-1 stem for small (32-96 px) images; --no-cifar-stem forces the ImageNet stem "
                 "(default: as recorded in the checkpoint, else off)")
    add_arg(group, name("--pretrained"), default="",
            help="checkpoint whose trunk is evaluated: ours (main_*.py), MoCo (module.encoder_q.*), SwAV (module.*), "
                 "SCE Lightning (state_dict trunk.*) or released, DINO-like, plain torchvision; the layout is "
                 "detected and the head dropped (default empty: a random init seeded by --seed)")
    add_arg(group, name("--trunk-pattern"), default=None,
            help="regex cut out of the checkpoint keys to get the trunk's names; keys without a match are ignored, "
                 "e.g. SCE's '^(trunk\\.)' or '^(trunk\\.model\\.)' for video (default: the prefix that covers "
                 "most trunk keys)")
    add_arg(group, name("--trust-checkpoint"), action="store_true",
            help=TRUST_HELP)
    return group
