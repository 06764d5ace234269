"""What the Celery tasks do, as plain functions of a row id (the tasks in
``workers/tasks.py`` only call these): run a search job, run a reindex or a
retrain. Each is idempotent: a finished row is left alone, a redelivered one
is simply redone."""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
from django.conf import settings
from django.utils import timezone

from .conf import engine_config
from .engine.errors import EngineError
from .engine.images import open_image
from .engine.index import active_build
from .engine.pipeline import RetrievalEngine
from .models import MaintenanceRun, SearchJob, Status

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


class _Throttle:
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
        response = engine.search(image, job.method, k=job.k, progress=_Throttle(report))
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


# ---- maintenance: reindex, retrain ------------------------------------------------------------

class RunLog:
    """Writes a maintenance run's step, progress and log lines to its row as they happen."""

    def __init__(self, run_id: int):
        self.run_id = run_id
        self.step = None
        self.throttle = _Throttle(self._write)

    def line(self, text: str) -> None:
        run = MaintenanceRun.objects.get(pk=self.run_id)
        stamp = timezone.now().strftime("%H:%M:%S")
        MaintenanceRun.objects.filter(pk=self.run_id).update(log=run.log + f"{stamp} {text}\n")

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


def _scan(config, run: MaintenanceRun):
    """The collection a site-started rebuild indexes: the run's folder, else the active index's
    folder (else RETRIEVAL_COLLECTION_DIR); labelled by the run's labels, else COLLECTION_LABELS,
    else by the labels the active index recorded for the images still there."""
    from .engine.collection import scan_collection, write_labels_csv
    from .engine.index import load_index

    try:
        index = load_index(config.index_root)
    except EngineError:
        index = None
    if run.collection_dir:
        root = Path(run.collection_dir)
    else:
        root = index.collection_root if index is not None else Path(config.collection_dir)
    labels = run.labels or settings.COLLECTION_LABELS or None
    if labels is None and index is not None:
        labelled = {p: label for p, label in zip(index.relpaths, index.labels)
                    if label is not None and (root / p).is_file()}
        if labelled:
            labels = Path(config.data_dir) / "site-labels.csv"
            write_labels_csv(labels, labelled)
    return scan_collection(root, labels)


def _build(config, run, model_path: Path, attention_path: Path, report: RunLog, activate: bool) -> Path:
    from .engine.attention import load_attention
    from .engine.index import build_index
    from .engine.local_features import AttentionExtractor
    from .engine.model import load_classifier, pick_device

    device = pick_device(config.device)
    model = load_classifier(model_path, device)
    extractor = None
    if Path(attention_path).is_file():
        attention = load_attention(attention_path, model, device)
        extractor = AttentionExtractor(model, attention, config.local_settings(), device)
    collection = _scan(config, run)
    report.line(f"collection {collection.root}: {len(collection)} images, {len(collection.labelled())} labelled")
    return build_index(collection, model, config.index_root, config, device, progress=report,
                       local_extractor=extractor, activate=activate)


def reindex(config, report: RunLog, run: MaintenanceRun) -> Path:
    return _build(config, run, config.default_model_path, config.default_attention_path, report, activate=True)


