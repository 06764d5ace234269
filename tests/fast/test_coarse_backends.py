"""The coarse backends on seeded clustered unit vectors: the exact scan against a sort of every
distance, FAISS against the BallTree, and the choice by collection size."""
import numpy as np
import pytest

from search.engine import coarse_backends
from search.engine.coarse_backends import (BALLTREE, FAISS, BallTreeBackend, FaissBackend, backend_class,
                                           choose_backend, exact_nearest)
from search.engine.config import EngineConfig
from search.engine.errors import SearchIndexError
from search.engine.scale_benchmark import synthetic_vectors


def settings(**changes):
    return EngineConfig().replace(**changes).coarse_settings()


def brute_force(vectors, query, n):
    distances = np.linalg.norm(np.asarray(vectors, dtype=np.float64) - query, axis=1)
    order = np.argsort(distances, kind="stable")[:n]
    return distances[order], order


def test_exact_scan_matches_a_full_sort_across_blocks_and_row_subsets(monkeypatch):
    vectors = synthetic_vectors(1000, 48, seed=1)
    queries = synthetic_vectors(3, 48, seed=2)
    monkeypatch.setattr(coarse_backends, "SCAN_BLOCK", 128)  # eight blocks, the best carried across them
    distances, positions = exact_nearest(vectors, queries, 25)
    for q, query in enumerate(queries):
        want_d, want_p = brute_force(vectors, query, 25)
        np.testing.assert_array_equal(positions[q], want_p)
        np.testing.assert_allclose(distances[q], want_d, atol=1e-5)
    rows = np.arange(0, 1000, 3)
    _, sub = exact_nearest(vectors, queries[0], 10, rows)
    np.testing.assert_array_equal(sub[0], rows[brute_force(vectors[rows], queries[0], 10)[1]])


@pytest.mark.parametrize("reduce_dim", [0, 16])  # float16 lists; int8 lists of a PCA-16 projection, re-scored
def test_faiss_finds_what_the_ball_tree_finds_and_reports_exact_distances(reduce_dim):
    vectors = synthetic_vectors(6000, 64, seed=3).astype(np.float16)  # stored as a FAISS build stores them
    queries = synthetic_vectors(20, 64, seed=4, near=vectors)
    tree = BallTreeBackend.build(vectors, settings())
    ivf = FaissBackend.build(vectors, settings(faiss_nprobe=1, faiss_coverage=4, faiss_reduce_dim=reduce_dim,
                                               faiss_refine=2))
    assert ivf.refined == bool(reduce_dim)
    assert ivf.lists.nlist == FaissBackend.lists_for(6000, settings()) == int(np.sqrt(6000))
    short = 200 if reduce_dim else 100  # re-scored: twice the 100 asked
    assert ivf.probes_for(100) == int(np.ceil(4 * short / (6000 / 77)))  # lists holding 4 x the short list
    tree_d, tree_p = tree.search(queries, 100)
    ivf_d, ivf_p = ivf.search(queries, 100)
    recall = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(tree_p, ivf_p)])
    assert recall >= 0.95, recall
    assert (ivf_p[:, 0] == tree_p[:, 0]).all()  # each query's source vector comes first in both
    # distances computed from the same float16 values as the stored vectors: a result's true distance
    true = np.linalg.norm(vectors[ivf_p].astype(np.float32) - queries[:, None, :], axis=2)
    np.testing.assert_allclose(ivf_d, true, atol=2e-3)
    assert (np.diff(ivf_d, axis=1) >= 0).all()
    # one probed list cannot hold 100 neighbours of every query: the exact scan answers instead
    narrow = FaissBackend(ivf.index, vectors, settings(faiss_nprobe=1, faiss_coverage=0.01, faiss_refine=1))
    assert narrow.probes_for(100) == 1
    np.testing.assert_array_equal(narrow.search(queries, 100)[1], tree_p)



