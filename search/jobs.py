"""Search jobs on the worker: one engine per worker process, reloaded when the active
build changes; a job's progress and results written to its row. ``run_search_job`` is
what the ``run_search`` task calls; it is idempotent (a finished job is left alone, a
redelivered one is redone)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from django.db.models import F
from django.utils import timezone

from .conf import engine_config
from .engine import layout
from .engine.errors import EngineError, SearchIndexError
from .engine.images import open_query_image
from .engine.methods import DEFAULT_METHOD
from .engine.pipeline import RetrievalEngine
from .engine.progress import Throttle
from .engine.workflows import as_sharded, open_engine
from .models import SearchJob, Status
from .shard_work import celery_fan_out
from .watchdog import Heartbeat, worker_name

log = logging.getLogger(__name__)

# One engine per worker process, reloaded when the active build changes.
_engine: dict = {"build": None, "engine": None, "unloadable": None}
RETRY_UNLOADABLE_S = 60


def current_engine() -> RetrievalEngine:
    """The engine on the active build. When a newly activated build cannot be loaded (damaged
    files, a disk error), the build this worker already serves keeps serving, and loading the
    new one is tried again a minute later; with nothing loaded yet the error is the job's."""
    config = engine_config()
    sharded = config.shards >= 2  # the query is described on shard 0's build; the shards do the rest
    build = layout.active_build(config.shard_root(0) if sharded else config.index_root)
    if _engine["build"] == build and _engine["engine"] is not None:
        return _engine["engine"]
    unloadable = _engine["unloadable"]
    if (_engine["engine"] is not None and unloadable is not None and unloadable[0] == build
            and time.monotonic() - unloadable[1] < RETRY_UNLOADABLE_S):
        return _engine["engine"]
    log.info("loading the engine on index build %s", build)
    try:
        engine = open_engine(config, build)
        if sharded:
            try:
                engine = as_sharded(engine, config, celery_fan_out(config.shards), config.shards)
            except SearchIndexError as exc:
                raise SearchIndexError(f"RETRIEVAL_SHARDS is {config.shards}: {exc}") from None
    except EngineError as exc:
        if _engine["engine"] is None:
            raise
        _engine["unloadable"] = (build, time.monotonic())
        log.error("index build %s cannot be loaded (%s); still serving %s", build, exc, _engine["build"])
        return _engine["engine"]
    _engine.update(build=build, engine=engine, unloadable=None)
    return engine


def _job_stage(stage: str, done: int, total: int) -> str:
    if stage == "coarse":
        return f"coarse: {total} candidates"
    if stage == "verifying":
        return f"verifying {done} of {total}"
    return stage if total <= 1 else f"{stage} {done} of {total}"


def result_row(result) -> dict:
    row = result.as_dict()
    row.pop("path", None)  # the server's own path stays on the server
    return row


def unfinished(job_id: int):
    """The job's row while it is not finished: every write goes through this, so nothing a late or
    duplicate worker writes can turn a done or failed job back (or a failed one into done)."""
    return SearchJob.objects.filter(pk=job_id, status__in=[Status.QUEUED, Status.RUNNING])


def run_search_job(job_id: int) -> str:
    job = SearchJob.objects.filter(pk=job_id).first()
    if job is None:
        return "missing"
    if job.is_finished:
        return job.status
    # Claimed from 'queued' only: a message delivered twice never runs a job two workers at once
    # (a job left 'running' by a dead worker is queued again by the watchdog, search/watchdog.py).
    if not SearchJob.objects.filter(pk=job_id, status=Status.QUEUED).update(
            status=Status.RUNNING, started=timezone.now(), stage="loading", error="", worker=worker_name(),
            heartbeat=timezone.now(), attempts=F("attempts") + 1):
        return SearchJob.objects.get(pk=job_id).status
    with Heartbeat(SearchJob.objects.filter(pk=job_id)):
        return _run_claimed(job)


def _run_claimed(job: SearchJob) -> str:
    job_id = job.pk

    def report(stage, done, total):
        unfinished(job_id).update(stage=_job_stage(stage, done, total), progress_done=done, progress_total=total)

    try:
        if not job.query_image or not Path(job.query_image.path).is_file():
            raise EngineError(f"the query image {job.query_image.name} is gone (deleted from the media folder)")
        try:
            image, stored_size = open_query_image(job.query_image.path, engine_config().query_decode_side)
        except EngineError as exc:
            raise EngineError(f"the query image cannot be read: {exc}") from exc
        engine = current_engine()
        method = job.method
        if method == DEFAULT_METHOD and method not in engine.methods:
            method = engine.default_method  # an index built before the default's variant: its best
        unfinished(job_id).update(index_build=engine.index.path.name, stage="global features", method=method)
        response = engine.search(image, method, k=job.k, progress=Throttle(report), stored_size=stored_size)
    except EngineError as exc:
        _fail(job_id, str(exc))
        return Status.FAILED
    except Exception as exc:
        _fail(job_id, f"internal error: {type(exc).__name__}: {exc}")
        raise
    done = unfinished(job_id).update(
        status=Status.DONE, finished=timezone.now(), stage="done",
        results=[result_row(r) for r in response.results], n_candidates=response.n_candidates,
        n_verified=response.n_verified, timings_ms={k: round(v, 1) for k, v in response.timings_ms.items()})
    return Status.DONE if done else SearchJob.objects.get(pk=job_id).status


def _fail(job_id: int, reason: str) -> None:
    unfinished(job_id).update(status=Status.FAILED, finished=timezone.now(), error=reason)
