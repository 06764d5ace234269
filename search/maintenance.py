"""Reindex and retrain from the site, as the ``maintain`` task runs them: progress
and a log written to the MaintenanceRun row; the new build switched in only when complete
(a retrain trains aside and swaps model and index together). Idempotent like the search jobs."""
from __future__ import annotations

import random
import shutil
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from .collection_files import make_thumbnails
from .conf import engine_config
from .engine import layout
from .engine.additions import delta_load
from .engine.collection import Collection, scan_collection, write_labels_csv
from .engine.errors import EngineError, SearchIndexError
from .engine.evaluation import evaluate_methods, write_report
from .engine.index import activate_build
from .engine.progress import Throttle
from .engine.shards import split_build
from .engine.workflows import (Models, add_to_index, following_active_build, index_collection, load_models,
                               model_label, open_engine, train_models)
from .models import MaintenanceRun, Status
from .queue import enqueue_maintenance
from .watchdog import Heartbeat, worker_name


MERGE_REQUESTER = "automatic merge"  # the requested_by of the reindex runs an add run queues


class RunLog:
    """Writes a maintenance run's step, progress and log lines to its row as they happen."""

    def __init__(self, run_id: int):
        self.run_id = run_id
        self.step = None
        self.throttle = Throttle(self._write)

    def line(self, text: str) -> None:
        run = MaintenanceRun.objects.get(pk=self.run_id)
        MaintenanceRun.objects.filter(pk=self.run_id).update(log=run.log + MaintenanceRun.log_line(text))

    def _write(self, step: str, done: int, total: int) -> None:
        changes = {"step": step, "done": done, "total": total}
        if step != self.step:
            if self.step is not None:
                self.line(f"{self.step}: finished")
            self.step = step
            changes["step_started"] = timezone.now()
            self.line(f"{step}: started ({total} to do)")
        MaintenanceRun.objects.filter(pk=self.run_id).update(**changes)

    def __call__(self, step: str, done: int, total: int) -> None:
        self.throttle(step, done, total)


def _scan(config, run: MaintenanceRun) -> Collection:
    """The collection a site-started rebuild indexes: the run's folder, else the active index's
    folder (else RETRIEVAL_COLLECTION_DIR); labelled by the run's labels, else COLLECTION_LABELS,
    else by the labels the active index recorded for the images still there."""
    try:
        active = layout.catalog(config.index_root)
    except SearchIndexError:
        active = None
    if run.collection_dir:
        root = Path(run.collection_dir)
    else:
        root = active.collection_root if active is not None else Path(config.collection_dir)
    labels = run.labels or settings.COLLECTION_LABELS or None
    if labels is None and active is not None:
        # the collection folder's images only: added ones (absolute paths under the index root)
        # keep the labels their ledger records
        labelled = {row["path"]: row["label"] for row in active.rows.values()
                    if row["label"] is not None and not Path(row["path"]).is_absolute()
                    and (root / row["path"]).is_file()}
        if labelled:
            labels = Path(config.data_dir) / "site-labels.csv"
            write_labels_csv(labels, labelled)
    return scan_collection(root, labels)


def _build(config, collection: Collection, models: Models, report: RunLog, activate: bool) -> Path:
    report.line(f"collection {collection.root}: {len(collection)} images, {len(collection.labelled())} labelled")
    build = index_collection(collection, models, config, activate=activate, progress=report)
    manifest = layout.read_manifest(build)
    kept = manifest["global"]
    report.line(f"global features: {kept['reused']} images unchanged since the last build (reused), "
                f"{kept['extracted']} extracted")
    if manifest.get("local"):
        report.line(f"local features: {manifest['local']['reused']} reused, {manifest['local']['extracted']} extracted")
    return build


