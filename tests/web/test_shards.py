"""Sharded search on real workers (issue 12): the site's index split into two shards, each
served by its own Celery worker on its own queue, and a search worker with RETRIEVAL_SHARDS=2
that fans each stage out to them over the real Redis; its answers are the one index's."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from search.engine import layout
from search.engine.shards import split_build
from search.engine.workflows import open_engine
from search.jobs import result_row, run_search_job
from search.models import SearchJob, Status
from search.queue import RUN_SEARCH
from tests.conftest import corel_image

from .conftest import start_worker, stop_process, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def queued_search(queue: str, number: int, method: str) -> SearchJob:
    from workers.celery import app

    job = SearchJob.objects.create(query_image=SimpleUploadedFile(f"{number}.jpg", corel_image(number).read_bytes()),
                                   method=method, k=10)
    app.send_task(RUN_SEARCH, args=[job.pk], queue=queue)
    return job


def finished(job: SearchJob, timeout=180) -> SearchJob:
    return wait_for(lambda: SearchJob.objects.filter(pk=job.pk, status__in=[Status.DONE, Status.FAILED]).first(),
                    timeout, what=f"search job {job.pk}")


def test_two_shard_workers_answer_searches_as_the_one_index_does(site_index, django_db_setup):
    from django.conf import settings

    config = settings.RETRIEVAL
    build = layout.active_build(config.index_root)
    split_build(config.index_root, config.shards_root, 2, config)
    tag = uuid.uuid4().hex[:6]
    env = {"CELERY_SHARD_QUEUE_PREFIX": f"shard-{tag}-", "WATCHDOG_PERIOD_S": "86400", "SHARD_STAGE_TIMEOUT_S": "20"}
    shard_workers = [start_worker(f"shard-{tag}-{n}", f"celery-shard-{n}.log", **env) for n in range(2)]
    coordinator_queue = f"sharded-search-{tag}"
    coordinator = start_worker(coordinator_queue, "celery-sharded-search.log", RETRIEVAL_SHARDS="2", **env)
    try:
        one = open_engine(config, build)
        verified = 0
        for number, method in [(3, "penultimate+attention"), (402, "hybrid+attention"), (450, "pca"),
                               (305, "penultimate+attention")]:
            job = finished(queued_search(coordinator_queue, number, method))
            assert job.status == Status.DONE, job.error
            expected = [result_row(r) for r in one.search(corel_image(number), method, k=10).results]
            got = job.results
            assert [r["image_id"] for r in got] == [r["image_id"] for r in expected]
            assert [(r["stage"], r["inliers"], r["label"]) for r in got] == \
                [(r["stage"], r["inliers"], r["label"]) for r in expected]
            assert [r["distance"] for r in got] == pytest.approx([r["distance"] for r in expected], abs=1e-5)
            assert job.index_build == layout.active_build(config.shard_root(0)).name
            verified += job.n_verified
        assert verified > 0  # the fine stage verified on the shards
        # the shards' own workers did the stages, and every exchange folder is cleaned up
        for n in range(2):
            log = (Path(__file__).resolve().parents[2] / "test-artifacts" / f"celery-shard-{n}.log").read_text()
            assert "search.shard_stage" in log and "succeeded" in log
        assert not list(config.shard_exchange_dir.iterdir())

        # a shard without a worker: the search fails, saying which queues need one
        stop_process(shard_workers.pop())
        job = finished(queued_search(coordinator_queue, 3, "penultimate+attention"))
        assert job.status == Status.FAILED
        assert f"shard-{tag}-1" in job.error and "within 20 s" in job.error
    finally:
        for process in shard_workers + [coordinator]:
            stop_process(process)
        from workers.celery import app

        with app.connection_for_write() as connection:  # the stage left for the stopped shard
            for queue in [f"shard-{tag}-0", f"shard-{tag}-1", coordinator_queue]:
                connection.default_channel.queue_purge(queue)


def test_a_search_worker_set_for_more_shards_than_were_split_says_so(site_index, django_db_setup, settings,
                                                                    monkeypatch):
    from search import jobs

    monkeypatch.setattr(jobs, "_engine", {"build": None, "engine": None, "unloadable": None})
    config = settings.RETRIEVAL
    split_build(config.index_root, config.shards_root, 2, config)
    settings.RETRIEVAL = config.replace(shards=3)
    job = SearchJob.objects.create(query_image=SimpleUploadedFile("q.jpg", corel_image(3).read_bytes()),
                                   method="pca", k=3)
    assert run_search_job(job.pk) == Status.FAILED
    job.refresh_from_db()
    assert "RETRIEVAL_SHARDS is 3" in job.error and "split_index --shards 3" in job.error


def test_a_site_reindex_splits_the_new_index_into_the_shards(site_index, django_db_setup, settings):
    from search.engine.index import activate_build, load_index
    from search.maintenance import run_maintenance
    from search.models import MaintenanceRun

    config = settings.RETRIEVAL
    before = layout.active_build(config.index_root)
    settings.RETRIEVAL = config.replace(shards=2)
    try:
        run = MaintenanceRun.objects.create(kind=MaintenanceRun.REINDEX)
        assert run_maintenance(run.pk) == Status.DONE
        run.refresh_from_db()
        new = layout.active_build(config.index_root)
        assert new != before and run.build == new.name
        shards = [load_index(config.shard_root(n)) for n in range(2)]
        assert [s.manifest["shard"]["source_build"] for s in shards] == [new.name, new.name]
        assert sum(len(s) for s in shards) == len(load_index(new))
        assert "split into 2 shards" in run.log
    finally:
        activate_build(config.index_root, before)


def test_the_staff_page_shows_each_shard_and_says_when_they_hold_an_older_index(site_index, django_db_setup,
                                                                             settings, admin_client):
    import shutil

    from django.urls import reverse

    config = settings.RETRIEVAL
    active = layout.active_build(config.index_root)  # not always site_index: earlier tests reindex the site
    split_build(config.index_root, config.shards_root, 2, config)
    settings.RETRIEVAL = config.replace(shards=2)
    page = admin_client.get(reverse("staff")).content.decode()
    for number in range(2):
        build = layout.active_build(config.shard_root(number))
        assert f'id="shard-{number}"' in page and build.name in page
    assert page.count(active.name) >= 3 and "current" in page and "stale-shards" not in page
    # split from a build that is not the active one: the page says the shards hold an older index
    other = active.parent / "20200101T000000-older"
    shutil.copytree(active, other, symlinks=True)
    try:
        split_build(other, config.shards_root, 2, config)
        page = admin_client.get(reverse("staff")).content.decode()
        assert 'id="stale-shards"' in page and "split_index --shards 2" in page and "an older build" in page
    finally:
        split_build(config.index_root, config.shards_root, 2, config)
        shutil.rmtree(other)
