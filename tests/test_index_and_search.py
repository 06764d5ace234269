"""Features, ball trees, the persisted index and the coarse search, on real images."""
import json
import shutil

import numpy as np
import pytest

from search.engine.errors import SearchIndexError
from search.engine.images import open_image
from search.engine.index import build_index, load_index
from search.engine.layout import active_build

from .conftest import corel_image


def test_feature_shapes_and_pca_dimension(tiny_engine):
    index = tiny_engine.index
    assert index.manifest["variants"] == {"logits": 4, "pca": 32, "penultimate": 1280}
    assert index.vectors["penultimate"].shape == (40, 1280)
    assert index.vectors["pca"].shape == (40, 32)
    assert index.vectors["logits"].shape == (40, 4)
    for matrix in index.vectors.values():
        np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-4)


def test_round_trip_keeps_ids_paths_and_vectors(tiny_engine, tiny_collection, tiny_model, engine_config):
    again = load_index(engine_config.index_root, expected_checksum=tiny_model.checksum)
    assert again.image_ids == [r.image_id for r in tiny_collection.records]
    assert again.relpaths == [r.relpath for r in tiny_collection.records]
    assert again.labels == [r.label for r in tiny_collection.records]
    for variant in ("logits", "pca", "penultimate"):
        np.testing.assert_array_equal(again.vectors[variant], tiny_engine.index.vectors[variant])
    manifest = again.manifest
    assert manifest["model_checksum"] == tiny_model.checksum
    assert manifest["collection_size"] == 40 and manifest["backbone"] == "efficientnet_lite0"
    assert manifest["created"]


def test_query_vectors_match_indexed_vectors(tiny_engine):
    vectors = tiny_engine.query_features(open_image(tiny_engine.index.path_of(5)), local=False).vectors
    for variant in ("logits", "pca", "penultimate"):
        np.testing.assert_allclose(vectors[variant][0], tiny_engine.index.vectors[variant][5], atol=1e-4)


def with_settings(engine, **changes):
    from search.engine.pipeline import RetrievalEngine

    return RetrievalEngine(engine.model, engine.index, "cpu", engine.config.replace(**changes), engine.attention)


@pytest.mark.parametrize("expansion", [0, 5])
@pytest.mark.parametrize("variant", ["logits", "pca", "penultimate"])
def test_search_returns_the_query_itself_first(tiny_engine, variant, expansion):
    engine = with_settings(tiny_engine, query_expansion=expansion)
    for position in (0, 17, 39):
        response = engine.search(tiny_engine.index.path_of(position), variant, k=5)
        assert len(response.results) == 5
        first = response.results[0]
        assert first.image_id == tiny_engine.index.image_ids[position]
        if not expansion:  # with it, distances are to the expanded query
            assert first.distance < 1e-3
        distances = [r.distance for r in response.results]
        assert distances == sorted(distances)
        assert [r.rank for r in response.results] == [1, 2, 3, 4, 5]


def test_exclude_drops_the_query_from_its_results(tiny_engine):
    query_id = tiny_engine.index.image_ids[3]
    response = tiny_engine.search(tiny_engine.index.path_of(3), exclude_ids={query_id}, k=10)
    assert query_id not in [r.image_id for r in response.results]
    assert len(response.results) == 10


def test_mismatched_model_is_refused(tiny_index_build):
    with pytest.raises(SearchIndexError, match="reindex with the current model"):
        load_index(tiny_index_build, expected_checksum="0" * 64)


