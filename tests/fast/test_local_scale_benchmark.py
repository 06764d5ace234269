"""The synthetic local-feature store behind ``benchmark_scale --local-features``: a store the
product's reader opens, whose related images verify against the query and whose others do not,
timed from disk and from the page cache."""
import numpy as np

from search.engine.config import EngineConfig
from search.engine.local_scale_benchmark import RELATED_SHARE, measure_fine, synthetic_local_store
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
