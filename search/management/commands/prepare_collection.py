"""Make a collection searchable from nothing: labels, a trained model, an active index.

Steps already done are skipped, so the demo script and docker compose's
``setup`` service can run it on every start. With ``--site-first`` the model is
the ImageNet starter (minutes instead of the training's tens of minutes); the
real training then runs on the site's maintenance worker (``start_training``)."""
from pathlib import Path

from django.core.management import call_command

from ...engine import layout
from ...engine.collection import scan_collection
from ...engine.training import save_starter_classifier
from ..base import EngineCommand
from .make_labels import PRESETS


class Command(EngineCommand):
    help = ("Write the labels of a known collection (--preset), train the classifier and attention head "
            "unless a checkpoint exists, and build the index unless one is active. Idempotent.")

    def add_arguments(self, parser):
        self.add_collection_arguments(parser)
        parser.add_argument("--preset", choices=sorted(PRESETS),
                            help="labels by a known collection's rule, written to <data dir>/<preset>-labels.csv "
                                 "(instead of --labels)")
        parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: the RETRIEVAL_DEVICE setting)")
        parser.add_argument("--site-first", action="store_true",
                            help="without a classifier, start from the ImageNet backbone (not fine-tuned, no local "
                                 "features) so the site can serve in minutes; train later with start_training")

    def handle(self, *args, collection, labels, exclude_label, preset, device, site_first, **options):
        config = self.config({"device": device})
        collection = Path(collection or config.collection_dir)
        if preset:
            labels = str(Path(config.data_dir) / f"{preset}-labels.csv")
            if Path(labels).is_file():
                self.stdout.write(f"labels: {labels} exists")
            else:
                call_command("make_labels", str(collection), out=Path(labels), preset=preset, stdout=self.stdout)
        shared = dict(collection=collection, labels=labels, exclude_label=list(exclude_label), device=device,
                      stdout=self.stdout, stderr=self.stderr)
        starter = False
        if config.default_model_path.is_file():
            self.stdout.write(f"classifier: {config.default_model_path} exists (delete it to retrain)")
        elif site_first:
            save_starter_classifier(scan_collection(collection, labels or "folders", tuple(exclude_label)), config,
                                    config.default_model_path)
            starter = True
            self.stdout.write(f"classifier: the ImageNet starter, saved as {config.default_model_path}; "
                              "fine-tune it with 'start_training' (the site's maintenance worker runs it)")
        else:
            call_command("train", **shared)
        if layout.has_active(config.index_root):
            self.stdout.write(f"index: {layout.active_build(config.index_root)} is active (run 'index' to rebuild)")
        else:
            call_command("index", **shared, no_local=starter)
        self.stdout.write(self.style.SUCCESS(f"{collection} is ready to search"))
