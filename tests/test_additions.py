"""Adding images to a live index: a delta segment searched at once by an engine that stays open,
removal of an added image, and the next build folding the deltas in without extracting again."""
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from django.core.management.base import CommandError

from search.engine import layout
from search.engine.collection import scan_collection
from search.engine.index import load_index
from search.engine.workflows import add_to_index, engine_for, following_active_build, index_collection

from .conftest import corel_image
from .test_commands import run


FINE = "penultimate+attention"


def test_added_images_are_searchable_at_once_and_folded_in_by_the_next_build(tiny_models, engine_config, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for n in (0, 150, 300, 450, 600, 750):
        shutil.copy(corel_image(n), folder / f"{n}.jpg")
    root = tmp_path / "index"
    build = index_collection(scan_collection(folder), tiny_models, engine_config, root)
    engine = engine_for(tiny_models, build, engine_config)  # stays open, as a worker's does

    new = tmp_path / "new"
    new.mkdir()
    shutil.copy(corel_image(905), new / "cake.jpg")
    shutil.copy(corel_image(420), new / "bus.jpg")
    (new / "notes.jpg").write_text("not a picture")
    added = add_to_index([new], engine_config, root, label="added", models=tiny_models)
    assert sorted(r.relpath.rsplit("/", 1)[1] for r in added.added) == ["bus.jpg", "cake.jpg"]
    assert [p for p, _ in added.skipped] == [str(new / "notes.jpg")] and added.delta.parent.parent == build
    cake = next(r.image_id for r in added.added if r.relpath.endswith("cake.jpg"))

    response = engine.search(new / "cake.jpg", FINE)  # no reload: the next query sees the delta
    assert len(engine.index) == 8 and response.results[0].image_id == cake
    assert response.results[0].stage == "verified" and response.results[0].label == "added"
    assert layout.catalog(root).path_of(cake).read_bytes() == (new / "cake.jpg").read_bytes()
    for method in ("pca", "logits"):
        assert engine.search(new / "cake.jpg", method).results[0].image_id == cake

    # the same picture again is not added twice; the command says so
    with pytest.raises(CommandError, match="nothing added: no readable new images"):
        run("add_images", str(new / "cake.jpg"), index_dir=root, model=engine_config.default_model_path,
            attention=engine_config.default_attention_path)
    out, _ = run("remove_images", layout.catalog(root).path_of(cake).as_posix(), index_dir=root)
    assert "removed 1 images" in out
    assert cake not in [r.image_id for r in engine.search(new / "cake.jpg", FINE).results]

    rebuilt = load_index(index_collection(scan_collection(folder), tiny_models, engine_config, root))
    assert rebuilt.manifest["global"] == {"reused": 7, "extracted": 0} and rebuilt.manifest["added"] == 2
    assert rebuilt.manifest["local"]["extracted"] == 0 and not rebuilt.deltas and len(rebuilt) == 7
    bus = next(r.image_id for r in added.added if r.relpath.endswith("bus.jpg"))
    np.testing.assert_array_equal(rebuilt.row_vectors("penultimate", [rebuilt.positions[bus]]),
                                  engine.index.row_vectors("penultimate", [engine.index.positions[bus]]))
    response = engine_for(tiny_models, rebuilt.path, engine_config).search(new / "bus.jpg", FINE)
    assert response.results[0].image_id == bus and response.results[0].stage == "verified"


def test_a_search_during_a_merge_is_answered_by_the_build_and_its_deltas(tiny_models, engine_config, tmp_path):
    """A merge (the rebuild that folds the deltas in) writes a new build beside the serving one:
    a search made while it runs, from inside its progress reports, still finds the added image,
    verified; then the new build holds it with nothing extracted again."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for n in (0, 150, 300, 450):
        shutil.copy(corel_image(n), folder / f"{n}.jpg")
    root = tmp_path / "index"
    build = index_collection(scan_collection(folder), tiny_models, engine_config, root)
    engine = engine_for(tiny_models, build, engine_config)
    new = tmp_path / "new"
    new.mkdir()
    shutil.copy(corel_image(905), new / "cake.jpg")
    cake = add_to_index([new], engine_config, root, models=tiny_models).added[0].image_id

    during = []

    def progress(step, done, total):
        if layout.active_build(root) == build and not during:  # the merge under way, not yet switched
            during.append(engine.search(new / "cake.jpg", FINE))

    merged = index_collection(scan_collection(folder), tiny_models, engine_config, root, progress=progress)
    assert during, "the merge reported no progress before it switched"
    assert during[0].results[0].image_id == cake and during[0].results[0].stage == "verified"
    assert layout.active_build(root) == merged != build
    assert load_index(merged).manifest["global"] == {"reused": 5, "extracted": 0}
    after = engine_for(tiny_models, merged, engine_config).search(new / "cake.jpg", FINE)
    assert after.results[0].image_id == cake and after.results[0].stage == "verified"


def test_a_build_keeps_its_kind_of_local_features_after_the_settings_change(tiny_models, engine_config, tmp_path):
    """A build made without LOCAL_GLOBAL_LEVEL (as every build before it was), with another number
    of keypoints per image and other scales than the settings say now, keeps serving fine searches and taking
    additions (an upgrade that changes a default must not stop a site's searches until a
    reindex), a merge of it extracts nothing, and only a new build (a reindex) extracts its local
    features again, as the settings say."""
    assert engine_config.local_global_level and tiny_models.extractor.global_level
    now = tiny_models.extractor.settings
    folder = tmp_path / "photos"
    folder.mkdir()
    for n in (0, 150, 300, 450, 600):
        shutil.copy(corel_image(n), folder / f"{n}.jpg")
    root = tmp_path / "index"
    made = replace(now, max_keypoints=now.max_keypoints + 100, scales=(0.5, 1.0))
    before = replace(tiny_models, extractor=replace(tiny_models.extractor, global_level=False, settings=made))
    build = index_collection(scan_collection(folder), before, engine_config.replace(local_global_level=False), root)
    stored = load_index(build)
    assert stored.local.meta["global_level"] is False and stored.manifest["local"]["global_level"] is False
    assert stored.manifest["local"]["max_keypoints"] == made.max_keypoints
    assert stored.manifest["local"]["scales"] == [0.5, 1.0]

    engine = engine_for(tiny_models, build, engine_config)
    assert not engine.extractor.global_level and engine.extractor.checksum == stored.local.meta["extractor"]
    assert engine.extractor.settings == made and tiny_models.extractor.settings == now
    response = engine.search(folder / "300.jpg", FINE)
    assert response.results[0].relpath == "300.jpg" and response.results[0].stage == "verified"

    new = tmp_path / "new"
    new.mkdir()
    shutil.copy(corel_image(905), new / "cake.jpg")
    cake = add_to_index([new], engine_config, root, models=tiny_models).added[0].image_id
    response = engine.search(new / "cake.jpg", FINE)
    assert response.results[0].image_id == cake and response.results[0].stage == "verified"

    merged = load_index(index_collection(scan_collection(folder), following_active_build(tiny_models, root),
                                         engine_config, root))
    assert merged.manifest["local"]["extracted"] == 0 and merged.local.meta["global_level"] is False
    assert layout.made_with_local_settings(merged.local.meta) == (made.max_keypoints, made.scales)
    reindexed = load_index(index_collection(scan_collection(folder), tiny_models, engine_config, root))
    assert reindexed.manifest["local"]["extracted"] == 6 and reindexed.local.meta["global_level"] is True
    assert layout.made_with_local_settings(reindexed.local.meta) == (now.max_keypoints, now.scales)
    response = engine_for(tiny_models, reindexed.path, engine_config).search(new / "cake.jpg", FINE)
    assert response.results[0].image_id == cake and response.results[0].stage == "verified"


def test_a_second_writer_waits_for_the_index_lock(tmp_path):
    """One build or delta at a time per index root, across processes; re-entrant within one."""
    probe = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR)\n"
             "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(3)")
    with layout.writing(tmp_path):
        with layout.writing(tmp_path):  # a build inside a maintenance run that holds it
            pass
        held = subprocess.run([sys.executable, "-c", probe, str(tmp_path / layout.LOCK)])
    free = subprocess.run([sys.executable, "-c", probe, str(tmp_path / layout.LOCK)])
    assert (held.returncode, free.returncode) == (3, 0)


KILL_AT = """
import os, signal, sys
from pathlib import Path
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "retrieval_site.settings")
from search.engine.collection import scan_collection
from search.engine.config import EngineConfig
from search.engine.workflows import index_collection, load_models

