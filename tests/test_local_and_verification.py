"""Attention local features, the feature store, RANSAC verification and the
coarse-to-fine search, on real images (Corel-1k and OpenCV's graf/box pairs)."""
import hashlib
import os
import shutil
from dataclasses import replace

import cv2
import numpy as np
import pytest
from PIL import Image

from search.engine.errors import SearchIndexError
from search.engine import local_features
from search.engine.images import open_image, open_query_image
from search.engine.local_store import LocalStore, build_local_store
from search.engine.stored import RowFile
from search.engine.verification import verify_affine

from .conftest import DATASETS, configured, corel_image, pasted_on_food

PAIRS = DATASETS / "opencv-pairs"


def graf_homography() -> np.ndarray:
    storage = cv2.FileStorage(str(PAIRS / "H1to3p.xml"), cv2.FILE_STORAGE_READ)
    return storage.getFirstTopLevelNode().mat()


def test_attention_head_training_lowers_the_loss(tiny_attention):
    history = tiny_attention.info["history"]
    assert len(history) == 12
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert tiny_attention.path.is_file()


def test_the_heads_maps_are_taken_batch_by_batch_and_skip_unreadable_pictures(tiny_model, tmp_path, monkeypatch):
    """The attention head's training maps are computed a batch of decoded pictures at a time (none
    held beyond it) into one tensor: readable pictures keep their order, mirrored maps follow, a bad
    file is named."""
    import torch

    from search.engine import attention
    from search.engine.collection import ImageRecord

    monkeypatch.setattr(attention, "MAP_BATCH", 2)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a picture")
    records = [ImageRecord("a", "a.jpg", corel_image(301)), ImageRecord("b", "bad.jpg", bad),
               ImageRecord("c", "c.jpg", corel_image(402))]
    kept, maps, predicted, skipped = attention._feature_maps(tiny_model, records, "cpu", flips=True, predict=True)
    assert kept == [0, 2] and [relpath for relpath, _ in skipped] == ["bad.jpg"]
    assert maps.shape[0] == 4 and predicted.shape == (2,)
    _, alone, none, _ = attention._feature_maps(tiny_model, records[2:], "cpu", flips=False, predict=False)
    assert none is None and alone.shape[0] == 1
    assert torch.allclose(maps[1], alone[0], atol=1e-4)  # the second readable picture, as when alone
    assert not torch.allclose(maps[3], maps[1], atol=1e-2)  # its mirror image's map comes last
    _, without_the_bad_one, _, _ = attention._feature_maps(tiny_model, [records[0], records[2]], "cpu",
                                                           flips=True, predict=False)
    assert torch.allclose(without_the_bad_one, maps, atol=1e-4)  # the halves closed up around the gap


def test_keypoints_lie_inside_the_image_and_are_ranked(tiny_extractor):
    image = open_image(corel_image(300))
    features = tiny_extractor.extract(image)
    assert 100 <= len(features) <= tiny_extractor.settings.max_keypoints
    assert features.descriptors.shape == (len(features), 112)
    np.testing.assert_allclose(np.linalg.norm(features.descriptors, axis=1), 1.0, atol=1e-4)
    assert (features.keypoints >= 0).all()
    assert (features.keypoints[:, 0] <= image.width).all() and (features.keypoints[:, 1] <= image.height).all()
    assert (np.diff(features.scores) <= 0).all()  # best attention first
    assert len(set(np.round(features.scales, 3))) >= 3  # several pyramid levels contribute


def test_local_features_are_taken_without_cudnn_and_leave_it_as_it_was(tiny_extractor, monkeypatch):
    """cuDNN prepares its convolutions for every input size it has not seen (seconds each on a
    GPU: RESULTS.md), and every photo has its own size, so the pyramid's maps are taken without it."""
    import torch

    backbone = tiny_extractor.model.backbone
    seen, local_map = [], backbone.local_map

    def spy(level):
        seen.append(torch.backends.cudnn.enabled)
        return local_map(level)

    monkeypatch.setattr(backbone, "local_map", spy)
    before = torch.backends.cudnn.enabled
    assert len(tiny_extractor.extract(open_image(corel_image(301)))) > 0
    assert seen and not any(seen)  # every level of the pyramid
    assert torch.backends.cudnn.enabled == before


def test_a_small_query_is_enlarged_and_verifies_with_more_inliers(tiny_extractor):
    """A picture sent at 40 % of its size gives few keypoints on its own small pyramid; enlarged
    to ``min_side`` first it gives more, still in its own pixels, and they verify against the
    full-size picture with more inliers. A picture already that large is left as it is. (The
    pyramid alone: the global input's level, with ``global_level``, is the same size whatever the
    picture's.)"""
    tiny_extractor = replace(tiny_extractor, global_level=False)
    image = open_image(corel_image(300))
    small = image.resize((round(image.width * 0.4), round(image.height * 0.4)), Image.Resampling.BILINEAR)
    full = tiny_extractor.extract(image)
    plain, enlarged = tiny_extractor.extract(small), tiny_extractor.extract(small, min_side=256)
    assert len(enlarged) > len(plain)
    assert (enlarged.keypoints >= 0).all() and (enlarged.keypoints[:, 0] <= small.width).all()
    assert (enlarged.keypoints[:, 1] <= small.height).all()
    assert enlarged.scales.max() == pytest.approx(256 / small.width, rel=1e-3)
    inliers = [verify_affine(f.keypoints, f.descriptors, full.keypoints, full.descriptors).inliers
               for f in (plain, enlarged)]
    assert inliers[1] > inliers[0], inliers
    again = tiny_extractor.extract(image, min_side=256)  # 384 px wide: not enlarged
    np.testing.assert_array_equal(again.keypoints, full.keypoints)


