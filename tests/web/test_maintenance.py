"""Staff-only maintenance and settings: access rules, the retrain path, search progress."""
import re
import shutil
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from search.models import MaintenanceRun, Status
from tests.conftest import corel_image
from tests.web.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_staff_pages_need_staff(client, django_user_model):
    for url in ("/staff/", "/staff/runs/1/", "/staff/runs/1.json"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/")
    client.force_login(django_user_model.objects.create_user("visitor", password="pw"))
    assert client.get("/staff/").status_code == 302
    assert client.post("/staff/start", {"kind": "train"}).status_code == 302
    assert not MaintenanceRun.objects.exists()


def test_the_login_page_is_the_sites_own(client, django_user_model):
    django_user_model.objects.create_user("curator", password="right-pw", is_staff=True)
    page = client.get("/login/?next=/staff/").content.decode()
    assert 'id="login-form"' in page and 'href="/collection/"' in page  # the site's page, with its nav
    wrong = client.post("/login/", {"username": "curator", "password": "wrong", "next": "/staff/"})
    assert wrong.status_code == 200 and 'id="login-error"' in wrong.content.decode()
    right = client.post("/login/", {"username": "curator", "password": "right-pw", "next": "/staff/"})
    assert right.status_code == 302 and right["Location"] == "/staff/"
    assert client.get("/staff/").status_code == 200
    assert 'id="log-out"' in client.get("/").content.decode()
    assert client.post("/logout/").status_code == 302 and client.get("/staff/").status_code == 302


def test_anonymous_search_can_be_turned_off(client, settings, django_user_model):
    settings.ANONYMOUS_CAN_SEARCH = False
    assert client.get("/")["Location"].startswith("/login/")
    response = client.post("/api/searches", {"image": SimpleUploadedFile("a.jpg", corel_image(1).read_bytes())})
    assert response.status_code == 403
    client.force_login(django_user_model.objects.create_user("member", password="pw"))
    assert client.get("/").status_code == 200


def test_api_reports_form_errors_as_json(client):
    response = client.post("/api/searches", {"photo": SimpleUploadedFile("a.jpg", b"abc")})
    assert response.status_code == 400
    assert "form field 'image'" in response.json()["errors"]["image"][0]
    response = client.post("/api/searches", {"image": SimpleUploadedFile("a.jpg", b"not an image at all")})
    assert "not an image file" in response.json()["errors"]["image"][0]


def test_search_progress_reports_every_stage_then_verifying_n_of_n(tiny_fine_engine):
    from dataclasses import replace

    from search.engine.pipeline import RetrievalEngine

    e = tiny_fine_engine
    engine = RetrievalEngine(e.model, e.index, "cpu", e.config.replace(n_candidates=40), e.attention)
    engine.verify_settings = replace(engine.verify_settings, block_size=16)  # 40 candidates: three blocks
    calls = []
    engine.search(corel_image(450), "penultimate+attention", k=5, progress=lambda *a: calls.append(a))
    stages = list(dict.fromkeys(c[0] for c in calls))
    assert stages == ["global features", "local features", "coarse", "verifying"]
    verifying = [c[1:] for c in calls if c[0] == "verifying"]
    assert verifying == [(0, 40), (16, 40), (32, 40), (40, 40)]


def test_retrain_trains_aside_then_switches_model_and_index(site_index, settings):
    from search.engine.index import load_index
    from search.engine.layout import active_build
    from search.engine.model import file_checksum
    from search.maintenance import run_maintenance

    settings.RETRIEVAL = settings.RETRIEVAL.replace(epochs=1, attention_epochs=2, device="cpu")
    data_dir = Path(settings.RETRIEVAL.data_dir)
    before_build = active_build(data_dir / "index")
    before_model = file_checksum(data_dir / "models" / "classifier.pt")
    run = MaintenanceRun.objects.create(kind=MaintenanceRun.TRAIN)
    assert run_maintenance(run.pk) == Status.DONE
    run.refresh_from_db()
    assert run.status == Status.DONE, run.error
    after_build = active_build(data_dir / "index")
    assert after_build != before_build and run.build == after_build.name
    new_model = file_checksum(data_dir / "models" / "classifier.pt")
    assert new_model != before_model
    assert load_index(after_build).manifest["model_checksum"] == new_model
    assert not list((data_dir / "models").glob("staging-*"))
    for step in ("train classifier", "train attention head", "global features", "local features"):
        assert f"{step}: started" in run.log


def test_a_retrain_without_labels_keeps_the_imagenet_classifier(settings, tmp_path, tiny_collection_dir,
                                                                  client, django_user_model):
    """Staff retrain a collection with labels 'none' (as one without any): the run keeps the ImageNet
    classifier, trains the attention head on its predictions (on a sample of 30 of the 40 images: the
    TRAIN_MAX_IMAGES cap) and builds an index of all 40 with local features."""
    import json

    from search.engine.layout import active_build, read_manifest
    from search.engine.model import metrics_path
    from search.maintenance import run_maintenance

    settings.RETRIEVAL = settings.RETRIEVAL.replace(data_dir=tmp_path / "data", attention_epochs=2, device="cpu",
                                                  train_max_images=30)
    run = MaintenanceRun.objects.create(kind=MaintenanceRun.TRAIN, collection_dir=str(tiny_collection_dir),
                                        labels="none")
    assert run_maintenance(run.pk) == Status.DONE
    run.refresh_from_db()
    assert run.status == Status.DONE, run.error
    assert "40 images of" in run.log and "0 labelled in 0 classes" in run.log
    assert ("classifier: the ImageNet classifier as it is (1000 classes): the collection had no class labels to "
            "fine-tune on, so the attention head learned its predictions (trained on a sample of 30 of its 40 "
            "images)") in run.log
    assert "train classifier: started" not in run.log and "train attention head: started" in run.log
    info = json.loads(metrics_path(tmp_path / "data" / "models" / "classifier.pt").read_text())
    assert info["label_free"] and len(info["classes"]) == 1000 and info["n_train"] + info["n_val"] == 30
    manifest = read_manifest(active_build(tmp_path / "data" / "index"))
    assert manifest["local"]["extracted"] == 40
    client.force_login(django_user_model.objects.create_user("curator", password="pw", is_staff=True))
    page = client.get("/staff/").content.decode()
    assert "Classifier: the ImageNet classifier as it is (1000 classes): the collection had no class labels" in page


def test_staff_form_takes_only_folders_and_labels_inside_the_staff_roots(client, django_user_model, settings,
                                                                        tmp_path):
    client.force_login(django_user_model.objects.create_user("staff2", password="pw", is_staff=True))
    allowed = tmp_path / "photos"
    (allowed / "more").mkdir(parents=True)
    (allowed / "escape").symlink_to("/etc")
    settings.STAFF_FOLDER_ROOTS = [str(allowed)]

    def refused(field, value, message):
        response = client.post("/staff/start", {"kind": "reindex", field: value})
        assert response.status_code == 400 and message in response.content.decode(), response.content.decode()

    refused("collection_dir", str(allowed / "nothing-here"), "nothing-here is not a folder on the server")
    refused("collection_dir", "/etc", "/etc is outside the folders staff may use")
    refused("collection_dir", str(allowed / "escape"), "is outside the folders staff may use")  # a link out
    refused("collection_dir", f"{allowed}/more/../../..", "is outside the folders staff may use")
    refused("collection_dir", "more", "give an absolute path")
    refused("labels", "/etc/passwd", "/etc/passwd is outside the folders staff may use")
    refused("labels", str(allowed / "labels.csv"), "neither &#x27;folders&#x27;, &#x27;none&#x27; nor a CSV file")
    assert not MaintenanceRun.objects.exists()


def test_a_file_that_is_not_a_labels_csv_is_reported_without_its_content(tmp_path):
    from search.engine.collection import read_labels_csv
    from search.engine.errors import CollectionError

    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the secret line\n")
    with pytest.raises(CollectionError) as error:
        read_labels_csv(secret)
    assert "secret.txt:1: expected two columns" in str(error.value) and "the secret line" not in str(error.value)


def test_reindex_of_another_folder_keeps_the_images_added_from_the_staff_page(site_index, tmp_path, settings,
                                                                              celery_worker_process):
    """Staff uploads become an 'add' run on the real worker: searchable when it ends, without a
    rebuild; a later reindex keeps them and extracts nothing for them again."""
    from search.engine.index import activate_build, load_index
    from search.engine.layout import active_build
    from search.maintenance import run_maintenance

    folder = tmp_path / "more"
    for name, first in (("horses", 700), ("flowers", 600)):
        (folder / name).mkdir(parents=True)
        for number in range(first, first + 3):
            (folder / name / f"{number}.jpg").symlink_to(corel_image(number))
    index_root = Path(settings.RETRIEVAL.data_dir) / "index"
    before = active_build(index_root)
    run = MaintenanceRun.objects.create(kind=MaintenanceRun.REINDEX, collection_dir=str(folder), labels="folders")
    try:
        assert run_maintenance(run.pk) == Status.DONE
        index = load_index(index_root)
        assert len(index) == 6 and set(index.labels) == {"horses", "flowers"}
        assert index.collection_root == folder.resolve()
        run = add_images_from_the_staff_page(settings)
        run = wait_for(lambda: MaintenanceRun.objects.filter(pk=run.pk, status__in=[Status.DONE, Status.FAILED]).first(),
                       timeout=180, what="the add run")
        assert run.status == Status.DONE, run.log
        assert "added 1 image(s) in delta" in run.log and "1 image(s) already in the index" in run.log, run.log
        assert not Path(run.collection_dir).exists()  # the uploads' folder, once they are in
        index = load_index(index_root)
        assert len(index) == 7 and index.labels[-1] == "horses" and "/new-horse" in index.relpaths[-1]
        run = MaintenanceRun.objects.create(kind=MaintenanceRun.REINDEX, collection_dir=str(folder), labels="folders")
        assert run_maintenance(run.pk) == Status.DONE
        index = load_index(index_root)
        added = [p for p, label in zip(index.relpaths, index.labels) if "/new-horse" in p and label == "horses"]
        assert len(index) == 7 and not index.deltas and len(added) == 1
        run.refresh_from_db()  # nothing went through the network
        assert "global features: 7 images unchanged since the last build (reused), 0 extracted" in run.log
    finally:
        activate_build(index_root, before)
        (index_root / "added.json").unlink(missing_ok=True)  # the session's other tests index without it


def test_an_add_run_that_fills_the_deltas_queues_a_merge_the_worker_runs(scratch_build, tmp_path, settings,
                                                                          celery_worker_process):
    """After an 'add' run, a merge is queued once the deltas are many or large enough: the
    worker's reindex folds them in, extracting nothing, and switches builds."""
    from search.engine.index import load_index
    from search.maintenance import MERGE_REQUESTER, run_maintenance

    index_root = Path(settings.RETRIEVAL.data_dir) / "index"
    settings.AUTO_MERGE, settings.MERGE_DELTA_FRACTION, settings.MERGE_MAX_DELTAS = True, 0.5, 2

    def add(number):
        folder = tmp_path / f"add-{number}"
        folder.mkdir()
        shutil.copy(corel_image(number), folder / f"new-{number}.jpg")
        run = MaintenanceRun.objects.create(kind=MaintenanceRun.ADD, collection_dir=str(folder), label="horses")
        assert run_maintenance(run.pk) == Status.DONE
        run.refresh_from_db()
        return run

    first = add(720)
    assert "queued merge run" not in first.log  # 1 image in 1 delta: not yet
    assert not MaintenanceRun.objects.filter(requested_by=MERGE_REQUESTER).exists()
    second = add(721)
    merge = MaintenanceRun.objects.get(requested_by=MERGE_REQUESTER)
    assert f"queued merge run {merge.pk}: 2 image(s) in 2 delta(s) beside 40 in the build" in second.log
    merge = wait_for(lambda: MaintenanceRun.objects.filter(pk=merge.pk, status__in=[Status.DONE, Status.FAILED])
                     .first(), timeout=180, what="the merge run")
    assert merge.status == Status.DONE and merge.kind == MaintenanceRun.REINDEX, merge.log
    assert "global features: 42 images unchanged since the last build (reused), 0 extracted" in merge.log
    index = load_index(index_root)
    assert len(index) == 42 and not index.deltas and index.path.name == merge.build
    # the added images keep their label (a reindex without labels once failed on them)
    assert [label for path, label in zip(index.relpaths, index.labels) if "/new-72" in path] == ["horses"] * 2


def test_a_merge_keeps_the_builds_kind_of_local_features_and_a_reindex_takes_the_setting(scratch_build, settings):
    """With LOCAL_GLOBAL_LEVEL changed since the active build was made, a merge (the reindex an
    add run queues) extracts nothing, as a merge must, and an admin's reindex applies the new
    setting, extracting the local features again."""
    from search.engine.index import load_index
    from search.maintenance import MERGE_REQUESTER, run_maintenance

    index_root = Path(settings.RETRIEVAL.data_dir) / "index"
    made_with = load_index(index_root).local.meta["global_level"]
    settings.RETRIEVAL = settings.RETRIEVAL.replace(local_global_level=not made_with)

    merge = MaintenanceRun.objects.create(kind=MaintenanceRun.REINDEX, requested_by=MERGE_REQUESTER)
    assert run_maintenance(merge.pk) == Status.DONE
    merge.refresh_from_db()
    assert "local features: 40 reused, 0 extracted" in merge.log
    assert load_index(index_root).local.meta["global_level"] is made_with

    reindex = MaintenanceRun.objects.create(kind=MaintenanceRun.REINDEX)
    assert run_maintenance(reindex.pk) == Status.DONE
    reindex.refresh_from_db()
    assert "local features: 0 reused, 40 extracted" in reindex.log
    assert load_index(index_root).local.meta["global_level"] is (not made_with)


def test_the_staff_page_says_when_the_active_build_keeps_settings_changed_since(client, django_user_model,
                                                                               site_index, settings):
    """After an upgrade or a changed setting that a build keeps (its kind of local features, the
    hybrid's weight), staff are told that searches follow the build until a reindex."""
    from search.engine.index import load_index

    client.force_login(django_user_model.objects.create_user("curator3", password="pw", is_staff=True))
    assert 'id="settings-behind"' not in client.get("/staff/").content.decode()
    local = load_index(site_index).local.meta
    made_with, keypoints = local["global_level"], local["max_keypoints"]
    settings.RETRIEVAL = settings.RETRIEVAL.replace(local_global_level=not made_with, hybrid_weight=0.3,
                                                    local_max_keypoints=keypoints + 100)
    page = client.get("/staff/").content.decode()
    note = re.search(r'<p id="settings-behind">(.*?)</p>', page, re.S).group(1)
    assert f"made {'with' if made_with else 'without'} the one backbone pass" in note
    assert f"LOCAL_GLOBAL_LEVEL is now {'off' if made_with else 'on'}" in note
    assert f"at most {keypoints} keypoints per image (LOCAL_MAX_KEYPOINTS is now {keypoints + 100})" in note
    assert "weight 0.5 (HYBRID_WEIGHT is now 0.3)" in note and "until a reindex" in note


def test_staff_add_a_zip_of_pictures_and_a_damaged_or_bomb_archive_is_refused(client, django_user_model,
                                                                              scratch_build, settings,
                                                                              celery_worker_process):
    """Bulk ingest: a zip's pictures are unpacked flat (its folders, hidden files and other files
    left out) and added by one run, which skips with the reason what only looked like a picture;
    a damaged archive, or one that would unpack past the limits, is refused with nothing staged."""
    import io
    import zipfile

    from search.engine.index import load_index

    def archive(members: dict) -> SimpleUploadedFile:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        return SimpleUploadedFile("pictures.zip", buffer.getvalue(), content_type="application/zip")

    client.force_login(django_user_model.objects.create_user("curator", password="pw", is_staff=True))
    incoming = Path(settings.RETRIEVAL.data_dir) / "incoming"
    staged_before = set(incoming.iterdir()) if incoming.exists() else set()
    settings.ARCHIVE_MAX_BYTES = 5 * 2**20
    bomb = archive({"bomb.jpg": bytes(30 * 2**20)})  # 30 MB of zeros, about 30 KB packed
    response = client.post("/staff/upload", {"images": [bomb], "label": "horses"})
    assert response.status_code == 400 and "over the limit of 20.00 MB per picture" in response.content.decode()
    damaged = SimpleUploadedFile("broken.zip", archive({"a.jpg": corel_image(730).read_bytes()}).read()[:-60])
    response = client.post("/staff/upload", {"images": [damaged]})
    assert response.status_code == 400 and "broken.zip is not a readable zip archive" in response.content.decode()
    # whole on the outside, damaged inside: found while unpacking (the CRC), and nothing is kept
    stored = io.BytesIO()
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.jpg", corel_image(730).read_bytes())
    body = bytearray(stored.getvalue())
    body[2000:2100] = bytes(100)
    response = client.post("/staff/upload", {"images": [SimpleUploadedFile("inside.zip", bytes(body))]})
    assert response.status_code == 400 and "inside.zip could not be unpacked" in response.content.decode()
    settings.ARCHIVE_MAX_IMAGES = 1
    two = archive({"x/1.jpg": corel_image(731).read_bytes(), "y/2.jpg": corel_image(732).read_bytes()})
    assert "at most 1 are taken at once" in client.post("/staff/upload", {"images": [two]}).content.decode()
    assert (set(incoming.iterdir()) if incoming.exists() else set()) == staged_before  # nothing staged
    settings.ARCHIVE_MAX_IMAGES = 100

    pictures = archive({"horses/730.jpg": corel_image(730).read_bytes(),
                        "more/horses/730.jpg": corel_image(731).read_bytes(),  # same name, another picture
                        "../../escape.jpg": corel_image(732).read_bytes(),
                        "horses/notes.txt": b"not a picture", "__MACOSX/horses/._730.jpg": b"junk",
                        ".hidden.jpg": b"junk", "horses/looks-like.jpg": b"not a picture either"})
    response = client.post("/staff/upload", {"images": [pictures], "label": "horses"})
    assert response.status_code == 302
    run = MaintenanceRun.objects.latest("pk")
    assert "archive pictures.zip: 4 picture(s) unpacked, 1 other file(s) ignored" in run.log
    assert sorted(p.name for p in Path(run.collection_dir).iterdir()) == ["730-2.jpg", "730.jpg", "escape.jpg",
                                                                           "looks-like.jpg"]
    assert not (Path(settings.RETRIEVAL.data_dir) / "escape.jpg").exists()
    run = wait_for(lambda: MaintenanceRun.objects.filter(pk=run.pk, status__in=[Status.DONE, Status.FAILED]).first(),
                   timeout=180, what="the add run")  # on the session's worker
    assert run.status == Status.DONE, run.log
    assert "skipped looks-like.jpg" in run.log and "added 3 image(s)" in run.log, run.log
    index = load_index(Path(settings.RETRIEVAL.data_dir) / "index")
    assert len(index) == 43 and index.labels[-3:] == ["horses"] * 3


def add_images_from_the_staff_page(settings) -> MaintenanceRun:
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.create_user("curator", password="pw", is_staff=True))
    horse = corel_image(710).read_bytes()
    files = lambda: [SimpleUploadedFile("new-horse.jpg", horse), SimpleUploadedFile("new-horse.jpg", horse)]
    settings.COLLECTION_UPLOADS = False
    assert client.post("/staff/upload", {"images": files(), "label": "horses"}).status_code == 403
    settings.COLLECTION_UPLOADS = True
    response = client.post("/staff/upload", {"images": [SimpleUploadedFile("bad.jpg", b"nope")], "label": "horses"})
    assert response.status_code == 400 and "bad.jpg cannot be used as an image" in response.content.decode()
    before = MaintenanceRun.objects.count()
    response = client.post("/staff/upload", {"images": files(), "label": "horses"})
    assert response.status_code == 302 and MaintenanceRun.objects.count() == before + 1
    run = MaintenanceRun.objects.latest("pk")
    assert (run.kind, run.label) == (MaintenanceRun.ADD, "horses") and response.url == f"/staff/runs/{run.pk}/"
    return run