class CountingIndex:
    """A FAISS index that counts its searches: the parts of a split search and their second tries."""

    def __init__(self, index):
        self.wrapped, self.searches = index, 0

    def search(self, *args, **kwargs):
        self.searches += 1
        return self.wrapped.search(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.wrapped, name)


def test_one_query_is_searched_in_two_parts_that_share_its_short_list():
    """A re-scored index answers one query on faiss_parts threads, each over a stretch of every
    list (the lists filled in a shuffled order, so a part is not a stretch of the collection),
    re-scoring faiss_refine x n / parts each: as good an answer as one search, two searches a query."""
    vectors = synthetic_vectors(6000, 64, seed=11).astype(np.float16)
    queries = synthetic_vectors(20, 64, seed=12, near=vectors)
    config = dict(faiss_reduce_dim=16, faiss_nprobe=4, faiss_coverage=4, faiss_refine=4)
    one = FaissBackend.build(vectors, settings(faiss_parts=1, **config))
    two = FaissBackend(one.index, vectors, settings(**config))
    assert settings().faiss_parts == 2 and two.parts == 2
    selectors, part_of = two.part_selectors()
    sizes = np.bincount(part_of, minlength=2)
    assert abs(sizes[0] - sizes[1]) <= one.lists.nlist  # half of every list each
    assert abs(np.flatnonzero(part_of == 0).mean() - 3000) < 300  # not the first half of the collection
    members = [selectors[p].is_member(int(i)) for p in (0, 1) for i in (np.flatnonzero(part_of == p)[:5])]
    assert members == [True] * 5 + [True] * 5
    assert not selectors[1].is_member(int(np.flatnonzero(part_of == 0)[0]))
    two.index = CountingIndex(two.index)
    recalls = {"one": [], "two": []}
    for query in queries:
        want_d, want_p = brute_force(vectors.astype(np.float32), query, 100)
        for name, backend in (("one", one), ("two", two)):
            distances, positions = backend.search(query, 100)
            recalls[name].append(len(np.intersect1d(positions[0], want_p)) / 100)
            assert positions[0, 0] == want_p[0]
            assert len(set(positions[0])) == 100 and (np.diff(distances[0]) >= 0).all()
        true = np.linalg.norm(vectors[positions[0]].astype(np.float32) - query, axis=1)
        np.testing.assert_allclose(distances[0], true, atol=2e-3)
    assert np.mean(recalls["two"]) >= 0.95 and np.mean(recalls["two"]) >= np.mean(recalls["one"]) - 0.01, recalls
    assert two.index.searches == 2 * len(queries)  # no part gave so much more than half that it was searched again
    # a short list no longer than the n asked (FAISS_REFINE 1): each part re-scores n
    plain = FaissBackend(one.index, vectors, settings(**dict(config, faiss_refine=1)))
    assert plain.search(queries[0], 100)[1][0, 0] == one.search(queries[0], 100)[1][0, 0]
    # several queries at once: one FAISS search, which spreads them over its threads itself
    np.testing.assert_array_equal(two.search(queries[:3], 100)[1], one.search(queries[:3], 100)[1])
    assert two.index.searches == 2 * len(queries) + 1


def test_a_part_that_gives_most_of_the_answer_is_searched_again_deeper():
    """An index whose lists were filled in the collection's order (as builds before the shuffled
    fill did) over a collection whose look-alikes sit together: one part gives nearly the whole
    answer, its short list was too short for that, and it is searched again with one as deep as a
    single search would have re-scored for it."""
    import faiss

    vectors = synthetic_vectors(6000, 64, seed=13)
    vectors = vectors[np.argsort(np.linalg.norm(vectors - vectors[0], axis=1))].astype(np.float16)
    index = faiss.IndexRefine(faiss.index_factory(64, "PCA16,IVF77,SQ8"), faiss.IndexScalarQuantizer(
        64, faiss.ScalarQuantizer.QT_fp16))
    index.train(vectors.astype(np.float32))
    index.add(vectors.astype(np.float32))  # in order
    config = dict(faiss_reduce_dim=16, faiss_nprobe=4, faiss_coverage=4, faiss_refine=4)
    two = FaissBackend(index, vectors, settings(**config))
    query = synthetic_vectors(1, 64, seed=14, near=vectors[:1])[0]
    want_d, want_p = brute_force(vectors.astype(np.float32), query, 30)  # under half a list
    _, part_of = two.part_selectors()
    assert np.mean(part_of[want_p] == 0) > 0.8  # the first entries of their lists: mostly the first part
    two.index = CountingIndex(two.index)
    distances, positions = two.search(query, 30)
    assert two.index.searches == 3  # the two parts, then the first part again
    assert len(np.intersect1d(positions[0], want_p)) >= 28
    assert positions[0, 0] == want_p[0] and (np.diff(distances[0]) >= 0).all()
    one = FaissBackend(index, vectors, settings(faiss_parts=1, **config))
    assert len(np.intersect1d(positions[0], want_p)) >= len(np.intersect1d(one.search(query, 30)[1][0], want_p))

