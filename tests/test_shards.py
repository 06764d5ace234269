"""Sharded search in one process: the tiny fine index split into two shards answers every
method exactly as the one index does (expansion, pre-scored picking, verification, confidence,
removals), with the shard stages run in-process (the site runs them on Celery workers:
tests/web/test_shards.py)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from search.engine import layout
from search.engine.errors import SearchIndexError
from search.engine.index import load_index
from search.engine.shards import Shard, ShardedEngine, local_fan_out, shard_of, split_build
from search.engine.workflows import engine_for
from tests.conftest import corel_image


@pytest.fixture(scope="module")
def two_shards(tiny_fine_engine, engine_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    builds = split_build(tiny_fine_engine.index.path, root, 2, engine_config)
    return root, builds


def sharded(tiny_models, engine_config, root, exchange, **changes) -> tuple[ShardedEngine, list[Shard]]:
    config = engine_config.replace(**changes)
    shards = [Shard.open(root / str(n), config) for n in range(2)]
    return ShardedEngine(engine_for(tiny_models, layout.active_build(root / "0"), config),
                         local_fan_out(shards), exchange), shards


def test_the_split_puts_every_image_in_exactly_one_shard_by_its_id(tiny_fine_engine, two_shards):
    root, builds = two_shards
    index = tiny_fine_engine.index
    shards = [load_index(root / str(n)) for n in range(2)]
    assert [s.path for s in shards] == builds
    assert sorted(shards[0].image_ids + shards[1].image_ids) == sorted(index.image_ids)
    assert all(len(s) for s in shards)
    owner = dict(zip(index.image_ids, shard_of(index.image_ids, 2)))
    for number, shard in enumerate(shards):
        assert {owner[i] for i in shard.image_ids} == {number}
        assert shard.manifest["shard"] == {"number": number, "shards": 2, "index_root": str(index.path.parent.parent),
                                           "source_build": index.path.name, "deltas": []}
        # the same PCA and local-feature projection as the source: one query description fits all
        assert np.array_equal(shard.pca.components_, index.pca.components_)
        assert np.array_equal(shard.local.pca.components_, index.local.pca.components_)
        for image_id in shard.image_ids[:3]:
            mine, source = shard.local.features(shard.positions[image_id]), index.local.features(index.positions[image_id])
            assert np.array_equal(mine.descriptors, source.descriptors)
            assert np.array_equal(shard.row_vectors("penultimate", [shard.positions[image_id]]),
                                  index.row_vectors("penultimate", [index.positions[image_id]]))
    # stable: an image's shard depends on its id alone
    assert list(shard_of(["a", "b", "c"], 2)) == list(shard_of(["a", "b", "c"], 2))
    assert list(shard_of(["b"], 2)) == [shard_of(["a", "b", "c"], 2)[1]]


def same_answer(one, many):
    assert [r.image_id for r in many.results] == [r.image_id for r in one.results]
    assert [(r.stage, r.inliers, r.label, r.relpath, r.path) for r in many.results] == \
        [(r.stage, r.inliers, r.label, r.relpath, r.path) for r in one.results]
    assert np.allclose([r.distance for r in many.results], [r.distance for r in one.results], atol=1e-5)
    assert np.allclose([r.confidence for r in many.results], [r.confidence for r in one.results], atol=2e-3)
    assert [r.query_points for r in many.results] == [r.query_points for r in one.results]
    assert (many.n_candidates, many.n_verified) == (one.n_candidates, one.n_verified)


@pytest.mark.parametrize("changes", [{}, {"verify_top": 8, "n_candidates": 30}, {"query_expansion": 0},
                                     {"n_candidates": 10, "confidence_pool": 25}, {"query_crops": 0}],
                         ids=["defaults", "pre-scored picking", "no expansion", "confidence pool", "no crops"])
def test_two_shards_answer_every_method_as_the_one_index(tiny_fine_engine, tiny_models, engine_config, two_shards,
                                                          tmp_path, changes):
    root, _ = two_shards
    config = engine_config.replace(**changes)
    one = engine_for(tiny_models, tiny_fine_engine.index.path, config)
    many, _ = sharded(tiny_models, engine_config, root, tmp_path / "exchange", **changes)
    assert many.methods == one.methods and many.default_method == one.default_method
    crop = Image.open(corel_image(305)).convert("RGB").crop((20, 10, 330, 230))  # a bus, cropped
    verified = 0
    for query in (corel_image(3), corel_image(402), crop):
        for method in one.methods:
            expected = one.search(query, method, k=10)
            same_answer(expected, many.search(query, method, k=10))
            verified += expected.n_verified
    assert verified > 0  # the fine stage really verified something on both sides
    assert not list((tmp_path / "exchange").iterdir())  # each search's exchange folder is gone


@pytest.mark.parametrize("rule, vote", [("rerank_same_class", ""), ("fallback_same_class", ""),
                                        ("fallback_same_class", "logits")],
                         ids=["unsure of its class", "its class first", "its class first, voted by logits"])
def test_two_shards_apply_each_class_rule_as_the_one_index(
        rule, vote, tiny_fine_engine, tiny_models, engine_config, two_shards, tmp_path):
    """Sure of nothing (``min_confidence`` above 1), each search puts its best unsure match of the
    query's class first (``rerank_same_class``), or the candidates of the query's class first in
    the fallback (``fallback_same_class``; voted in the fallback's order, or in another variant's:
    ``class_vote_variant``), each rule alone: the shards tell the coordinator each candidate's class
    and its distance in the vote's variant."""
    root, _ = two_shards
    other = "fallback_same_class" if rule == "rerank_same_class" else "rerank_same_class"
    unsure = {"min_confidence": 1.01, "rerank_confidence": 0.0, other: False, "class_vote_variant": vote}
    if vote:  # a vote of three, which differs from the fallback's own on the tiny collection
        unsure["fallback_class_voters"] = 3
    one = engine_for(tiny_models, tiny_fine_engine.index.path, engine_config.replace(**unsure))
    # what the rule changes: the rule off, or the vote taken in the fallback's own order
    without = {"class_vote_variant": ""} if vote else {rule: False}
    any_class = engine_for(tiny_models, tiny_fine_engine.index.path, engine_config.replace(**unsure | without))
    many, _ = sharded(tiny_models, engine_config, root, tmp_path / "exchange", **unsure)
    changed = 0
    for position in range(0, 40, 3):
        query, own = one.index.path_of(position), [one.index.image_ids[position]]
        expected = one.search(query, "hybrid+attention", k=10, exclude_ids=own)
        same_answer(expected, many.search(query, "hybrid+attention", k=10, exclude_ids=own))
        changed += [r.image_id for r in expected.results] != [
            r.image_id for r in any_class.search(query, "hybrid+attention", k=10, exclude_ids=own).results]
    assert changed  # the class (or the vote's order) mattered for some query