def test_verification_recovers_a_synthetic_affine_warp(tiny_extractor):
    image = open_image(DATASETS / "boofcv-scene" / "image00.jpg")
    truth = cv2.getRotationMatrix2D((image.width / 2, image.height / 2), 12, 0.8)
    truth[:, 2] += (20, -10)
    warped = Image.fromarray(cv2.warpAffine(np.asarray(image), truth, image.size, borderValue=(128, 128, 128)))
    a, b = tiny_extractor.extract(image), tiny_extractor.extract(warped)
    v = verify_affine(a.keypoints, a.descriptors, b.keypoints, b.descriptors)
    assert v.inliers >= 40, v
    grid = np.stack(np.meshgrid(np.linspace(120, 360, 5), np.linspace(160, 480, 5)), -1).reshape(-1, 2)
    expected = grid @ truth[:, :2].T + truth[:, 2]
    fitted = grid @ v.affine[:, :2].T + v.affine[:, 2]
    assert np.median(np.linalg.norm(expected - fitted, axis=1)) < 8.0


def test_graf_pair_verifies_and_agrees_with_the_homography(tiny_extractor):
    a = tiny_extractor.extract(open_image(PAIRS / "graf1.png"))
    b = tiny_extractor.extract(open_image(PAIRS / "graf3.png"))
    v = verify_affine(a.keypoints, a.descriptors, b.keypoints, b.descriptors)
    assert v.inliers >= 20, v
    projected = cv2.perspectiveTransform(v.query_points[None].astype(np.float64), graf_homography())[0]
    fitted = v.query_points @ v.affine[:, :2].T + v.affine[:, 2]
    assert np.median(np.linalg.norm(projected - fitted, axis=1)) < 15.0


def test_unrelated_pairs_get_few_inliers(tiny_extractor, engine_config):
    graf = tiny_extractor.extract(open_image(PAIRS / "graf1.png"))
    box = tiny_extractor.extract(open_image(PAIRS / "box_in_scene.png"))
    dinosaur = tiny_extractor.extract(open_image(corel_image(400)))
    for x, y in ((graf, box), (graf, dinosaur), (box, dinosaur)):
        v = verify_affine(x.keypoints, x.descriptors, y.keypoints, y.descriptors)
        assert v.inliers < engine_config.min_inliers, v