def test_the_staff_sample_leaves_out_images_removed_from_search(client, django_user_model, site_index, settings):
    import io

    from django.core.management import call_command

    from search.engine import layout

    client.force_login(django_user_model.objects.create_user("curator2", password="pw", is_staff=True))
    index_root = Path(settings.RETRIEVAL.data_dir) / "index"
    first = next(iter(layout.catalog(index_root).rows))
    assert f"/thumbs/{first}" in client.get("/staff/").content.decode()
    call_command("remove_images", first, index_dir=index_root, stdout=io.StringIO())
    try:
        page = client.get("/staff/").content.decode()
        assert f"/thumbs/{first}" not in page and page.count("/thumbs/") == 24
    finally:
        call_command("remove_images", first, "--restore", index_dir=index_root, stdout=io.StringIO())


def test_staff_remove_images_from_search_and_put_them_back(client, django_user_model, site_index):
    """The staff page's counterpart of `remove_images`: by id or by path, at once for searches and
    image addresses, listed with a button to put each back; others cannot."""
    from search.collection_files import active_catalog

    catalog = active_catalog()
    (first_id, first), (second_id, second) = list(catalog.rows.items())[:2]
    assert client.post("/staff/remove", {"images": first_id}).status_code == 302  # to the login
    client.force_login(django_user_model.objects.create_user("curator", password="pw", is_staff=True))
    assert client.get(f"/images/{first_id}").status_code == 200
    page = client.post("/staff/remove", {"images": f"{first_id}\n{second['path']}\n", "action": "remove"})
    assert "2 image(s) removed from search" in page.content.decode()
    assert client.get(f"/images/{first_id}").status_code == 404
    assert client.get(f"/images/{second_id}").status_code == 404
    listing = client.get("/staff/").content.decode()
    assert f"<code>{first_id}</code>" in listing and second["path"] in listing
    unknown = client.post("/staff/remove", {"images": "no/such/image.jpg"}).content.decode()
    assert "nothing removed" in unknown and "no/such/image.jpg" in unknown
    back = client.post("/staff/remove", {"images": first_id, "action": "restore"}).content.decode()
    assert "1 image(s) back in search" in back
    assert client.get(f"/images/{first_id}").status_code == 200
    assert client.get(f"/images/{second_id}").status_code == 404
    client.post("/staff/remove", {"images": second_id, "action": "restore"})
    assert client.get(f"/images/{second_id}").status_code == 200


