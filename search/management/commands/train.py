from pathlib import Path

from django.core.management.base import CommandError

from ...engine.collection import read_list_file, scan_collection
from ...engine.training import Split, accuracy_text
from ...engine.workflows import train_models
from ..base import EngineCommand, StageBars


class Command(EngineCommand):
    help = ("Fine-tune the ImageNet backbone on the collection's labels (80/20 stratified split unless "
            "--train-list/--val-list are given); saves a checkpoint and a JSON of metrics beside it. "
            "Without labels (--labels none, or fewer than two classes) the ImageNet classifier is kept "
            "and the attention head learns from its predictions. Trains on a seeded sample of at most "
            "RETRIEVAL_TRAIN_MAX_IMAGES (10,000) images, each class in its share.")

    def add_arguments(self, parser):
        self.add_collection_arguments(parser)
        parser.add_argument("--out", type=Path, help="checkpoint to write (default: <data dir>/models/classifier.pt)")
        parser.add_argument("--backbone", help="efficientnet_lite0 (default), efficientnet_lite1, efficientnet_lite2 or resnet18")
        parser.add_argument("--epochs", type=int)
        parser.add_argument("--train-list", type=Path, help="file of relative paths to train on")
        parser.add_argument("--val-list", type=Path, help="file of relative paths to validate on")
        parser.add_argument("--attention-out", type=Path,
                            help="attention head to write (default: <data dir>/models/attention.pt)")
        parser.add_argument("--no-attention", action="store_true", help="train the classifier only")
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
                raise CommandError("give both --train-list and --val-list, or neither")
            labelled = {r.relpath for r in collection.labelled()}
            train = [p for p in read_list_file(options["train_list"]) if p in labelled]
            val = [p for p in read_list_file(options["val_list"]) if p in labelled]
            split = Split(collection.subset(train).records, collection.subset(val).records)
        out = options["out"] or config.default_model_path
        with StageBars(unit="epoch") as bars:
            trained = train_models(collection, config, out, options["attention_out"], split=split,
                                   epochs=options["epochs"], with_attention=not options["no_attention"],
                                   progress=bars)
        result = trained.training
        for relpath, reason in result.skipped:
            self.stderr.write(f"skipped {relpath}: {reason}")
        self.stdout.write(self.style.SUCCESS(f"saved {out}: {result.summary}"))
        if trained.attention is None:
            return
        attention = trained.attention
        last = attention.info["history"][-1]
        self.stdout.write(self.style.SUCCESS(
            f"saved {attention.path}: attention head train loss {last['train_loss']:.4f}, "
            f"train accuracy {last['train_accuracy']:.4f}, validation accuracy {accuracy_text(last['val_accuracy'])}"))
