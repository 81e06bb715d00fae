"""CIFAR-10 / CIFAR-100 from the "python version" folders on disk (no download).

Layout (Krizhevsky's archives ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``, extracted):

* ``cifar-10-batches-py/``: ``data_batch_1`` ... ``data_batch_5`` (train), ``test_batch``, ``batches.meta``;
* ``cifar-100-python/``: ``train``, ``test``, ``meta``.

Each file is a Python-2 pickle of a dict: ``data`` is a (N, 3072) uint8 array (1024 red, then green, then
blue values of a 32x32 image, row-major), labels are ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100), and
the meta file holds ``label_names`` / ``fine_label_names``. They are read with an unpickler that only rebuilds
numpy arrays and plain containers: a pickle can run code, and these files come from the user's disk.
"""
import os
import pickle

import numpy as np

from src.data.arrays import PixelArrays
from src.run.errors import UserError

LAYOUTS = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    meta="batches.meta", labels="labels", names="label_names", classes=10),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta", labels="fine_labels",
                     names="fine_label_names", classes=100),
}
_NUMPY_MULTIARRAY = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
_ALLOWED = {  # the globals that CIFAR pickles (written by Python 2 numpy) refer to
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_MULTIARRAY.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_MULTIARRAY.multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): __import__("codecs").encode,  # bytes pickled by Python 3 at protocol 2
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy's array reconstruction."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} (a CIFAR file holds only arrays and lists)")


def _text(x):
    return x.decode("latin1") if isinstance(x, bytes) else x


def read_pickle(path):
    """One CIFAR pickle as a dict with str keys.

    Args:
        path: file path.
    Returns:
        dict (keys decoded to str).
    Raises:
        UserError: unreadable file, not a pickle, or a pickle holding anything but arrays / lists / dicts.
    """
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnlyUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001 - a crafted pickle fails in many ways (BUILD on an int, bad states, ...)
        reason = (str(exc).strip().splitlines() or [""])[0][:200]  # only whitelisted callables ran: nothing else
        raise UserError(f"cannot read '{path}' as a CIFAR python pickle ({type(exc).__name__}: {reason}): the file "
                        "is damaged or not from the CIFAR archive; re-extract the archive") from None
    if not isinstance(obj, dict):
        raise UserError(f"'{path}' holds a {type(obj).__name__}, not the dict of a CIFAR python pickle")
    return {_text(k): v for k, v in obj.items()}


def _int_list(labels):
    """A list of Python ints from a list / tuple / 1-d integer array, or None for anything else."""
    if isinstance(labels, np.ndarray):
        return [int(t) for t in labels] if labels.ndim == 1 and labels.dtype.kind in "iu" else None
    if isinstance(labels, (list, tuple)) and all(isinstance(t, (int, np.integer)) for t in labels):
        return [int(t) for t in labels]
    return None


def find_cifar_folder(root, name):
    """The folder holding the files of CIFAR ``name``: ``root/<cifar folder>`` or ``root`` itself.

    Raises:
        UserError: naming every file expected and where.
    """
    spec = LAYOUTS[name]
    files = spec["train"] + spec["test"] + [spec["meta"]]
    for folder in (os.path.join(str(root), spec["folder"]), str(root)):
        if all(os.path.isfile(os.path.join(folder, f)) for f in files):
            return folder
    folder = os.path.join(str(root), spec["folder"])
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    found = f"missing: {', '.join(missing)}" if os.path.isdir(folder) else \
        "it is a file, not a folder" if os.path.exists(folder) else "that folder does not exist"
    raise UserError(f"{name} not found: expected {folder}/ holding {', '.join(files)} ({found}); extract the python "
                    f"version of the dataset ({name.replace('cifar', 'cifar-')}-python.tar.gz from "
                    f"https://www.cs.toronto.edu/~kriz/cifar.html) into {root}: nothing is downloaded")


class CifarPickleDataset(PixelArrays):
    """CIFAR-10 / 100 train or test split read from the python pickles; items ``(transform(PIL RGB), label)``.

    Same ``data`` (N, 32, 32, 3) uint8, ``targets`` and ``classes`` as ``torchvision.datasets.CIFAR10/100``.

    Args:
        root: folder holding ``cifar-10-batches-py`` / ``cifar-100-python`` (or that folder itself).
        name: "cifar10" or "cifar100".
        train: the training split (else the test split).
        transform: callable on a PIL image, or None.
        seed: None, or an int: the transform of sample ``i`` then runs under an RNG seeded from
            ``(seed, epoch, i)`` (see :meth:`set_epoch`), as ``src.data.folders.SafeImageFolder`` does
            (:class:`~src.data.arrays.PixelArrays`).
    Raises:
        UserError: missing files (naming them), unreadable or inconsistent files.
    """

    def __init__(self, root, name="cifar10", train=True, transform=None, seed=None):
        if name not in LAYOUTS:
            raise UserError(f"unknown CIFAR variant {name!r}: cifar10 or cifar100")
        spec = LAYOUTS[name]
        folder = find_cifar_folder(root, name)
        super().__init__(transform, seed)
        self.root = folder
        data, targets = [], []
        for fname in spec["train" if train else "test"]:
            entry = read_pickle(os.path.join(folder, fname))
            path = os.path.join(folder, fname)
            if "data" not in entry or spec["labels"] not in entry:
                raise UserError(f"'{path}' has no 'data' / '{spec['labels']}' entry (keys: {', '.join(entry)}): "
                                f"is it a {name} file?")
            arr, labels = entry["data"], _int_list(entry[spec["labels"]])
            if not isinstance(arr, np.ndarray) or labels is None:
                raise UserError(f"'{path}' holds a {type(arr).__name__} as 'data' and a "
                                f"{type(entry[spec['labels']]).__name__} as '{spec['labels']}': expected a (N, 3072) "
                                "uint8 array and N integer labels; re-extract the archive")
            if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != 3072 or len(labels) != len(arr):
                raise UserError(f"'{path}' holds data of shape {arr.shape} ({arr.dtype}) and "
                                f"{len(labels)} labels: expected (N, 3072) uint8 and N labels")
            data.append(arr)
            targets += labels
        self.data = np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3) HWC
        self.targets = targets
        meta = read_pickle(os.path.join(folder, spec["meta"]))
        names = meta.get(spec["names"], [])
        if not isinstance(names, (list, tuple)) or not all(isinstance(c, (str, bytes)) for c in names):
            raise UserError(f"'{os.path.join(folder, spec['meta'])}' holds a {type(names).__name__} as "
                            f"'{spec['names']}': expected a list of class names; re-extract the archive")
        self.classes = [_text(c) for c in names] or [str(i) for i in range(spec["classes"])]
        if targets and not 0 <= min(targets) <= max(targets) < len(self.classes):
            raise UserError(f"labels of {folder} go from {min(targets)} to {max(targets)} but the meta file names "
                            f"{len(self.classes)} classes")

    def pixels(self, index):
        return self.data[index]
