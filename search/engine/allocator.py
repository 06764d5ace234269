"""glibc's allocator set up for the large tensors of CPU training and indexing.

PyTorch on the CPU allocates every activation, gradient and batch anew. glibc serves a block
over its mmap threshold (at most 32 MB, adjusted as the process runs) with fresh pages from the
kernel and gives them back when the block is freed, so each training step and each batch faults
its memory in again, page by page. Keeping freed blocks in the process for reuse removes most of
that kernel work (RESULTS.md, "Freed memory kept for reuse"), at the price of a higher peak.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
_applied: int | None = None


def keep_freed_memory(threshold_mb: int) -> bool:
    """Serve blocks up to ``threshold_mb`` from the heap and keep up to that much freed memory at
    its top, for this process from now on (0: leave glibc's defaults). Whether it is in effect:
    False where the C library has no ``mallopt`` (not glibc)."""
    global _applied
    if threshold_mb <= 0:
        return False
    if _applied == threshold_mb:
        return True
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    size = threshold_mb << 20
    if mallopt(M_MMAP_THRESHOLD, size) != 1 or mallopt(M_TRIM_THRESHOLD, size) != 1:
        logger.warning("glibc refused a malloc threshold of %d MB; its defaults stay", threshold_mb)
        return False
    _applied = threshold_mb
    return True