def test_faiss_answers_a_deep_request_exactly_and_round_trips_through_its_file(tmp_path):
    vectors = synthetic_vectors(2000, 32, seed=5)
    query = vectors[7]
    ivf = FaissBackend.build(vectors, settings(faiss_nprobe=1))
    ivf.save(tmp_path / "faiss.index")
    again = FaissBackend.load(tmp_path / "faiss.index", vectors, settings(faiss_nprobe=1))
    distances, positions = again.search(query, 1500)  # past half the collection: the exact scan
    want_d, want_p = brute_force(vectors, query, 1500)
    np.testing.assert_array_equal(positions[0], want_p)
    with pytest.raises(SearchIndexError, match="holds 2000 vectors"):
        FaissBackend.load(tmp_path / "faiss.index", vectors[:1999], settings())
    (tmp_path / "broken.index").write_bytes(b"not an index")
    with pytest.raises(SearchIndexError, match="not a readable FAISS index"):
        FaissBackend.load(tmp_path / "broken.index", vectors, settings())


def test_a_rescored_faiss_index_keeps_its_float16_store_in_the_vectors_file_mapped_or_read(tmp_path):
    """A re-scored FAISS variant is written as its inverted file plus one float16 store that is
    also the build's vectors file (the vectors on disk once); it loads read into memory or, from
    faiss_map_min_images up, mapped from the file (shared by the workers of a machine), with the
    same answers as the index built. An index written whole (builds made before) still loads."""
    from search.engine import layout
    from search.engine.coarse_backends import save_variants
    from search.engine.stored import RowFile

    vectors = synthetic_vectors(3000, 64, seed=6).astype(np.float16)
    queries = synthetic_vectors(5, 64, seed=7, near=vectors)
    config = settings(faiss_reduce_dim=16, faiss_nprobe=2)
    built = FaissBackend.build(vectors, config)
    assert built.refined
    want_d, want_p = built.search(queries, 50)
    assert save_variants(tmp_path, {"hybrid": vectors}, FAISS, config) == {}
    store = layout.vector_store_file(tmp_path, "hybrid")
    assert layout.stored_vectors_file(tmp_path, "hybrid") == store and not layout.vectors_file(tmp_path, "hybrid").exists()
    rows = RowFile(store)
    assert rows.faiss_store and rows.shape == (3000, 64) and rows.dtype == np.float16
    np.testing.assert_array_equal(rows[[5, 6, 2999]], vectors[[5, 6, 2999]])
    np.testing.assert_array_equal(np.asarray(rows), vectors)
    coarse = layout.coarse_file(tmp_path, "hybrid", FAISS)
    assert coarse.stat().st_size < store.stat().st_size / 2  # no float16 copy: int8 codes of a PCA-16 projection
    read = FaissBackend.load(coarse, rows, config)
    mapped = FaissBackend.load(coarse, rows, settings(faiss_reduce_dim=16, faiss_nprobe=2, faiss_map_min_images=3000))
    assert (read.refined, read.mapped, mapped.refined, mapped.mapped) == (True, False, True, True)
    assert settings().faiss_map_min_images == 100_000
    for backend in (read, mapped):
        distances, positions = backend.search(queries, 50)
        np.testing.assert_array_equal(positions, want_p)
        np.testing.assert_array_equal(distances, want_d)
    # written whole, with the vectors in a .npy beside it
    built.save(tmp_path / "whole.index")
    np.save(tmp_path / "whole.npy", vectors)
    whole = FaissBackend.load(tmp_path / "whole.index", RowFile(tmp_path / "whole.npy"), config)
    np.testing.assert_array_equal(whole.search(queries, 50)[1], want_p)
    # a store that does not match its index, a store cut short
    (tmp_path / "other").mkdir()
    save_variants(tmp_path / "other", {"hybrid": vectors[:2000]}, FAISS, config)
    with pytest.raises(SearchIndexError, match="holds 2000 vectors"):
        FaissBackend.load(coarse, RowFile(layout.vector_store_file(tmp_path / "other", "hybrid")), config)
    cut = tmp_path / "cut.faiss"
    cut.write_bytes(store.read_bytes()[:-64])
    with pytest.raises(SearchIndexError, match="cut.faiss is damaged"):
        RowFile(cut)


