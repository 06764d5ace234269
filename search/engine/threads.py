"""Thread pools for work that waits outside Python (FAISS searches, file reads), one per purpose
and process: a pool made before a worker process forks has no threads after it, so a forked
worker gets a fresh one on first use."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

_POOLS: dict[str, tuple[int, ThreadPoolExecutor]] = {}


def thread_pool(purpose: str, threads: int) -> ThreadPoolExecutor:
    """This process's pool for ``purpose``, with at least ``threads`` threads."""
    held = _POOLS.get(purpose)
    if held is None or held[0] != os.getpid() or held[1]._max_workers < threads:
        held = (os.getpid(), ThreadPoolExecutor(max_workers=threads, thread_name_prefix=purpose))
        _POOLS[purpose] = held
    return held[1]
