import json
import resource
from pathlib import Path

import numpy as np
from django.core.management.base import CommandError

from ...engine.methods import DEFAULT_METHOD, METHODS, is_fine
from ...engine.workflows import open_engine
from ..base import EngineCommand


class Command(EngineCommand):
    help = ("Benchmark the fine stage on the active index: mean time per query of local-feature extraction "
            "and of verification at each candidate count, time per verified candidate, peak memory. "
            "Prints figures; asserts nothing (timings belong here, not in tests).")

    def add_arguments(self, parser):
        parser.add_argument("--counts", default="100,1000")
        parser.add_argument("--method", choices=[m for m in METHODS if is_fine(m)], default=DEFAULT_METHOD)
        parser.add_argument("--out", type=Path, help="JSON to write (default: <data dir>/reports/benchmark_fine.json)")
        self.add_query_arguments(parser, default="all")
        self.add_model_arguments(parser)

    def handle(self, *args, counts, method, out, **options):
        config = self.config(options)
        engine = open_engine(config, options["index_dir"], options["model"])
        if method not in engine.methods:
            raise CommandError(f"the index does not support {method}; it offers {', '.join(engine.methods)}")
        query_ids = self.query_ids(options | {"limit": options.get("limit") or 20}, engine)
        queries = [engine.index.positions[q] for q in query_ids if q in engine.index.positions]
        rows = []
        for n in [int(c) for c in counts.split(",") if c.strip()]:
            n = min(n, len(engine.index) - 1)
            local_ms, verify_ms, pairs = [], [], 0
            for position in queries:
                query = engine.query_features(engine.index.path_of(position), local=True)
                ranking = engine.rank(query, method, n)
                local_ms.append(query.timings_ms["local_features"])
                verify_ms.append(ranking.timings_ms["verification"])
                pairs += ranking.n_candidates
            row = {"n_candidates": n, "queries": len(queries),
                   "query_local_features_ms": float(np.mean(local_ms)),
                   "verification_ms_per_query": float(np.mean(verify_ms)),
                   "fine_stage_ms_per_query": float(np.mean(local_ms) + np.mean(verify_ms)),
                   "ms_per_candidate": float(np.sum(verify_ms) / pairs)}
            rows.append(row)
            self.stdout.write(
                f"{n:>6} candidates: fine stage {row['fine_stage_ms_per_query']:8.1f} ms/query "
                f"(query local features {row['query_local_features_ms']:.1f} ms, verification "
                f"{row['verification_ms_per_query']:.1f} ms), {row['ms_per_candidate']:.3f} ms per candidate")
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.stdout.write(f"peak resident memory {peak_mib:.0f} MiB; index {len(engine.index)} images, "
                          f"{engine.index.local.meta['total_keypoints']} local features; device {engine.device}")
        out = out or config.reports_dir / "benchmark_fine.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"rows": rows, "method": method, "peak_rss_mib": peak_mib,
                                   "index": str(engine.index.path), "collection_size": len(engine.index),
                                   "device": str(engine.device),
                                   "settings": {"local": str(config.local_settings()),
                                                "verify": str(config.verify_settings())}}, indent=2))
        self.stdout.write(f"wrote {out}")
