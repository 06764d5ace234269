"""Celery tasks: each takes a row id only and calls the matching function of
``search.jobs`` or ``search.maintenance`` (idempotent: a finished row is left alone)."""
from celery import shared_task


@shared_task(acks_late=True, reject_on_worker_lost=True)
def run_search(job_id: int) -> str:
    from search.jobs import run_search_job

    return run_search_job(job_id)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def reindex(run_id: int) -> str:
    from search.maintenance import run_maintenance

    return run_maintenance(run_id)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def retrain(run_id: int) -> str:
    from search.maintenance import run_maintenance

    return run_maintenance(run_id)