def test_two_shards_turn_a_sideways_query_as_the_one_index(tiny_fine_engine, tiny_models, engine_config,
                                                           two_shards, tmp_path):
    """With the quarter turns, only those that look more like the collection (``turns_if_nearer``),
    a picture sent on its side is turned on the shards as on the one index: the same turns tried
    (the nearest distances come from every shard), the same page, the match first."""
    from search.engine.images import open_image

    root, _ = two_shards
    turning = {"query_turns": "90,270", "turns_if_nearer": True}
    one = engine_for(tiny_models, tiny_fine_engine.index.path, engine_config.replace(**turning))
    many, _ = sharded(tiny_models, engine_config, root, tmp_path / "exchange", **turning)
    found = 0
    for position in range(0, 40, 8):
        sideways = open_image(one.index.path_of(position)).transpose(Image.Transpose.ROTATE_90)
        query = one.query_features(sideways, local=False)
        nearer = one.nearer_turns(sideways, query, "hybrid")
        assert 270 in nearer  # stood upright it is the collection's picture itself
        assert many.nearer_turns(sideways, query, "hybrid") == nearer
        # the query and its turns, each row's nearest over both shards, in one fan-out
        from search.engine.pipeline import TURNS
        rows = np.vstack([query.vectors["hybrid"], one.global_vectors(
            [sideways.convert("RGB").transpose(TURNS[a]) for a in (90, 270)])["hybrid"]])
        hidden = {one.index.image_ids[position]}
        stages, fan_out = [], many.fan_out
        many.fan_out = lambda stage, folder: stages.append(stage) or fan_out(stage, folder)
        try:
            np.testing.assert_allclose(many.nearest_distances(rows, "hybrid", hidden),
                                       one.nearest_distances(rows, "hybrid", hidden), rtol=1e-5)
        finally:
            many.fan_out = fan_out
        assert stages == ["expand"]
        expected = one.search(sideways, "hybrid+attention", k=10)
        same_answer(expected, many.search(sideways, "hybrid+attention", k=10))
        found += expected.results[0].image_id == one.index.image_ids[position]
    assert found


