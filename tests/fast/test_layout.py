"""Fast tier: the index layout (builds, the active link, manifest, image table, catalog)
on hand-written builds."""
import json

import pytest

from search.engine import layout
from search.engine.errors import SearchIndexError


def write_build(index_root, rows, collection_root="/photos", activate=True):
    partial, final = layout.new_build(index_root)
    assert partial.name.endswith(".partial") and not final.exists()
    layout.write_table(partial, rows)
    layout.write_manifest(partial, {"collection_root": collection_root, "collection_size": len(rows)})
    layout.finish_build(partial, final)
    if activate:
        layout.point_active(index_root, final)
    return final


ROWS = [{"id": "a1", "path": "cats/1.jpg", "label": "cats"}, {"id": "b2", "path": "2.jpg", "label": None}]


def test_catalog_serves_paths_and_labels_by_id(tmp_path):
    build = write_build(tmp_path, ROWS)
    catalog = layout.catalog(tmp_path)
    assert catalog.build == build.resolve() and len(catalog) == 2
    assert str(catalog.path_of("a1")) == "/photos/cats/1.jpg" and catalog.label_of("b2") is None
    assert catalog.path_of("nope") is None and catalog.labels == ["cats"]
    assert layout.catalog(tmp_path) is catalog  # read once per build


def test_catalog_follows_the_active_link(tmp_path):
    write_build(tmp_path, ROWS)
    first = layout.catalog(tmp_path)
    second_build = write_build(tmp_path, ROWS[:1], collection_root="/elsewhere")
    second = layout.catalog(tmp_path)
    assert second.build == second_build.resolve() and len(second) == 1
    assert str(second.path_of("a1")) == "/elsewhere/cats/1.jpg"
    assert first.build != second.build  # the old build's catalog stays readable for searches in flight
    assert layout.read_catalog(first.build).path_of("b2") is not None


def test_active_link_and_missing_index(tmp_path):
    assert not layout.has_active(tmp_path)
    with pytest.raises(SearchIndexError, match="run the 'index' command first"):
        layout.active_build(tmp_path)
    build = write_build(tmp_path, ROWS)
    assert layout.has_active(tmp_path) and layout.active_build(tmp_path) == build.resolve()
    assert layout.active_build(build) == build  # a build is its own root
    assert (tmp_path / "active").is_symlink() and not (tmp_path / "active").readlink().is_absolute()


def test_incomplete_or_foreign_builds_are_refused(tmp_path):
    build = write_build(tmp_path, ROWS, activate=False)
    manifest = json.loads((build / layout.MANIFEST).read_text())
    manifest["collection_size"] = 3
    (build / layout.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SearchIndexError, match="lists 2 images but the manifest says 3"):
        layout.read_catalog(build)
    manifest["format_version"] = 99
    (build / layout.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SearchIndexError, match="index format 99 is not the supported 1; reindex"):
        layout.read_manifest(build)
    (build / layout.MANIFEST).unlink()
    with pytest.raises(SearchIndexError, match="is not a complete index"):
        layout.read_manifest(build)


def test_the_deltas_are_counted_from_their_manifests_and_due_a_merge_by_share_or_number(tmp_path):
    from search.engine.additions import DeltaLoad, delta_load

    rows = [{"id": f"i{n}", "path": f"{n}.jpg", "label": None} for n in range(40)]
    build = write_build(tmp_path, rows)
    assert delta_load(tmp_path) == DeltaLoad(40, 0, 0) and not DeltaLoad(40, 0, 0).merge_due(0.0, 1)
    for size in (1, 2):
        partial, final = layout.new_delta(build)
        layout.write_manifest(partial, {"collection_root": "/photos", "collection_size": size})
        layout.finish_build(partial, final)
    partial, _ = layout.new_delta(build)  # a delta still being written is not counted
    layout.write_manifest(partial, {"collection_root": "/photos", "collection_size": 7})
    load = delta_load(tmp_path)
    assert load == DeltaLoad(40, 3, 2)
    assert not load.merge_due(fraction=0.1, max_deltas=3)  # 3 of 40 images, 2 of 3 deltas
    assert load.merge_due(fraction=0.075, max_deltas=3)  # 3 >= 0.075 * 40
    assert load.merge_due(fraction=0.1, max_deltas=2)


