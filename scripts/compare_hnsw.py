"""HNSW against the FAISS inverted file the coarse stage uses (issue 12 names both): the same
seeded synthetic collection (``scale_benchmark.synthetic_vectors``, shaped like the default hybrid
variant), both queried at depth ``--n`` one query at a time, against the exact scan.

HNSW is built the way the inverted file is, so that only the graph differs: a graph over the PCA
projection (``FAISS_REDUCE_DIM``, stored as int8 codes or float32) whose short list of
``FAISS_REFINE`` x n is re-scored from float16 copies of the full vectors. A graph search must
hold ``efSearch`` >= the depth asked, so at 4,000 candidates it is measured with a short list of n
(efSearch n) and of ``FAISS_REFINE`` x n (efSearch that, and twice that).

    python scripts/compare_hnsw.py --size 100000 --queries 30

Prints one row per index: build seconds, p50 / p95 ms, recall against exact, bytes per image of
the index (the float16 store excluded: both keep the same one), and writes them as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.engine.coarse_backends import FaissBackend, exact_nearest  # noqa: E402
from search.engine.config import EngineConfig  # noqa: E402
from search.engine.scale_benchmark import synthetic_vectors  # noqa: E402


def timed(search, queries, n):
    found, times = [], []
    for query in queries:
        started = time.perf_counter()
        positions = search(query[None], n)
        times.append((time.perf_counter() - started) * 1000)
        found.append(positions)
    return found, times


def recall(found, exact) -> float:
    return float(np.mean([len(np.intersect1d(f, e)) / len(e) for f, e in zip(found, exact)]))


def index_bytes(index) -> int:
    import faiss
    return int(faiss.serialize_index(index).size)


def build_hnsw(vectors: np.ndarray, reduce_dim: int, m: int, ef_construction: int, codes: str):
    """PCA to ``reduce_dim``, a graph of ``m`` links over the projections (``codes``: Flat or SQ8),
    re-scored from a float16 store of the full vectors."""
    import faiss
    dim = vectors.shape[1]
    graph = f"HNSW{m}" if codes == "Flat" else f"HNSW{m}_{codes}"
    base = faiss.index_factory(dim, f"PCA{reduce_dim},{graph}", faiss.METRIC_L2)
    base.train(vectors[:50_000])
    inner = faiss.downcast_index(base.index)
    inner.hnsw.efConstruction = ef_construction
    base.add(vectors)
    store = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2)
    store.add(vectors)
    index = faiss.IndexRefine(base, store)
    index.referenced_objects = [base, store]
    return index, base, inner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=2560, help="2,560: the default hybrid variant")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--m", default="16,32", help="HNSW links per node, each built once")
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--codes", default="Flat", help="the graph's stored projections: Flat or SQ8")
    parser.add_argument("--out", type=Path, default=Path("compare_hnsw.json"))
    args = parser.parse_args()
    import faiss
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    config = EngineConfig()
    settings = config.coarse_settings()

    vectors = synthetic_vectors(args.size, args.dim, seed=0)
    queries = synthetic_vectors(args.queries, args.dim, seed=1, near=vectors)
    _, exact = exact_nearest(vectors, queries, args.n)
    rows = []

    def report(name, build_s, found, times, size_bytes, detail):
        row = {"index": name, "size": args.size, "dim": args.dim, "n": args.n, "build_s": round(build_s, 1),
               "p50_ms": round(float(np.median(times)), 1), "p95_ms": round(float(np.percentile(times, 95)), 1),
               "recall": round(recall(found, exact), 4), "bytes_per_image": round(size_bytes / args.size),
               "detail": detail}
        rows.append(row)
        print(f"{name:<32} build {row['build_s']:>7.1f} s  p50 {row['p50_ms']:>7.1f} ms  p95 {row['p95_ms']:>7.1f} ms"
              f"  recall {row['recall']:.4f}  {row['bytes_per_image']:>5} B/image  {detail}", flush=True)

    started = time.perf_counter()
    ivf = FaissBackend.build(vectors, settings)
    build_s = time.perf_counter() - started
    found, times = timed(lambda q, n: ivf.search(q, n)[1][0], queries, args.n)
    report("IVF (the coarse stage's)", build_s, found, times, index_bytes(ivf.index.base_index),
           f"PCA{settings.faiss_reduce_dim},IVF{ivf.lists.nlist},SQ8, {ivf.probes_for(args.n)} lists probed, "
           f"{ivf.parts} parts, short list {settings.faiss_refine} x n")
    del ivf

    short = settings.faiss_refine * args.n
    for m in (int(x) for x in args.m.split(",")):
        started = time.perf_counter()
        index, base, inner = build_hnsw(vectors, settings.faiss_reduce_dim, m, args.ef_construction, args.codes)
        build_s = time.perf_counter() - started
        size_bytes = index_bytes(base)
        for ef, k_factor in ((args.n, 1), (short, settings.faiss_refine), (2 * short, settings.faiss_refine)):
            graph = faiss.SearchParametersHNSW(efSearch=ef)
            through = faiss.SearchParametersPreTransform(index_params=graph)
            params = faiss.IndexRefineSearchParameters(k_factor=float(k_factor), base_index_params=through)
            params.referenced = [graph, through]  # FAISS holds plain pointers to the nested parameters
            found, times = timed(lambda q, n: index.search(q, n, params=params)[1][0], queries, args.n)
            report(f"HNSW{m} efSearch {ef}", build_s, found, times, size_bytes,
                   f"PCA{settings.faiss_reduce_dim},HNSW{m}{'' if args.codes == 'Flat' else '_' + args.codes}, "
                   f"efConstruction {args.ef_construction}, short list {k_factor} x n")
        del index, base, inner
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
