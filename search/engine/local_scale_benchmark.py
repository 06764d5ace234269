"""How the fine stage scales: a seeded synthetic local-feature store of any size, in the layout
``local_store`` reads, and the time to read and verify a query's candidates from it, first with
the store's pages out of the page cache (a store larger than the machine's memory is mostly read
from disk) and then again with them in it. Used by ``benchmark_scale --local-features``; nothing
here is a test threshold.

The synthetic images are a pool of distinct ones repeated through the store (what is timed is
reading and verifying, which depend on sizes and places, not on which image a row is). A few of the
pool share part of the query's features under an affine transform, as a true match would, so
the pre-score and RANSAC do real work on them; the rest are random.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

from .local_store import LocalStore, finish_store, open_store_arrays, read_candidates
from .progress import Progress, no_progress
from .verification import VerifySettings, verify_candidates

FRAME = (640.0, 480.0)  # where synthetic keypoints lie, in pixels
RELATED_SHARE = 0.02  # of the pool: images that share part of the query's features


@dataclass
class QueryFeatures:
    keypoints: np.ndarray  # (K, 2) float32
    descriptors: np.ndarray  # (K, D) float32, unit length


@dataclass
class FineFigures:
    size: int  # images in the store
    n: int  # candidates per query
    queries: int
    phase: str  # cold: the store's pages dropped from the page cache first; warm: read again
    read_threads: int
    read_p50_ms: float  # reading the candidates' pre-score rows (read_candidates)
    verify_p50_ms: float  # verification, with the rows and keypoints it reads for the candidates it lets through
    total_p50_ms: float
    per_candidate_ms: float  # total p50 / n
    with_min_inliers: float  # candidates per query reaching min_inliers
    disk_bytes_per_image: float


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def synthetic_local_store(path: Path, size: int, keypoints: int = 300, dim: int = 40, pool: int = 1000,
                          seed: int = 0, progress: Progress = no_progress) -> QueryFeatures:
    """Write a store of ``size`` images of ``keypoints`` float16 keypoints and ``dim``-d float16 unit
    descriptors each at ``path``, a pool of ``pool`` images repeated; returns the query they were
    made for. Of the pool, ``RELATED_SHARE`` hold 30-60 % of the query's keypoints moved by a
    random affine transform (rotation up to 30 degrees, scale 0.6-1.4) with 1 px of noise, and its
    descriptors with noise; the others are random."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pool = min(pool, size)
    query = QueryFeatures((rng.uniform(0, 1, (keypoints, 2)) * FRAME).astype(np.float32),
                          _unit(rng.standard_normal((keypoints, dim))).astype(np.float32))
    pool_keypoints = (rng.uniform(0, 1, (pool, keypoints, 2)) * FRAME).astype(np.float32)
    pool_descriptors = _unit(rng.standard_normal((pool * keypoints, dim))).reshape(pool, keypoints, dim)
    for image in rng.choice(pool, size=max(1, int(RELATED_SHARE * pool)), replace=False):
        shared = rng.choice(keypoints, size=int(rng.uniform(0.3, 0.6) * keypoints), replace=False)
        angle, scale = np.radians(rng.uniform(-30, 30)), rng.uniform(0.6, 1.4)
        turn = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        moved = query.keypoints[shared] @ turn.T + rng.uniform(-100, 100, 2) + rng.normal(0, 1, (len(shared), 2))
        rows = rng.choice(keypoints, size=len(shared), replace=False)  # anywhere in the image's order
        pool_keypoints[image, rows] = moved
        pool_descriptors[image, rows] = _unit(query.descriptors[shared] + rng.normal(0, 0.3 / np.sqrt(dim),
                                                                                      (len(shared), dim)))
    pool_keypoints = pool_keypoints.reshape(-1, 2).astype(np.float16)
    pool_descriptors = pool_descriptors.reshape(-1, dim).astype(np.float16)
    stored = open_store_arrays(path, size * keypoints, dim)
    for start in range(0, size, pool):
        progress("synthetic local store", start, size)
        rows = (min(pool, size - start)) * keypoints
        stored["keypoints"][start * keypoints:start * keypoints + rows] = pool_keypoints[:rows]
        stored["descriptors"][start * keypoints:start * keypoints + rows] = pool_descriptors[:rows]
    for array in stored.values():
        array.flush()
    del stored
    finish_store(path, np.arange(size + 1, dtype=np.int64) * keypoints,
                 PCA(dim).fit(rng.standard_normal((4 * dim, dim))),  # its size is all that is read
                 {"synthetic": True, "dim": dim})
    return query


def drop_from_page_cache(path: Path) -> None:
    """Ask the kernel to forget the store's cached pages (written and synced first), so the next
    reads come from disk, as most do when the store is larger than the machine's memory."""
    for file in Path(path).glob("*.npy"):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure_fine(path: Path, query: QueryFeatures, n: int, queries: int, settings: VerifySettings,
                 min_inliers: int, read_threads: int = 1, seed: int = 1,
                 progress: Progress = no_progress) -> list[FineFigures]:
    """Per query, ``n`` random positions of the store read as a search reads its candidates
    (``read_candidates`` on ``read_threads``, each one's pre-score rows) and verified (``verify_candidates``): once
    with the store dropped from the page cache, once more with the same candidates."""
    store = LocalStore.open(path)
    size = len(store)
    n = min(n, size)
    disk = sum(f.stat().st_size for f in Path(path).iterdir()) / size
    rng = np.random.default_rng(seed)
    asked = [rng.choice(size, size=n, replace=False) for _ in range(queries)]
    figures = []
    for phase in ("cold", "warm"):
        if phase == "cold":
            drop_from_page_cache(path)
        reads, verifies, verified = [], [], []
        for q, positions in enumerate(asked):
            progress(f"verify ({phase})", q, queries)
            started = time.perf_counter()
            candidates = read_candidates(store, positions, settings.prescore_candidate_keypoints, read_threads)
            read = time.perf_counter()
            results = verify_candidates(query.keypoints, query.descriptors, candidates, settings)
            done = time.perf_counter()
            reads.append((read - started) * 1000)
            verifies.append((done - read) * 1000)
            verified.append(sum(r.inliers >= min_inliers for r in results))
        totals = np.add(reads, verifies)
        figures.append(FineFigures(size, n, queries, phase, read_threads, float(np.median(reads)), float(np.median(verifies)),
                                   float(np.median(totals)), float(np.median(totals)) / n, float(np.mean(verified)),
                                   disk))
    return figures
