"""Would the classifier's logits order a fine method's fallback better? A benchmark script (not a test).

A fine method shows its verified candidates first, then the rest by distance to the expanded
query (``RetrievalEngine.rank``): on a class-level collection such as Corel-1k that fallback is
nearly the whole answer. This re-orders the fallback of ``hybrid+attention`` by the hybrid
similarity to the expanded query plus ``w`` times the cosine similarity of the query's logits to
each candidate's (the paper's logits variant), for each ``--weights`` w (0: the product as it
is), and prints Corel-1k's P@10 over the validation queries (``--corel``) or the instance
benchmark's R@1 / R@5 per family. The verified candidates and their order are the same for
every w. Results: RESULTS.md, "The logits in the fallback".

    python scripts/compare_fallback_order.py --corel       # the active index (Corel-1k)
    python scripts/compare_fallback_order.py --index-dir /work/data/caltech-index \
        --benchmark /work/data/instance-benchmark

Reads <data dir> from RETRIEVAL_DATA_DIR like the commands.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.engine.config import EngineConfig  # noqa: E402
from search.engine.evaluation import precision_at_k  # noqa: E402
from search.engine.features import l2_normalise  # noqa: E402
from search.engine.images import open_image  # noqa: E402
from search.engine.instance_benchmark import load_instance_benchmark  # noqa: E402
from search.engine.instance_evaluation import _answerable as answerable  # noqa: E402
from search.engine.instance_evaluation import _targets as answer_positions  # noqa: E402
from search.engine.instance_evaluation import rank_of  # noqa: E402
from search.engine.pipeline import fine_order  # noqa: E402
from search.engine.workflows import open_engine  # noqa: E402

METHOD = "hybrid+attention"


def orders(engine, image, weights, exclude=frozenset()) -> dict[float, np.ndarray]:
    """The ranked positions of ``METHOD`` for ``image`` with each weight of the logits in the fallback."""
    query = engine.query_features(image, local=True)
    ranking = engine.rank(query, METHOD, exclude_ids=exclude)
    _, reranked, verified = engine.judge(ranking.evidence, ranking.inliers)
    hybrid = 1 - ranking.distances.astype(np.float64) ** 2 / 2
    logits = l2_normalise(engine.index.row_vectors("logits", ranking.positions)) @ \
        l2_normalise(np.atleast_2d(query.vectors["logits"]))[0]
    found = {}
    for w in weights:
        order = fine_order(ranking.inliers, reranked, verified, -(hybrid + w * logits))
        found[w] = ranking.positions[order]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index-dir", type=Path)
    parser.add_argument("--benchmark", type=Path)
    parser.add_argument("--corel", action="store_true", help="Corel-1k validation queries, P@10")
    parser.add_argument("--weights", default="0,0.25,0.5,1")
    args = parser.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    engine = open_engine(EngineConfig.from_env(), args.index_dir)
    if args.corel:
        index = engine.index
        labels = np.array([label or "" for label in index.labels])
        p10 = {w: [] for w in weights}
        for image_id in engine.model.info["val_ids"]:
            position = index.positions[image_id]
            found = orders(engine, open_image(index.path_of(position)), weights, frozenset([image_id]))
            for w, order in found.items():
                p10[w].append(precision_at_k(labels[order] == labels[position], 10))
        for w in weights:
            print(f"logits weight {w:<5} Corel-1k {METHOD} P@10 {np.mean(p10[w]):.4f}")
        return
    benchmark = load_instance_benchmark(args.benchmark)
    position_of, queries, _ = answerable(engine, benchmark)  # as evaluate takes them
    rows = []
    for query in (q for q in queries if q.source is not None):  # unrelated queries have nothing to find
        found = orders(engine, open_image(benchmark.path_of(query)), weights)
        targets = answer_positions(query, position_of)
        rows.append({"family": query.family, **{w: rank_of(order, targets) for w, order in found.items()}})
    families = sorted({r["family"] for r in rows})
    for w in weights:
        for k in (1, 5):
            share = lambda chosen: np.mean([r[w] < k for r in chosen])  # NOT_FOUND is large
            print(f"logits weight {w:<5} R@{k} all {share(rows):.3f}  "
                  + " ".join(f"{f}:{share([r for r in rows if r['family'] == f]):.2f}" for f in families))


if __name__ == "__main__":
    main()
