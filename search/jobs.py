"""Search jobs on the worker: one engine per worker process, reloaded when the active
build changes; a job's progress and results written to its row. ``run_search_job`` is
what the ``run_search`` task calls; it is idempotent (a finished job is left alone, a
redelivered one is redone)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from django.utils import timezone

from .conf import engine_config
from .engine.errors import EngineError
from .engine.images import open_image
from .engine.index import active_build
from .engine.pipeline import RetrievalEngine
from .models import SearchJob, Status

log = logging.getLogger(__name__)

VERIFY_CHUNK = 200  # candidates verified per batch between two progress reports


class ReportingEngine(RetrievalEngine):
    """The engine, with verification done in batches so a job can say 'verifying n of N'."""

    _report = None

    def verify(self, query, positions):
        results = []
        for start in range(0, len(positions), VERIFY_CHUNK):
            if self._report:
                self._report("verifying", start, len(positions))
            results.extend(super().verify(query, positions[start:start + VERIFY_CHUNK]))
        if self._report:
            self._report("verifying", len(positions), len(positions))
        return results

    def search(self, image, *args, progress=None, **kwargs):
        self._report = progress
        try:
            return super().search(image, *args, progress=progress, **kwargs)
        finally:
            self._report = None


# One engine per worker process, reloaded when the active build changes.
_engine: dict = {"build": None, "engine": None}


def current_engine() -> RetrievalEngine:
    config = engine_config()
    build = active_build(config.index_root)
    if _engine["build"] != build or _engine["engine"] is None:
        log.info("loading the engine on index build %s", build)
        _engine["engine"] = ReportingEngine.open(config, index_path=build)
        _engine["build"] = build
    return _engine["engine"]


class Throttle:
    """Calls ``write`` at most every ``interval`` seconds, and always on a new stage or at the end."""

    def __init__(self, write, interval: float = 0.5):
        self.write, self.interval, self.last, self.stage = write, interval, 0.0, None

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage != self.stage or done >= total or now - self.last >= self.interval:
            self.stage, self.last = stage, now
            self.write(stage, done, total)


def _job_stage(stage: str, done: int, total: int) -> str:
    if stage == "coarse":
        return f"coarse: {total} candidates"
    if stage == "verifying":
        return f"verifying {done} of {total}"
    return f"{stage} {done} of {total}"


def result_row(result) -> dict:
    row = result.as_dict()
    row.pop("path", None)  # the server's own path stays on the server
    return row


def run_search_job(job_id: int) -> str:
    job = SearchJob.objects.filter(pk=job_id).first()
    if job is None:
        return "missing"
    if job.is_finished:
        return job.status
    SearchJob.objects.filter(pk=job_id).update(status=Status.RUNNING, started=timezone.now(), stage="loading",
                                               error="")

    def report(stage, done, total):
        SearchJob.objects.filter(pk=job_id).update(stage=_job_stage(stage, done, total),
                                                   progress_done=done, progress_total=total)

    try:
        if not job.query_image or not Path(job.query_image.path).is_file():
            raise EngineError(f"the query image {job.query_image.name} is gone (deleted from the media folder)")
        try:
            image = open_image(job.query_image.path)
        except EngineError as exc:
            raise EngineError(f"the query image cannot be read: {exc}") from exc
        engine = current_engine()
        SearchJob.objects.filter(pk=job_id).update(index_build=engine.index.path.name, stage="global features")
        response = engine.search(image, job.method, k=job.k, progress=Throttle(report))
    except EngineError as exc:
        _fail(job_id, str(exc))
        return Status.FAILED
    except Exception as exc:
        _fail(job_id, f"internal error: {type(exc).__name__}: {exc}")
        raise
    SearchJob.objects.filter(pk=job_id).update(
        status=Status.DONE, finished=timezone.now(), stage="done",
        results=[result_row(r) for r in response.results], n_candidates=response.n_candidates,
        n_verified=response.n_verified, timings_ms={k: round(v, 1) for k, v in response.timings_ms.items()})
    return Status.DONE


def _fail(job_id: int, reason: str) -> None:
    SearchJob.objects.filter(pk=job_id).update(status=Status.FAILED, finished=timezone.now(), error=reason)
