"""Search jobs and maintenance runs through a real Celery worker on the real Redis broker."""
import io
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from search.models import MaintenanceRun, Rating, SearchJob, Status
from tests.conftest import corel_image

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def finished_job(job_id, timeout=180):
    """Waits for the job named by its key (what the API answers) or its row id."""
    lookup = {"key": job_id} if isinstance(job_id, str) else {"pk": job_id}

    def done():
        job = SearchJob.objects.get(**lookup)
        return job if job.status in (Status.DONE, Status.FAILED) else None
    return wait_for(done, timeout, what=f"search job {job_id}")


def api_search(client, number, method="penultimate+attention", k=5):
    with corel_image(number).open("rb") as handle:
        response = client.post("/api/searches", {"image": handle, "method": method, "k": str(k)})
    assert response.status_code == 201, response.content
    return response.json()


def test_api_search_runs_on_the_worker_and_returns_same_class_results(client, celery_worker_process, site_index):
    created = api_search(client, 450)  # a dinosaur that is not in the index
    assert created["url"].endswith(f"/api/searches/{created['id']}")
    job = finished_job(created["id"])
    assert job.status == Status.DONE, job.error
    from django.conf import settings

    from search.engine.layout import active_build

    assert job.index_build == active_build(Path(settings.RETRIEVAL.data_dir) / "index").name
    assert job.celery_task_id
    body = client.get(f"/api/searches/{job.key}").json()
    assert body["status"] == "done" and len(body["results"]) == 5
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4, 5]
    assert body["results"][0]["label"] == "dinosaurs"
    assert {r["stage"] for r in body["results"]} <= {"verified", "coarse"}
    # a verified badge means a confident match; the answer says whether there is one
    assert body["confident_match"] == any(r["stage"] == "verified" for r in body["results"]) == (body["n_verified"] > 0)
    min_confidence = settings.RETRIEVAL.min_confidence
    assert all(r["confidence"] >= min_confidence for r in body["results"] if r["stage"] == "verified")
    assert all(0 <= r["confidence"] <= 1 for r in body["results"])
    assert "path" not in json.dumps(body["results"][0]).replace("relpath", "")  # no server paths leak

    # the result's image is served by id, its correspondences are drawn
    first = body["results"][0]
    image = client.get(first["image_url"])
    assert image.status_code == 200
    png = client.get(f"/jobs/{job.key}/match/1.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert client.get("/images/../../etc/passwd").status_code == 404
    assert client.get("/images/0123456789ab").status_code == 404

    # taken out of search (remove_images): no longer served, and the running worker leaves it out
    from django.core.management import call_command

    index_root = Path(settings.RETRIEVAL.data_dir) / "index"
    call_command("remove_images", first["image_id"], index_dir=index_root, stdout=io.StringIO())
    try:
        assert client.get(first["image_url"]).status_code == 404
        again = finished_job(api_search(client, 450)["id"])
        assert again.status == Status.DONE and len(again.results) == 5
        assert first["image_id"] not in [r["image_id"] for r in again.results]
    finally:
        call_command("remove_images", first["image_id"], "--restore", index_dir=index_root,
                     stdout=io.StringIO())
    assert client.get(first["image_url"]).status_code == 200


def test_coarse_method_and_rating_and_report(client, admin_client, celery_worker_process, settings):
    job = finished_job(api_search(client, 301, method="logits", k=10)["id"])  # a bus
    assert job.status == Status.DONE and all(r["stage"] == "coarse" for r in job.results)
    body = client.get(f"/api/searches/{job.key}").json()
    assert body["confident_match"] is None and all(r["confidence"] == 0 for r in body["results"])
    first, second = job.results[0]["image_id"], job.results[1]["image_id"]
    rate = lambda image_id, value: client.post(f"/jobs/{job.key}/rate", json.dumps(
        {"image_id": image_id, "value": value}), content_type="application/json")
    assert rate(first, "relevant").status_code == 200
    assert rate(second, "not_relevant").status_code == 200
    assert rate(second, "relevant").status_code == 200  # changed, not added
    assert Rating.objects.filter(job=job).count() == 2
    assert rate("nope", "relevant").status_code == 400
    assert rate(first, "maybe").status_code == 400
    # the report: staff only by default; with REPORT_ACCESS=aggregate the per-method figures for
    # anyone who may search, never the per-search rows (another person's query photo and results)
    assert client.get("/report/").status_code == 302
    staff_report = admin_client.get("/report/").content.decode()
    assert 'data-method="logits"' in staff_report and "1.000" in staff_report
    assert f'href="/jobs/{job.key}/"' in staff_report
    settings.REPORT_ACCESS = "aggregate"
    report = client.get("/report/").content.decode()
    assert 'data-method="logits"' in report and "1.000" in report
    assert "job-table" not in report and str(job.key) not in report

    from django.core.management import call_command
    from io import StringIO

    out = StringIO()
    call_command("rating_report", stdout=out)
    assert "logits" in out.getvalue() and "1.000" in out.getvalue()


def test_a_job_whose_query_image_was_deleted_fails_with_a_reason(admin_client, celery_worker_process):
    from search.tasks import run_search

    job = SearchJob.objects.create(query_image=SimpleUploadedFile("gone.jpg", corel_image(2).read_bytes()),
                                   method="pca", k=3)
    Path(job.query_image.path).unlink()
    run_search.delay(job.pk)
    job = finished_job(job.pk)
    assert job.status == Status.FAILED and "is gone" in job.error
    assert admin_client.get(f"/jobs/{job.key}.json").json()["error"] == job.error
    page = admin_client.get(f"/jobs/{job.key}/").content.decode()
    assert '<p id="search-again" >' in page  # shown, not hidden, on a failed search


def test_a_missing_index_fails_the_job_with_a_reason(settings, tmp_path):
    from search.jobs import run_search_job

    settings.RETRIEVAL = settings.RETRIEVAL.replace(data_dir=tmp_path)
    job = SearchJob.objects.create(query_image=SimpleUploadedFile("q.jpg", corel_image(2).read_bytes()),
                                   method="pca", k=3)
    assert run_search_job(job.pk) == Status.FAILED
    job.refresh_from_db()
    assert "no index at" in job.error and "run the 'index' command" in job.error


def test_the_watchdog_fails_a_job_left_running(admin_client, settings):
    settings.SEARCH_JOB_TIMEOUT_S = 60
    job = SearchJob.objects.create(query_image=SimpleUploadedFile("q.jpg", b"x"), method="pca", k=3,
                                   status=Status.RUNNING, started=timezone.now() - timedelta(minutes=5))
    body = admin_client.get(f"/jobs/{job.key}.json").json()
    assert body["status"] == "failed" and "no result 60 s after the search started" in body["error"]


def test_a_reindex_that_fails_halfway_leaves_the_old_index_active(site_index, monkeypatch):
    from django.conf import settings

    import search.engine.index as index_module
    from search.engine.layout import active_build
    from search.maintenance import run_maintenance

    def broken_store(*args, progress, **kwargs):
        progress("local features", 5, 40)
        raise OSError("disk full (simulated halfway through the local features)")

    monkeypatch.setattr(index_module, "build_local_store", broken_store)
    index_root = Path(settings.RETRIEVAL.data_dir) / "index"
    before = active_build(index_root)
    run = MaintenanceRun.objects.create(kind=MaintenanceRun.REINDEX)
    with pytest.raises(OSError):
        run_maintenance(run.pk)
    run.refresh_from_db()
    assert run.status == Status.FAILED and "disk full" in run.error and "failed: OSError" in run.log
    assert active_build(index_root) == before
    assert not [p for p in (index_root / "builds").iterdir() if p.name.endswith(".partial")]


def test_staff_reindex_runs_on_the_worker_and_switches_the_index(client, celery_worker_process, site_index,
                                                                 django_user_model):
    from django.conf import settings

    from search.engine.layout import active_build

    index_root = Path(settings.RETRIEVAL.data_dir) / "index"
    before = active_build(index_root)
    assert client.post("/staff/start", {"kind": "reindex"}).status_code == 302  # to the admin login
    assert not MaintenanceRun.objects.exists()
    staff = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(staff)
    response = client.post("/staff/start", {"kind": "reindex"})
    run = MaintenanceRun.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/staff/runs/{run.pk}/"

    def finished():
        run.refresh_from_db()
        return run.status in (Status.DONE, Status.FAILED)
    wait_for(finished, 300, what="the reindex")
    assert run.status == Status.DONE, run.error
    after = active_build(index_root)
    assert after != before and run.build == after.name
    assert "global features: started (40 to do)" in run.log
    body = client.get(f"/staff/runs/{run.pk}.json").json()
    assert body["status"] == "done" and body["elapsed_s"] == (run.finished - run.started).total_seconds()
    # the worker picks the new build up for the next search
    job = finished_job(api_search(client, 402, method="pca", k=3)["id"])
    assert job.index_build == after.name


def test_running_a_job_twice_is_harmless(site_index):
    """A redelivered task (acks_late after a lost worker) finds the job finished and leaves it."""
    from search.jobs import run_search_job

    job = SearchJob.objects.create(query_image=SimpleUploadedFile("q.jpg", corel_image(455).read_bytes()),
                                   method="pca", k=3)
    assert run_search_job(job.pk) == Status.DONE
    job.refresh_from_db()
    first = (job.results, job.finished)
    assert run_search_job(job.pk) == Status.DONE
    job.refresh_from_db()
    assert (job.results, job.finished) == first
    assert run_search_job(10**9) == "missing"


def test_a_search_is_seen_only_by_its_owner_and_staff(client, admin_client, django_user_model, monkeypatch):
    """Unguessable keys in every URL, and a key alone is not enough: another visitor (session)
    or another user gets the same 404 as for a search that does not exist."""
    from django.test import Client

    from search import views

    monkeypatch.setattr(views, "enqueue_search", lambda job_id: "not-queued")  # no worker needed
    created = api_search(client, 301)
    job = SearchJob.objects.get(key=created["id"])
    assert created["url"].endswith(f"/api/searches/{job.key}")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", created["id"])
    SearchJob.objects.filter(pk=job.pk).update(status=Status.DONE, results=[{
        "rank": 1, "image_id": "abc", "relpath": "buses/301.jpg", "label": "buses", "distance": 0.1,
        "stage": "coarse", "inliers": 0}])
    urls = [f"/jobs/{job.key}/", f"/jobs/{job.key}.json", f"/api/searches/{job.key}",
            f"/jobs/{job.key}/query.jpg", f"/jobs/{job.key}/match/1/"]
    rate = {"path": f"/jobs/{job.key}/rate", "data": json.dumps({"image_id": "abc", "value": "relevant"}),
            "content_type": "application/json"}
    for url in urls:
        assert client.get(url).status_code == 200, url  # the owner's session (the API's cookie)
        assert admin_client.get(url).status_code == 200, url
    stranger = Client()
    for url in urls:
        assert stranger.get(url).status_code == 404, url
    assert stranger.post(**rate).status_code == 404
    assert not Rating.objects.exists()
    assert stranger.get(f"/jobs/{job.pk}/").status_code == 404  # row ids name nothing
    assert stranger.get(f"/api/searches/{job.pk}").status_code == 404
    assert client.post(**rate).status_code == 200

    # a logged-in user's search is theirs, on any session of theirs, and no other user's
    alice = django_user_model.objects.create_user("alice", password="pw-alice-123")
    bob = django_user_model.objects.create_user("bob", password="pw-bob-123")
    as_alice = Client()
    as_alice.force_login(alice)
    mine = SearchJob.objects.get(key=api_search(as_alice, 302)["id"])
    assert mine.owner == alice and mine.owner_session == ""
    again = Client()
    again.force_login(alice)
    assert again.get(f"/jobs/{mine.key}.json").status_code == 200
    as_bob = Client()
    as_bob.force_login(bob)
    assert as_bob.get(f"/jobs/{mine.key}.json").status_code == 404


def test_collection_images_need_the_search_permission(client, settings, site_index):
    from search.collection_files import active_catalog

    image_id = next(iter(active_catalog().rows))
    assert client.get(f"/images/{image_id}").status_code == 200
    assert client.get(f"/thumbs/{image_id}.jpg").status_code == 200
    assert client.get(f"/images/{image_id}/").status_code == 200
    assert client.get("/images/000000000000/").status_code == 404
    settings.ANONYMOUS_CAN_SEARCH = False
    for url in (f"/images/{image_id}", f"/thumbs/{image_id}.jpg", "/report/", f"/images/{image_id}/",
                "/collection/", "/searches/"):
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"], url
    response = client.post(f"/images/{image_id}/search")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_a_collection_image_browsers_cannot_show_is_served_as_a_jpeg_of_it(client, site_index, settings,
                                                                          tmp_path, monkeypatch):
    from PIL import Image

    from search import collection_files

    image_id = next(iter(collection_files.active_catalog().rows))
    original = collection_files.indexed_image_path(image_id)
    served = b"".join(client.get(f"/images/{image_id}").streaming_content)
    assert served == original.read_bytes()  # a JPEG is served as it is
    photo = Image.open(corel_image(450)).convert("RGB")  # 384 x 256
    settings.SHOWN_IMAGE_MAX_SIDE = 300
    for name, fmt in (("scan.tif", "TIFF"), ("phone.heic", "HEIF")):
        photo.save(tmp_path / name, format=fmt)
        # the indexed image's file is that picture, as a collection folder of scans or phone photos has it
        monkeypatch.setattr(collection_files, "indexed_image_path", lambda _id, path=tmp_path / name: path)
        collection_files.thumbnail_file(image_id, 300).unlink(missing_ok=True)
        response = client.get(f"/images/{image_id}")
        with Image.open(io.BytesIO(b"".join(response.streaming_content))) as shown:
            assert response.status_code == 200 and shown.format == "JPEG" and shown.size == (300, 200), name


def test_the_image_page_shows_staff_where_the_file_is_and_refuses_removed_images(
        client, admin_client, site_index, settings):
    from search.collection_files import active_catalog, remove_from_search, restore_to_search

    image_id, row = next(iter(active_catalog().rows.items()))
    path = str(active_catalog().path_of(image_id))
    assert path not in client.get(f"/images/{image_id}/").content.decode()
    staff_page = admin_client.get(f"/images/{image_id}/").content.decode()
    assert path in staff_page and 'id="remove-image"' in staff_page
    assert 'id="remove-image"' not in client.get(f"/images/{image_id}/").content.decode()
    removed = admin_client.post("/staff/remove", {"images": image_id, "action": "remove"})  # the page's button
    assert "1 image(s) removed from search" in removed.content.decode()
    restore_to_search([image_id])
    remove_from_search([image_id])
    try:
        assert client.get(f"/images/{image_id}/").status_code == 404
        assert client.post(f"/images/{image_id}/search").status_code == 404
        assert f"/images/{image_id}/" not in client.get("/collection/").content.decode()
    finally:
        restore_to_search([image_id])
    settings.BROWSE_PAGE_SIZE = 16
    page = client.get("/collection/?page=3").content.decode()
    assert "page 3 of 3" in page and page.count('class="thumb"') == 8 and 'rel="prev"' in page


def test_a_search_with_a_collection_image_becomes_the_visitors_search(client, site_index):
    from search.collection_files import active_catalog

    image_id = list(active_catalog().rows)[5]
    response = client.post(f"/images/{image_id}/search", {"method": "pca", "k": "3"})
    assert response.status_code == 302
    job = SearchJob.objects.latest("pk")
    assert response["Location"] == f"/jobs/{job.key}/" and (job.method, job.k) == ("pca", 3)
    assert job.owner_session == client.session.session_key and job.query_image.name.endswith(".jpg")
    assert f"/jobs/{job.key}/" in client.get("/searches/").content.decode()
    bad = client.post(f"/images/{image_id}/search", {"method": "colour"})
    assert bad.status_code == 400 and "colour" in bad.content.decode()


def test_an_added_image_is_shown_by_file_name_not_by_its_path_on_the_server():
    from search.views import shown_path

    assert shown_path("/srv/data/index/added/0123456789ab/cake.jpg") == "cake.jpg"
    assert shown_path("horses/701.jpg") == "horses/701.jpg"


def test_a_damaged_new_build_does_not_take_the_worker_down(site_index, caplog):
    """A build made active by hand (or half-copied) that cannot be loaded: the worker keeps
    serving the build it has loaded, says so in its log, and tries the new one again later."""
    import shutil

    from django.conf import settings

    from search import jobs
    from search.engine import layout
    from search.jobs import run_search_job

    def search():
        job = SearchJob.objects.create(query_image=SimpleUploadedFile("q.jpg", corel_image(455).read_bytes()),
                                       method="penultimate+attention", k=3)
        assert run_search_job(job.pk) == Status.DONE
        job.refresh_from_db()
        return job

    index_root = Path(settings.RETRIEVAL.data_dir) / "index"
    good = layout.active_build(index_root)
    assert search().index_build == good.name  # the worker has loaded the good build
    broken = good.parent / (good.name + "-damaged")
    shutil.copytree(good, broken)
    vectors = broken / "vectors_penultimate.npy"
    vectors.write_bytes(vectors.read_bytes()[:100])
    layout.point_active(index_root, broken)
    try:
        with caplog.at_level("ERROR", logger="search.jobs"):
            job = search()
        assert job.index_build == good.name and job.error == ""
        assert f"index build {broken} cannot be loaded" in caplog.text and "still serving" in caplog.text
    finally:
        layout.point_active(index_root, good)
        jobs._engine["unloadable"] = None
        shutil.rmtree(broken)


def test_a_queued_search_knows_its_place_in_line_and_a_rough_wait(client):
    now = timezone.now()
    SearchJob.objects.all().delete()
    for seconds in (2.0, 4.0, 30.0):  # median 4 s
        SearchJob.objects.create(query_image="queries/done.jpg", method="pca", status=Status.DONE,
                                 started=now - timedelta(minutes=5), finished=now - timedelta(minutes=5, seconds=-seconds))
    for worker in ("w1", "w2"):
        SearchJob.objects.create(query_image="queries/run.jpg", method="pca", status=Status.RUNNING, worker=worker,
                                 started=now, heartbeat=now)
    earlier = SearchJob.objects.create(query_image="queries/q.jpg", method="pca", created=now - timedelta(seconds=5))
    mine = SearchJob.objects.create(query_image="queries/q.jpg", method="pca", owner_session="", created=now)
    assert earlier.queue_place() == {"ahead": 2, "estimate_s": 6.0}  # 3 searches of 4 s on 2 workers
    assert mine.queue_place() == {"ahead": 3, "estimate_s": 8.0}
    SearchJob.objects.filter(pk=earlier.pk).update(status=Status.DONE)
    assert mine.queue_place()["ahead"] == 2
    SearchJob.objects.filter(pk=mine.pk).update(status=Status.RUNNING)
    mine.refresh_from_db()
    assert mine.queue_place() is None


def test_make_thumbnails_makes_only_the_missing_ones(site_index):
    from django.core.management import call_command

    from search.collection_files import active_catalog, thumbnail_file

    call_command("make_thumbnails", stdout=io.StringIO())
    first, second = list(active_catalog().rows)[:2]
    thumbnail_file(first).unlink()
    out = io.StringIO()
    call_command("make_thumbnails", stdout=out)
    assert "1 thumbnail(s) made" in out.getvalue() and thumbnail_file(first).is_file()


def test_an_unrelated_photo_gets_no_confident_match(client, celery_worker_process, site_index):
    """A laptop (Caltech-101) searched among Corel buses, beaches, dinosaurs and Africa: the
    answer says nothing in the collection was verified to show it."""
    from tests.conftest import DATASETS

    with (DATASETS / "caltech101" / "images" / "laptop" / "image_0001.jpg").open("rb") as handle:
        created = client.post("/api/searches", {"image": handle, "method": "hybrid+attention", "k": "5"}).json()
    job = finished_job(created["id"])
    body = client.get(f"/api/searches/{job.key}").json()
    assert body["status"] == "done" and len(body["results"]) == 5
    assert body["confident_match"] is False and body["n_verified"] == 0
    assert all(r["stage"] == "coarse" for r in body["results"])