def test_site_first_serves_the_imagenet_starter_then_the_training_swaps_in(tiny_collection_dir, tmp_path, settings,
                                                                          client):
    """prepare_collection --site-first: searchable in minutes with the ImageNet backbone (coarse
    only, no meaningless logits), the home page saying so; start_training then fine-tunes, and the
    trained model and a fine index replace them."""
    from search.conf import engine_config
    from search.engine.index import load_index
    from search.engine.model import load_classifier
    from search.engine.workflows import is_starter, open_engine
    from tests.test_commands import run

    settings.RETRIEVAL = settings.RETRIEVAL.replace(data_dir=tmp_path, device="cpu", epochs=1, attention_epochs=2,
                                                    batch_size=16)
    out, _ = run("prepare_collection", "--site-first", "--collection", str(tiny_collection_dir), "--labels", "folders")
    assert "the ImageNet starter" in out and "is ready to search" in out
    config = engine_config()
    assert is_starter(load_classifier(config.default_model_path))
    index = load_index(config.index_root)
    assert "logits" not in index.variants and index.local is None and len(index) == 40
    engine = open_engine(config)
    assert engine.default_method == "hybrid" and "logits" not in engine.methods
    response = engine.search(index.path_of(12))
    assert response.results[0].image_id == index.image_ids[12] and response.results[0].stage == "coarse"
    note = client.get("/").content.decode()
    assert 'id="training-note"' in note and "no training started yet" in note

    out, _ = run("start_training", "--now")
    assert "done: build" in out
    assert not is_starter(load_classifier(config.default_model_path))
    trained = load_index(config.index_root)
    assert "logits" in trained.variants and trained.local is not None and trained.path != index.path
    assert open_engine(config).default_method == "hybrid+attention"
    assert 'id="training-note"' not in client.get("/").content.decode()
    # a training whose worker died (the demo stopped mid-run) is failed first, not waited for
    from datetime import timedelta

    from django.utils import timezone

    long_ago = timezone.now() - timedelta(minutes=10)
    stale = MaintenanceRun.objects.create(kind=MaintenanceRun.TRAIN, status=Status.RUNNING, started=long_ago,
                                          heartbeat=long_ago)
    out, _ = run("start_training")
    assert "already fine-tuned" in out
    stale.refresh_from_db()
    assert stale.status == Status.FAILED


