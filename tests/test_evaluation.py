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
        precisions, r_precisions, aps, misses, lost_places = [], [], [], {}, 0
        for q in range(0, 40, 5):
            distances = np.linalg.norm(vectors - vectors[q], axis=1)
            distances[q] = np.inf
            order = np.argsort(distances, kind="stable")[:-1]
            relevant = labels[order] == labels[q]
            precisions.append(relevant[:10].mean())
            r_precisions.append(relevant[:int((labels == labels[q]).sum()) - 1].mean())
            lost = min(10, int((labels == labels[q]).sum()) - 1) - int(relevant[:10].sum())  # 9 can be found
            if lost > 0:  # the classes of the first wrong results, as many as places lost
                misses[index.image_ids[q]] = sorted(labels[order[:10]][~relevant[:10]][:lost])
                lost_places += lost
            hits = np.cumsum(relevant)
            aps.append(np.mean(hits[relevant] / (np.flatnonzero(relevant) + 1)))
        assert scores[variant].n_queries == 8
        assert scores[variant].precision_at_10 == pytest.approx(np.mean(precisions), abs=1e-9)
        assert scores[variant].mean_ap == pytest.approx(np.mean(aps), abs=1e-6)
        assert scores[variant].r_precision == pytest.approx(np.mean(r_precisions), abs=1e-9)
        assert scores[variant].stage == "coarse" and scores[variant].n_candidates == 0
        # the report names each query that lost places, worst first, and the classes that took them;
        # a class of ten has nine other images, so the tenth place is not counted lost
        reported = scores[variant].misses
        assert {m["query"]: sorted(l for l, n in m["taken_by"].items() for _ in range(n)) for m in reported} == misses
        assert [m["wrong"] for m in reported] == sorted((len(t) for t in misses.values()), reverse=True)
        assert sum(m["wrong"] for m in reported) == lost_places == round(8 * 9 * (1 - np.mean(precisions) * 10 / 9))
        assert all(m["path"] == index.relpaths[index.positions[m["query"]]] for m in reported)


@pytest.fixture(scope="module")
def tiny_instance_benchmark(tiny_collection_dir, tmp_path_factory):
    """Two queries per family from the tiny collection; backgrounds and three unrelated
    queries from Corel flowers, a class the tiny collection does not hold."""
    from search.engine.instance_benchmark import build_instance_benchmark

    from .conftest import corel_image

    outside = tmp_path_factory.mktemp("flowers")
    for number in range(600, 610):
        (outside / f"{number}.jpg").symlink_to(corel_image(number))
    return build_instance_benchmark(tiny_collection_dir, tmp_path_factory.mktemp("bench"), outside,
                                    per_family=2, n_unrelated=3, seed=0)


def test_instance_evaluation_finds_the_sources_of_photometric_queries(tiny_fine_engine, tiny_instance_benchmark):
    from search.engine.instance_benchmark import FAMILIES
    from search.engine.instance_evaluation import evaluate_instances

    scores = evaluate_instances(tiny_fine_engine, tiny_instance_benchmark, ["penultimate", "penultimate+attention"],
                                n_candidates=40, depths=(1, 5, 20))
    table = {(s.method, s.family): s for s in scores}
    assert set(table) == {(m, f) for m in ("penultimate", "penultimate+attention")
                          for f in ("all", *FAMILIES, "unrelated")}
    for method in ("penultimate", "penultimate+attention"):
        assert table[method, "all"].n_queries == 18 and table[method, "unrelated"].n_queries == 3
        assert table[method, "unrelated"].recall_at_1 is None
        for family in ("jpeg", "photometric", "scale", "blur"):  # the same picture, pixels changed
            assert table["penultimate+attention", family].recall_at_1 == 1.0, family
    coarse = table["penultimate", "all"]
    # coarse-only: the final order is the coarse order
    assert coarse.recall_at_1 == coarse.coarse_recall[1] and coarse.recall_at_5 == coarse.coarse_recall[5]
    assert coarse.verified_at_1 == 0 and coarse.n_candidates == 0
    fine = table["penultimate+attention", "all"]
    assert fine.recall_at_1 >= 0.8 and fine.verified_at_1 >= fine.recall_at_1 - 0.2
    assert fine.n_candidates == 40 and fine.coarse_recall[20] >= coarse.recall_at_1


def test_a_verified_unrelated_query_is_named_with_its_image(tiny_fine_engine, tiny_collection_dir, tmp_path):
    """A benchmark of unrelated queries alone, one of which is in truth a collection image: its
    verified first result is a false positive by the benchmark's word, and the report names it."""
    from search.engine.instance_benchmark import build_instance_benchmark
    from search.engine.instance_evaluation import evaluate_instances, format_instance_table

    from .conftest import corel_image

    outside = tmp_path / "outside"
    outside.mkdir()
    for number in (600, 601, 305):  # two flowers, and a bus the tiny collection holds
        (outside / f"{number}.jpg").symlink_to(corel_image(number))
    bench = build_instance_benchmark(tiny_collection_dir, tmp_path / "bench", outside,
                                     per_family=0, n_unrelated=3, seed=0)
    scores = evaluate_instances(tiny_fine_engine, bench, ["penultimate+attention"], n_candidates=40)
    assert [(s.family, s.n_queries) for s in scores] == [("unrelated", 3)]  # no instance queries, no "all" row
    unrelated = scores[0]
    wrong = {f["image"]: f for f in unrelated.false_verified}
    assert "buses/305.jpg" in wrong and wrong["buses/305.jpg"]["inliers"] >= tiny_fine_engine.config.min_inliers
    assert wrong["buses/305.jpg"]["confidence"] >= tiny_fine_engine.config.min_confidence
    assert len(unrelated.false_verified) == round(unrelated.verified_at_1 * 3)
    query = next(q for q in bench.queries if q.params["from"].endswith("305.jpg"))
    assert wrong["buses/305.jpg"]["query"] == query.file
    assert f"{query.file} -> buses/305.jpg" in format_instance_table(scores)
