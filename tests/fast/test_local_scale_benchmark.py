"""The synthetic local-feature store behind ``benchmark_scale --local-features``: a store the
product's reader opens, whose related images verify against the query and whose others do not,
timed from disk and from the page cache."""
import numpy as np

from search.engine.config import EngineConfig
from search.engine.local_scale_benchmark import (RELATED_SHARE, drop_from_page_cache, measure_fine,
                                                 synthetic_local_store)
from search.engine.local_store import LocalStore
from search.engine.verification import Candidates, verify_candidates


def test_a_synthetic_store_reads_like_a_real_one_and_its_related_images_verify(tmp_path):
    config = EngineConfig()
    query = synthetic_local_store(tmp_path / "local", 450, keypoints=120, dim=40, pool=200, seed=3)
    store = LocalStore.open(tmp_path / "local")
    assert len(store) == 450 and store.meta["total_keypoints"] == 450 * 120 and store.pca.n_components_ == 40
    first, again = store.features(7), store.features(207)  # the pool of 200 repeated
    np.testing.assert_array_equal(first.descriptors, again.descriptors)
    np.testing.assert_allclose(np.linalg.norm(first.descriptors, axis=1), 1.0, atol=2e-3)
    assert first.keypoints.shape == (120, 2) and (first.keypoints >= -200).all()
    results = verify_candidates(query.keypoints, query.descriptors,
                                Candidates.of((store.features(i).keypoints, store.features(i).descriptors)
                                              for i in range(200)), config.verify_settings())
    verified = [i for i, r in enumerate(results) if r.inliers >= config.min_inliers]
    assert len(verified) == int(RELATED_SHARE * 200)  # the related images, each with 30-60 % of the query
    assert all(results[i].inliers >= 30 for i in verified)
    figures = measure_fine(tmp_path / "local", query, 100, 3, config.verify_settings(), config.min_inliers)
    assert [f.phase for f in figures] == ["cold", "warm"]
    cold, warm = figures
    assert cold.with_min_inliers == warm.with_min_inliers > 0  # the same candidates, the same answers
    assert cold.n == 100 and cold.total_p50_ms >= cold.read_p50_ms > 0
    assert 120 * 42 * 2 <= cold.disk_bytes_per_image < 120 * 42 * 2 + 200


def test_candidates_read_on_threads_are_the_ones_read_one_after_another(tmp_path):
    from search.engine.local_store import read_candidates

    synthetic_local_store(tmp_path / "local", 600, keypoints=40, dim=8, pool=150, seed=4)
    store = LocalStore.open(tmp_path / "local")
    positions = np.random.default_rng(0).permutation(600)[:500]  # 500 reads: several threads' worth
    alone = read_candidates(store, positions, head_rows=25)
    drop_from_page_cache(tmp_path / "local")  # the reads now wait on the disk: most go to the threads
    together = read_candidates(store, positions, head_rows=25, threads=8)
    assert len(together.prescored) == 500
    for i in range(500):
        np.testing.assert_array_equal(together.prescored[i], alone.prescored[i])
        np.testing.assert_array_equal(together.prescored[i], store.features(int(positions[i])).descriptors[:25])
    np.testing.assert_array_equal(together.descriptors[3], store.features(int(positions[3])).descriptors)
    whole = store.candidates(positions[:200], threads=4)  # no heads: every row of each
    np.testing.assert_array_equal(whole.descriptors[150], store.features(int(positions[150])).descriptors)
    # a read the page cache answers at once gives the rows a plain read gives
    rows = store.arrays["descriptors"]
    wanted, out = rows.rows(40, 80), np.zeros((40, 8), dtype=np.float16)
    if rows.read_cached_into(40, out):  # just read, so in the cache where the system can tell
        np.testing.assert_array_equal(out, wanted)
    assert rows.read_cached_into(0, np.zeros((0, 8), dtype=np.float16))