def test_variants_that_are_halves_of_the_hybrid_one_are_re_scored_from_its_store(tmp_path):
    """The penultimate and instance vectors are the hybrid ones' halves, scaled: a FAISS build keeps
    no float16 copy of them. Their lists are over those columns; their short lists are re-scored
    from the hybrid store, with their own distances; their rows are read through it."""
    from search.engine import layout
    from search.engine.coarse_backends import SharedColumns, save_variants, stored_rows
    from search.engine.features import hybrid_vectors
    from search.engine.index import variant_shares

    penultimate, instance = synthetic_vectors(3000, 48, seed=8), synthetic_vectors(3000, 32, seed=9)
    vectors = {"penultimate": penultimate, "instance": instance,
               "hybrid": hybrid_vectors(penultimate, instance, 0.3)}
    vectors = {k: v.astype(np.float16) for k, v in vectors.items()}  # as a FAISS build stores them
    shares = variant_shares({k: v.shape[1] for k, v in vectors.items()}, 0.3)
    assert (shares["penultimate"].start, shares["penultimate"].stop, shares["instance"].stop) == (0, 48, 80)
    config = settings(faiss_reduce_dim=16, faiss_nprobe=2, faiss_coverage=8)
    (tmp_path / "own").mkdir()
    assert save_variants(tmp_path / "own", vectors, FAISS, config) == {}
    used = save_variants(tmp_path, vectors, FAISS, config, shares)
    assert set(used) == {"penultimate", "instance"} and used["instance"]["source"] == "hybrid"
    assert sorted(p.name for p in tmp_path.glob("vectors_*")) == ["vectors_hybrid.faiss"]
    saved = sum(p.stat().st_size for p in (tmp_path / "own").glob("*")) - sum(
        p.stat().st_size for p in tmp_path.glob("*.*"))
    assert saved >= 0.99 * 3000 * (48 + 32) * 2  # the two float16 copies (less two small column maps)
    rows = stored_rows(tmp_path, {"penultimate": 48, "instance": 32, "hybrid": 80}, used)
    own_rows = stored_rows(tmp_path / "own", {"penultimate": 48, "instance": 32, "hybrid": 80}, {})
    for variant, own in (("penultimate", penultimate), ("instance", instance)):
        assert isinstance(rows[variant], SharedColumns) and rows[variant].shape == own.shape
        np.testing.assert_allclose(rows[variant][[0, 5, 2999]], own[[0, 5, 2999]], atol=1e-3)
        np.testing.assert_allclose(np.asarray(rows[variant]), own, atol=1e-3)
        shared = FaissBackend.load(layout.coarse_file(tmp_path, variant, FAISS), rows[variant], config)
        alone = FaissBackend.load(layout.coarse_file(tmp_path / "own", variant, FAISS), own_rows[variant], config)
        assert shared.refined and shared.share is not None and alone.share is None
        queries = synthetic_vectors(10, own.shape[1], seed=10, near=own)
        distances, positions = shared.search(queries, 60)
        exact_d, exact_p = exact_nearest(np.asarray(rows[variant]), queries, 60)
        recall = np.mean([len(set(a) & set(b)) / 60 for a, b in zip(positions, exact_p)])
        assert recall >= 0.95, recall
        assert (positions[:, 0] == exact_p[:, 0]).all()
        true = np.linalg.norm(np.asarray(rows[variant])[positions] - queries[:, None, :], axis=2)
        np.testing.assert_allclose(distances, true, atol=2e-3)  # its own distances, not the hybrid's
        assert (np.diff(distances, axis=1) >= -1e-6).all()
        single = np.array([shared.search(query, 60)[1][0] for query in queries])  # each in two parts
        assert np.mean([len(set(a) & set(b)) / 60 for a, b in zip(single, exact_p)]) >= 0.95
        alone_positions = alone.search(queries, 60)[1]
        assert np.mean([len(set(a) & set(b)) / 60 for a, b in zip(positions, alone_positions)]) >= 0.95
        # a deep request is the exact scan over the rows read through the hybrid store
        np.testing.assert_array_equal(shared.search(queries[:1], 2000)[1], exact_nearest(rows[variant], queries[:1],
                                                                                          2000)[1])
    with pytest.raises(SearchIndexError, match="stored in 'hybrid', which it lacks"):
        stored_rows(tmp_path, {"penultimate": 48}, {"penultimate": used["penultimate"]})