def test_a_removed_or_excluded_image_leaves_the_sharded_answer_too(tiny_fine_engine, tiny_models, engine_config,
                                                                   two_shards, tmp_path):
    root, _ = two_shards
    many, _ = sharded(tiny_models, engine_config, root, tmp_path / "exchange")
    index_root = tiny_fine_engine.index.path.parent.parent
    first = many.search(corel_image(3), "penultimate+attention", k=5).results[0]
    assert first.stage == "verified"
    excluded = many.search(corel_image(3), "penultimate+attention", k=5, exclude_ids=[first.image_id])
    assert first.image_id not in [r.image_id for r in excluded.results]
    layout.remove_images(index_root, [first.image_id])
    try:
        removed = many.search(corel_image(3), "penultimate+attention", k=5)
        assert first.image_id not in [r.image_id for r in removed.results]
        one = tiny_fine_engine.search(corel_image(3), "penultimate+attention", k=5)
        same_answer(one, removed)
    finally:
        layout.restore_images(index_root, [first.image_id])


def test_a_shard_asked_about_images_it_no_longer_holds_says_to_search_again(tiny_fine_engine, engine_config,
                                                                             two_shards, tmp_path):
    import json

    from search.engine.pipeline import QueryFeatures
    from search.engine.shards import save_query

    root, _ = two_shards
    shard = Shard.open(root / "0", engine_config)
    query = QueryFeatures({"pca": np.zeros(32, dtype=np.float32)})
    save_query(tmp_path, query)
    (tmp_path / "details.json").write_text(json.dumps({"ids": {"0": [shard.index.image_ids[0], "gone"]}}))
    with pytest.raises(SearchIndexError, match="switched builds during the search: search again"):
        shard.run("details", tmp_path)
    with pytest.raises(SearchIndexError, match="unknown stage"):
        (tmp_path / "rank.json").write_text("{}")
        shard.run("rank", tmp_path)


def test_a_shard_refuses_a_build_that_is_no_shard_and_a_split_into_one(tiny_fine_engine, engine_config, tmp_path):
    with pytest.raises(SearchIndexError, match="not a shard build"):
        Shard(tiny_fine_engine.index, engine_config)
    with pytest.raises(SearchIndexError, match="2 shards or more"):
        split_build(tiny_fine_engine.index.path, tmp_path, 1, engine_config)
    with pytest.raises(SearchIndexError, match="would hold no image"):
        split_build(tiny_fine_engine.index.path, tmp_path, 400, engine_config)
    # a split is whole or absent: the shards written before the empty one are gone again
    assert list(tmp_path.glob(f"*/{layout.BUILDS}/*/{layout.MANIFEST}")) == []
    assert list(tmp_path.glob(f"*/{layout.ACTIVE}")) == []


