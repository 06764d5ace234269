"""What every engine command shares: the settings, common options, and
engine errors turned into a clean ``CommandError`` (no traceback)."""
from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from ..conf import engine_config
from ..engine.collection import read_list_file, seeded_sample, stable_id
from ..engine.errors import EngineError


class EngineCommand(BaseCommand):
    def add_model_arguments(self, parser, index=True):
        parser.add_argument("--model", type=Path, help="classifier checkpoint (default: <data dir>/models/classifier.pt)")
        if index:
            parser.add_argument("--index-dir", type=Path, help="index root or build (default: <data dir>/index)")
        parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: the RETRIEVAL_DEVICE setting)")

    def add_collection_arguments(self, parser):
        parser.add_argument("--collection", type=Path, help="image folder (default: the RETRIEVAL_COLLECTION_DIR setting)")
        parser.add_argument("--labels", help="'folders' (one sub-folder per class), a path,label CSV, or 'none' "
                                                 "(train without labels: the ImageNet classifier is kept)")
        parser.add_argument("--exclude-label", action="append", default=[],
                            help="a label to treat as unlabelled (e.g. BACKGROUND_Google); repeatable")

    def add_query_arguments(self, parser, default="val"):
        parser.add_argument("--queries", default=default,
                            help="'val' (the classifier's validation split), 'all' (leave-one-out over the "
                                 "collection) or a file of relative paths")
        parser.add_argument("--limit", type=int, help="use only the first N queries (seeded shuffle)")

    def query_ids(self, options, engine) -> list[str]:
        spec = options["queries"]
        if spec == "val":
            ids = engine.model.info.get("val_ids")
            if not ids:
                raise CommandError("the classifier records no validation split; use --queries all or a file")
        elif spec == "all":
            ids = list(engine.index.image_ids)
        else:
            ids = [stable_id(p) for p in read_list_file(Path(spec))]
        return seeded_sample(ids, options.get("limit"))

    def config(self, options):
        overrides = {}
        if options.get("device"):
            overrides["device"] = options["device"]
        return engine_config(**overrides)

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except EngineError as exc:
            raise CommandError(str(exc)) from exc


class StageBars:
    """The engine's progress callback ``(stage, done, total)`` drawn as one tqdm bar per stage;
    use it as a context manager so the bars are closed."""

    def __init__(self, unit: str = "img"):
        self.bars = {}
        self.unit = unit

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit=self.unit)
        bar.total = total
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()

    def __enter__(self) -> "StageBars":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
