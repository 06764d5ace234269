"""Celery tasks (found by the app's autodiscovery): each takes a row id only and calls the
matching function of ``search.jobs`` or ``search.maintenance``, which is idempotent (a
finished row is left alone). The web process never imports this module: it enqueues by
name through ``search.queue``, so it does not load the engine."""
import logging
import os

from celery import shared_task
from celery.signals import worker_init, worker_ready

from .jobs import run_search_job
from .maintenance import run_maintenance
from .queue import MAINTAIN, RUN_SEARCH, SHARD_STAGE
from .shard_work import run_shard_stage

logger = logging.getLogger(__name__)


@shared_task(name=RUN_SEARCH, acks_late=True, reject_on_worker_lost=True)
def run_search(job_id: int) -> str:
    return run_search_job(job_id)


@shared_task(name=MAINTAIN, acks_late=True, reject_on_worker_lost=True)
def maintain(run_id: int) -> str:
    """A reindex or a retrain, as the run's ``kind`` says."""
    return run_maintenance(run_id)


@shared_task(name=SHARD_STAGE, acks_late=True, reject_on_worker_lost=True)
def shard_stage(shard: int, stage: str, folder: str) -> str:
    """One stage of a sharded search on one shard; its answer is a file in ``folder``, whose path
    is returned (redone whole if delivered again)."""
    return run_shard_stage(shard, stage, folder)


@worker_init.connect
def refuse_unusable_settings(**_):
    """A worker with a misspelt ``RETRIEVAL_*`` value stops at its start, saying which, instead of
    failing every job it takes (raising here would only be logged: Celery catches a handler's
    errors, not SystemExit). A variable that names no setting is only logged: the worker runs."""
    from django.conf import settings

    from .engine.settings_check import describe_problems, unknown_variables

    problems = describe_problems(settings.RETRIEVAL)
    if problems:
        raise SystemExit("the worker's settings cannot work:\n  " + "\n  ".join(problems))
    for unknown in unknown_variables(os.environ):
        logger.warning("%s", unknown)


@worker_ready.connect
def start_the_watchdog(**_):
    """Every worker watches for jobs whose worker died (search/watchdog.py): at once, so a
    restarted worker takes back what it was running, then periodically."""
    from .watchdog import start_watchdog

    start_watchdog()
