"""How the coarse stage scales: seeded synthetic collections shaped like real global features
(clusters of images around many subjects, a decaying spectrum, unit length), each backend built
and queried at k = 4,000, against an exact scan. Used by ``benchmark_scale``; nothing here is a
test threshold."""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .coarse_backends import BallTreeBackend, FaissBackend, exact_nearest
from .config import CoarseSettings
from .features import l2_normalise
from .progress import Progress, no_progress

GENERATE_BLOCK = 50_000
IMAGES_PER_CLUSTER = 200  # a subject (a painting's reproductions, a product's photos) and its look-alikes


def synthetic_vectors(n: int, dim: int, seed: int = 0, near: np.ndarray | None = None,
                      spread: float = 0.6, out: np.ndarray | None = None) -> np.ndarray:
    """``n`` unit vectors. Without ``near``: around n / 200 cluster centres drawn with a power-law
    spectrum (component i scaled by i^-1/2, as CNN features' PCA spectra fall), each vector its
    centre plus ``spread`` times as much noise of the same shape. With ``near``: a noisy copy of a
    random row of it (a query photographed from a collection image). Written block by block into
    ``out`` (a float16 memory map, say) when given."""
    rng = np.random.default_rng(seed)
    spectrum = (np.arange(1, dim + 1, dtype=np.float32) ** -0.5)
    out = np.empty((n, dim), dtype=np.float32) if out is None else out
    if near is None:
        centres = l2_normalise(rng.standard_normal((max(1, n // IMAGES_PER_CLUSTER), dim), dtype=np.float32)
                               * spectrum)
    for start in range(0, n, GENERATE_BLOCK):
        count = min(GENERATE_BLOCK, n - start)
        noise = rng.standard_normal((count, dim), dtype=np.float32) * spectrum
        if near is None:
            base = centres[rng.integers(0, len(centres), count)]
            out[start:start + count] = l2_normalise(base + spread * l2_normalise(noise))
        else:
            base = np.asarray(near[np.sort(rng.integers(0, len(near), count))], dtype=np.float32)
            out[start:start + count] = l2_normalise(base + 0.25 * l2_normalise(noise))
    return out


def resident_mib() -> float:
    """This process's resident memory now (not the peak), in MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2 ** 20


@dataclass
class BackendFigures:
    size: int
    dim: int
    backend: str  # balltree | faiss | exact scan
    build_s: float
    p50_ms: float
    p95_ms: float
    recall: float  # share of the exact n nearest it returned, mean over queries
    depth: int  # that n
    disk_bytes_per_image: float
    resident_mib: float  # the process's resident memory with this backend loaded
    detail: str = ""


def _timed_queries(search, queries: np.ndarray, n: int) -> tuple[np.ndarray, list[float]]:
    positions, times = [], []
    for query in queries:
        started = time.perf_counter()
        _, found = search(query, n)
        times.append((time.perf_counter() - started) * 1000)
        positions.append(found[0])
    return positions, times


def _recall(found: list[np.ndarray], exact: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, e)) / len(e) for f, e in zip(found, exact)]))


def measure_backends(vectors: np.ndarray, queries: np.ndarray, n: int, settings: CoarseSettings, workdir: Path,
                     balltree_max: int, coverages: tuple[float, ...] = (), progress: Progress = no_progress
                     ) -> list[BackendFigures]:
    """Build each backend over ``vectors`` (the BallTree only up to ``balltree_max`` images), time
    ``queries`` one at a time at depth ``n``, and compare with the exact scan. FAISS is queried
    once per list coverage in ``coverages`` (default: the setting's), built once."""
    size, dim = vectors.shape
    vector_bytes = vectors.dtype.itemsize * dim
    progress("exact scan", 0, 1)
    _, exact = exact_nearest(vectors, queries, n)  # all queries at once: the ground truth
    found, times = _timed_queries(lambda q, k: exact_nearest(vectors, q, k), queries[:5], n)
    figures = [BackendFigures(size, dim, "exact scan", 0.0, float(np.median(times)), float(np.percentile(times, 95)),
                              _recall(found, exact[:5]), n, vector_bytes, resident_mib(), "5 queries, NumPy, blocks")]
    kinds = [("faiss", FaissBackend)] + ([("balltree", BallTreeBackend)] if size <= balltree_max else [])
    for name, kind in kinds:
        progress(f"build {name}", 0, 1)
        started = time.perf_counter()
        backend = kind.build(vectors, settings)
        build_s = time.perf_counter() - started
        path = workdir / f"{name}.bin"
        backend.save(path)
        disk = path.stat().st_size
        path.unlink()
        for coverage in (coverages or (settings.faiss_coverage,)) if name == "faiss" else (None,):
            if coverage is not None:
                backend.settings = replace(settings, faiss_coverage=coverage)
            progress(f"query {name}", 0, len(queries))
            found, times = _timed_queries(backend.search, queries, n)
            detail = f"leaf size {settings.leaf_size}"
            if name == "faiss":
                listed = (f"PCA{settings.faiss_reduce_dim},IVF{backend.lists.nlist},SQ8 re-scored from float16, "
                          f"short list {settings.faiss_refine} x n" if backend.refined
                          else f"IVF{backend.lists.nlist},SQfp16")
                detail = f"{listed}, {backend.probes_for(n)} lists probed (coverage {coverage:g})"
            figures.append(BackendFigures(size, dim, name, build_s, float(np.median(times)),
                                          float(np.percentile(times, 95)), _recall(found, exact), n,
                                          (disk + vector_bytes * size) / size, resident_mib(), detail))
        del backend
    return figures
