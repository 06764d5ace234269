"""What every engine command shares: the settings, common options, and
engine errors turned into a clean ``CommandError`` (no traceback)."""
from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from ..conf import engine_config
from ..engine.errors import EngineError


class EngineCommand(BaseCommand):
    def add_model_arguments(self, parser, index=True):
        parser.add_argument("--model", type=Path, help="classifier checkpoint (default: <data dir>/models/classifier.pt)")
        if index:
            parser.add_argument("--index-dir", type=Path, help="index root or build (default: <data dir>/index)")
        parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: the RETRIEVAL_DEVICE setting)")

    def add_collection_arguments(self, parser):
        parser.add_argument("--collection", type=Path, help="image folder (default: the RETRIEVAL_COLLECTION_DIR setting)")
        parser.add_argument("--labels", help="'folders' (one sub-folder per class) or a path,label CSV")
        parser.add_argument("--exclude-label", action="append", default=[],
                            help="a label to treat as unlabelled (e.g. BACKGROUND_Google); repeatable")

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