config = EngineConfig(data_dir=Path(sys.argv[1]), device="cpu", batch_size=4, checkpoint_images=4)
stage, at = sys.argv[4], int(sys.argv[5])

def progress(name, done, total):
    if name == stage and done >= at:
        os.kill(os.getpid(), signal.SIGKILL)  # as a worker killed mid-run: no cleanup, no exception

index_collection(scan_collection(sys.argv[2]), load_models(config), config, Path(sys.argv[3]), progress=progress)
"""


@pytest.mark.parametrize("stage", ["global features", "local features"])
def test_an_index_run_killed_midway_resumes_where_it_stopped(tiny_models, engine_config, tmp_path, stage):
    """A build of 22 images (7 of them in the active build) SIGKILLed after its 10th new image:
    the next run reuses the 8 it had saved (two chunks of 4) and extracts the other 7, giving
    what an uninterrupted run gives."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for n in range(0, 1000, 165):
        shutil.copy(corel_image(n), folder / f"{n}.jpg")
    root = tmp_path / "index"
    index_collection(scan_collection(folder), tiny_models, engine_config, root)
    shutil.copytree(root, tmp_path / "uninterrupted", symlinks=True)
    for n in range(10, 1000, 66):  # 15 more
        shutil.copy(corel_image(n), folder / f"{n}.jpg")
    killed = subprocess.run([sys.executable, "-c", KILL_AT, str(engine_config.data_dir), str(folder), str(root),
                             stage, "17"], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert list((root / "resume").iterdir())

    config = engine_config.replace(checkpoint_images=4)
    index = load_index(index_collection(scan_collection(folder), tiny_models, config, root))
    if stage == "global features":
        assert index.manifest["global"] == {"reused": 7 + 8, "extracted": 7}
        assert (index.manifest["local"]["resumed"], index.manifest["local"]["extracted"]) == (0, 15)
    else:  # every global vector was saved before the local features began
        assert index.manifest["global"] == {"reused": 22, "extracted": 0}
        assert (index.manifest["local"]["resumed"], index.manifest["local"]["extracted"]) == (8, 7)
    assert not (root / "resume").exists()  # a completed build leaves nothing to resume
    whole = load_index(index_collection(scan_collection(folder), tiny_models, config, tmp_path / "uninterrupted"))
    np.testing.assert_allclose(index.vectors["penultimate"], whole.vectors["penultimate"], atol=1e-5)
    for position in range(len(index)):
        resumed, extracted = index.local.features(position), whole.local.features(position)
        np.testing.assert_allclose(resumed.keypoints, extracted.keypoints, atol=1e-3)
        np.testing.assert_allclose(resumed.descriptors, extracted.descriptors, atol=2e-3)
