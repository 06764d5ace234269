import json
from dataclasses import asdict
from pathlib import Path

from ...engine.evaluation import format_sweep, plot_sweep, sweep_candidates
from ...engine.instance_benchmark import load_instance_benchmark
from ...engine.instance_evaluation import format_instance_table, sweep_instances
from ...engine.methods import DEFAULT_METHOD, METHODS, is_fine
from ...engine.workflows import open_engine
from ..base import EngineCommand, StageBars


class Command(EngineCommand):
    help = ("The paper's Table 2 / Figure 3: for each candidate count, the mean verification score "
            "(inliers) of the returned top 10 and the mean query time; writes a table, JSON and PNG plot.")

    def add_arguments(self, parser):
        parser.add_argument("--counts", default="10,50,100,500,1000,4000",
                            help="comma-separated candidate counts")
        parser.add_argument("--method", choices=[m for m in METHODS if is_fine(m)], default=DEFAULT_METHOD)
        parser.add_argument("--out-dir", type=Path, help="where the JSON and PNG go (default: <data dir>/reports)")
        parser.add_argument("--instance", type=Path, metavar="DIR",
                            help="sweep an instance benchmark instead: R@1, R@5, coarse recall and verified share "
                                 "per candidate count")
        self.add_query_arguments(parser)
        self.add_model_arguments(parser)

    def handle(self, *args, counts, method, out_dir, instance, **options):
        config = self.config(options)
        engine = open_engine(config, options["index_dir"], options["model"])
        counts = [int(c) for c in counts.split(",") if c.strip()]
        out_dir = out_dir or config.reports_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        if instance:
            with StageBars(unit="query") as bars:
                scores = sweep_instances(engine, load_instance_benchmark(instance), method, counts, progress=bars)
            self.stdout.write(format_instance_table(scores))
            (out_dir / "sweep_instance.json").write_text(json.dumps(
                {"method": method, "index": str(engine.index.path), "benchmark": str(instance),
                 "collection_size": len(engine.index), "points": [asdict(s) for s in scores]}, indent=2))
            self.stdout.write(f"wrote {out_dir / 'sweep_instance.json'}")
            return
        query_ids = self.query_ids(options, engine)
        with StageBars(unit="query") as bars:
            points = sweep_candidates(engine, query_ids, method, counts, progress=bars)
        self.stdout.write(format_sweep(points))
        (out_dir / "sweep_candidates.json").write_text(json.dumps(
            {"method": method, "index": str(engine.index.path), "collection_size": len(engine.index),
             "device": str(engine.device), "points": [asdict(p) for p in points]}, indent=2))
        plot = plot_sweep(points, out_dir / "sweep_candidates.png", f"{method} on {len(engine.index)} images")
        self.stdout.write(f"wrote {out_dir / 'sweep_candidates.json'} and {plot}")