def reindex(config, report: RunLog, run: MaintenanceRun) -> Path:
    """A new build with the current settings; a merge keeps the active build's kind of local
    features, so that it extracts nothing even after LOCAL_GLOBAL_LEVEL has changed."""
    models = load_models(config)
    if run.requested_by == MERGE_REQUESTER and layout.has_active(config.index_root):
        models = following_active_build(models, config.index_root)
    return _build(config, _scan(config, run), models, report, activate=True)


def retrain(config, report: RunLog, run: MaintenanceRun) -> Path:
    """Train into a staging folder, index with it, then put the new model in place and switch the
    index: until that moment the old model and index keep serving."""
    staging = config.model_dir / f"staging-{run.pk}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    collection = _scan(config, run)
    report.line(f"training on {len(collection)} images of {collection.root}, {len(collection.labelled())} labelled "
                f"in {len(collection.classes)} classes")
    models = train_models(collection, config, staging / "classifier.pt", staging / "attention.pt", progress=report)
    report.line(f"classifier: {models.training.summary}")
    build = _build(config, collection, models, report, activate=False)
    for source in staging.iterdir():
        shutil.copy2(source, config.model_dir / (source.name + ".tmp"))
        (config.model_dir / (source.name + ".tmp")).replace(config.model_dir / source.name)
    activate_build(config.index_root, build)
    shutil.rmtree(staging, ignore_errors=True)
    return build


def add(config, report: RunLog, run: MaintenanceRun) -> Path:
    """Add the run's folder of uploads to the active index (a delta: searchable when the run ends);
    the folder is deleted once its images are in."""
    result = add_to_index([run.collection_dir], config, label=run.label or None, progress=report)
    for path, reason in result.skipped:
        report.line(f"skipped {Path(path).name}: {reason}")
    if result.already:
        report.line(f"{len(result.already)} image(s) already in the index, not added again")
    if not result.added:
        raise SearchIndexError("nothing added: no readable new images")
    report.line(f"added {len(result.added)} image(s) in delta {result.delta.name}: searchable now; "
                "the next reindex folds them into the build")
    if result.shard_deltas:
        report.line(f"handed to the shards as {len(result.shard_deltas)} delta(s)")
    if Path(run.collection_dir).parent == Path(config.data_dir) / "incoming":
        shutil.rmtree(run.collection_dir, ignore_errors=True)
    queue_merge_if_due(config, report)
    return result.delta.parent.parent


def queue_merge_if_due(config, report: RunLog) -> MaintenanceRun | None:
    """Queue a merge once the deltas cost enough (AUTO_MERGE, MERGE_DELTA_FRACTION,
    MERGE_MAX_DELTAS): a reindex of the active collection, which reuses every feature and switches
    builds atomically; none while a reindex or retrain is queued or running (it folds them in)."""
    if not settings.AUTO_MERGE:
        return None
    load = delta_load(config.index_root)
    if not load.merge_due(settings.MERGE_DELTA_FRACTION, settings.MERGE_MAX_DELTAS):
        return None
    if MaintenanceRun.objects.filter(kind__in=[MaintenanceRun.REINDEX, MaintenanceRun.TRAIN],
                                     status__in=[Status.QUEUED, Status.RUNNING]).exists():
        report.line("the deltas are due a merge: the reindex already queued or running folds them in")
        return None
    merge = MaintenanceRun.objects.create(kind=MaintenanceRun.REINDEX, requested_by=MERGE_REQUESTER)
    MaintenanceRun.objects.filter(pk=merge.pk).update(celery_task_id=enqueue_maintenance(merge.pk))
    report.line(f"queued merge run {merge.pk}: {load.delta_images} image(s) in {load.deltas} delta(s) beside "
                f"{load.build_images} in the build")
    return merge


