from pathlib import Path

from django.core.management.base import CommandError

from ...engine.workflows import add_to_index, load_models
from ..base import EngineCommand, StageBars


class Command(EngineCommand):
    help = ("Add image files, or the images in folders, to the active index without a rebuild: they are copied "
            "under the index root, their features extracted with the active build's model, and every worker's "
            "next query finds them. The next reindex folds them into the build without extracting them again.")

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", type=Path, help="image files or folders")
        parser.add_argument("--label", help="the class label of every added image (default: unlabelled)")
        self.add_model_arguments(parser)
        parser.add_argument("--attention", help="attention head checkpoint (default: <data dir>/models/attention.pt)")

    def handle(self, *args, paths, label, **options):
        config = self.config(options)
        models = load_models(config, options["model"], options["attention"])
        with StageBars() as bars:
            result = add_to_index(paths, config, options["index_dir"], label, models, progress=bars)
        for path, reason in result.skipped:
            self.stderr.write(f"skipped {path}: {reason}")
        for path in result.already:
            self.stderr.write(f"already in the index: {path}")
        if not result.added:
            raise CommandError("nothing added: " + ("no readable new images" if result.skipped or result.already
                                                    else "no image files found"))
        self.stdout.write(self.style.SUCCESS(
            f"added {len(result.added)} images (delta {result.delta.name}"
            + (f", and its share in {len(result.shard_deltas)} shards" if result.shard_deltas else "")
            + "); searchable now, folded into the build by the next reindex"))
