"""Reading an index's binary files: a missing, truncated or garbled file becomes a
``SearchIndexError`` that names it and says to reindex, never a bare ValueError or EOFError
from deep inside NumPy or pickle."""
from __future__ import annotations

import math
import os
from pathlib import Path

import joblib
import numpy as np

from .errors import SearchIndexError

# preadv2's flag for "only what the page cache holds" (Linux 4.14 on); None elsewhere
NOWAIT = getattr(os, "RWF_NOWAIT", None)


def load_array(file: Path) -> np.ndarray:
    """A ``.npy`` file read whole (large row files are read a run at a time: ``RowFile``)."""
    try:
        return np.load(file, allow_pickle=False)
    except FileNotFoundError as exc:
        raise SearchIndexError(f"{file} is missing: an incomplete index; reindex") from exc
    except (ValueError, OSError, EOFError) as exc:
        raise SearchIndexError(f"{file} is damaged ({exc}); reindex") from exc


def load_pickled(file: Path):
    """A joblib file (a fitted PCA, a ball tree)."""
    try:
        return joblib.load(file)
    except FileNotFoundError as exc:
        raise SearchIndexError(f"{file} is missing: an incomplete index; reindex") from exc
    except Exception as exc:  # unpickling damaged bytes can fail in almost any way
        raise SearchIndexError(f"{file} is damaged ({type(exc).__name__}: {exc}); reindex") from exc


FAISS_STORE_MAGIC = b"IxSQ"  # a FAISS IndexScalarQuantizer file: a float16 store (coarse_backends)


class Rows:
    """What NumPy asks of a source of rows beyond indexing them (``self[a:b]``): the whole as one array."""

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[0:len(self)]
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def astype(self, dtype) -> np.ndarray:
        return np.asarray(self, dtype=dtype)


class RowFile(Rows):
    """A file of rows read a run of rows at a time with ``pread`` instead of a memory map: the
    page cache serves it just as well, and a file cut short under a running process gives a
    ``SearchIndexError`` for that read, where a memory map's SIGBUS would kill the process.

    Two formats: a ``.npy`` file, or a FAISS float16 store (``IndexScalarQuantizer`` of type fp16,
    whose codes are the rows as float16, at the end of the file): a large build's vectors are
    stored once, read here and searched by FAISS (``coarse_backends.FaissBackend``)."""

    def __init__(self, file: Path):
        self.path = Path(file)
        try:
            with self.path.open("rb") as handle:
                if handle.read(4) == FAISS_STORE_MAGIC:
                    self.faiss_store = True
                    shape, fortran_order, dtype = self._faiss_store_header(handle)
                else:
                    self.faiss_store = False
                    handle.seek(0)
                    version = np.lib.format.read_magic(handle)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, fortran_order, dtype = read_header(handle)
                    self.offset = handle.tell()
        except FileNotFoundError as exc:
            raise SearchIndexError(f"{file} is missing: an incomplete index; reindex") from exc
        except (ValueError, OSError, EOFError) as exc:
            raise SearchIndexError(f"{file} is damaged ({exc}); reindex") from exc
        if fortran_order or dtype.hasobject or not shape:
            raise SearchIndexError(f"{file} is not a C-ordered array of rows; reindex")
        self.shape, self.dtype = tuple(shape), dtype
        self.row_bytes = dtype.itemsize * math.prod(shape[1:])
        self.fd = os.open(self.path, os.O_RDONLY)
        if os.fstat(self.fd).st_size < self.offset + self.shape[0] * self.row_bytes:
            os.close(self.fd)
            self.fd = None
            raise SearchIndexError(f"{file} is shorter than its header says: a damaged index; reindex")

    def _faiss_store_header(self, handle) -> tuple[tuple[int, int], bool, np.dtype]:
        """Shape of a FAISS float16 store's rows; sets ``offset``. Its header holds the dimension
        (int32) and the number of rows (int64); its codes, the rows, end the file, preceded by
        their length in bytes (uint64), which is checked."""
        dim = int(np.frombuffer(handle.read(4), dtype="<i4")[0])
        rows = int(np.frombuffer(handle.read(8), dtype="<i8")[0])
        nbytes = rows * dim * 2
        size = os.fstat(handle.fileno()).st_size
        self.offset = size - nbytes
        if dim <= 0 or rows < 0 or self.offset < 20:
            raise ValueError(f"a FAISS store header says {rows} rows of {dim}")
        handle.seek(self.offset - 8)
        if int(np.frombuffer(handle.read(8), dtype="<u8")[0]) != nbytes:
            raise ValueError("not a float16 FAISS store, or cut short")
        return (rows, dim), False, np.dtype(np.float16)

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, start: int, end: int) -> np.ndarray:
        """Rows ``start`` to ``end`` (a fresh, writable array)."""
        return self.read_into(start, np.empty((end - start,) + self.shape[1:], dtype=self.dtype))

    def read_into(self, start: int, out: np.ndarray) -> np.ndarray:
        """Rows from ``start`` on into ``out`` (C-contiguous, of this file's dtype), as many as it
        holds: many short runs read into one buffer without an array each."""
        if self._preadv(start, out) != out.nbytes:
            raise SearchIndexError(f"{self.path} was cut short after the index was loaded: a damaged index; reindex")
        return out

    def read_cached_into(self, start: int, out: np.ndarray) -> bool:
        """``read_into``, but only from the page cache: False when any of it would wait on the disk
        (part of ``out`` may then be filled), or when the system cannot tell (every read then counts
        as one that waits)."""
        try:
            return self._preadv(start, out, NOWAIT) == out.nbytes
        except (OSError, TypeError):  # EAGAIN: not all in the cache; no such flag on this system or file system
            return False

    def _preadv(self, start: int, out: np.ndarray, *flags) -> int:
        if not out.nbytes:
            return 0
        return os.preadv(self.fd, [memoryview(out).cast("B")], self.offset + start * self.row_bytes, *flags)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        """Rows as NumPy would index them: one row, a slice of rows (step 1), or an array of row
        numbers (read as runs of consecutive rows, one ``pread`` per run)."""
        if isinstance(key, (int, np.integer)):
            row = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= row < len(self):
                raise IndexError(f"row {key} of {len(self)}")
            return self.rows(row, row + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError(f"{self.path}: rows are read in steps of 1")
            return self.rows(start, max(start, stop))
        rows = np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64).ravel()
        rows = np.where(rows < 0, rows + len(self), rows)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside 0..{len(self) - 1}")
        wanted, back = np.unique(rows, return_inverse=True)
        out = np.empty((len(wanted),) + self.shape[1:], dtype=self.dtype)
        if not len(wanted):
            return out
        breaks = np.flatnonzero(np.diff(wanted) != 1) + 1
        starts, ends = np.r_[0, breaks].tolist(), np.r_[breaks, len(wanted)].tolist()
        for run_start, run_end, row in zip(starts, ends, wanted[starts].tolist()):
            self.read_into(row, out[run_start:run_end])  # straight into place
        # rows asked for in ascending order need no second copy
        return out if len(wanted) == len(rows) and (np.diff(rows) > 0).all() else out[back]

    def __del__(self):
        fd = getattr(self, "fd", None)
        if fd is not None:
            os.close(fd)
