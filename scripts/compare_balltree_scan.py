"""How fast is the BallTree against an exact scan of the same vectors? A benchmark script (not a test).

The paper's coarse stage is a scikit-learn BallTree. Over the default method's 2,560-d hybrid
vectors a ball tree prunes little, and a fine method searches with the query and its 2 x 2 crops
(five vectors). This times, on an index's own stored vectors, the index's BallTree against the
exact block scan of ``coarse_backends.exact_nearest`` (BLAS matrix products), each for one and
for five query vectors at a time (stored rows with a little noise added, seeded), and checks that
both return the same n nearest. Results: RESULTS.md ("The BallTree against an exact scan").

    python scripts/compare_balltree_scan.py --index-dir /work/data-caltech/index

Reads <data dir> from RETRIEVAL_DATA_DIR like the commands.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.engine.coarse_backends import BallTreeBackend, exact_nearest  # noqa: E402
from search.engine.config import EngineConfig  # noqa: E402
from search.engine.index import load_index  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index-dir", help="index root (default: the data dir's)")
    parser.add_argument("--variant", default="hybrid")
    parser.add_argument("--n", type=int, default=4000, help="nearest asked for (the candidates)")
    parser.add_argument("--searches", type=int, default=50, help="query vectors in all, per batch size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    index = load_index(Path(args.index_dir) if args.index_dir else EngineConfig.from_env().index_root)
    backend = index.backend(args.variant)
    if not isinstance(backend, BallTreeBackend):
        raise SystemExit(f"the {args.variant} variant of {index.path} is searched by {backend.name}, not a BallTree")
    vectors = np.asarray(index.vectors[args.variant], dtype=np.float32)
    n = min(args.n, len(vectors))
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(vectors), min(args.searches, len(vectors)), replace=False)
    print(f"{index.path}: {len(vectors)} x {vectors.shape[1]} ({args.variant}), the {n} nearest")
    for rows in (1, 5):
        tree_s, scan_s, same = [], [], []
        for start in range(0, len(picks) - rows + 1, rows):
            queries = vectors[picks[start:start + rows]]
            queries = queries + 0.02 * rng.standard_normal(queries.shape).astype(np.float32)
            started = time.perf_counter()
            _, by_tree = backend.search(queries, n)
            tree_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            _, by_scan = exact_nearest(vectors, queries, n)
            scan_s.append(time.perf_counter() - started)
            same.extend(len(set(a.tolist()) & set(b.tolist())) / n for a, b in zip(by_tree, by_scan))
        tree_ms, scan_ms = 1e3 * np.median(tree_s), 1e3 * np.median(scan_s)
        print(f"{rows} vector(s) a search, {len(tree_s)} searches: BallTree median {tree_ms:.1f} ms, "
              f"exact scan {scan_ms:.1f} ms ({tree_ms / scan_ms:.1f} times faster); "
              f"share of the same {n} nearest {np.mean(same):.4f}")


if __name__ == "__main__":
    main()
