import json
from dataclasses import asdict
from pathlib import Path

from ...engine.evaluation import format_sweep, plot_sweep, sweep_candidates
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
        self.add_query_arguments(parser)
        self.add_model_arguments(parser)

    def handle(self, *args, counts, method, out_dir, **options):
        config = self.config(options)
        engine = open_engine(config, options["index_dir"], options["model"])
        query_ids = self.query_ids(options, engine)
        with StageBars(unit="query") as bars:
            points = sweep_candidates(engine, query_ids, method, [int(c) for c in counts.split(",") if c.strip()],
                                      progress=bars)
        self.stdout.write(format_sweep(points))
        out_dir = out_dir or config.reports_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "sweep_candidates.json").write_text(json.dumps(
            {"method": method, "index": str(engine.index.path), "collection_size": len(engine.index),
             "device": str(engine.device), "points": [asdict(p) for p in points]}, indent=2))
        plot = plot_sweep(points, out_dir / "sweep_candidates.png", f"{method} on {len(engine.index)} images")
        self.stdout.write(f"wrote {out_dir / 'sweep_candidates.json'} and {plot}")
