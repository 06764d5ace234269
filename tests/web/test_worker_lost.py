"""A worker killed in the middle of a search: acks_late leaves the message unacknowledged,
the broker hands it to the next worker once the visibility timeout has passed, and the
job is redone (the watchdog covers the case where no worker ever comes back)."""
import os
import signal
import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from search.models import SearchJob, Status
from tests.conftest import corel_image

from .conftest import start_worker, stop_process, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_search_whose_worker_was_killed_is_redone_by_the_next_worker(site_index, settings):
    from search.tasks import run_search

    queue = f"killed-{uuid.uuid4().hex[:6]}"
    # the visibility timeout is read by the consumer: short for the second worker only
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
    assert job.status == Status.RUNNING  # nobody will finish it...

    second = start_worker(queue, "celery-worker-second.log", CELERY_VISIBILITY_TIMEOUT="3")
    try:
        done = wait_for(lambda: SearchJob.objects.get(pk=job.pk).status == Status.DONE, 120, 0.5,
                        "the next worker to redo the job")
    finally:
        stop_process(second)
    job.refresh_from_db()
    assert done and len(job.results) == 3 and job.error == ""