def retrain(config, report: RunLog, run: MaintenanceRun) -> Path:
    """Train into a staging folder, index with it, then put the new model in place and switch the
    index: until that moment the old model and index keep serving."""
    from .engine.attention import train_attention
    from .engine.index import activate_build
    from .engine.model import load_classifier, pick_device
    from .engine.training import train_classifier

    staging = config.model_dir / f"staging-{run.pk}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    collection = _scan(config, run)
    epochs = config.epochs

    def epoch_report(step):
        return lambda row: report(step, row["epoch"], row.get("epochs", epochs))

    report.line(f"training on {len(collection.labelled())} labelled images of {collection.root}")
    result = train_classifier(collection, config, staging / "classifier.pt", progress=epoch_report("train classifier"))
    report.line(f"classifier validation accuracy {result.val_accuracy:.4f}")
    device = pick_device(config.device)
    model = load_classifier(staging / "classifier.pt", device)
    by_id = {r.image_id: r for r in collection.records}
    train_attention(model, [by_id[i] for i in model.info["train_ids"]], [by_id[i] for i in model.info["val_ids"]],
                    staging / "attention.pt", device, epochs=config.attention_epochs,
                    learning_rate=config.attention_learning_rate, seed=config.seed,
                    progress=epoch_report("train attention head"))
    build = _build(config, run, staging / "classifier.pt", staging / "attention.pt", report, activate=False)
    for source in staging.iterdir():
        shutil.copy2(source, config.model_dir / (source.name + ".tmp"))
        (config.model_dir / (source.name + ".tmp")).replace(config.model_dir / source.name)
    activate_build(config.index_root, build)
    shutil.rmtree(staging, ignore_errors=True)
    return build


def run_maintenance(run_id: int) -> str:
    run = MaintenanceRun.objects.filter(pk=run_id).first()
    if run is None:
        return "missing"
    if run.status in (Status.DONE, Status.FAILED):
        return run.status
    MaintenanceRun.objects.filter(pk=run_id).update(status=Status.RUNNING, started=timezone.now(), error="")
    report = RunLog(run_id)
    config = engine_config()
    try:
        build = (retrain if run.kind == MaintenanceRun.TRAIN else reindex)(config, report, run)
    except Exception as exc:
        reason = str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
        report.line(f"failed: {reason}")
        MaintenanceRun.objects.filter(pk=run_id).update(status=Status.FAILED, finished=timezone.now(), error=reason)
        if not isinstance(exc, EngineError):
            raise
        return Status.FAILED
    if report.step is not None:
        report.line(f"{report.step}: finished")
    report.line(f"build {build.name} is now active")
    MaintenanceRun.objects.filter(pk=run_id).update(status=Status.DONE, finished=timezone.now(),
                                                    build=build.name, step="done")
    return Status.DONE


# ---- the active index's table, for serving collection images by id ----------------------------

_table: dict = {"build": None, "rows": None, "root": None}


def indexed_images() -> tuple[Path, Path, dict[str, dict]]:
    """(active build, collection root, {image_id: {"path", "label"}}), re-read when the build changes."""
    import json

    from .engine.index import MANIFEST, TABLE

    build = active_build(engine_config().index_root)
    if _table["build"] != build:
        manifest = json.loads((build / MANIFEST).read_text())
        rows = {row["id"]: row for row in json.loads((build / TABLE).read_text())}
        _table.update(build=build, rows=rows, root=Path(manifest["collection_root"]))
    return _table["build"], _table["root"], _table["rows"]


def indexed_image_path(image_id: str) -> Path | None:
    _, root, rows = indexed_images()
    row = rows.get(image_id)
    return None if row is None else root / row["path"]


def thumbnail(image_id: str, max_side: int = 256) -> Path | None:
    """A cached JPEG thumbnail of an indexed image, under MEDIA_ROOT/thumbs/."""
    source = indexed_image_path(image_id)
    if source is None:
        return None
    out = Path(settings.MEDIA_ROOT) / "thumbs" / str(max_side) / f"{image_id}.jpg"
    if not out.is_file():
        image = open_image(source)
        image.thumbnail((max_side, max_side))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        image.save(tmp, format="JPEG", quality=85)
        tmp.replace(out)
    return out


def correspondence_png(job: SearchJob, result: dict) -> bytes:
    """The query and one result side by side with the inlier lines drawn."""
    import io

    from PIL import Image

    from .engine.drawing import draw_correspondences

    source = indexed_image_path(result["image_id"])
    if source is None:
        raise EngineError(f"image {result['image_id']} is not in the active index any more")
    query, other = open_image(job.query_image.path), open_image(source)
    caption = (f"{result['inliers']} inliers" if result["stage"] == "verified"
               else "coarse fallback: not verified")
    rgb = draw_correspondences(query, other, result["query_points"], result["result_points"], caption=caption)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()
