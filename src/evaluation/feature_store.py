"""Feature caches on disk, streamed batch by batch: ``eval_linear.py --precompute_features`` at ImageNet scale.

A cache is one folder per rank holding each split as two raw files, ``<split>.feats`` (rows x dim, fp16, C order)
and ``<split>.labels`` (int64), and a ``meta.json`` written last (the completion mark: the key the cache was made
for, and each split's rows, dim and dtype). ImageNet's training set at 2048 dimensions is 1,281,167 x 2048 x 2
bytes = 5.2 GB (fp32 would be 10.5 GB).

Features are written batch by batch as the trunk produces them (nothing is accumulated). Reading, a shard that
fits the process's share of the free memory is loaded whole; a larger one streams: :class:`FeatureFile` reads only
a batch's rows from the file, through the page cache, which the kernel shares between processes and evicts under
memory pressure. Such a cache never has to fit in memory, and the process's resident set grows by about a batch,
not by the cache (tests/test_linear_cache.py measures it against a budget it sets).

fp16 holds features up to 65504 in magnitude with a relative rounding of at most 2^-11; a trunk whose features
exceed that range is written in fp32 instead (:func:`write_split` raises :class:`Fp16Overflow` and
:func:`write_cache` starts that split again in fp32). The head is trained on exactly the stored values, whether
the cache was just written or read back, so a resumed run stays bit-identical.
"""
import json
import os

import numpy as np
import torch

from src.run.checkpoint import atomic_write

FP16_MAX = float(np.finfo(np.float16).max)  # 65504
META = "meta.json"


class Fp16Overflow(Exception):
    """A feature is too large for fp16; the split must be written in fp32."""


def write_split(folder, split, batches, dtype=np.float16, dim_if_empty=None):
    """Stream ``(feats, labels)`` batches into ``folder/<split>.feats`` and ``.labels`` (each written atomically).

    Args:
        folder: the rank's cache folder (created).
        split: "train" or "val".
        batches: iterable of ``(feats (B, D) tensor, labels (B,) tensor)``, on any device.
        dtype: np.float16 or np.float32 (the rows' storage type).
        dim_if_empty: callable returning D when ``batches`` is empty (more ranks than images).
    Returns:
        dict ``{"rows", "dim", "dtype"}`` for ``meta.json``.
    Raises:
        Fp16Overflow: ``dtype`` is fp16 and a feature's magnitude exceeds 65504.
    """
    labels, shape = [], {"rows": 0, "dim": None}

    def write(f):
        for feats, y in batches:
            feats = feats.detach().float().cpu()
            if dtype == np.float16 and feats.numel() and float(feats.abs().max()) > FP16_MAX:
                raise Fp16Overflow(f"{split}: a feature of magnitude {float(feats.abs().max()):.4g} exceeds fp16")
            f.write(feats.numpy().astype(dtype).tobytes())
            labels.append(y.detach().cpu().long())
            shape["rows"] += feats.shape[0]
            shape["dim"] = feats.shape[1]

    atomic_write(os.path.join(folder, f"{split}.feats"), write)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    atomic_write(os.path.join(folder, f"{split}.labels"), lambda f: f.write(y.numpy().astype(np.int64).tobytes()))
    dim = shape["dim"] if shape["dim"] is not None else int(dim_if_empty()) if dim_if_empty else 0
    return {"rows": shape["rows"], "dim": dim, "dtype": np.dtype(dtype).name}


