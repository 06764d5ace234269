#!/usr/bin/env python3
"""Which FAISS inverted lists answer the coarse stage fastest at a million images (issue 12): on
benchmark_scale's seeded synthetic vectors (2,560-d like the hybrid variant, float16), each
``faiss.index_factory`` string is built behind the product's float16 re-scoring (IndexRefine)
and queried one query at a time at k = 4,000, for each number of lists probed and each short
list (k_factor x k), against an exact scan of the same vectors. ``--stores`` re-scores from
other stores than float16 as well (``sq8``: FAISS's per-dimension int8 codes, half the bytes). Prints one JSON line per
setting; asserts nothing. Run it with nothing else on the machine.

    python scripts/compare_faiss_lists.py --size 1000000 \\
        --specs "PCA256,IVF1000,SQ8;PCA256,IVF1000,PQ256x4fs" --nprobes 128,256 --k-factors 3,4,5
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402

from search.engine.coarse_backends import exact_nearest  # noqa: E402
from search.engine.scale_benchmark import synthetic_vectors  # noqa: E402


STORES = {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=2560)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--specs", default="PCA256,IVF1000,SQ8", help="factory strings, ';' between them")
    parser.add_argument("--nprobes", default="256")
    parser.add_argument("--k-factors", default="4")
    parser.add_argument("--stores", default="fp16", help="re-scoring stores, ',' between them: fp16, sq8")
    parser.add_argument("--parallel-modes", default="0",
                        help="FAISS IVF parallel_mode values (0: queries across threads; 1: one query's lists across threads)")
    parser.add_argument("--workdir", type=Path, help="where the vectors are written (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        file = Path(tmp) / "vectors.npy"
        vectors = np.lib.format.open_memmap(file, mode="w+", dtype=np.float16, shape=(args.size, args.dim))
        synthetic_vectors(args.size, args.dim, seed=0, out=vectors)
        vectors.flush()
        vectors = np.load(file, mmap_mode="r")
        queries = synthetic_vectors(args.queries, args.dim, seed=1, near=vectors)
        _, exact = exact_nearest(vectors, queries, args.n)
        sample = np.sort(np.random.default_rng(0).choice(args.size, size=min(args.size, 100_000), replace=False))
        train = np.ascontiguousarray(vectors[sample], dtype=np.float32)
        for spec, store in [(spec, store) for spec in args.specs.split(";") for store in args.stores.split(",")]:
            started = time.perf_counter()
            index = faiss.IndexRefine(faiss.index_factory(args.dim, spec),
                                      faiss.IndexScalarQuantizer(args.dim, STORES[store]))
            index.train(train)
            for start in range(0, args.size, 50_000):
                index.add(np.ascontiguousarray(vectors[start:start + 50_000], dtype=np.float32))
            build_s = time.perf_counter() - started
            lists = faiss.extract_index_ivf(index)
            settings = [(nprobe, k_factor, mode) for nprobe in [int(x) for x in args.nprobes.split(",")]
                        for k_factor in [float(x) for x in args.k_factors.split(",")]
                        for mode in [int(x) for x in args.parallel_modes.split(",")]]
            for nprobe, k_factor, mode in settings:
                lists.nprobe, index.k_factor, lists.parallel_mode = nprobe, k_factor, mode
                times, recalls = [], []
                for query, want in zip(queries, exact):
                    started = time.perf_counter()
                    _, found = index.search(query[None].astype(np.float32), args.n)
                    times.append((time.perf_counter() - started) * 1000)
                    recalls.append(len(np.intersect1d(found[0], want)) / args.n)
                print(json.dumps({"spec": spec, "store": store, "size": args.size, "nprobe": nprobe, "k_factor": k_factor,
                                  "parallel_mode": mode,
                                  "build_s": round(build_s, 1), "p50_ms": round(float(np.median(times)), 1),
                                  "p95_ms": round(float(np.percentile(times, 95)), 1),
                                  "recall": round(float(np.mean(recalls)), 3)}), flush=True)
            del index


if __name__ == "__main__":
    main()
