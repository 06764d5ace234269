"""Would database-side augmentation lift the class-level order? A benchmark script (not a test).

Database-side augmentation (DBA; Arandjelovic & Zisserman 2012, Radenovic et al. 2018) replaces
each stored vector by the mean of itself and its k nearest stored vectors, weighted by cosine
similarity ** alpha, as alpha query expansion does for the query. It tightens a class in the
space the coarse order and a fine method's fallback are ranked in. This scores, on an index's own
stored vectors of one variant (exact cosine, no tree), P@10 and mAP of each labelled query for
DBA with each of ``--ks`` (0: the stored vectors as they are), with the query as it is and
expanded as the product expands it (``QUERY_EXPANSION`` nearest, ``QUERY_EXPANSION_ALPHA``).

A query here is an indexed image. Its neighbours' augmented vectors are made without it (a
new photo is in nobody's neighbour list), else each query would find itself mixed into the
images around it and the figures would flatter DBA. Results: RESULTS.md ("Database-side
augmentation").

    python scripts/compare_database_augmentation.py                 # Corel-1k: the model's validation queries
    python scripts/compare_database_augmentation.py --index-dir /work/data-caltech/index \\
        --queries ../shared/datasets/caltech101/test.txt --limit 250

Reads <data dir> from RETRIEVAL_DATA_DIR like the commands.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.engine.classifier_info import read_classifier_info  # noqa: E402
from search.engine.collection import read_list_file, seeded_sample, stable_id  # noqa: E402
from search.engine.config import EngineConfig  # noqa: E402
from search.engine.evaluation import average_precision, precision_at_k  # noqa: E402
from search.engine.features import l2_normalise  # noqa: E402
from search.engine.index import load_index  # noqa: E402
from search.engine.pipeline import expand_query  # noqa: E402


def nearest_lists(vectors: np.ndarray, n: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Each stored vector's ``n`` nearest (itself first) and their cosine similarities."""
    positions = np.empty((len(vectors), n), np.int64)
    similarities = np.empty((len(vectors), n), np.float32)
    for start in range(0, len(vectors), block):
        scores = vectors[start:start + block] @ vectors.T
        top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        values = np.take_along_axis(scores, top, 1)
        order = np.argsort(-values, axis=1, kind="stable")
        positions[start:start + block] = np.take_along_axis(top, order, 1)
        similarities[start:start + block] = np.take_along_axis(values, order, 1)
    return positions, similarities


def augmented(vectors, lists, rows: np.ndarray, k: int, alpha: float, left_out: int = -1) -> np.ndarray:
    """The DBA vectors of the images at ``rows``: each with its ``k`` nearest, ``left_out`` skipped."""
    positions, similarities = lists[0][rows], lists[1][rows]
    order = np.argsort(positions == left_out, axis=1, kind="stable")[:, :k + 1]
    positions = np.take_along_axis(positions, order, 1)
    weights = np.clip(np.take_along_axis(similarities, order, 1), 0, None) ** alpha
    return l2_normalise((weights[:, :, None] * vectors[positions]).sum(1))


def expanded(vector: np.ndarray, scores: np.ndarray, vectors: np.ndarray, e: int, alpha: float) -> np.ndarray:
    """The query with its ``e`` nearest by cosine ``scores``, by the product's ``expand_query``."""
    if e <= 0:
        return vector
    first = np.argsort(-scores, kind="stable")[:e]
    distances = np.sqrt(np.clip(2 - 2 * scores[first], 0, None))  # unit vectors: d^2 = 2 - 2 cos
    return expand_query(vector, distances, vectors[first], alpha)[0]


def query_positions(index, args, model_info) -> np.ndarray:
    """The labelled queries, as ``evaluate`` takes them."""
    ids = seeded_sample([stable_id(p) for p in read_list_file(args.queries)] if args.queries
                        else model_info["val_ids"], args.limit)
    return np.array([index.positions[i] for i in ids if i in index.positions and index.labels[index.positions[i]]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index-dir", type=Path, help="index root (default: the data dir's)")
    parser.add_argument("--variant", default="hybrid")
    parser.add_argument("--queries", type=Path, help="a list file of labelled collection images")
    parser.add_argument("--limit", type=int, default=0, help="a seeded sample of --queries, as evaluate's")
    parser.add_argument("--ks", default="0,1,2,3,5,8")
    parser.add_argument("--alpha", type=float, default=3.0, help="DBA weights: cosine ** alpha")
    args = parser.parse_args()
    config = EngineConfig.from_env()
    index_root = args.index_dir or config.index_root
    index = load_index(index_root)
    vectors = l2_normalise(np.asarray(index.row_vectors(args.variant, np.arange(len(index))), np.float32))
    labels = np.array([label or "" for label in index.labels], dtype=object)
    queries = query_positions(index, args, read_classifier_info(config.default_model_path))
    ks = [int(k) for k in args.ks.split(",")]
    # k + 1 with itself, and one more to spare when the query is among them and left out
    lists = nearest_lists(vectors, min(max(ks) + 2, len(vectors)))
    bases = {k: augmented(vectors, lists, np.arange(len(vectors)), k, args.alpha) for k in ks if k}
    print(f"{len(queries)} queries, {len(vectors)} images, {args.variant} {vectors.shape[1]}-d, "
          f"query expansion {config.query_expansion} (alpha {config.query_expansion_alpha:g})")
    scores = {(k, how): [] for k in ks for how in ("as is", "expanded")}
    for q in queries:
        relevant_all = labels == labels[q]
        relevant_all[q] = False
        own = vectors @ vectors[q]
        own[q] = -np.inf
        query = {"as is": vectors[q],
                 "expanded": expanded(vectors[q], own, vectors, config.query_expansion, config.query_expansion_alpha)}
        for k in ks:
            stored = vectors
            if k:
                touched = np.flatnonzero((lists[0][:, :k + 1] == q).any(1))
                stored = bases[k].copy()
                stored[touched] = augmented(vectors, lists, touched, k, args.alpha, left_out=q)
            for how, vector in query.items():
                similarity = stored @ vector
                similarity[q] = -np.inf
                relevant = relevant_all[np.argsort(-similarity, kind="stable")[:-1]]
                scores[(k, how)].append((precision_at_k(relevant, 10), average_precision(relevant)))
    for (k, how), rows in scores.items():
        p10, ap = np.mean(rows, axis=0)
        print(f"DBA k={k:<2} query {how:<9} P@10 {p10:.4f}  mAP {ap:.4f}")


if __name__ == "__main__":
    main()
