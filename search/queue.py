"""Putting work on the Celery queue from the web process, by task name: the task bodies
(``search.tasks``) import the engine, with torch, OpenCV and scikit-learn, which the web
process never needs. The worker registers the tasks under these names."""
from django.conf import settings

from workers.celery import app

RUN_SEARCH = "search.run_search"
MAINTAIN = "search.maintain"
SHARD_STAGE = "search.shard_stage"


def enqueue_search(job_id: int) -> str:
    """Queue a search job; returns the Celery task id."""
    return app.send_task(RUN_SEARCH, args=[job_id], queue=settings.SEARCH_QUEUE).id


def enqueue_maintenance(run_id: int) -> str:
    """Queue a reindex or retrain run; returns the Celery task id."""
    return app.send_task(MAINTAIN, args=[run_id], queue=settings.MAINTENANCE_QUEUE).id


def shard_queue(number: int) -> str:
    """The queue the workers of shard ``number`` listen on."""
    return f"{settings.SHARD_QUEUE_PREFIX}{number}"
