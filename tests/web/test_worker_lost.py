"""No lost searches. A worker killed in the middle of a search leaves the job 'running' and its
message unacknowledged, which the broker would hand out again only after its visibility timeout
(an hour); the next worker's watchdog sees that the job's heartbeat stopped and queues it again
(search/watchdog.py), with the broker's default timeout left as it is."""
import os
import signal
import uuid
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from search.models import MaintenanceRun, SearchJob, Status
from tests.conftest import corel_image

from .conftest import start_worker, stop_process, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_search_whose_worker_was_killed_is_redone_by_the_next_worker(site_index, settings):
    from search.tasks import run_search

    queue = f"killed-{uuid.uuid4().hex[:6]}"
    first = start_worker(queue, "celery-worker-killed.log")
    job = SearchJob.objects.create(query_image=SimpleUploadedFile("q.jpg", corel_image(455).read_bytes()),
                                   method="penultimate+attention", k=3)
    try:
        run_search.apply_async((job.pk,), queue=queue)
        # the first job of a fresh worker spends seconds loading the engine while 'running'
        wait_for(lambda: SearchJob.objects.get(pk=job.pk).status == Status.RUNNING, 60, 0.05, "the job to start")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    job.refresh_from_db()
    assert job.status == Status.RUNNING and job.attempts == 1 and job.worker  # nobody will finish it...

    # ...until another worker is up: the broker's visibility timeout stays an hour; the new
    # worker's watchdog (short periods here, to keep the test short) queues the job again
    second = start_worker(queue, "celery-worker-second.log",
                          ORPHAN_AFTER_S="4", WATCHDOG_PERIOD_S="1", HEARTBEAT_PERIOD_S="1")
    try:
        done = wait_for(lambda: SearchJob.objects.get(pk=job.pk).status == Status.DONE, 120, 0.5,
                        "the next worker to redo the job")
    finally:
        stop_process(second)
    job.refresh_from_db()
    assert done and len(job.results) == 3 and job.error == "" and job.attempts == 2


def make_search(**fields) -> SearchJob:
    return SearchJob.objects.create(query_image=SimpleUploadedFile("q.jpg", b"x"), method="pca", k=3, **fields)


def test_the_watchdog_takes_back_only_jobs_whose_worker_went_quiet(settings):
    from search.watchdog import check_jobs, requeue_orphans

    settings.ORPHAN_AFTER_S = 45
    now = timezone.now()
    quiet = make_search(status=Status.RUNNING, started=now - timedelta(minutes=2), worker="gone:1",
                        heartbeat=now - timedelta(seconds=90), attempts=1)
    alive = make_search(status=Status.RUNNING, started=now - timedelta(minutes=2), worker="here:2",
                        heartbeat=now - timedelta(seconds=3), attempts=1)
    worn_out = make_search(status=Status.RUNNING, started=now - timedelta(minutes=2), worker="gone:3",
                           heartbeat=now - timedelta(seconds=90), attempts=settings.SEARCH_MAX_ATTEMPTS)
    finished = make_search(status=Status.DONE, started=now - timedelta(minutes=2), finished=now,
                           heartbeat=now - timedelta(seconds=90))
    run = MaintenanceRun.objects.create(kind=MaintenanceRun.REINDEX, status=Status.RUNNING, worker="gone:4",
                                        started=now - timedelta(minutes=5), heartbeat=now - timedelta(minutes=1))
    queued = []
    counts = requeue_orphans(enqueue=lambda job_id: queued.append(job_id) or f"task-{job_id}")
    assert counts == {"requeued": 1, "failed": 1, "maintenance_failed": 1}
    assert queued == [quiet.pk]
    for row in (quiet, alive, worn_out, finished, run):
        row.refresh_from_db()
    assert quiet.status == Status.QUEUED and quiet.celery_task_id == f"task-{quiet.pk}" and quiet.worker == ""
    assert "worker gone:1 stopped" in quiet.stage
    assert alive.status == Status.RUNNING and alive.worker == "here:2"
    assert worn_out.status == Status.FAILED and "stopped 3 times" in worn_out.error
    assert finished.status == Status.DONE
    assert run.status == Status.FAILED and "the active index is unchanged" in run.error
    # a second watchdog (another worker) finds nothing left to take back
    assert requeue_orphans(enqueue=lambda job_id: pytest.fail("queued twice")) == {
        "requeued": 0, "failed": 0, "maintenance_failed": 0}
    assert check_jobs()["overdue"] == 0


def test_overdue_counts_from_the_start_and_queued_searches_wait_their_turn(settings):
    from search.watchdog import fail_overdue

    settings.SEARCH_JOB_TIMEOUT_S, settings.SEARCH_QUEUED_TIMEOUT_S = 60, 3600
    now = timezone.now()
    # made long ago but queued behind a reindex, then started a moment ago: not overdue
    waited = make_search(status=Status.RUNNING, created=now - timedelta(minutes=30), started=now,
                         heartbeat=now)
    slow = make_search(status=Status.RUNNING, created=now - timedelta(minutes=3),
                       started=now - timedelta(minutes=2), heartbeat=now)
    queued = make_search(created=now - timedelta(minutes=20))
    abandoned = make_search(created=now - timedelta(hours=2))
    assert fail_overdue() == 2
    for row in (waited, slow, queued, abandoned):
        row.refresh_from_db()
    assert (waited.status, queued.status) == (Status.RUNNING, Status.QUEUED)
    assert slow.status == Status.FAILED and "60 s after the search started" in slow.error
    assert abandoned.status == Status.FAILED and "no worker is taking searches" in abandoned.error


def test_a_finished_job_stays_finished_and_a_claimed_one_is_not_run_twice(site_index):
    from search.jobs import run_search_job, unfinished
    from search.maintenance import run_maintenance

    failed = make_search(status=Status.FAILED, error="the watchdog gave up")
    assert unfinished(failed.pk).update(status=Status.DONE) == 0  # a late worker cannot revive it
    running = make_search(status=Status.RUNNING, started=timezone.now(), heartbeat=timezone.now(),
                          worker="elsewhere:1", attempts=1)
    assert run_search_job(running.pk) == Status.RUNNING  # a duplicate message leaves it to its worker
    running.refresh_from_db()
    assert running.worker == "elsewhere:1" and running.attempts == 1
    run = MaintenanceRun.objects.create(kind=MaintenanceRun.REINDEX, status=Status.RUNNING,
                                        started=timezone.now(), heartbeat=timezone.now(), worker="elsewhere:2")
    assert run_maintenance(run.pk) == Status.RUNNING  # redelivered retrain: not a second run
    run.refresh_from_db()
    assert run.worker == "elsewhere:2" and run.attempts == 0 and run.log == ""
