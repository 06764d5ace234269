from pathlib import Path

from ...engine.collection import read_list_file, scan_collection
from ...engine.training import Split, train_classifier
from ..base import EngineCommand


class Command(EngineCommand):
    help = ("Fine-tune the ImageNet backbone on the collection's labels (80/20 stratified split unless "
            "--train-list/--val-list are given); saves a checkpoint and a JSON of metrics beside it.")

    def add_arguments(self, parser):
        self.add_collection_arguments(parser)
        parser.add_argument("--out", type=Path, help="checkpoint to write (default: <data dir>/models/classifier.pt)")
        parser.add_argument("--backbone", help="efficientnet_lite0 (default) or resnet18")
        parser.add_argument("--epochs", type=int)
        parser.add_argument("--train-list", type=Path, help="file of relative paths to train on")
        parser.add_argument("--val-list", type=Path, help="file of relative paths to validate on")
        parser.add_argument("--device")

    def handle(self, *args, **options):
        config = self.config(options)
        if options["backbone"]:
            config = config.replace(backbone=options["backbone"])
        collection = scan_collection(options["collection"] or config.collection_dir,
                                     options["labels"] or "folders", tuple(options["exclude_label"]))
        for relpath, reason in collection.skipped:
            self.stderr.write(f"skipped {relpath}: {reason}")
        split = None
        if options["train_list"] or options["val_list"]:
            if not (options["train_list"] and options["val_list"]):
                from django.core.management.base import CommandError
                raise CommandError("give both --train-list and --val-list, or neither")
            labelled = {r.relpath for r in collection.labelled()}
            train = [p for p in read_list_file(options["train_list"]) if p in labelled]
            val = [p for p in read_list_file(options["val_list"]) if p in labelled]
            split = Split(collection.subset(train).records, collection.subset(val).records)
        out = options["out"] or config.default_model_path
        result = train_classifier(collection, config, out, split=split, epochs=options["epochs"])
        for relpath, reason in result.skipped:
            self.stderr.write(f"skipped {relpath}: {reason}")
        self.stdout.write(self.style.SUCCESS(
            f"saved {out} ({len(result.classes)} classes); validation accuracy {result.val_accuracy:.4f}"))