def test_store_round_trip_and_cache_reuse(tiny_extractor, tmp_path):
    from search.engine.collection import scan_collection

    folder = tmp_path / "images"
    folder.mkdir()
    for n in (0, 101, 302):
        (folder / f"{n}.jpg").symlink_to(corel_image(n))
    collection = scan_collection(folder)
    meta = build_local_store(tmp_path / "store1", collection.records, tiny_extractor, pca_dim=16)
    store = LocalStore.open(tmp_path / "store1")
    assert len(store) == 3 and meta["extracted"] == 3 and store.meta["dim"] == 16
    for i, record in enumerate(collection.records):
        expected = store.reduce(tiny_extractor.extract(open_image(record.path)))
        got = store.features(i)
        # stored as float16: within 1/2048 of each coordinate, in the extractor's order (strongest first)
        np.testing.assert_allclose(got.keypoints, expected.keypoints, rtol=2 ** -11)
        np.testing.assert_allclose(got.descriptors, expected.descriptors, atol=2e-3)
        assert got.keypoints.dtype == got.descriptors.dtype == np.float32
        # the projection (done by torch) is the store's PCA, descriptors unit length again
        raw = tiny_extractor.extract(open_image(record.path)).descriptors
        projected = store.pca.transform(raw)
        projected /= np.linalg.norm(projected, axis=1, keepdims=True)
        np.testing.assert_allclose(expected.descriptors, projected, atol=1e-5)
    # read a slice at a time, never loaded whole nor memory-mapped; only what verification reads is kept
    assert isinstance(store.arrays["descriptors"], RowFile)
    assert sorted(p.name for p in (tmp_path / "store1").glob("*.npy")) == ["descriptors.npy", "keypoints.npy",
                                                                           "offsets.npy"]
    assert store.arrays["keypoints"].dtype == store.arrays["descriptors"].dtype == np.float16

    # a store written before (float32 keypoints, with the scales and scores beside them) reads the same
    shutil.copytree(tmp_path / "store1", tmp_path / "older")
    keypoints = np.load(tmp_path / "older" / "keypoints.npy").astype(np.float32)
    np.save(tmp_path / "older" / "keypoints.npy", keypoints)
    for name in ("scales", "scores"):
        np.save(tmp_path / "older" / f"{name}.npy", np.ones(len(keypoints), np.float16))
    older = LocalStore.open(tmp_path / "older")
    for i in range(len(store)):
        np.testing.assert_array_equal(older.features(i).keypoints, store.features(i).keypoints)
        np.testing.assert_array_equal(older.features(i).descriptors, store.features(i).descriptors)

    # a copy cut short under its open store: that read is a clear error, not a SIGBUS that kills the process
    shutil.copytree(tmp_path / "store1", tmp_path / "cut")
    cut = LocalStore.open(tmp_path / "cut")
    first = cut.features(0)
    os.truncate(tmp_path / "cut" / "descriptors.npy", (tmp_path / "cut" / "descriptors.npy").stat().st_size // 2)
    with pytest.raises(SearchIndexError, match="cut short after the index was loaded"):
        cut.features(len(cut) - 1)
    np.testing.assert_array_equal(cut.features(0).descriptors, first.descriptors)

    # one file replaced, one added: only those two are extracted again
    (folder / "101.jpg").unlink()
    shutil.copy(corel_image(150), folder / "101.jpg")
    (folder / "7.jpg").symlink_to(corel_image(7))
    again = build_local_store(tmp_path / "store2", scan_collection(folder).records, tiny_extractor,
                              pca_dim=16, previous=store)
    assert again["reused"] == 2 and again["extracted"] == 2


def test_fine_search_finds_itself_verified(tiny_fine_engine):
    engine = tiny_fine_engine
    response = engine.search(engine.index.path_of(12), "penultimate+attention", n_candidates=40, k=10)
    first = response.results[0]
    assert first.image_id == engine.index.image_ids[12]
    assert first.stage == "verified" and first.inliers >= 50
    assert len(first.query_points) == first.inliers == len(first.result_points)
    assert len(response.results) == 10
    stages = [r.stage for r in response.results]
    assert stages == sorted(stages, key=lambda s: s != "verified")  # verified ones, then the fallback


def test_fallback_fills_k_with_coarse_results(tiny_fine_engine):
    engine = tiny_fine_engine
    # an image of none of the tiny collection's classes (Corel "food"): nothing verifies
    response = engine.search(corel_image(950), "pca+attention", n_candidates=40, k=7)
    assert len(response.results) == 7
    assert all(r.stage == "coarse" for r in response.results)
    coarse = engine.search(corel_image(950), "pca", k=7)
    assert [r.image_id for r in response.results] == [r.image_id for r in coarse.results]


def test_a_fine_method_verifies_the_querys_own_nearest_and_falls_back_on_the_expanded_order(tiny_fine_engine):
    """Query expansion cannot take a candidate from the fine stage: the candidates are the query's
    own nearest; the expanded query only orders the fallback (and is what confidence judges)."""
    engine = tiny_fine_engine
    with configured(engine, query_crops=0):  # the crops' own candidates: the next test
        query = engine.query_features(corel_image(950), local=True)  # a class the tiny collection lacks
    deep = 20  # of the tiny index's 40
    with configured(engine, query_expansion=0):
        own, _ = engine.coarse_order(query.vectors, "pca", deep)
    with configured(engine, query_expansion=3, query_expansion_alpha=0.0, confidence_pool=deep):
        ranking = engine.rank(query, "pca+attention", n_candidates=10, depth=deep)
        expanded, _ = engine.coarse_order(query.vectors, "pca", len(engine.index))
    np.testing.assert_array_equal(ranking.positions, own)
    assert set(own.tolist()) != set(expanded[:deep].tolist())  # expansion would have made other candidates
    matrix = np.asarray(engine.index.vectors["pca"], dtype=np.float64)
    average = query.vectors["pca"][0] + matrix[own[:3]].sum(0)
    average /= np.linalg.norm(average)
    np.testing.assert_allclose(ranking.distances, np.linalg.norm(matrix[own] - average, axis=1), atol=1e-4)
    assert not ranking.verified.any() and ranking.order.tolist() != list(range(deep))
    # nothing verified: the answer is the expanded query's order, among the query's own candidates
    assert ranking.ranked_positions.tolist() == [p for p in expanded.tolist() if p in set(own.tolist())]


def test_a_fine_method_finds_its_candidates_with_the_querys_crops_too(tiny_fine_engine):
    """A picture that fills little of the photo (a bus on a plate of food) is nearer to the crop
    around it than to the whole photo: a fine method's candidates are the images nearest to the
    query or to any of its crops, while each is judged and falls back by its distance to the query."""
    engine = tiny_fine_engine
    variant = "hybrid"
    source = next(p for p in range(len(engine.index)) if engine.index.labels[p] == "buses")
    photo = pasted_on_food(engine.index.path_of(source))
    deep = 8  # of the tiny index's 40
    with configured(engine, query_expansion=0, confidence_pool=deep):
        query = engine.query_features(photo, local=True)
        assert query.crops[variant].shape == (4, query.vectors[variant].shape[-1])
        ranking = engine.rank(query, f"{variant}+attention", n_candidates=deep, depth=deep)
        with configured(engine, query_crops=0):
            whole = engine.rank(engine.query_features(photo, local=True), f"{variant}+attention", n_candidates=deep,
                                depth=len(engine.index))
    stored = np.asarray(engine.index.vectors[variant], dtype=np.float64)
    searched = np.vstack([np.atleast_2d(query.vectors[variant]), query.crops[variant]])
    to_each = np.linalg.norm(stored[None] - searched[:, None], axis=2)  # (query and crops, images)
    np.testing.assert_array_equal(ranking.positions, np.argsort(to_each.min(0), kind="stable")[:deep])
    np.testing.assert_allclose(ranking.distances, to_each[0, ranking.positions], atol=1e-4)
    # the crop around the picture makes it a candidate; the whole photo alone would not have
    assert source in ranking.positions and whole.positions.tolist().index(source) >= deep
    assert to_each[1:, source].min() < to_each[0, source]
    # turned queries are described without crops (query_turns)
    assert engine.query_features(photo, local=True, crops=False).crops is None


def test_methods_offered_follow_the_index(tiny_fine_engine, tiny_engine):
    from search.engine.pipeline import RetrievalEngine

    assert len(tiny_fine_engine.methods) == 10  # built with a describer: the instance and hybrid variants too
    assert tiny_fine_engine.default_method == "hybrid+attention"
    assert tiny_engine.methods == ["logits", "pca", "penultimate"] and tiny_engine.default_method == "penultimate"
    e = tiny_fine_engine  # without the describer (as on an index built before the instance variants)
    older = RetrievalEngine(e.model, e.index, "cpu", e.config, e.attention)
    assert "hybrid" not in older.methods and older.default_method == "penultimate+attention"


def test_instance_and_hybrid_variants_find_the_image_itself(tiny_fine_engine):
    from dataclasses import replace

    from search.engine.pipeline import RetrievalEngine

    engine = tiny_fine_engine
    index = engine.index
    size = engine.config.image_size
    assert index.describer_name == engine.describer.name == f"imagenet:efficientnet_lite0:{size}px:mean"
    assert index.vectors["instance"].shape == (len(index), 1280) and index.manifest["hybrid_weight"] == 0.5
    query = engine.query_features(index.path_of(7), local=True)
    for variant in ("instance", "hybrid"):
        np.testing.assert_allclose(query.vectors[variant][0], index.vectors[variant][7], atol=1e-4)
    for method in ("instance", "hybrid", "instance+attention", "hybrid+attention"):
        first = engine.search(index.path_of(7), method, n_candidates=40, k=3).results[0]
        assert first.image_id == index.image_ids[7]
    assert engine.search(index.path_of(7), "hybrid+attention", n_candidates=40).results[0].stage == "verified"
    # a later default weight does not change an existing index's queries: they are joined with its own
    served = RetrievalEngine(engine.model, index, "cpu", engine.config.replace(hybrid_weight=0.8),
                             engine.attention, describer=engine.describer)
    np.testing.assert_allclose(served.query_features(index.path_of(7), local=False).vectors["hybrid"][0],
                               index.vectors["hybrid"][7], atol=1e-4)
    other = replace(engine.describer, image_size=size + 32)
    with pytest.raises(SearchIndexError, match="reindex"):
        RetrievalEngine(engine.model, index, "cpu", engine.config, engine.attention, describer=other)


def test_a_verified_result_must_be_confident(tiny_fine_engine):
    from search.engine.confidence import Calibration
    from search.engine.pipeline import RetrievalEngine

    engine = tiny_fine_engine
    image = engine.index.path_of(12)
    response = engine.search(image, "penultimate+attention", n_candidates=40, k=10)
    verified = [r for r in response.results if r.stage == "verified"]
    assert verified and all(r.confidence >= engine.config.min_confidence for r in verified)
    assert response.n_verified == len(verified)  # k covers every verified candidate here

    # a calibration that trusts nothing: the same inliers, nothing verified, the coarse order kept
    doubtful = RetrievalEngine(engine.model, engine.index, "cpu", engine.config, engine.attention,
                               Calibration((0.0,) * 7, -20.0, "trusts nothing"))
    quiet = doubtful.search(image, "penultimate+attention", n_candidates=40, k=10)
    coarse = engine.search(image, "penultimate", k=10)
    assert quiet.n_verified == 0 and all(r.stage == "coarse" and r.confidence < 1e-6 for r in quiet.results)
    assert [r.inliers for r in quiet.results][0] == response.results[0].inliers  # the query itself, still matched
    assert [r.image_id for r in quiet.results] == [r.image_id for r in coarse.results]


def each_query(engine, positions):
    """Each tiny-collection image at ``positions`` as a query (its local features too) and the set
    holding its own id, to leave it out of its own search."""
    for position in positions:
        yield engine.query_features(engine.index.path_of(position), local=True), {engine.index.image_ids[position]}


def test_the_unsure_match_put_first_is_one_the_classifier_puts_in_the_querys_class(tiny_fine_engine):
    """With nothing sure enough to verify (``min_confidence`` above 1) every candidate with enough
    inliers is unsure; the one put ahead of the coarse order is the best of those the classifier
    predicts the query's class for. Off, or with a label-free classifier, it is the best of all."""
    from dataclasses import replace as replaced

    from search.engine.features import predicted_classes
    from search.engine.pipeline import RetrievalEngine, fine_order

    engine, method, changed = tiny_fine_engine, "hybrid+attention", 0
    label_free = RetrievalEngine(replaced(engine.model, info=dict(engine.model.info, label_free=True)), engine.index,
                                 "cpu", engine.config, engine.attention, engine.calibration)
    for query, own in each_query(engine, range(0, 40, 3)):
        with configured(engine, min_confidence=1.01, rerank_confidence=0.0, fallback_same_class=False):
            by_class = engine.rank(query, method, 39, exclude_ids=own)
            n = by_class.n_candidates
            same = engine.same_class(query, by_class.positions[:n])
            with configured(engine, rerank_same_class=False):
                assert engine.same_class(query, by_class.positions[:n]) is None
                any_class = engine.rank(query, method, 39, exclude_ids=own)
            with configured(engine, class_from_labels=False, query_class_from_crops=False):
                guessed = engine.same_class(query, by_class.positions[:n])
            with configured(engine, query_class_from_crops=False):
                whole_only = engine.same_class(query, by_class.positions[:n])
            with configured(engine, query_class_from_crops=True):
                from_crops = engine.same_class(query, by_class.positions[:n])
        assert label_free.same_class(query, by_class.positions[:n]) is None
        # the query's class with its crops: the mean of its own and its four crops' unit logits
        assert query.crops["logits"].shape == (4, len(engine.model.classes))
        with_crops = np.vstack([query.vectors["logits"], query.crops["logits"]]).mean(0).argmax()
        labels = [engine.index.labels[p] for p in by_class.positions[:n]]
        np.testing.assert_array_equal(from_crops, [engine.model.classes.index(label) == with_crops
                                                   for label in labels])
        # the stored logits of each candidate, in the candidates' order, against the query's own
        query_class = predicted_classes(query.vectors["logits"])[0]
        stored = predicted_classes(engine.index.vectors["logits"][by_class.positions[:n]])
        np.testing.assert_array_equal(guessed, stored == query_class)
        # by default a labelled candidate's class is its label (every tiny image has one)
        np.testing.assert_array_equal(whole_only, [engine.model.classes.index(label) == query_class
                                                   for label in labels])
        np.testing.assert_array_equal(same, from_crops if engine.config.query_class_from_crops else whole_only)
        assert by_class.n_verified == any_class.n_verified == 0
        for ranking, allowed in ((by_class, same), (any_class, np.ones(n, bool))):
            unsure = (ranking.inliers >= engine.config.min_inliers) & allowed
            first = ranking.order[0]
            if unsure.any():  # the most inliers of the allowed ones leads, ahead of the coarse order
                assert first < n and unsure[first] and ranking.inliers[first] == ranking.inliers[unsure].max()
            else:  # nothing goes ahead: the fallback's order
                nothing = np.zeros(n, bool)
                np.testing.assert_array_equal(ranking.order, fine_order(ranking.inliers, nothing, nothing,
                                                                        ranking.distances))
        changed += by_class.order[0] != any_class.order[0]
    assert changed  # some query's best unsure match was of another class


def test_the_fallback_puts_the_candidates_of_the_querys_class_first_when_its_first_ones_agree(tiny_fine_engine):
    """Past the candidates re-ranked by inliers, those the classifier puts in the query's class come
    first, each part by its distance to the expanded query, when most of the fallback's first
    ``fallback_class_voters`` are of that class; otherwise, or off, the fallback goes by distance
    alone. The re-ranked head is the same either way."""
    engine, method, changed = tiny_fine_engine, "hybrid+attention", 0
    for query, own in each_query(engine, range(0, 40, 3)):
        with configured(engine, fallback_class_voters=3, class_vote_variant=""):
            by_class = engine.rank(query, method, 39, exclude_ids=own)
        with configured(engine, fallback_same_class=False):
            by_distance = engine.rank(query, method, 39, exclude_ids=own)
        same = engine.same_class(query, by_class.positions)
        assert len(same) == len(by_class.positions) == len(by_class.order)
        reranked = engine.judge(by_class.evidence, by_class.inliers, same)[1]
        head = int(reranked.sum())
        np.testing.assert_array_equal(by_class.order[:head], by_distance.order[:head])
        tail, plain = by_class.order[head:], by_distance.order[head:]
        assert np.all(np.diff(by_distance.distances[plain]) >= 0)
        if same[plain[:3]].sum() < 2:  # the first three of the fallback mostly of other classes: no change
            np.testing.assert_array_equal(by_class.order, by_distance.order)
            continue
        assert sorted(tail.tolist()) == sorted(plain.tolist())
        of_class = same[tail]
        assert not np.any(~of_class[:-1] & of_class[1:])  # the query's class, then the others
        for part in (tail[of_class], tail[~of_class]):
            assert np.all(np.diff(by_class.distances[part]) >= 0)
        changed += not np.array_equal(by_class.order[:10], by_distance.order[:10])
    assert changed  # some query's first ten changed


def test_the_class_vote_may_be_taken_in_the_order_of_another_variant(tiny_fine_engine):
    """With ``class_vote_variant`` (logits here: its order differs from the hybrid's more on the
    tiny collection than pca's), hybrid+attention keeps its candidates, its re-ranked head
    and its fallback's order; only whether the query's class goes first is voted by the fallback
    in the order that variant's own method gives the same candidates (their distances to the
    expanded query in that variant). The rule off, the vote is the fallback's own."""
    from search.engine.pipeline import class_first, fallback_agrees, fine_order

    engine, method, differ = tiny_fine_engine, "hybrid+attention", 0
    for query, own in each_query(engine, range(0, 40, 2)):
        with configured(engine, fallback_class_voters=3, class_vote_variant="logits"):
            voted = engine.rank(query, method, 39, exclude_ids=own)
            by_logits = engine.rank(query, "logits+attention", 39, exclude_ids=own)
        with configured(engine, fallback_class_voters=3, class_vote_variant=""):
            plain = engine.rank(query, method, 39, exclude_ids=own)
        np.testing.assert_array_equal(voted.positions, plain.positions)
        same = engine.same_class(query, voted.positions)
        reranked = engine.judge(voted.evidence, voted.inliers, same)[1]
        head = int(reranked.sum())
        its_own = dict(zip(by_logits.positions.tolist(), by_logits.distances))
        vote_distances = engine.vote_distances(query.vectors, "logits", voted.positions, own)
        np.testing.assert_allclose(vote_distances, [its_own[p] for p in voted.positions.tolist()], atol=1e-5)
        voting = fine_order(voted.inliers, reranked, voted.verified, vote_distances)
        assert voted.class_agreed == fallback_agrees(voting[head:], same, 3)
        fallback = fine_order(plain.inliers, reranked, plain.verified, plain.distances)
        assert plain.class_agreed == fallback_agrees(fallback[head:], same, 3)
        expected = class_first(fallback, head, same, None)[0] if voted.class_agreed else fallback
        np.testing.assert_array_equal(voted.order, expected)
        differ += voted.class_agreed != plain.class_agreed
    assert differ  # the two orders voted differently on some query


def test_confidence_does_not_depend_on_how_many_candidates_are_verified(tiny_fine_engine):
    """The query's floor of chance inliers is taken over the confidence pool (the whole tiny
    collection here), not over the candidates asked for: three, ten or all of them give each
    candidate the same evidence and confidence. With the pool at the count asked for, the floor,
    and so the confidence, moves with it."""
    engine = tiny_fine_engine
    moved = 0
    for position in (3, 12, 25, 35):
        query = engine.query_features(engine.index.path_of(position), local=True)
        rankings = [engine.rank(query, "hybrid+attention", n) for n in (3, 10, 40)]
        assert [r.n_candidates for r in rankings] == [3, 10, 40]
        assert rankings[-1].n_verified > 0  # the query itself, at least
        for ranking in rankings[:2]:
            n = ranking.n_candidates
            np.testing.assert_array_equal(ranking.positions[:n], rankings[-1].positions[:n])
            np.testing.assert_allclose(ranking.evidence, rankings[-1].evidence[:n])
            np.testing.assert_allclose(ranking.confidence, rankings[-1].confidence[:n])
        with configured(engine, confidence_pool=0):  # the floor over the candidates asked for only
            few = engine.rank(query, "hybrid+attention", 3)
        moved += not np.allclose(few.evidence, rankings[0].evidence)
    assert moved  # without the pool, some query's evidence changes with the count


def test_the_engine_enlarges_small_queries_by_its_setting(tiny_fine_engine):
    """On the pyramid alone: with ``global_level`` the global input's level (288 square whatever
    the picture's size) gives a small query a full grid of keypoints either way."""
    engine = tiny_fine_engine
    image = open_image(engine.index.path_of(12))
    small = image.resize((image.width // 3, image.height // 3), Image.Resampling.BILINEAR)
    counts, extractor = [], engine.extractor
    engine.extractor = replace(extractor, global_level=False)
    try:
        for side in (0, 256):
            with configured(engine, local_query_min_side=side):
                counts.append(len(engine.query_features(small, local=True).local))
    finally:
        engine.extractor = extractor
    assert counts[1] > counts[0], counts


def test_a_photo_sized_query_is_found_with_its_points_on_the_photo(tiny_fine_engine, tmp_path):
    """A collection picture sent as a phone-sized photo (enlarged eight times, 3072 pixels a side)
    is decoded smaller than stored (open_query_image) and found verified, its matching points
    given on the photo as stored."""
    engine = tiny_fine_engine
    position, factor = 12, 8
    picture = open_image(engine.index.path_of(position))
    photo = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.BICUBIC)
    path = tmp_path / "photo.jpg"
    photo.save(path, quality=92)
    decoded, stored = open_query_image(path, engine.config.query_decode_side)
    assert stored == photo.size and decoded.width <= photo.width // 2  # the decoder's 1/2 here
    first = engine.search(path, "penultimate+attention", k=5).results[0]
    assert first.image_id == engine.index.image_ids[position] and first.stage == "verified"
    ours, theirs = np.array(first.query_points), np.array(first.result_points)
    # within a stride-16 cell of the query's pyramid (about 10 of the picture's pixels); on the
    # decoded half-size image instead, the points would be hundreds of pixels off
    assert np.median(np.linalg.norm(ours - theirs * factor, axis=1)) < 8.0 * factor
    assert (ours >= 0).all() and (ours[:, 0] <= photo.width).all() and (ours[:, 1] <= photo.height).all()


def test_a_large_picture_gives_the_local_features_of_its_unshrunk_pyramid(tiny_extractor, monkeypatch):
    """The pyramid of a picture larger than its top level is built from one Pillow shrink
    (shrink_to_pyramid) instead of from every original pixel: the same keypoints all but a
    few, the same descriptors to resampling."""
    picture = open_image(corel_image(205))
    large = picture.resize((picture.width * 5, picture.height * 5), Image.Resampling.BICUBIC)
    shrunk = tiny_extractor.extract(large)
    monkeypatch.setattr(local_features, "shrink_to_pyramid", lambda image, base, scales: image)
    whole = tiny_extractor.extract(large)
    assert len(shrunk) == len(whole) > 100
    key = {(round(float(x), 1), round(float(y), 1), float(s)): d
           for (x, y), s, d in zip(whole.keypoints, whole.scales, whole.descriptors)}
    same = [(key[k], d) for k, d in zip(((round(float(x), 1), round(float(y), 1), float(s))
                                         for (x, y), s in zip(shrunk.keypoints, shrunk.scales)), shrunk.descriptors)
            if k in key]
    assert len(same) >= 0.85 * len(shrunk), (len(same), len(shrunk))
    cosines = np.array([a @ b for a, b in same])
    assert np.median(cosines) > 0.99 and cosines.min() > 0.95, (np.median(cosines), cosines.min())


def test_one_pass_gives_the_global_and_local_features_of_two(tiny_models, tiny_fine_engine):
    """With local_global_level the pyramid level nearest the global input is that input, and a
    query's global pass gives its stride-16 map: the same global vectors as the plain pass, and
    the same local features as the index extracts for itself (which computes that map anew)."""
    from search.engine.features import embed_batch
    from search.engine.pipeline import RetrievalEngine

    model, plain = tiny_models.model, replace(tiny_models.extractor, global_level=False)
    one_pass = replace(plain, global_level=True)
    assert one_pass.checksum != plain.checksum  # other features: a reindex extracts them again
    assert plain.checksum == hashlib.sha256(  # and every index made without it keeps its own
        f"{model.checksum}:{tiny_models.attention.checksum}:{plain.settings}".encode()).hexdigest()
    image = open_image(corel_image(205))  # 384 x 256: levels 192, 272 and 384 wide
    together, apart = embed_batch(model, [image], "cpu", local_map=True), embed_batch(model, [image], "cpu")
    np.testing.assert_array_equal(together.penultimate, apart.penultimate)
    np.testing.assert_array_equal(together.logits, apart.logits)
    shared, own = one_pass.extract(image, 0, together.local_map), one_pass.extract(image)
    for field in ("keypoints", "scales", "scores", "descriptors"):
        np.testing.assert_array_equal(getattr(shared, field), getattr(own, field))
    squashed = np.sqrt(model.image_size ** 2 / (image.width * image.height))
    assert np.isclose(own.scales, squashed).any()  # the global input stands in for the 384-wide level
    assert not np.isclose(own.scales, 1.0).any() and np.isclose(plain.extract(image).scales, 1.0).any()
    engine = tiny_fine_engine
    shared_engine = RetrievalEngine(model, engine.index, "cpu", engine.config, tiny_models.attention,
                                    describer=engine.describer, extractor=one_pass)
    query = shared_engine.query_features(image, local=True)
    np.testing.assert_array_equal(query.vectors["penultimate"], apart.penultimate)
    np.testing.assert_array_equal(query.local.descriptors,
                                  engine.index.local.reduce(one_pass.extract(image, engine.config.local_query_min_side)).descriptors)


def test_a_photo_taken_sideways_is_found_by_turning_the_query(tiny_fine_engine):
    """Local features are not made to be rotation-invariant: a collection picture sent turned a
    quarter (a phone photo without its EXIF orientation) keeps too few of its matches to verify when
    little of it is textured, as with some of the dinosaurs on their plain ground (a busier picture,
    or more keypoints per image, can verify even turned); with query_turns the turned-back query
    finds each of those, verified, its matching points put back on the picture as sent. Of the
    turns, the one that stands the picture upright is kept, not the first to verify something; its
    match leads the query's own page as sent (``matches_first``), or with ``turned_fallback`` the
    turned query's page."""
    engine = tiny_fine_engine
    dinosaurs = [p for p, relpath in enumerate(engine.index.relpaths) if relpath.startswith("dinosaurs/")]
    # where a point (x, y) of the picture lies on the photo turned a quarter one way or the other
    turns = {Image.Transpose.ROTATE_270: lambda x, y, size: (size[1] - y, x),  # clockwise
             Image.Transpose.ROTATE_90: lambda x, y, size: (y, size[0] - x)}  # counter-clockwise
    unverified = []
    for position in dinosaurs:
        upright = open_image(engine.index.path_of(position))
        for turn in turns:
            sideways = upright.transpose(turn)
            with configured(engine, query_turns=""):
                plain = engine.search(sideways, "penultimate+attention", k=5)
            assert "turns" not in plain.timings_ms
            if plain.n_verified == 0:
                unverified.append((position, upright, turn, sideways, plain))
    assert {turn for *_, turn, _, _ in unverified} == set(turns), "the turns would have nothing left to show"
    for position, upright, turn, sideways, plain in unverified:
        with configured(engine, query_turns="90,180,270", turns_if_nearer=False):
            found = engine.search(sideways, "penultimate+attention", k=5)
        with configured(engine, query_turns="90,180,270", turns_if_nearer=False, turned_fallback=True):
            whole = engine.search(sideways, "penultimate+attention", k=5)
        first = found.results[0]
        assert first.image_id == engine.index.image_ids[position] and first.stage == "verified"
        matches = [r.image_id for r in found.results if r.stage == "verified"]
        assert [r.stage for r in found.results[:len(matches)]] == ["verified"] * len(matches)
        own_page = [r.image_id for r in plain.results if r.image_id not in matches][:5 - len(matches)]
        assert [r.image_id for r in found.results[len(matches):]] == own_page
        assert whole.results[0].image_id == first.image_id and whole.results[0].inliers == first.inliers
        assert found.timings_ms["turns"] > 0
        # stood upright, the query is the picture itself: every one of its keypoints is an inlier
        itself = engine.search(upright, "penultimate+attention", k=1).results[0]
        assert first.inliers == itself.inliers
        ours, theirs = np.array(first.query_points), np.array(first.result_points)
        expected = np.stack(turns[turn](theirs[:, 0], theirs[:, 1], upright.size), axis=1)
        assert np.median(np.linalg.norm(ours - expected, axis=1)) < 4.0
        assert (ours >= 0).all() and (ours[:, 0] <= sideways.width).all() and (ours[:, 1] <= sideways.height).all()


def test_only_the_turns_nearer_the_collection_are_tried(tiny_fine_engine):
    """``nearer_turns``: a collection picture sent upright is its own nearest image, so no turn is
    nearer; sent on its side, the turn that stands it upright is (it is the picture again). With
    ``turns_if_nearer`` an upright query that verifies nothing comes back as it was, unturned, and
    a sideways one that verifies nothing is found by the turn that stands it up."""
    engine, method = tiny_fine_engine, "penultimate+attention"
    dinosaurs = [p for p, relpath in enumerate(engine.index.relpaths) if relpath.startswith("dinosaurs/")]
    found = 0
    with configured(engine, query_turns="90,180,270", turns_if_nearer=True):
        for position in dinosaurs:
            upright = open_image(engine.index.path_of(position))
            query = engine.query_features(upright, local=True)
            assert engine.nearer_turns(upright, query, "penultimate") == ()
            with configured(engine, min_confidence=1.01):  # nothing verifies
                plain, again = engine.rank(query, method, 20), engine.rank_turning(upright, query, method, 20)
            assert again.turned == 0 and "turns" in again.timings_ms
            np.testing.assert_array_equal(again.ranked_positions, plain.ranked_positions)
            for turn, stands_it_up in ((Image.Transpose.ROTATE_90, 270), (Image.Transpose.ROTATE_270, 90)):
                sideways = upright.transpose(turn)
                query = engine.query_features(sideways, local=True)
                assert stands_it_up in engine.nearer_turns(sideways, query, "penultimate")
                if engine.rank(query, method, 20).n_verified == 0:
                    again = engine.rank_turning(sideways, query, method, 20)
                    assert again.turned == stands_it_up and again.ranked_positions[0] == position
                    found += 1
    assert found, "no sideways picture needed turning"


def test_the_turn_gate_compares_instance_vectors_from_the_describer_alone(tiny_fine_engine):
    """``turn_gate_variant`` "instance" (the default): the gate's turned vectors are the describer's,
    the same as the full global pass gives, without running the classifier; and the turn that stands
    a sideways picture up is nearer by them, as by the hybrid."""
    engine = tiny_fine_engine
    assert engine.describer is not None and not engine.describer.shares_network_with(engine.model)
    upright = open_image(engine.index.path_of(0)).convert("RGB")
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    turns = [sideways.transpose(Image.Transpose.ROTATE_270), sideways.transpose(Image.Transpose.ROTATE_90)]
    backbone, passes = engine.model.backbone, []
    classifier_pass = backbone.pooled
    backbone.pooled = lambda batch: passes.append(len(batch)) or classifier_pass(batch)
    try:
        alone = engine.global_vectors_of(turns, "instance")
        assert passes == []
        both = engine.global_vectors(turns)
        assert passes == [2]
    finally:
        del backbone.pooled
    np.testing.assert_allclose(alone, both["instance"], atol=1e-5)
    query = engine.query_features(sideways, local=False)
    with configured(engine, query_turns="270,90", turns_if_nearer=True):
        assert engine.config.turn_gate_variant == "instance"
        by_instance = engine.nearer_turns(sideways, query, "hybrid")
        with configured(engine, turn_gate_variant="hybrid"):
            by_hybrid = engine.nearer_turns(sideways, query, "hybrid")
    assert 270 in by_instance and 270 in by_hybrid


def test_turns_in_doubt_turn_only_the_queries_whose_class_the_first_candidates_do_not_share(tiny_fine_engine):
    """With ``turns_in_doubt`` a query that verifies nothing is turned only when most of the
    fallback's first candidates are not of the classifier's class for it (``class_agreed``); the
    ranking says which, and an agreed one comes back as it was, unturned."""
    from search.engine.pipeline import fallback_agrees, fine_order

    engine, method, kinds = tiny_fine_engine, "penultimate+attention", set()
    for position in range(0, 40, 2):
        sideways = open_image(engine.index.path_of(position)).transpose(Image.Transpose.ROTATE_90)
        query = engine.query_features(sideways, local=True)
        with configured(engine, min_confidence=1.01, query_turns="90,270", turns_in_doubt=True,
                        fallback_class_voters=3, class_vote_variant=""):
            plain = engine.rank(query, method, 20)
            turning = engine.rank_turning(sideways, query, method, 20)
            same = engine.same_class(query, plain.positions)
            reranked = engine.judge(plain.evidence, plain.inliers, same)[1]
            fallback = fine_order(plain.inliers, reranked, plain.verified, plain.distances)[int(reranked.sum()):]
        assert plain.n_verified == 0 and plain.class_agreed == fallback_agrees(fallback, same, 3)
        assert ("turns" in turning.timings_ms) == (not plain.class_agreed)
        if plain.class_agreed:
            np.testing.assert_array_equal(turning.order, plain.order)
        kinds.add(plain.class_agreed)
    assert kinds == {True, False}, "both kinds of query should occur among twenty"
    no_class_rules = {"rerank_same_class": False, "fallback_same_class": False}
    with configured(engine, **no_class_rules):  # the vote is taken for the gate alone too
        assert engine.same_class(query, plain.positions) is None
        with configured(engine, query_turns="90", turns_in_doubt=True):
            assert engine.same_class(query, plain.positions) is not None


def test_a_prescored_search_reads_the_pre_scores_rows_at_once_and_verifies_as_reading_all(tiny_fine_engine):
    """With more candidates than it fits, the engine reads only each candidate's strongest rows
    at once (what the pre-score compares) and the rest of a candidate's descriptors when it is let
    through; the inliers are those of a search that read every row first."""
    from dataclasses import replace

    engine = tiny_fine_engine
    saved = engine.verify_settings
    engine.verify_settings = replace(saved, verify_top=6, prescore_candidate_keypoints=60)
    try:
        for position in (4, 21):
            query = engine.query_features(engine.index.path_of(position), local=True)
            positions, _ = engine.coarse_order(query.vectors, "hybrid", 40)
            candidates = engine.candidate_features(positions)
            assert candidates.heads is not None and max(len(h) for h in candidates.heads) == 60
            assert max(len(engine.index.local.features(int(p))) for p in positions) > 60  # some are cut
            lazy = engine.verify(query.local, positions, candidates=candidates)
            read_through = sorted(candidates.descriptors.read)
            everything = engine.verify(query.local, positions, candidates=engine.index.local.candidates(positions))
            assert [(v.inliers, v.matches) for v in lazy] == [(v.inliers, v.matches) for v in everything]
            assert lazy[int(np.flatnonzero(positions == position)[0])].inliers >= 50  # the query itself
            let_through = [i for i, v in enumerate(lazy) if v.matches > 0]
            assert set(let_through) <= set(read_through) and len(let_through) <= 6
            assert len(read_through) < len(positions)  # the others' rest was never read
    finally:
        engine.verify_settings = saved


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device on this machine")
def test_verification_on_cuda_gives_the_cpu_answer_on_the_tiny_index(tiny_fine_engine):
    """Real candidates (the tiny index's own attention features, pre-scored and read as a search
    reads them): the fine stage on the GPU keeps and fits the very matches the CPU does."""
    from dataclasses import replace

    from search.engine.verification import verify_candidates

    engine = tiny_fine_engine
    # float32 pre-score: bfloat16 rounds each similarity, and the two devices may sum in another order
    settings = replace(engine.verify_settings, verify_top=12, prescore_dtype="float32")
    for position in (4, 21):
        query = engine.query_features(engine.index.path_of(position), local=True)
        positions, _ = engine.coarse_order(query.vectors, "hybrid", 40)
        on = {device: verify_candidates(query.local.keypoints, query.local.descriptors,
                                        engine.candidate_features(positions), settings, device=device)
              for device in ("cpu", "cuda")}
        assert [(r.inliers, r.matches) for r in on["cuda"]] == [(r.inliers, r.matches) for r in on["cpu"]]
        assert on["cpu"][int(np.flatnonzero(positions == position)[0])].inliers >= 50  # the query itself
