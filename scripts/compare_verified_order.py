"""Order the re-ranked candidates by inliers (the product) or by confidence? A benchmark script (not a test).

A fine method shows the candidates it re-ranks (``min_inliers`` and ``rerank_confidence``) first,
verified ones before the others, each group by inlier count (``pipeline.fine_order``). Where an
instance query is lost at rank 1 although its source was fitted, a lookalike of the same class
usually got a few more inliers. The calibrated confidence also weighs how much of both images
the inliers cover, the affine's plausibility, the coarse similarity and the excess over the
query's floor of chance inliers. This script ranks each query once and re-orders its re-ranked
candidates offline by:

- ``inliers``: the product as it is;
- ``confidence``: the packaged calibration's probability (fitted on this benchmark at stop 18, so
  in-sample);
- ``confidence-2fold``: a calibration fitted on the other half of the queries (seeded split of
  the instance and unrelated queries), so out of sample.

Which candidates are re-ranked and verified stays the packaged calibration's in every order, so
the fallback is the same. Prints R@1 / R@5 per family on the instance benchmark, and P@10 of the
Corel-1k validation queries with ``--corel``. Results: RESULTS.md, "Ordering the verified".

    python scripts/compare_verified_order.py --index-dir /work/data/caltech-index \
        --benchmark /work/data/instance-benchmark --misses
    python scripts/compare_verified_order.py --corel

Reads <data dir> from RETRIEVAL_DATA_DIR like the commands.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.engine.confidence import fit_calibration  # noqa: E402
from search.engine.config import EngineConfig  # noqa: E402
from search.engine.evaluation import precision_at_k  # noqa: E402
from search.engine.images import open_image  # noqa: E402
from search.engine.instance_benchmark import load_instance_benchmark  # noqa: E402
from search.engine.instance_evaluation import _answerable as answerable  # noqa: E402
from search.engine.instance_evaluation import _targets as answer_positions  # noqa: E402
from search.engine.instance_evaluation import rank_of  # noqa: E402
from search.engine.pipeline import fine_order  # noqa: E402
from search.engine.workflows import open_engine  # noqa: E402

METHOD = "hybrid+attention"


def ranked(engine, image, exclude=frozenset()) -> dict:
    """What one query's ranking needs to be re-ordered offline."""
    ranking = engine.rank(engine.query_features(image, local=True), METHOD, exclude_ids=exclude)
    _, reranked, verified = engine.judge(ranking.evidence, ranking.inliers)
    return {"positions": ranking.positions, "distances": ranking.distances, "inliers": ranking.inliers,
            "evidence": ranking.evidence, "reranked": reranked, "verified": verified}


def order_by(row: dict, key: np.ndarray | None) -> np.ndarray:
    """``row``'s ranked positions with its re-ranked candidates ordered by ``key`` (None: inliers)."""
    score = row["inliers"] if key is None else key
    # fine_order sorts the re-ranked by its first argument, ties by distance: a float key works alike
    order = fine_order(score, row["reranked"], row["verified"], row["distances"])
    return row["positions"][order]


def keys(rows: list[dict], engine, halves: np.ndarray, same: list[np.ndarray]) -> dict[str, list]:
    """Per ordering, each row's sort key for its re-ranked candidates."""
    found = {"inliers": [None] * len(rows),
             "confidence": [engine.calibration.probability(r["evidence"]) for r in rows]}
    if same:
        two_fold = [None] * len(rows)
        for half in (0, 1):
            train = [i for i in range(len(rows)) if halves[i] != half]
            evidence = np.concatenate([rows[i]["evidence"] for i in train])
            labels = np.concatenate([same[i] for i in train])
            calibration = fit_calibration(evidence, labels, "two-fold")
            for i in range(len(rows)):
                if halves[i] == half:
                    two_fold[i] = calibration.probability(rows[i]["evidence"])
        found["confidence-2fold"] = two_fold
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", type=Path, help="an instance benchmark (prepare_instance_benchmark)")
    parser.add_argument("--index-dir", type=Path, help="the index it is searched in (default: the active one)")
    parser.add_argument("--corel", action="store_true", help="instead: Corel-1k validation queries, P@10")
    parser.add_argument("--misses", action="store_true", help="also say, per query missed at rank 1, why")
    args = parser.parse_args()
    engine = open_engine(EngineConfig.from_env(), args.index_dir)
    if args.corel:
        index = engine.index
        labels = np.array([label or "" for label in index.labels])
        rows, truth = [], []
        for image_id in engine.model.info["val_ids"]:
            position = index.positions[image_id]
            rows.append(ranked(engine, open_image(index.path_of(position)), frozenset([image_id])))
            truth.append(labels[position])
        for name, key in keys(rows, engine, np.zeros(len(rows)), []).items():
            p10 = [precision_at_k(labels[order_by(r, k)] == t, 10) for r, k, t in zip(rows, key, truth)]
            print(f"{name:<17} Corel-1k {METHOD} P@10 {np.mean(p10):.4f}")
        return
    benchmark = load_instance_benchmark(args.benchmark)
    position_of, queries, _ = answerable(engine, benchmark)  # as evaluate takes them
    rows, targets, families = [], [], []
    for query in queries:
        rows.append(ranked(engine, open_image(benchmark.path_of(query))))
        targets.append(answer_positions(query, position_of))
        families.append(query.family)
    # a candidate is a true pair when it is one of the query's answers (unrelated: none is)
    same = [np.isin(r["positions"][:len(r["evidence"])], t) for r, t in zip(rows, targets)]
    halves = np.random.default_rng(0).integers(0, 2, len(rows))
    instance = [i for i, t in enumerate(targets) if len(t)]
    names = sorted(set(families[i] for i in instance))
    for name, key in keys(rows, engine, halves, same).items():
        final = {i: rank_of(order_by(rows[i], key[i]), targets[i]) for i in instance}
        unrelated_verified = sum(bool(rows[i]["verified"].any()) for i in range(len(rows)) if not len(targets[i]))
        for k in (1, 5):
            share = lambda chosen: np.mean([final[i] < k for i in chosen])
            print(f"{name:<17} R@{k} all {share(instance):.3f}  "
                  + " ".join(f"{f}:{share([i for i in instance if families[i] == f]):.2f}" for f in names))
        print(f"{name:<17} unrelated queries with a verified candidate: {unrelated_verified}")
    confidence = keys(rows, engine, halves, [])["confidence"]
    for i in instance if args.misses else ():  # where the product's order misses rank 1: why
        first = order_by(rows[i], None)[0]
        if first in targets[i]:
            continue
        r, at = rows[i], np.flatnonzero(np.isin(rows[i]["positions"], targets[i]))
        source = int(at[0]) if len(at) else None
        won = int(np.flatnonzero(r["positions"] == first)[0])
        fitted = source is not None and source < len(r["inliers"])
        describe = lambda j: (f"inliers {r['inliers'][j]} confidence {confidence[i][j]:.3f} "
                              f"verified {bool(r['verified'][j])} label {engine.index.labels[r['positions'][j]]}")
        print(f"miss {families[i]:<12} source at coarse rank {source}: "
              + (describe(source) if fitted else "not verified")
              + f" | first (coarse rank {won}): " + (describe(won) if won < len(r["inliers"]) else "fallback"))


if __name__ == "__main__":
    main()