def write_cache(folder, key, make_batches, dim_if_empty=None, log=None):
    """Write a whole cache: every split of ``make_batches`` (``{split: callable returning its batches}``), then
    ``meta.json`` with ``key``. A split that overflows fp16 is computed again and stored in fp32.

    Returns:
        the meta dict (also written to ``folder/meta.json``).
    """
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(os.path.join(folder, META)):  # no stale completion mark while the files are replaced
        os.remove(os.path.join(folder, META))
    meta = {"format": 2, "key": key}
    for split, make in make_batches.items():
        try:
            meta[split] = write_split(folder, split, make(), np.float16, dim_if_empty)
        except Fp16Overflow as exc:
            if log:
                log(f"feature cache: {exc}; computing the {split} features again, stored in fp32")
            meta[split] = write_split(folder, split, make(), np.float32, dim_if_empty)
    atomic_write(os.path.join(folder, META), lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return meta


def read_meta(folder):
    """The cache's meta dict, or None when the folder holds no complete cache (no or unreadable ``meta.json``, or a
    data file of the wrong size)."""
    try:
        with open(os.path.join(folder, META)) as f:
            meta = json.load(f)
        for split in ("train", "val"):
            s = meta[split]
            feats = os.path.getsize(os.path.join(folder, f"{split}.feats"))
            if feats != s["rows"] * s["dim"] * np.dtype(s["dtype"]).itemsize or \
                    os.path.getsize(os.path.join(folder, f"{split}.labels")) != 8 * s["rows"]:
                return None
        return meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def open_split(folder, split, meta, memory_budget=None):
    """``(FeatureFile, labels (N,) long tensor)`` of one split of a complete cache (``memory_budget``: see
    :class:`FeatureFile`)."""
    s = meta[split]
    labels = torch.from_numpy(np.fromfile(os.path.join(folder, f"{split}.labels"), dtype=np.int64))
    return FeatureFile(os.path.join(folder, f"{split}.feats"), s["rows"], s["dim"], s["dtype"], memory_budget), labels


def default_memory_budget():
    """Bytes one process may hold a cache in: half of the memory available now (``MemAvailable``), shared by the
    processes of this node; 0 (always stream) where that is unknown."""
    from src.run.dist import local_world_size

    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 0
    return available // 2 // local_world_size()


class FeatureFile:
    """(rows, dim) features in a raw file; ``ff[idx]`` gives those rows as a new tensor.

    A file within ``memory_budget`` bytes is read whole once (the fastest gathers); a larger one stays on disk and
    each call reads just its rows with positioned reads (``os.preadv``; a run of consecutive rows in one call)
    through the page cache. The values are the same either way. Not a memory map: on Linux 6.x a mapping's page
    faults map whole page-cache folios into the process (1024 random 4 KiB rows of a 256 MiB cache put 184 MiB
    into its resident set, measured on this project's machine), while a read copies only the rows asked for.

    Args:
        path: the ``.feats`` file. rows, dim: its shape. dtype: "float16" or "float32".
        memory_budget: bytes this process may hold the file in (None: :func:`default_memory_budget`).
    Attributes:
        shape: ``(rows, dim)``; ``dtype``: the torch dtype of the rows; ``streamed``: False when held in memory.
    """

    def __init__(self, path, rows, dim, dtype="float16", memory_budget=None):
        self.path, self.shape = path, (int(rows), int(dim))
        self.np_dtype = np.dtype(dtype)
        self.dtype = torch.from_numpy(np.zeros(0, self.np_dtype)).dtype
        self.row_bytes = self.shape[1] * self.np_dtype.itemsize
        budget = default_memory_budget() if memory_budget is None else memory_budget
        self.streamed = self.shape[0] * self.row_bytes > budget
        self.array = None if self.streamed else \
            np.fromfile(path, dtype=self.np_dtype, count=self.shape[0] * self.shape[1]).reshape(self.shape)
        self.fd = os.open(path, os.O_RDONLY) if self.streamed else None

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, idx):
        """``idx``: a (B,) index tensor / array / list, or a slice. Returns a (B, dim) tensor of those rows."""
        if isinstance(idx, slice):
            idx = np.arange(*idx.indices(self.shape[0]))
        idx = np.asarray(idx.numpy() if torch.is_tensor(idx) else idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError(f"row index out of range for {self.shape[0]} rows")
        if not self.streamed:
            return torch.from_numpy(self.array[idx])
        order = np.argsort(idx, kind="stable")
        rows = idx[order]
        sorted_rows = np.empty((idx.size, self.shape[1]), self.np_dtype)  # filled in file order, run by run
        starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)  # runs of consecutive rows: one read each
        for a, b in zip(starts.tolist(), starts[1:].tolist() + [rows.size]):
            self._read_into(sorted_rows[a:b], int(rows[a]) * self.row_bytes)
        out = np.empty_like(sorted_rows)
        out[order] = sorted_rows
        return torch.from_numpy(out)

    def _read_into(self, block, offset):
        view = memoryview(block).cast("B")
        while view.nbytes:
            n = os.preadv(self.fd, [view], offset) if hasattr(os, "preadv") else self._pread(view, offset)
            if n == 0:
                raise OSError(f"{self.path}: the cache file is shorter than its meta.json says")
            view, offset = view[n:], offset + n

    def _pread(self, view, offset):
        chunk = os.pread(self.fd, view.nbytes, offset)
        view[:len(chunk)] = chunk
        return len(chunk)

    def __del__(self):
        fd = self.__dict__.pop("fd", None)
        if fd is not None:
            os.close(fd)
