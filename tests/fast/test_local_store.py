"""The local store's file layout on synthetic rows: float16 keypoints where float16 holds them."""
import numpy as np
from sklearn.decomposition import PCA

from search.engine.local_store import LocalStore, StoredFeatures, _write_rows


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