def test_a_row_file_reads_rows_as_numpy_indexes_them(tmp_path):
    import numpy as np

    from search.engine.stored import RowFile

    array = np.arange(60, dtype=np.float16).reshape(20, 3)
    np.save(tmp_path / "a.npy", array)
    rows = RowFile(tmp_path / "a.npy")
    assert rows.shape == (20, 3) and rows.ndim == 2 and len(rows) == 20 and rows.dtype == np.float16
    np.testing.assert_array_equal(rows[4], array[4])
    np.testing.assert_array_equal(rows[-1], array[-1])
    np.testing.assert_array_equal(rows[3:9], array[3:9])
    np.testing.assert_array_equal(rows[18:40], array[18:40])
    np.testing.assert_array_equal(rows[:], array)
    picked = np.array([7, 2, 3, 4, 19, 7, 0])  # runs, repeats, any order
    np.testing.assert_array_equal(rows[picked], array[picked])
    ascending = np.array([0, 1, 2, 5, 6, 19])  # runs with gaps, in file order (read without a second copy)
    np.testing.assert_array_equal(rows[ascending], array[ascending])
    np.testing.assert_array_equal(rows[np.arange(20) % 3 == 0], array[np.arange(20) % 3 == 0])
    np.testing.assert_array_equal(rows[np.array([], dtype=np.int64)], array[[]])
    np.testing.assert_array_equal(np.asarray(rows, dtype=np.float32), array.astype(np.float32))
    np.testing.assert_array_equal(rows.astype(np.float32), array.astype(np.float32))
    import pytest

    with pytest.raises(IndexError):
        rows[np.array([20])]
    with pytest.raises(IndexError):
        rows[20]


def test_a_build_keeps_its_local_settings_and_staff_are_told_when_the_settings_moved_on():
    """The keypoints per image and the scales a store was made with are read back from its meta
    (a store from before they were recorded: the defaults of that time), an extractor follows them,
    and ``settings_behind`` names each one the current settings change."""
    from types import SimpleNamespace

    from search.engine.config import EngineConfig, LocalSettings
    from search.engine.local_features import AttentionExtractor, following

    assert layout.made_with_local_settings({}) == (300, (0.5, 0.7071, 1.0))
    recorded = {"global_level": True, "max_keypoints": 600, "scales": [0.5, 0.7071, 1.0, 1.4142]}
    assert layout.made_with_local_settings(recorded) == (600, (0.5, 0.7071, 1.0, 1.4142))

    now = EngineConfig(local_max_keypoints=250, local_scales="0.5,1.0", local_global_level=False)
    extractor = AttentionExtractor(None, None, now.local_settings(), global_level=False)
    followed = following(extractor, recorded)
    assert followed.settings == LocalSettings((0.5, 0.7071, 1.0, 1.4142), 600, now.local_score_threshold,
                                              now.local_base_max_side)
    assert followed.global_level and extractor.settings.max_keypoints == 250  # the extractor given is kept
    assert layout.local_settings_record(followed) == {"max_keypoints": 600, "scales": [0.5, 0.7071, 1.0, 1.4142]}
    assert following(extractor, {}).settings.max_keypoints == 300
    # a store from before the record keeps serving under the settings of now when it was made with them
    named = AttentionExtractor(SimpleNamespace(checksum="model", image_size=224), SimpleNamespace(checksum="head"),
                               now.local_settings())
    assert following(named, {"extractor": named.checksum}).settings == now.local_settings()
    assert following(named, {"extractor": "made otherwise"}).settings.scales == (0.5, 0.7071, 1.0)

    behind = layout.settings_behind({"local": recorded}, now)
    assert "made with the one backbone pass" in behind[0]
    assert behind[1:] == ["its local features were made with at most 600 keypoints per image "
                          "(LOCAL_MAX_KEYPOINTS is now 250)",
                          "its local features were made at scales 0.5,0.7071,1,1.4142 (LOCAL_SCALES is now 0.5,1)"]
    same = EngineConfig(local_max_keypoints=600, local_scales="0.5,0.7071,1.0,1.4142", local_global_level=True)
    assert layout.settings_behind({"local": recorded}, same) == []
    # a store from before the record: what the page assumes, and that it assumes it
    unrecorded = {"global_level": True, "extractor": "made before the record"}
    assert layout.settings_behind({"local": unrecorded}, same) == [
        "its local features were made with at most 300 keypoints per image, the default before builds recorded "
        "it, unless set otherwise then (LOCAL_MAX_KEYPOINTS is now 600)",
        "its local features were made at scales 0.5,0.7071,1, the default before builds recorded it, unless set "
        "otherwise then (LOCAL_SCALES is now 0.5,0.7071,1,1.4142)"]
