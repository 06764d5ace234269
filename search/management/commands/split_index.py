from pathlib import Path

from ...engine.shards import split_build
from ..base import EngineCommand


class Command(EngineCommand):
    help = ("Split the active index into shards by image id (<data dir>/shards/<n>), for workers that each "
            "serve one shard (RETRIEVAL_SHARDS, README: 'Sharded search'). Reuses every vector and local "
            "feature; each shard gets its own coarse index and becomes active there when complete.")

    def add_arguments(self, parser):
        parser.add_argument("--shards", type=int, help="how many (default: the RETRIEVAL_SHARDS setting)")
        parser.add_argument("--index-dir", type=Path, help="index root or build to split (default: <data dir>/index)")

    def handle(self, *args, shards, index_dir, **options):
        config = self.config(options)
        shards = shards or config.shards
        builds = split_build(index_dir or config.index_root, config.shards_root, shards, config)
        for number, build in enumerate(builds):
            self.stdout.write(f"shard {number}: {build}")
        self.stdout.write(self.style.SUCCESS(
            f"split into {shards} shards; serve each with `celery -A workers worker -Q shard-<n>` and set "
            f"RETRIEVAL_SHARDS={shards} for the search workers"))
