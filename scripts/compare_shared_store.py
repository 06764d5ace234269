#!/usr/bin/env python3
"""What the penultimate and instance variants cost when they keep no float16 store of their own
at FAISS scale (issue 12): seeded synthetic penultimate-like and instance-like vectors (1,280-d
each, benchmark_scale's generator) and the hybrid ones made of them, written as a build writes
them (``save_variants``) twice: each variant with its own store, and the two halves re-scored
from the hybrid store (``Share``). Loaded as a worker loads them, each variant is queried one
query at a time at k = 4,000 against an exact scan of its own float16 vectors. Prints one JSON
line per variant and layout; asserts nothing. Run it with nothing else on the machine.

    python scripts/compare_shared_store.py --size 100000 --queries 30
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.engine import layout  # noqa: E402
from search.engine.coarse_backends import FAISS, FaissBackend, exact_nearest, save_variants, stored_rows  # noqa: E402
from search.engine.config import EngineConfig  # noqa: E402
from search.engine.features import hybrid_vectors  # noqa: E402
from search.engine.index import variant_shares  # noqa: E402
from search.engine.scale_benchmark import synthetic_vectors  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280, help="of the penultimate and of the instance vectors")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--weight", type=float, default=EngineConfig().hybrid_weight)
    parser.add_argument("--workdir", type=Path, help="where the builds are written (default: a temp dir)")
    args = parser.parse_args()
    settings = EngineConfig().coarse_settings()

    penultimate = synthetic_vectors(args.size, args.dim, seed=0)
    instance = synthetic_vectors(args.size, args.dim, seed=1)
    vectors = {"penultimate": penultimate, "instance": instance,
               "hybrid": hybrid_vectors(penultimate, instance, args.weight)}
    # the same random rows for both parts (the generator draws the rows after the noise, of equal size)
    asked_penultimate = synthetic_vectors(args.queries, args.dim, seed=2, near=penultimate)
    asked_instance = synthetic_vectors(args.queries, args.dim, seed=2, near=instance)
    queries = {"penultimate": asked_penultimate, "instance": asked_instance,
               "hybrid": hybrid_vectors(asked_penultimate, asked_instance, args.weight)}
    vectors = {k: v.astype(np.float16) for k, v in vectors.items()}
    del penultimate, instance
    exact = {k: exact_nearest(vectors[k], queries[k], args.n)[1] for k in vectors}
    widths = {k: v.shape[1] for k, v in vectors.items()}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for layout_name, shares in (("own stores", {}), ("halves in the hybrid store", variant_shares(widths, args.weight))):
            build = Path(tmp) / layout_name.replace(" ", "-")
            build.mkdir()
            started = time.perf_counter()
            used = save_variants(build, vectors, FAISS, settings, shares)
            build_s = time.perf_counter() - started
            disk = sum(f.stat().st_size for f in build.iterdir())
            rows = stored_rows(build, widths, used)
            for variant in vectors:
                backend = FaissBackend.load(layout.coarse_file(build, variant, FAISS), rows[variant], settings)
                found, times = [], []
                for query in queries[variant]:
                    started = time.perf_counter()
                    _, positions = backend.search(query, args.n)
                    times.append((time.perf_counter() - started) * 1000)
                    found.append(positions[0])
                recall = float(np.mean([len(np.intersect1d(f, e)) / len(e) for f, e in zip(found, exact[variant])]))
                print(json.dumps({
                    "layout": layout_name, "variant": variant, "size": args.size, "shared": variant in used,
                    "p50_ms": round(float(np.median(times)), 1), "p95_ms": round(float(np.percentile(times, 95)), 1),
                    "recall": round(recall, 4), "mapped": backend.mapped,
                    "variant_disk_bytes_per_image": round(sum(
                        f.stat().st_size for f in build.glob(f"*_{variant}.*")) / args.size, 1),
                    "build_disk_bytes_per_image": round(disk / args.size, 1), "build_s": round(build_s, 1)}),
                    flush=True)
                del backend


if __name__ == "__main__":
    main()