def test_a_search_is_answered_on_the_split_it_began_on_while_the_shards_switch(tiny_fine_engine, tiny_models,
                                                                             engine_config, tmp_path):
    import shutil

    from search.engine.shards import requested_split, shard_build_for

    def source_copy(name):  # another build of the same collection, as a rebuild would make
        copy = tmp_path / "index" / layout.BUILDS / name
        shutil.copytree(tiny_fine_engine.index.path, copy)
        return copy

    root, answered = tmp_path / "shards", []

    def pinned_fan_out(stage, folder):  # what each shard's worker does (search/shard_work.py)
        builds = [shard_build_for(root / str(n), requested_split(folder, stage)) for n in range(2)]
        answered.append(builds)
        return [Shard.open(build, engine_config).run(stage, folder) for build in builds]

    def coordinator(build):
        return ShardedEngine(engine_for(tiny_models, build, engine_config), pinned_fan_out, tmp_path / "exchange")

    one = tiny_fine_engine.search(corel_image(3), "penultimate+attention", k=5)
    first = split_build(source_copy("20260101T000000-a"), root, 2, engine_config)
    on_first = coordinator(first[0])
    second = split_build(source_copy("20260101T000000-b"), root, 2, engine_config)
    assert [layout.active_build(root / str(n)) for n in range(2)] == second
    # begun on the first split: every stage of every shard answered there, as one index would
    answered.clear()
    same_answer(one, on_first.search(corel_image(3), "penultimate+attention", k=5))
    assert answered and all(builds == first for builds in answered)
    # begun on the second while shard 1 still serves the first: shard 1 answers on its second build
    layout.point_active(root / "1", first[1])
    answered.clear()
    same_answer(one, coordinator(second[0]).search(corel_image(3), "penultimate+attention", k=5))
    assert answered and all(builds == second for builds in answered)
    # a shard opened on another split than the search's refuses the stage
    mixed = ShardedEngine(engine_for(tiny_models, first[0], engine_config),
                          local_fan_out([Shard.open(build, engine_config) for build in second]), tmp_path / "exchange")
    with pytest.raises(SearchIndexError, match="not of 20260101T000000-a that the search began on: search again"):
        mixed.search(corel_image(3), "penultimate+attention", k=5)
    # two splits later the first is deleted: a search still on it is told to search again
    split_build(source_copy("20260101T000000-c"), root, 2, engine_config)
    assert not first[0].exists() and second[0].exists()
    with pytest.raises(SearchIndexError, match="holds no build of split 20260101T000000-a any more.*search again"):
        on_first.search(corel_image(3), "penultimate+attention", k=5)


def test_added_images_reach_the_shards_as_deltas_without_a_rebuild(tiny_collection, tiny_models, engine_config,
                                                                  tmp_path):
    from search.engine.additions import add_images
    from search.engine.shards import split_delta
    from search.engine.workflows import add_to_index, index_collection

    config = engine_config.replace(data_dir=tmp_path, shards=2)
    build = index_collection(tiny_collection, tiny_models, config, config.index_root)
    split_build(config.index_root, config.shards_root, 2, config)
    shard_builds = [layout.active_build(config.shard_root(n)) for n in range(2)]
    many, shards = sharded(tiny_models, engine_config, config.shards_root, tmp_path / "exchange")
    added = [corel_image(n) for n in (450, 451, 452, 453, 150)]  # dinosaurs and a beach outside the collection
    result = add_to_index(added, config, models=tiny_models, label="new")
    assert len(result.added) == 5 and len(result.shard_deltas) == 2  # five ids: both shards got some
    assert [layout.active_build(config.shard_root(n)) for n in range(2)] == shard_builds  # no shard rebuilt
    assert sum(len(load_index(config.shard_root(n))) for n in range(2)) == 45
    # the open sharded engine finds an added image at once, as the one index does
    one = engine_for(tiny_models, build, config)
    expected = one.search(corel_image(450), "penultimate+attention", k=10)
    got = many.search(corel_image(450), "penultimate+attention", k=10)
    same_answer(expected, got)
    assert got.results[0].label == "new" and got.results[0].stage == "verified"

    # shards split from another build than the delta's: refused, saying to split again
    index_collection(tiny_collection, tiny_models, config, config.index_root)  # a rebuild; shards not split again
    fresh = add_images(config.index_root, [corel_image(454)], tiny_models, config, "new")
    with pytest.raises(SearchIndexError, match="split the index again"):
        split_delta(fresh.delta, config.shards_root, 2)


def test_the_shard_summary_says_what_each_shard_serves_and_whether_it_is_current(tiny_fine_engine, two_shards,
                                                                               tmp_path):
    root, builds = two_shards
    index_root = tiny_fine_engine.index.path.parent.parent
    rows = layout.shard_summary(root, 2, index_root)
    assert [r["build"] for r in rows] == [b.name for b in builds]
    assert all(r["current"] and r["split"] == tiny_fine_engine.index.path.name and not r["error"] for r in rows)
    assert sum(r["images"] for r in rows) == len(tiny_fine_engine.index)
    # another index root is active elsewhere: the shards are not its split
    assert not any(r["current"] for r in layout.shard_summary(root, 2, tmp_path))
    three = layout.shard_summary(root, 3, index_root)
    assert [r["error"] for r in three[:2]] == ["one of 2 shards, not 3"] * 2 and "no index at" in three[2]["error"]