def test_tampered_or_incomplete_index_is_refused(tiny_index_build, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_index_build, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["collection_size"] = 41
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SearchIndexError, match="lists 40 images but the manifest says 41"):
        load_index(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(SearchIndexError, match="no index at"):
        load_index(copy)
    with pytest.raises(SearchIndexError, match="run the 'index' command first"):
        load_index(tmp_path / "empty-root")


def test_several_vectors_are_searched_at_once_as_each_alone_less_the_excluded(tiny_engine):
    index = tiny_engine.index
    vectors = np.asarray(index.vectors["pca"][[3, 17, 30]], dtype=np.float32)
    excluded = frozenset([index.image_ids[3], index.image_ids[5]])
    together = index.nearest_each(vectors, "pca", 12, excluded)
    assert len(together) == 3
    for vector, (positions, distances) in zip(vectors, together):
        alone = index.nearest(vector, "pca", 12, excluded)
        np.testing.assert_array_equal(positions, alone[0])
        np.testing.assert_allclose(distances, alone[1], rtol=1e-6)
        assert len(positions) == 12 and not {3, 5} & set(positions.tolist())
    assert together[1][0][0] == 17  # an indexed vector finds its own image first


def test_unknown_variant_is_a_clear_error(tiny_engine):
    with pytest.raises(SearchIndexError, match="has no 'colour' variant"):
        tiny_engine.index.coarse_candidates(np.zeros(4), "colour", 3)


def test_faiss_and_balltree_builds_agree_on_the_tiny_index(tiny_engine, tiny_collection, tiny_model,
                                                            engine_config, tmp_path):
    """The same collection built with each backend (FAISS forced below its size threshold) ranks
    every image's query alike; the FAISS build stores float16 vectors and says which backend it used.
    Re-scored from a float16 store (the PCA-4 lists' short list here holds all 40), its vectors are
    that store: on disk once."""
    from search.engine.pipeline import RetrievalEngine

    config = engine_config.replace(coarse_backend="faiss", faiss_reduce_dim=4, faiss_refine=8)
    build = build_index(tiny_collection, tiny_model, tmp_path / "faiss-index", config, "cpu",
                        variants=("pca", "penultimate"))
    index = load_index(build, coarse_settings=config.coarse_settings())
    assert index.manifest["coarse"] == {"pca": "faiss", "penultimate": "faiss"}
    assert {p.name for p in build.glob("faiss_*.index")} == {"faiss_pca.index", "faiss_penultimate.index"}
    assert {p.name for p in build.glob("vectors_*")} == {"vectors_pca.faiss", "vectors_penultimate.faiss"}
    assert not list(build.glob("tree_*"))
    assert all(index.backend(v).refined for v in ("pca", "penultimate"))
    assert tiny_engine.index.backend_name("pca") == "balltree"
    faiss_engine = RetrievalEngine(tiny_model, index, "cpu", config)
    for variant in ("pca", "penultimate"):
        assert index.vectors[variant].dtype == np.float16
        np.testing.assert_allclose(index.vectors[variant], tiny_engine.index.vectors[variant], atol=1e-3)
        for position in range(0, 40, 3):
            vectors = {variant: np.asarray(tiny_engine.index.vectors[variant][position:position + 1])}
            # 5: through the inverted file (its short list of 10 is under half the index); 40: the exact scan
            for depth in (5, 40):
                tree_order, tree_distances = tiny_engine.coarse_order(vectors, variant, depth)
                faiss_order, faiss_distances = faiss_engine.coarse_order(vectors, variant, depth)
                assert faiss_order[0] == tree_order[0] == position
                # float16 storage: distances within a few thousandths (most near 0, where the square root
                # magnifies), and at most two near-equal ones swapped
                np.testing.assert_allclose(faiss_distances, tree_distances, atol=5e-3)
                assert len(set(faiss_order) & set(tree_order)) >= depth - 1


def test_a_faiss_build_keeps_the_penultimate_and_instance_vectors_inside_the_hybrid_ones(
        tiny_fine_engine, tiny_collection, tiny_models, engine_config, tmp_path):
    """At FAISS scale (forced here) the penultimate and instance variants have no float16 store of
    their own: the manifest says where in the hybrid store they are, and they rank as the BallTree
    build's own vectors do."""
    from search.engine.pipeline import RetrievalEngine
    from search.engine.workflows import instance_describer

    config = engine_config.replace(coarse_backend="faiss", faiss_reduce_dim=4, faiss_refine=8)
    build = build_index(tiny_collection, tiny_models.model, tmp_path / "faiss-index", config, "cpu",
                        describer=instance_describer(config, "cpu"))
    index = load_index(build, coarse_settings=config.coarse_settings())
    width = tiny_models.model.backbone.feature_dim
    assert index.manifest["stored_in"] == {
        "penultimate": {"source": "hybrid", "start": 0, "stop": width,
                        "factor": pytest.approx(config.hybrid_weight ** 0.5)},
        "instance": {"source": "hybrid", "start": width, "stop": index.manifest["variants"]["hybrid"],
                     "factor": pytest.approx((1 - config.hybrid_weight) ** 0.5)}}
    assert config.hybrid_weight == 0.5
    # (the four logits are listed as float16, no wider than the PCA-4 projection: a .npy beside them)
    assert {p.name for p in build.glob("vectors_*")} == {"vectors_hybrid.faiss", "vectors_pca.faiss",
                                                         "vectors_logits.npy"}
    fine = tiny_fine_engine.index
    faiss_engine = RetrievalEngine(tiny_models.model, index, "cpu", config)
    for variant in ("penultimate", "instance", "hybrid"):
        np.testing.assert_allclose(index.row_vectors(variant, range(40)), fine.row_vectors(variant, range(40)),
                                   atol=1e-3)
        for position in range(0, 40, 7):
            vectors = {variant: fine.row_vectors(variant, [position])}
            tree_order, tree_distances = tiny_fine_engine.coarse_order(vectors, variant, 5)
            faiss_order, faiss_distances = faiss_engine.coarse_order(vectors, variant, 5)
            assert faiss_order[0] == tree_order[0] == position
            np.testing.assert_allclose(faiss_distances, tree_distances, atol=5e-3)
            assert len(set(faiss_order) & set(tree_order)) >= 4


def test_a_rebuild_extracts_only_new_or_changed_images(tiny_model, engine_config, tmp_path):
    """Global vectors are reused by file fingerprint when the model is the same: an unchanged
    collection runs no network, a changed one only on what changed, a retrained model on everything."""
    import dataclasses

    from search.engine.collection import scan_collection

    folder = tmp_path / "photos"
    folder.mkdir()
    for n in range(6):
        shutil.copy(corel_image(n * 150), folder / f"{n}.jpg")
    root = tmp_path / "index"
    first = load_index(build_index(scan_collection(folder), tiny_model, root, engine_config, "cpu"))
    assert first.manifest["global"] == {"reused": 0, "extracted": 6}
    again = load_index(build_index(scan_collection(folder), tiny_model, root, engine_config, "cpu"))
    assert again.manifest["global"] == {"reused": 6, "extracted": 0}
    for variant in ("logits", "pca", "penultimate"):
        np.testing.assert_array_equal(again.vectors[variant], first.vectors[variant])

    shutil.copy(corel_image(901), folder / "2.jpg")  # replaced by another picture
    (folder / "4.jpg").unlink()
    shutil.copy(corel_image(902), folder / "new.jpg")
    changed = load_index(build_index(scan_collection(folder), tiny_model, root, engine_config, "cpu"))
    assert changed.manifest["global"] == {"reused": 4, "extracted": 2}
    assert changed.relpaths == ["0.jpg", "1.jpg", "2.jpg", "3.jpg", "5.jpg", "new.jpg"]
    fresh = load_index(build_index(scan_collection(folder), tiny_model, tmp_path / "fresh", engine_config, "cpu"))
    np.testing.assert_allclose(changed.vectors["penultimate"], fresh.vectors["penultimate"], atol=1e-5)
    assert not np.allclose(changed.vectors["penultimate"][2], first.vectors["penultimate"][2], atol=1e-3)

    retrained = dataclasses.replace(tiny_model, checksum="f" * 64)
    after = load_index(build_index(scan_collection(folder), retrained, root, engine_config, "cpu"))
    assert after.manifest["global"] == {"reused": 0, "extracted": 6}


def test_new_build_switches_active_and_old_build_stays_loadable(
        tiny_collection, tiny_model, engine_config, tmp_path):
    root = tmp_path / "index"
    first = build_index(tiny_collection, tiny_model, root, engine_config, "cpu", variants=("penultimate",))
    assert active_build(root) == first.resolve()
    second = build_index(tiny_collection, tiny_model, root, engine_config, "cpu", variants=("penultimate",))
    assert active_build(root) == second.resolve()
    assert len(load_index(first)) == 40  # a search that started on it can finish


def test_unreadable_images_are_skipped_and_reported(tiny_model, engine_config, tmp_path):
    from search.engine.collection import scan_collection

    folder = tmp_path / "mixed"
    folder.mkdir()
    for n in (0, 1, 2):
        (folder / f"{n}.jpg").symlink_to(corel_image(n))
    (folder / "broken.jpg").write_bytes(corel_image(3).read_bytes()[:2000])
    (folder / "text.png").write_text("not a png")
    build = build_index(scan_collection(folder), tiny_model, tmp_path / "idx", engine_config, "cpu",
                        variants=("penultimate", "logits"))
    index = load_index(build)
    assert index.relpaths == ["0.jpg", "1.jpg", "2.jpg"]
    skipped = dict(index.manifest["skipped"])
    assert set(skipped) == {"broken.jpg", "text.png"}
    assert "truncated" in skipped["broken.jpg"] and "not an image" in skipped["text.png"]


def test_query_expansion_searches_with_the_average_of_the_nearest(tiny_engine):
    index = tiny_engine.index
    plain = with_settings(tiny_engine, query_expansion=0)
    expanded = with_settings(tiny_engine, query_expansion=3, query_expansion_alpha=0.0)
    exclude = frozenset({index.image_ids[12]})
    vectors = plain.query_features(open_image(index.path_of(12)), local=False).vectors
    nearest, _ = plain.coarse_order(vectors, "pca", 3, exclude)
    query = vectors["pca"][0] + np.asarray(index.vectors["pca"])[nearest].sum(0)
    query /= np.linalg.norm(query)
    distances = np.linalg.norm(np.asarray(index.vectors["pca"]) - query, axis=1)
    distances[12] = np.inf
    positions, got = expanded.coarse_order(vectors, "pca", 10, exclude)
    np.testing.assert_array_equal(positions, np.argsort(distances)[:10])
    np.testing.assert_allclose(got, np.sort(distances)[:10], atol=1e-4)


def test_alpha_query_expansion_weights_neighbours_by_similarity(tiny_engine):
    index = tiny_engine.index
    plain = with_settings(tiny_engine, query_expansion=0)
    weighted = with_settings(tiny_engine, query_expansion=3, query_expansion_alpha=3.0)
    vectors = plain.query_features(open_image(index.path_of(5)), local=False).vectors
    nearest, near_distances = plain.coarse_order(vectors, "penultimate", 3)
    similarity = 1 - near_distances ** 2 / 2
    matrix = np.asarray(index.vectors["penultimate"])
    query = vectors["penultimate"][0] + (similarity[:, None] ** 3 * matrix[nearest]).sum(0)
    query /= np.linalg.norm(query)
    distances = np.linalg.norm(matrix - query, axis=1)
    positions, got = weighted.coarse_order(vectors, "penultimate", 10)
    np.testing.assert_array_equal(positions, np.argsort(distances)[:10])
    np.testing.assert_allclose(got, np.sort(distances)[:10], atol=1e-4)
    # the query itself is its own nearest (similarity 1, weight 1); the others weigh less than plain QE's 1
    assert nearest[0] == 5 and similarity[0] == pytest.approx(1, abs=1e-4) and (similarity[1:] ** 3 < 0.9).all()


def test_damaged_index_files_give_a_clear_error(tiny_fine_engine, tmp_path):
    """A truncated array or pickle, garbled JSON, a manifest without a key, a table of the wrong
    shape, a shorter but valid descriptors file: each is a SearchIndexError naming the file."""
    source = tiny_fine_engine.index.path

    def damaged(name, damage):
        copy = tmp_path / name
        shutil.copytree(source, copy)
        damage(copy)
        return copy

    def truncate(file):
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])

    def edit_manifest(change):
        def damage(build):
            manifest = json.loads((build / "manifest.json").read_text())
            change(manifest)
            (build / "manifest.json").write_text(json.dumps(manifest))
        return damage

    def shorter_descriptors(build):
        descriptors = np.load(build / "local" / "descriptors.npy")
        np.save(build / "local" / "descriptors.npy", descriptors[:-5])

    cases = {
        "vectors": (lambda b: truncate(b / "vectors_penultimate.npy"),
                    r"vectors_penultimate.npy is shorter than its header says"),
        "pca": (lambda b: truncate(b / "pca.joblib"), r"pca.joblib is damaged"),
        "manifest-json": (lambda b: (b / "manifest.json").write_text("{not json"), r"manifest.json is not valid JSON"),
        "manifest-key": (edit_manifest(lambda m: m.pop("variants")), r"manifest.json lacks variants"),
        "table": (lambda b: (b / "images.json").write_text('{"a": 1}'), r"images.json holds a JSON dict"),
        "table-row": (lambda b: (b / "images.json").write_text(json.dumps([{"id": "x"}] * 40)),
                      r"a row lacks its id, path or label"),
        "descriptors": (shorter_descriptors, r"do not match descriptors"),
        "offsets": (lambda b: truncate(b / "local" / "offsets.npy"), r"offsets.npy is damaged"),
    }
    for name, (damage, message) in cases.items():
        with pytest.raises(SearchIndexError, match=message):
            load_index(damaged(name, damage))
    # global vectors cut short under a loaded index: that read is a clear error, not a SIGBUS
    index = load_index(damaged("cut", lambda b: None))
    first = index.row_vectors("penultimate", [0, 1])
    truncate(index.path / "vectors_penultimate.npy")
    with pytest.raises(SearchIndexError, match="vectors_penultimate.npy was cut short after the index was loaded"):
        index.row_vectors("penultimate", [len(index) - 1])
    np.testing.assert_array_equal(index.row_vectors("penultimate", [0, 1]), first)
    # a tree is read when first searched: the error comes then, as clear
    index = load_index(damaged("tree", lambda b: truncate(b / "tree_pca.joblib")))
    with pytest.raises(SearchIndexError, match="tree_pca.joblib is damaged"):
        index.coarse_candidates(np.asarray(index.vectors["pca"][:1]), "pca", 3)