def test_staff_scripts_add_and_remove_images_through_the_token_api(client, django_user_model, site_index, settings,
                                                                    celery_worker_process):
    """The collection API: a staff key adds images (an 'add' run on the real worker, searchable
    when it ends) and removes or restores them; no key, a bad key or a non-staff key is refused."""
    import io
    import json
    import shutil

    from django.core.management import call_command

    from search.engine import layout
    from search.engine.index import activate_build
    from search.models import ApiToken

    index_root = Path(settings.RETRIEVAL.data_dir) / "index"
    before = layout.active_build(index_root)
    copy = before.with_name(before.name + "-api")  # a build of its own, so the session's stays as it was
    shutil.copytree(before, copy)
    activate_build(index_root, copy)
    try:
        django_user_model.objects.create_user("robot", password="pw", is_staff=True)
        out = io.StringIO()
        call_command("create_api_token", "robot", name="nightly import", stdout=out)
        auth = {"HTTP_AUTHORIZATION": f"Token {out.getvalue().strip()}"}
        horse = corel_image(733).read_bytes()

        assert client.post("/api/collection/images", {"images": [SimpleUploadedFile("h.jpg", horse)]}).status_code == 401
        assert client.post("/api/collection/images", {}, HTTP_AUTHORIZATION="Token nope").status_code == 401
        visitor_key = ApiToken.issue(django_user_model.objects.create_user("visitor", password="pw"))
        assert client.post("/api/collection/remove", "{}", content_type="application/json",
                           HTTP_AUTHORIZATION=f"Token {visitor_key}").status_code == 403
        bad = client.post("/api/collection/images", {"images": [SimpleUploadedFile("x.jpg", b"text")]}, **auth)
        assert bad.status_code == 400 and "x.jpg cannot be used as an image" in bad.json()["errors"]["images"][0]

        response = client.post("/api/collection/images", {"images": [SimpleUploadedFile("new-horse.jpg", horse)],
                                                          "label": "horses"}, **auth)
        assert response.status_code == 202, response.content
        run_url = response.json()["url"]

        def finished():
            run = client.get(run_url, **auth).json()
            return run if run["status"] in ("done", "failed") else None

        run = wait_for(finished, timeout=180, what="the add run")
        assert run["status"] == "done" and "added 1 image(s)" in run["log"], run
        catalog = layout.catalog(index_root)
        added = next(image_id for image_id, row in catalog.rows.items() if row["path"].endswith("/new-horse.jpg"))
        assert catalog.label_of(added) == "horses" and client.get(f"/images/{added}").status_code == 200

        remove = lambda body: client.post("/api/collection/remove", json.dumps(body), content_type="application/json",
                                          **auth)
        assert remove({"images": [added]}).json() == {"removed": 1}
        assert client.get(f"/images/{added}").status_code == 404
        assert remove({"images": [added], "restore": True}).json() == {"restored": 1}
        unknown = remove({"images": ["no/such.jpg"]})
        assert unknown.status_code == 400 and "no/such.jpg" in unknown.json()["error"]
        assert remove({"pictures": []}).status_code == 400
    finally:
        activate_build(index_root, before)
        (index_root / "added.json").unlink(missing_ok=True)
        shutil.rmtree(copy, ignore_errors=True)