def evaluate(config, report: RunLog, run: MaintenanceRun) -> Path:
    """Precision@10 and mAP of every method the active index offers, on the classifier's
    validation images (a seeded sample of labelled images when it records none), written where the
    report page and ``evaluate`` put theirs."""
    engine = open_engine(config)
    query_ids = engine.model.info.get("val_ids")
    if not query_ids:
        labelled = [i for i, label in zip(engine.index.image_ids, engine.index.labels) if label]
        query_ids = random.Random(config.seed).sample(labelled, min(settings.EVALUATE_SAMPLE, len(labelled)))
    scores = evaluate_methods(engine, query_ids, engine.methods, model_label(engine.model), progress=report)
    out = config.reports_dir / f"evaluate-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    write_report(out, scores, {"index": str(engine.index.path), "collection_size": len(engine.index),
                               "model": str(engine.model.path), "backbone": engine.model.name,
                               "queries": "val" if engine.model.info.get("val_ids") else f"{len(query_ids)} sampled",
                               "val_accuracy": engine.model.info.get("val_accuracy"), "device": str(engine.device),
                               "run": run.pk, "settings": engine.config.as_record()})
    for score in scores:
        report.line(f"{score.method}: P@10 {score.precision_at_10:.4f}, mAP {score.mean_ap:.4f}, "
                    f"R-precision {score.r_precision:.4f} "
                    f"({score.n_queries} queries, {score.query_ms:.0f} ms each)")
    report.line(f"report written to {out}")
    return engine.index.path


RUNNERS = {MaintenanceRun.REINDEX: reindex, MaintenanceRun.TRAIN: retrain, MaintenanceRun.ADD: add,
           MaintenanceRun.EVALUATE: evaluate}


def run_maintenance(run_id: int) -> str:
    run = MaintenanceRun.objects.filter(pk=run_id).first()
    if run is None:
        return "missing"
    if run.status in (Status.DONE, Status.FAILED):
        return run.status
    # One claim, from 'queued' only: a message handed out again (a retrain outlasting the broker's
    # visibility timeout) finds the run taken and leaves it, instead of running it a second time
    # on another worker into the same staging folder. A run whose worker died is failed by the
    # watchdog (search/watchdog.py); staff start it again.
    if not MaintenanceRun.objects.filter(pk=run_id, status=Status.QUEUED).update(
            status=Status.RUNNING, started=timezone.now(), error="", worker=worker_name(), heartbeat=timezone.now(),
            attempts=F("attempts") + 1):
        return MaintenanceRun.objects.get(pk=run_id).status
    with Heartbeat(MaintenanceRun.objects.filter(pk=run_id)):
        return _run_claimed(run)


def _run_claimed(run: MaintenanceRun) -> str:
    run_id = run.pk
    report = RunLog(run_id)
    config = engine_config()
    try:
        # one run that writes the index (or add_images) at a time; an evaluation only reads it
        lock = nullcontext() if run.kind == MaintenanceRun.EVALUATE else layout.writing(config.index_root)
        with lock:
            build = RUNNERS[run.kind](config, report, run)
            if config.shards >= 2 and run.kind in (MaintenanceRun.REINDEX, MaintenanceRun.TRAIN):
                split_build(config.index_root, config.shards_root, config.shards, config, progress=report)
                report.line(f"split into {config.shards} shards under {config.shards_root}")
    except Exception as exc:
        reason = str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
        report.line(f"failed: {reason}")
        MaintenanceRun.objects.filter(pk=run_id, status=Status.RUNNING).update(
            status=Status.FAILED, finished=timezone.now(), error=reason)
        if not isinstance(exc, EngineError):
            raise
        return Status.FAILED
    made, unreadable = make_thumbnails(report)
    if report.step is not None:
        report.line(f"{report.step}: finished")
    report.line(f"build {build.name} is active; {made} new thumbnail(s)"
                + (f", {len(unreadable)} image(s) unreadable" if unreadable else ""))
    MaintenanceRun.objects.filter(pk=run_id, status=Status.RUNNING).update(
        status=Status.DONE, finished=timezone.now(), build=build.name, step="done")
    return Status.DONE