def test_the_backend_is_chosen_by_collection_size_unless_set():
    assert choose_backend(settings(), 49_999) == BALLTREE
    assert choose_backend(settings(), 50_000) == FAISS
    assert choose_backend(settings(coarse_backend="faiss"), 10) == FAISS
    assert choose_backend(settings(coarse_backend="balltree", faiss_min_images=1), 10**6) == BALLTREE
    chosen = backend_class(choose_backend(settings(faiss_min_images=500), 700))
    assert isinstance(chosen.build(synthetic_vectors(700, 8, seed=0), settings()), FaissBackend)
    with pytest.raises(SearchIndexError, match="unknown coarse backend 'annoy'"):
        choose_backend(settings(coarse_backend="annoy"), 10)


def test_the_scale_benchmark_compares_one_query_in_one_part_and_in_two(tmp_path):
    from search.engine.scale_benchmark import measure_backends

    vectors = synthetic_vectors(3000, 64, seed=15).astype(np.float16)
    queries = synthetic_vectors(4, 64, seed=16, near=vectors)
    rows = measure_backends(vectors, queries, 100, settings(faiss_reduce_dim=16), tmp_path, balltree_max=0,
                            parts=(1, 2))
    assert [r.backend for r in rows] == ["exact scan", "faiss", "faiss"]
    one, two = rows[1:]
    assert one.detail.endswith("one query in 1 part") and two.detail.endswith("one query in 2 parts")
    assert "PCA16,IVF54,SQ8 re-scored from float16" in one.detail
    assert one.recall >= 0.95 and two.recall >= 0.95


def test_the_ball_tree_answers_several_queries_together_as_it_answers_each():
    vectors = synthetic_vectors(3000, 64, seed=5)
    queries = synthetic_vectors(4, 64, seed=6, near=vectors)
    tree = BallTreeBackend.build(vectors, settings())
    together_d, together_p = tree.search(queries, 300)  # walked down the tree together (dualtree)
    for query, distances, positions in zip(queries, together_d, together_p):
        one_d, one_p = tree.search(query, 300)
        np.testing.assert_array_equal(positions, one_p[0])
        np.testing.assert_allclose(distances, one_d[0], rtol=1e-6)
    exact = np.argsort(np.linalg.norm(vectors[None] - queries[:, None], axis=2), axis=1, kind="stable")[:, :300]
    np.testing.assert_array_equal(together_p, exact)