def test_a_run_lists_its_steps_what_it_reused_and_the_time_left_overall(admin_client):
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    MaintenanceRun.objects.create(kind=MaintenanceRun.REINDEX, status=Status.DONE,
                                  started=now - timedelta(hours=1, seconds=100), finished=now - timedelta(hours=1))
    run = MaintenanceRun.objects.create(kind=MaintenanceRun.REINDEX, status=Status.RUNNING,
                                        started=now - timedelta(seconds=30), log=(
        "01:00:00 collection /photos: 40 images, 40 labelled\n"
        "01:00:01 global features: started (40 to do)\n01:00:05 global features: finished\n"
        "01:00:05 global features: 38 images unchanged since the last build (reused), 2 extracted\n"
        "01:00:06 local features: started (40 to do)\n"))
    payload = admin_client.get(f"/staff/runs/{run.pk}.json").json()
    assert payload["steps"] == [{"name": "global features", "finished": True, "seconds": 4},
                                {"name": "local features", "finished": False, "seconds": None}]
    assert payload["reused"] == ["global features: 38 images unchanged since the last build (reused), 2 extracted"]
    assert payload["previous_s"] == pytest.approx(100, abs=1)
    assert payload["overall_remaining_s"] == pytest.approx(70, abs=2)
    # a step that ran past midnight
    run.log = "23:59:58 fine-tune: started (3 to do)\n00:00:03 fine-tune: finished\n"
    assert run.steps() == [{"name": "fine-tune", "finished": True, "seconds": 5}]
    train = MaintenanceRun.objects.create(kind=MaintenanceRun.TRAIN, status=Status.RUNNING, started=now)
    assert admin_client.get(f"/staff/runs/{train.pk}.json").json()["overall_remaining_s"] is None  # none before


