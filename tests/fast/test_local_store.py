"""The local store's file layout on synthetic rows: float16 keypoints where float16 holds them."""
import numpy as np
from sklearn.decomposition import PCA

from search.engine.local_store import LocalStore, StackedLocalStore, StoredFeatures, _write_rows


def _rows(width: float) -> list[StoredFeatures]:
    rng = np.random.default_rng(0)
    keypoints = rng.uniform(0, width, (50, 2)).astype(np.float32)
    descriptors = rng.standard_normal((50, 8)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    return [StoredFeatures(keypoints[:30], descriptors[:30]), StoredFeatures(keypoints[30:], descriptors[30:])]


def test_keypoints_are_float16_unless_an_image_is_wider_than_float16_holds(tmp_path):
    pca = PCA(n_components=8).fit(np.random.default_rng(1).standard_normal((40, 8)))
    meta = {"image_ids": ["a", "b"], "fingerprints": ["1", "2"], "extractor": "x"}
    for name, width, dtype, tolerance in (("usual", 4000.0, np.float16, 2 ** -11), ("panorama", 70000.0, np.float32, 0)):
        rows = _rows(width)
        (tmp_path / name).mkdir()
        _write_rows(tmp_path / name, rows, pca, meta)
        store = LocalStore.open(tmp_path / name)
        assert store.arrays["keypoints"].dtype == dtype
        for position, row in enumerate(rows):
            got = store.features(position)
            np.testing.assert_allclose(got.keypoints, row.keypoints, rtol=tolerance)
            np.testing.assert_allclose(got.descriptors, row.descriptors, atol=1e-3)


def test_candidates_read_every_descriptor_at_once_and_keypoints_only_when_asked(tmp_path):
    """What verification reads: positions in any order (repeats too), across a build's store and a
    delta's (``StackedLocalStore``), the same rows as ``features`` gives one image at a time."""
    pca = PCA(n_components=8).fit(np.random.default_rng(1).standard_normal((40, 8)))
    stores = []
    for name, width in (("build", 500.0), ("delta", 900.0)):
        (tmp_path / name).mkdir()
        rows = _rows(width) + [StoredFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 8), np.float32))]
        _write_rows(tmp_path / name, rows, pca, {"image_ids": ["a", "b", "c"], "fingerprints": ["1", "2", "3"]})
        stores.append(LocalStore.open(tmp_path / name))
    for store in (stores[0], StackedLocalStore(stores)):
        positions = np.array([1, 0, len(store) - 1, 2, 1])
        candidates = store.candidates(positions)
        assert len(candidates) == 5 and not candidates.keypoints.read  # no keypoints read yet
        for i, position in enumerate(positions):
            expected = store.features(int(position))
            assert candidates.descriptors[i].dtype == np.float16
            np.testing.assert_array_equal(candidates.descriptors[i].astype(np.float32), expected.descriptors)
        np.testing.assert_array_equal(candidates.keypoints[4], store.features(1).keypoints)
        assert list(candidates.keypoints.read) == [4]  # only the one asked for
        np.testing.assert_array_equal(candidates.keypoints[-1], candidates.keypoints[4])
        assert [len(k) for k in candidates.keypoints] == [len(store.features(int(p))) for p in positions]
        # a pre-score's read: the first 25 rows of each at once, the whole of one only when asked
        headed = store.candidates(positions, head_rows=25)
        whole = [store.features(int(p)).descriptors for p in positions]
        for i in range(len(positions)):
            np.testing.assert_array_equal(headed.prescored[i].astype(np.float32), whole[i][:25])
        assert sorted(headed.descriptors.read) == [i for i, d in enumerate(whole) if len(d) <= 25]  # heads are all they have
        for i in range(len(positions)):
            np.testing.assert_array_equal(headed.descriptors[i].astype(np.float32), whole[i])
        assert len(whole[1]) == 30 and 1 in headed.descriptors.read  # read when asked for
