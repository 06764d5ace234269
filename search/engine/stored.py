"""Reading an index's binary files: a missing, truncated or garbled file becomes a
``SearchIndexError`` that names it and says to reindex, never a bare ValueError or EOFError
from deep inside NumPy or pickle."""
from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np

from .errors import SearchIndexError


def load_array(file: Path, mmap: bool = True) -> np.ndarray:
    """A ``.npy`` file, memory-mapped unless ``mmap`` is false."""
    try:
        return np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
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
