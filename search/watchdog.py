"""No lost searches: heartbeats from the worker running a job, and a watchdog on every worker
that takes back the jobs of workers that went quiet.

A worker killed mid-search (OOM, SIGKILL, a lost machine) leaves its job 'running' and its
Celery message unacknowledged; the broker would hand the message out again only after the
visibility timeout (an hour, so that long reindexes are not redelivered while they run). So
while a job runs, its worker stamps the row every ``HEARTBEAT_PERIOD_S``; every worker checks,
when it starts and every ``WATCHDOG_PERIOD_S``, for searches whose stamp is older than
``ORPHAN_AFTER_S`` and puts them back on the queue (``SEARCH_MAX_ATTEMPTS`` times at most, so a
query that kills workers does not kill them all), and for maintenance runs in that state,
which it marks failed (staff can start them again; half-done builds never become active).
Every ten minutes it also deletes searches past their retention period (``expire_old_searches``).
Each take-back is one conditional UPDATE, so two watchdogs never both requeue a job, and
whatever the dead worker's late writes say, ``search.jobs.unfinished`` keeps a finished job
finished. This module imports no engine code (the web process uses ``fail_overdue``).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from .models import MaintenanceRun, SearchJob, Status

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """While the ``with`` block runs, stamp the unfinished row(s) of ``queryset`` every
    ``period`` seconds from a background thread (the job itself may sit in one long step)."""

    def __init__(self, queryset, period: float | None = None):
        self.queryset = queryset
        self.period = settings.HEARTBEAT_PERIOD_S if period is None else period
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def _beat(self):
        try:
            while not self.stop.wait(self.period):
                self.queryset.filter(status=Status.RUNNING).update(heartbeat=timezone.now())
        finally:
            connection.close()  # this thread's own database connection

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def fail_overdue(searches=None, now=None) -> int:
    """Searches running longer than SEARCH_JOB_TIMEOUT_S since they *started*, or queued longer
    than SEARCH_QUEUED_TIMEOUT_S (no worker at all), are marked failed; returns how many."""
    now = now or timezone.now()
    searches = SearchJob.objects.all() if searches is None else searches
    running = searches.filter(status=Status.RUNNING,
                              started__lt=now - timedelta(seconds=settings.SEARCH_JOB_TIMEOUT_S)).update(
        status=Status.FAILED, finished=now,
        error=f"no result {settings.SEARCH_JOB_TIMEOUT_S} s after the search started: the worker stopped")
    queued = searches.filter(status=Status.QUEUED,
                             created__lt=now - timedelta(seconds=settings.SEARCH_QUEUED_TIMEOUT_S)).update(
        status=Status.FAILED, finished=now,
        error=f"still queued after {settings.SEARCH_QUEUED_TIMEOUT_S} s: no worker is taking searches")
    return running + queued


def _quiet(model, now):
    """Running rows whose worker has not stamped them for ORPHAN_AFTER_S (or never did)."""
    cutoff = now - timedelta(seconds=settings.ORPHAN_AFTER_S)
    rows = model.objects.filter(status=Status.RUNNING)
    return rows.filter(heartbeat__lt=cutoff) | rows.filter(heartbeat__isnull=True, started__lt=cutoff)


def requeue_orphans(enqueue=None, now=None) -> dict[str, int]:
    """Take back the jobs of workers that went quiet: searches are queued again (or failed after
    SEARCH_MAX_ATTEMPTS), maintenance runs failed. Returns counts."""
    from .queue import enqueue_search

    enqueue = enqueue or enqueue_search
    now = now or timezone.now()
    counts = {"requeued": 0, "failed": 0, "maintenance_failed": 0}
    for job in _quiet(SearchJob, now):
        claim = SearchJob.objects.filter(pk=job.pk, status=Status.RUNNING, heartbeat=job.heartbeat,
                                         worker=job.worker)
        if job.attempts >= settings.SEARCH_MAX_ATTEMPTS:
            counts["failed"] += claim.update(
                status=Status.FAILED, finished=now,
                error=f"the worker running this search stopped {job.attempts} times; not trying again")
            continue
        if claim.update(status=Status.QUEUED, stage=f"queued again: worker {job.worker or '?'} stopped",
                        worker="", heartbeat=None):
            SearchJob.objects.filter(pk=job.pk).update(celery_task_id=enqueue(job.pk))
            counts["requeued"] += 1
            log.warning("search %s: its worker %s stopped; queued again", job.pk, job.worker)
    for run in _quiet(MaintenanceRun, now):
        counts["maintenance_failed"] += MaintenanceRun.objects.filter(
            pk=run.pk, status=Status.RUNNING, heartbeat=run.heartbeat).update(
            status=Status.FAILED, finished=now,
            error=f"the worker running it ({run.worker or '?'}) stopped; the active index is unchanged, "
                  "start the run again")
    return counts


def expire_old_searches(now=None) -> dict[str, int]:
    """After SEARCH_RETENTION_DAYS a search's query photo is deleted, and its row too unless it
    has ratings (the report's evidence; the row then keeps no photo). Finished searches only."""
    days = settings.SEARCH_RETENTION_DAYS
    if days <= 0:
        return {"expired": 0, "photos_deleted": 0}
    now = now or timezone.now()
    old = SearchJob.objects.filter(created__lt=now - timedelta(days=days), status__in=[Status.DONE, Status.FAILED])
    photos = 0
    for job in old.exclude(query_image=""):
        job.query_image.delete(save=False)  # the file; a missing file is not an error
        photos += 1
    _, deleted = old.filter(ratings__isnull=True).delete()
    old.update(query_image="")
    return {"expired": deleted.get(SearchJob._meta.label, 0), "photos_deleted": photos}


_last_expiry = {"at": None}


def check_jobs(now=None) -> dict[str, int]:
    now = now or timezone.now()
    counts = requeue_orphans(now=now)
    counts["overdue"] = fail_overdue(now=now)
    if _last_expiry["at"] is None or (now - _last_expiry["at"]).total_seconds() >= 600:
        _last_expiry["at"] = now  # a table scan every ten minutes per worker is enough
        counts.update(expire_old_searches(now))
    return counts


def start_watchdog(period: float | None = None) -> threading.Thread:
    """On every worker: check at once, then every WATCHDOG_PERIOD_S, in a daemon thread."""
    period = settings.WATCHDOG_PERIOD_S if period is None else period

    def loop():
        while True:
            try:
                close_old_connections()
                counts = check_jobs()
                if any(counts.values()):
                    log.warning("watchdog: %s", counts)
            except Exception:  # a database hiccup must not end the watchdog
                log.exception("watchdog check failed")
            time.sleep(period)

    thread = threading.Thread(target=loop, name="watchdog", daemon=True)
    thread.start()
    return thread
