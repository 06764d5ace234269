"""Evaluation numbers checked against a brute-force recomputation (the metrics by hand
are in tests/fast/test_matching.py)."""
import numpy as np
import pytest

from search.engine.evaluation import evaluate_coarse


def test_evaluate_matches_brute_force_on_the_tiny_index(tiny_engine):
    from search.engine.pipeline import RetrievalEngine

    # plain nearest neighbours (no query expansion), so numpy can redo the ranking
    engine = RetrievalEngine(tiny_engine.model, tiny_engine.index, "cpu",
                             tiny_engine.config.replace(query_expansion=0))
    index = engine.index
    labels = np.array(index.labels)
    query_ids = index.image_ids[::5]  # 8 queries, two per class
    scores = {s.variant: s for s in evaluate_coarse(engine, query_ids, ["pca", "penultimate"])}
    for variant in ("pca", "penultimate"):
        vectors = np.asarray(index.vectors[variant])
        precisions, aps = [], []
        for q in range(0, 40, 5):
            distances = np.linalg.norm(vectors - vectors[q], axis=1)
            distances[q] = np.inf
            order = np.argsort(distances, kind="stable")[:-1]
            relevant = labels[order] == labels[q]
            precisions.append(relevant[:10].mean())
            hits = np.cumsum(relevant)
            aps.append(np.mean(hits[relevant] / (np.flatnonzero(relevant) + 1)))
        assert scores[variant].n_queries == 8
        assert scores[variant].precision_at_10 == pytest.approx(np.mean(precisions), abs=1e-9)
        assert scores[variant].mean_ap == pytest.approx(np.mean(aps), abs=1e-6)
        assert scores[variant].stage == "coarse" and scores[variant].n_candidates == 0
