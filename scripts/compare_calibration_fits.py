"""Does a confidence fitted on ten times the unrelated queries verify fewer false matches? A
benchmark script (not a test).

The packaged calibration (``search/engine/calibration.json``) was fitted on the default instance
benchmark: 270 instance queries and 100 unrelated ones. This script collects the verification
evidence of every (query, candidate) pair with inliers on a larger benchmark once (``--cache``),
then scores by two-fold cross-fitting, so that every query is judged by a calibration that never
saw it: the queries are split in halves (``--seeds``), a calibration is fitted on each half and
judges the other (the halves ``calibrate`` uses). Beside it, the calibration in use (the packaged
one unless the data dir holds a fitted one) on the same queries (in-sample for those of the
default benchmark). For each ``MIN_CONFIDENCE`` in ``--thresholds``: instance queries whose source
is verified, those with a wrong image verified, unrelated queries with any image verified.

Ranks without the quarter turns (as ``calibrate`` does); a search that turns its query can verify
a turned false match on top (RESULTS.md, "A thousand unrelated queries").

    python manage.py prepare_instance_benchmark --unrelated 1000 --out /work/data/ib-1000
    RETRIEVAL_DATA_DIR=/work/data-caltech python scripts/compare_calibration_fits.py \\
        /work/data/ib-1000 --cache /work/data/pairs-ib-1000.pkl

Reads <data dir> from RETRIEVAL_DATA_DIR like the commands. Results: RESULTS.md, "A confidence
fitted on a thousand unrelated queries".
"""
from __future__ import annotations

import argparse
import pickle
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.engine.config import EngineConfig  # noqa: E402
from search.engine.confidence import fit_calibration, load_calibration  # noqa: E402
from search.engine.instance_benchmark import load_instance_benchmark  # noqa: E402
from search.engine.instance_evaluation import collect_pair_evidence, query_halves, verified_shares  # noqa: E402
from search.engine.methods import DEFAULT_METHOD  # noqa: E402
from search.engine.pipeline import reranked_and_verified  # noqa: E402
from search.engine.workflows import open_engine  # noqa: E402


def pairs_of(args, config):
    if args.cache and args.cache.exists():
        return pickle.loads(args.cache.read_bytes())
    engine = open_engine(config)
    pairs = collect_pair_evidence(engine, load_instance_benchmark(args.benchmark), args.method,
                                  progress=lambda stage, done, total: done % 100 == 0 and print(
                                      f"{done}/{total} queries", flush=True))
    if args.cache:
        args.cache.write_bytes(pickle.dumps(pairs))
    return pairs


def cross_fitted_probability(pairs, seed: int) -> np.ndarray:
    """Each pair's probability from the calibration fitted on the half of the queries without it."""
    halves = query_halves(pairs, seed)
    probability = np.zeros(len(pairs.same))
    for fit_q, judged_q in (halves, halves[::-1]):
        fit_rows, judged_rows = np.isin(pairs.query, fit_q), np.isin(pairs.query, judged_q)
        calibration = fit_calibration(pairs.evidence[fit_rows], pairs.same[fit_rows])
        probability[judged_rows] = calibration.probability(pairs.evidence[judged_rows])
    return probability


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmark", type=Path)
    parser.add_argument("--method", default=DEFAULT_METHOD)
    parser.add_argument("--cache", type=Path, help="pickle of the pairs' evidence (written once, then read)")
    parser.add_argument("--seeds", default="0,1", help="splits of the queries in halves")
    parser.add_argument("--thresholds", default="0.5,0.65,0.8", help="MIN_CONFIDENCE values")
    args = parser.parse_args()
    config = EngineConfig.from_env()
    pairs = pairs_of(args, config)
    everyone = np.arange(len(pairs.families))
    print(f"{len(pairs.same)} pairs with inliers ({int(pairs.same.sum())} true) from {len(pairs.families)} "
          f"queries ({sum(f == 'unrelated' for f in pairs.families)} unrelated)")
    probabilities = {"in use": load_calibration(config.calibration_file).probability(pairs.evidence)}
    for seed in (int(s) for s in args.seeds.split(",")):
        probabilities[f"cross-fitted, split {seed}"] = cross_fitted_probability(pairs, seed)
    print("| calibration | MIN_CONFIDENCE | source verified | wrong image verified | unrelated verified |")
    print("| --- | --- | --- | --- | --- |")
    for threshold in (float(t) for t in args.thresholds.split(",")):
        judged = replace(config, min_confidence=threshold)
        for name, probability in probabilities.items():
            s = verified_shares(pairs, reranked_and_verified(pairs.inliers, probability, judged)[1], everyone)
            n_i, n_u = s["instance_queries"], s["unrelated_queries"]
            print(f"| {name} | {threshold} | {round(s['source_verified'] * n_i)} of {n_i} "
                  f"| {round(s['wrong_verified'] * n_i)} | {round(s['unrelated_verified'] * n_u)} of {n_u} |")


if __name__ == "__main__":
    main()
