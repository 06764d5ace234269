import json
import random
import time
from pathlib import Path

import numpy as np

from ...engine import layout
from ...engine.methods import METHODS
from ...engine.shards import split_build
from ...engine.workflows import open_engine, open_sharded_engine
from ..base import EngineCommand


class Command(EngineCommand):
    help = ("Benchmark sharded search on an index: split it into --shards shards (under <data dir>/shards, "
            "timed), then search a seeded sample of its images (each left out of its own answer) with the one "
            "index and with the shards (stages run in this process, or with --celery on the shard workers "
            "already listening on the shard queues), and print how often the top k agree and the time per "
            "query of each. Prints figures; asserts nothing.")

    def add_arguments(self, parser):
        parser.add_argument("--shards", type=int, default=2)
        parser.add_argument("--queries", type=int, default=50, help="collection images searched (seeded sample)")
        parser.add_argument("--method", choices=METHODS, help="default: the index's default method")
        parser.add_argument("-k", "--k", type=int, default=10)
        parser.add_argument("--celery", action="store_true",
                            help="send the stages to the shard workers over the broker (start them first)")
        parser.add_argument("--no-split", action="store_true", help="use the shards already split")
        parser.add_argument("--out", type=Path, help="JSON to write (default: <data dir>/reports/benchmark_shards.json)")
        self.add_model_arguments(parser)

    def handle(self, *args, shards, queries, method, k, celery, no_split, out, **options):
        config = self.config(options).replace(shards=shards)
        source = options["index_dir"] or config.index_root
        split_s = None
        if not no_split:
            started = time.perf_counter()
            split_build(source, config.shards_root, shards, config)
            split_s = time.perf_counter() - started
        one = open_engine(config, layout.active_build(source), options["model"])
        fan_out = None
        if celery:
            from ...shard_work import celery_fan_out

            fan_out = celery_fan_out(shards)
        many = open_sharded_engine(config, fan_out, shards)
        method = method or one.default_method
        ids = random.Random(config.seed).sample(list(one.index.image_ids), min(queries, len(one.index)))
        times = {"one index": [], "shards": []}
        same_top, same_verified = 0, 0
        for image_id in ids:
            path = one.index.path_of(one.index.positions[image_id])
            answers = {}
            for name, engine in (("one index", one), ("shards", many)):
                started = time.perf_counter()
                answers[name] = engine.search(path, method, k=k, exclude_ids=[image_id])
                times[name].append((time.perf_counter() - started) * 1000)
            a, b = answers["one index"], answers["shards"]
            same_top += [r.image_id for r in a.results] == [r.image_id for r in b.results]
            same_verified += [(r.stage, r.inliers) for r in a.results] == [(r.stage, r.inliers) for r in b.results]
        sizes = [len(layout.catalog(config.shard_root(n))) for n in range(shards)]
        report = {"index": str(layout.active_build(source)), "images": len(one.index), "shard_sizes": sizes,
                  "split_seconds": None if split_s is None else round(split_s, 1), "method": method, "k": k,
                  "queries": len(ids), "stages": "celery" if celery else "in-process",
                  "same_top_k": same_top, "same_stages_and_inliers": same_verified,
                  "ms_per_query": {name: {"median": round(float(np.median(t)), 1), "p95": round(float(np.percentile(t, 95)), 1)}
                                   for name, t in times.items()}}
        ratio = report["ms_per_query"]["shards"]["median"] / report["ms_per_query"]["one index"]["median"]
        report["median_ratio"] = round(ratio, 2)
        out = out or config.reports_dir / "benchmark_shards.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        self.stdout.write(f"{len(one.index)} images in {shards} shards of {sizes}"
                          + (f", split in {split_s:.1f} s" if split_s is not None else ""))
        self.stdout.write(f"{method}, {len(ids)} queries: identical top {k} in {same_top}, identical stages and "
                          f"inliers in {same_verified}")
        for name, figures in report["ms_per_query"].items():
            self.stdout.write(f"  {name:<10} median {figures['median']:>8.1f} ms   p95 {figures['p95']:>8.1f} ms")
        self.stdout.write(f"  sharded / one index (median): {ratio:.2f} ({report['stages']} stages); written to {out}")
