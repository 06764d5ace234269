"""How the coarse stage scales: seeded synthetic collections shaped like real global features
(clusters of images around many subjects, a decaying spectrum, unit length), each backend built
and queried at k = 4,000, against an exact scan. Used by ``benchmark_scale``; nothing here is a
test threshold."""
from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .coarse_backends import BallTreeBackend, FaissBackend, backend_class, exact_nearest
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
    return memory_status()["VmRSS"]


def memory_status() -> dict[str, float]:
    """This process's resident memory in MiB: all of it, its anonymous part (its own: heaps, arrays
    read into memory) and its file-backed part (mapped files' pages, shared with every process
    mapping them and given back by the kernel under pressure), and the peak."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kib = {key: float(fields[key].split()[0]) for key in ("VmRSS", "RssAnon", "RssFile", "VmHWM") if key in fields}
    return {key: value / 1024 for key, value in kib.items()}


def worker_memory(backend: str, path: Path, vectors_file: Path, queries: np.ndarray, n: int,
                  settings: CoarseSettings) -> dict[str, float]:
    """What serving one variant costs a worker: a fresh process (no benchmark buffers in it) loads
    the saved backend as ``SearchIndex`` does (vectors read by ``RowFile``) and answers ``queries``;
    its memory before loading and after the queries (``memory_status``)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_serve_queries, (backend, str(path), str(vectors_file), queries, n, settings))


def _serve_queries(backend: str, path: str, vectors_file: str, queries: np.ndarray, n: int,
                   settings: CoarseSettings) -> dict[str, float]:
    from .stored import RowFile

    before = memory_status()
    loaded = backend_class(backend).load(Path(path), RowFile(Path(vectors_file)), settings)
    for query in queries:
        loaded.search(query, n)
    after = memory_status()
    return {"before_rss_mib": before["VmRSS"], "before_anon_mib": before["RssAnon"],
            "anon_mib": after["RssAnon"], "file_mib": after["RssFile"], "peak_mib": after["VmHWM"],
            "mapped": bool(getattr(loaded, "mapped", False))}


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
    resident_mib: float  # the benchmark process's resident memory with this backend loaded
    detail: str = ""
    worker: dict | None = None  # a fresh process serving the backend alone (worker_memory)


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
                     balltree_max: int, coverages: tuple[float, ...] = (), progress: Progress = no_progress,
                     vectors_file: Path | None = None, parts: tuple[int, ...] = ()) -> list[BackendFigures]:
    """Build each backend over ``vectors`` (the BallTree only up to ``balltree_max`` images), time
    ``queries`` one at a time at depth ``n``, and compare with the exact scan. FAISS is queried
    once per list coverage in ``coverages`` and number of search parts in ``parts`` (default: the
    settings'; a number repeated is measured again, to alternate settings), built once. With
    ``vectors_file`` (the file of ``vectors``), each backend is also served by a fresh process
    whose memory is measured (``worker_memory``)."""
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
        path, store = workdir / f"{name}.bin", workdir / f"{name}-vectors.faiss"
        # as a build stores it: a re-scored FAISS index's float16 store is the vectors file
        stored = backend.save(path, store=store)
        disk = path.stat().st_size + (store.stat().st_size if stored else vector_bytes * size)
        worker = None
        if vectors_file is not None:
            progress(f"serve {name} in a fresh process", 0, 1)
            worker = worker_memory(name, path, store if stored else vectors_file, queries, n, settings)
        path.unlink()
        store.unlink(missing_ok=True)
        faiss_settings = [(coverage, part) for coverage in (coverages or (settings.faiss_coverage,))
                          for part in (parts or (settings.faiss_parts,))]
        for coverage, part in faiss_settings if name == "faiss" else ((None, None),):
            if coverage is not None:
                backend.settings = replace(settings, faiss_coverage=coverage, faiss_parts=part)
            progress(f"query {name}", 0, len(queries))
            found, times = _timed_queries(backend.search, queries, n)
            detail = f"leaf size {settings.leaf_size}"
            if name == "faiss":
                listed = (f"PCA{settings.faiss_reduce_dim},IVF{backend.lists.nlist},SQ8 re-scored from float16, "
                          f"short list {settings.faiss_refine} x n" if backend.refined
                          else f"IVF{backend.lists.nlist},SQfp16")
                detail = f"{listed}, {backend.probes_for(n)} lists probed (coverage {coverage:g})"
                if backend.refined:
                    detail += f", one query in {backend.parts} part{'s' if backend.parts > 1 else ''}"
            figures.append(BackendFigures(size, dim, name, build_s, float(np.median(times)),
                                          float(np.percentile(times, 95)), _recall(found, exact), n,
                                          disk / size, resident_mib(), detail, worker))
        del backend
    return figures
