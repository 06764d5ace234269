"""Reindex and retrain from the site, as the ``reindex``/``retrain`` tasks run them: progress
and a log written to the MaintenanceRun row; the new build switched in only when complete
(a retrain trains aside and swaps model and index together). Idempotent like the search jobs."""
from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from .conf import engine_config
from .engine.errors import EngineError
from .jobs import Throttle
from .models import MaintenanceRun, Status


class RunLog:
    """Writes a maintenance run's step, progress and log lines to its row as they happen."""

    def __init__(self, run_id: int):
        self.run_id = run_id
        self.step = None
        self.throttle = Throttle(self._write)

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