def test_staff_evaluate_the_active_index_and_the_report_shows_it(admin_client, site_index, settings):
    import json

    from search.maintenance import run_maintenance

    response = admin_client.post("/staff/start", {"kind": "evaluate"})
    run = MaintenanceRun.objects.latest("pk")
    assert response.status_code == 302 and run.kind == MaintenanceRun.EVALUATE
    # the message went to the session's queue: run it here (if a worker there took it first, the
    # claim from 'queued' leaves it to that worker, and the wait below sees it end)
    run_maintenance(run.pk)
    run = wait_for(lambda: MaintenanceRun.objects.filter(pk=run.pk, status__in=[Status.DONE, Status.FAILED]).first(),
                   timeout=300, what="the evaluation")
    assert run.status == Status.DONE, run.log
    out = Path(re.search(r"report written to (\S+)", run.log).group(1))
    methods = {m["method"]: m for m in json.loads(out.read_text())["methods"]}
    assert "fine-tuned hybrid+attention" in methods and f"fine-tuned hybrid+attention: P@10 " in run.log
    assert 0 <= methods["fine-tuned pca"]["precision_at_10"] <= 1 and methods["fine-tuned pca"]["n_queries"] == 8
    settings.REPORT_ACCESS = "aggregate"
    assert f"{methods['fine-tuned pca']['precision_at_10']:.3f}" in admin_client.get("/report/").content.decode()
