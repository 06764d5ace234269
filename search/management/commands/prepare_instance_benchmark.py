"""Generate the instance-level benchmark: query photos of known collection images and
unrelated queries, with their ground truth, under the data directory."""
from pathlib import Path

from ...engine.instance_benchmark import FAMILIES, build_instance_benchmark
from ..base import EngineCommand


class Command(EngineCommand):
    help = ("Make instance-level queries from a seeded sample of a collection (perspective, crop, rotation, "
            "scale, colour, blur, JPEG, pasted on a background, and all at once as a phone photo) plus "
            "unrelated queries from another folder; score them with 'evaluate --instance DIR'.")

    def add_arguments(self, parser):
        parser.add_argument("--collection", type=Path,
                            help="the collection the queries are taken from (default: <datasets>/caltech101/images)")
        parser.add_argument("--backgrounds", type=Path,
                            help="images outside the collection: backgrounds and unrelated queries "
                                 "(default: <datasets>/corel1k/images)")
        parser.add_argument("--out", type=Path, help="benchmark folder (default: <data dir>/instance-benchmark)")
        parser.add_argument("--per-family", type=int, default=30, help="queries per transformation family")
        parser.add_argument("--unrelated", type=int, default=100, help="unrelated queries")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, collection, backgrounds, out, per_family, unrelated, seed, **options):
        config = self.config(options)
        datasets = Path(config.datasets_dir)
        out = out or Path(config.data_dir) / "instance-benchmark"
        benchmark = build_instance_benchmark(collection or datasets / "caltech101" / "images", out,
                                             backgrounds or datasets / "corel1k" / "images",
                                             per_family=per_family, n_unrelated=unrelated, seed=seed)
        n_unrelated = sum(q.source is None for q in benchmark.queries)
        self.stdout.write(self.style.SUCCESS(
            f"{len(benchmark.queries) - n_unrelated} instance queries ({per_family} x {len(FAMILIES)} families) "
            f"and {n_unrelated} unrelated queries of {benchmark.collection_root} written to {out}"))
        for copy in benchmark.left_out:
            self.stdout.write(f"left out of the unrelated queries: {copy['from']}, a known copy of {copy['copy_of']}")
