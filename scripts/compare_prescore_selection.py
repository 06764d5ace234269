"""Which of the query's descriptors should the pre-score use? A benchmark script (not a test).

With more coarse candidates than ``VERIFY_TOP``, only the best-pre-scored ``VERIFY_TOP`` are
fitted, so a source the pre-score ranks below them is lost whatever RANSAC would have said. This
pre-scores each instance query's coarse top ``--depth`` (the default method's variant) with
``--keypoints`` query descriptors chosen several ways, and prints the share of queries whose
source the pre-score ranks in its top 20 / 100 / 200 (overall, and in the top 200 per family),
and the median time of a query's pre-score (selection included).
Selections: ``strongest`` (the highest attention), ``all`` (every query descriptor, whatever
``--keypoints`` says), ``random`` (seeded), ``gridN`` (``verification.spread_rows`` over an
N x N grid: the strongest of each cell in turn). Results: RESULTS.md, "Pre-score descriptors
spread over the query".

    python scripts/compare_prescore_selection.py --index-dir /work/data/caltech-index \
        --benchmark /work/data/instance-benchmark --selections strongest,all,random,grid3,grid4,grid6

Reads <data dir> from RETRIEVAL_DATA_DIR like the commands.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.engine.config import EngineConfig  # noqa: E402
from search.engine.images import open_image  # noqa: E402
from search.engine.instance_benchmark import load_instance_benchmark  # noqa: E402
from search.engine.instance_evaluation import NOT_FOUND, rank_of  # noqa: E402
from search.engine.methods import parse_method  # noqa: E402
from search.engine.verification import prescore, spread_rows  # noqa: E402
from search.engine.workflows import open_engine  # noqa: E402


def selected_rows(selection: str, keypoints: np.ndarray, n: int) -> np.ndarray:
    if selection == "strongest":
        return spread_rows(keypoints, n, 0)
    if selection == "all":
        return np.arange(len(keypoints))
    if selection == "random":
        return np.sort(np.random.default_rng(0).permutation(len(keypoints))[:n])
    if selection.startswith("grid"):
        return spread_rows(keypoints, n, int(selection[4:]))
    raise SystemExit(f"unknown selection {selection!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index-dir", type=Path)
    parser.add_argument("--benchmark", type=Path, required=True)
    parser.add_argument("--selections", default="strongest,all,random,grid3,grid4,grid6")
    parser.add_argument("--keypoints", type=int, default=100)
    parser.add_argument("--depth", type=int, default=4000)
    args = parser.parse_args()
    engine = open_engine(EngineConfig.from_env(), args.index_dir)
    index, store = engine.index, engine.index.local
    variant = parse_method(engine.default_method)[0]
    selections = [s.strip() for s in args.selections.split(",") if s.strip()]
    benchmark = load_instance_benchmark(args.benchmark)
    position_of = {p: i for i, p in enumerate(index.relpaths)}
    rows, spent_ms = [], {s: [] for s in selections}
    for number, query in enumerate(benchmark.queries):
        if query.source is None or query.source not in position_of:
            continue
        targets = [position_of[a] for a in query.answers if a in position_of]
        features = engine.query_features(open_image(benchmark.path_of(query)), local=True)
        positions, _ = engine.coarse_order(features.vectors, variant, args.depth)
        row = {"family": query.family}
        if rank_of(positions, targets) == NOT_FOUND:  # the coarse stage lost it: nothing to pre-score
            rows.append(row | {s: NOT_FOUND for s in selections})
            continue
        candidates = store.candidates(positions).descriptors
        local = features.local
        for selection in selections:
            started = time.perf_counter()
            chosen = selected_rows(selection, local.keypoints, args.keypoints)
            settings = replace(engine.verify_settings, prescore_keypoints=len(chosen), prescore_grid=0)
            scores = prescore(local.keypoints[chosen], local.descriptors[chosen], candidates, settings)
            spent_ms[selection].append((time.perf_counter() - started) * 1000)
            row[selection] = rank_of(positions[np.argsort(-scores, kind="stable")], targets)
        rows.append(row)
        print(f"\r{number + 1}/{len(benchmark.queries)} queries", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    families = sorted({r["family"] for r in rows})
    print(f"{args.keypoints} query descriptors per selection (all: every one)")
    for selection in selections:
        share = lambda chosen, depth: np.mean([r[selection] < depth for r in chosen])
        print(f"{selection:<10} source pre-scored in the top 20 / 100 / 200 "
              f"{share(rows, 20):.3f} / {share(rows, 100):.3f} / {share(rows, 200):.3f}  top 200 by family "
              + " ".join(f"{f}:{share([r for r in rows if r['family'] == f], 200):.2f}" for f in families)
              + f"  pre-score median {np.median(spent_ms[selection]):.0f} ms")


if __name__ == "__main__":
    main()
