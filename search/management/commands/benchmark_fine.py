import json
import resource
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from django.core.management.base import CommandError

from ...engine.methods import DEFAULT_METHOD, METHODS, is_fine, parse_method
from ...engine.verification import Candidates, prescore_dtype, verify_candidates
from ...engine.workflows import open_engine
from ..base import EngineCommand


def synthetic_candidates(candidates: Candidates, n: int, source: Candidates, seed: int = 0) -> Candidates:
    """``candidates`` topped up to ``n`` with variations of ``source`` (the same images read apart,
    so that ``candidates`` still read their keypoints and the rest of their descriptors only when
    verification asks): keypoints scaled and shifted, descriptor rows in another order, so
    matching and RANSAC redo real work on each. When ``candidates`` were read with heads, a
    variation's are its first rows, as many as its image's."""
    rng = np.random.default_rng(seed)
    real = min(n, len(candidates))
    keypoints, descriptors, heads = [], [], []
    while real + len(descriptors) < n:
        i = (real + len(descriptors)) % len(candidates)
        rows = rng.permutation(len(source.keypoints[i]))
        scale, shift = rng.uniform(0.8, 1.25), rng.uniform(-40, 40, size=2)
        keypoints.append((source.keypoints[i][rows] * scale + shift).astype(np.float32))
        descriptors.append(source.descriptors[i][rows])
        if candidates.heads is not None:
            heads.append(descriptors[-1][:len(candidates.heads[i])])
    return Candidates(_ToppedUp(candidates.descriptors, real, descriptors), _ToppedUp(candidates.keypoints, real, keypoints),
                      None if candidates.heads is None else _ToppedUp(candidates.heads, real, heads))


class _ToppedUp(Sequence):
    """The first ``real`` candidates' rows as the store gives them (read when asked), then the variations'."""

    def __init__(self, stored: Sequence[np.ndarray], real: int, extra: list[np.ndarray]):
        self.stored, self.real, self.extra = stored, real, extra

    def __len__(self) -> int:
        return self.real + len(self.extra)

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"candidate {i} of {len(self)}")
        return self.stored[i] if i < self.real else self.extra[i - self.real]


class Command(EngineCommand):
    help = ("Benchmark the fine stage on the active index: per query, local-feature extraction and the "
            "verification of 100 / 1,000 / 4,000 candidates (the collection's nearest images, repeated with "
            "synthetic variations past its size), split into pre-score, matching and RANSAC; time per candidate, peak "
            "memory. Prints figures; asserts nothing (timings belong here, not in tests).")

    def add_arguments(self, parser):
        parser.add_argument("--counts", default="100,1000,4000")
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
        counts = [int(c) for c in counts.split(",") if c.strip()]
        variant, _ = parse_method(method)
        if queries:  # untimed: the first pass pays the device's start (a CUDA context, its kernels' first loads)
            warm_up = engine.query_features(engine.index.path_of(queries[0]), local=True)
            positions, _ = engine.coarse_order(warm_up.vectors, variant, min(100, len(engine.index)), expand=False)
            verify_candidates(warm_up.local.keypoints, warm_up.local.descriptors, engine.candidate_features(positions),
                              engine.verify_settings, device=engine.device)
        rows = []
        for n in counts:
            totals = {"local_features": 0.0, "reading": 0.0, "prescore": 0.0, "matching": 0.0, "ransac": 0.0}
            with_min_inliers, synthetic, read = 0, 0, 0
            for q, position in enumerate(queries):
                query = engine.query_features(engine.index.path_of(position), local=True)
                positions, _ = engine.coarse_order(query.vectors, variant, min(n, len(engine.index)), expand=False)
                started = time.perf_counter()
                # the pre-score's rows; the rest of a candidate's descriptors when it is let through (in
                # matching's time), its keypoints when fitted (in RANSAC's)
                real = engine.candidate_features(positions)
                totals["reading"] += (time.perf_counter() - started) * 1000
                read += len(real)
                # the variations' source is read apart (untimed), and only when the collection is short of n
                candidates = real if len(real) >= n else \
                    synthetic_candidates(real, n, engine.index.local.candidates(positions), seed=q)
                synthetic += len(candidates) - len(real)
                timings = {}
                results = verify_candidates(query.local.keypoints, query.local.descriptors, candidates,
                                            engine.verify_settings, timings_ms=timings, device=engine.device)
                with_min_inliers += sum(r.inliers >= config.min_inliers for r in results)
                totals["local_features"] += query.timings_ms["local_features"]
                for stage in ("prescore", "matching", "ransac"):
                    totals[stage] += timings[stage]
            pairs = n * len(queries)
            verification = totals["prescore"] + totals["matching"] + totals["ransac"]
            row = {"n_candidates": n, "queries": len(queries), "synthetic_share": synthetic / pairs,
                   "query_local_features_ms": totals["local_features"] / len(queries),
                   "prescore_ms_per_candidate": totals["prescore"] / pairs,
                   "matching_ms_per_candidate": totals["matching"] / pairs,
                   "ransac_ms_per_candidate": totals["ransac"] / pairs,
                   "ms_per_candidate": verification / pairs,
                   "reading_ms_per_candidate": totals["reading"] / read,
                   "ms_per_candidate_with_reading": verification / pairs + totals["reading"] / read,
                   "verification_ms_per_query": verification / len(queries),
                   "with_min_inliers_per_query": with_min_inliers / len(queries)}
            rows.append(row)
            self.stdout.write(
                f"{n:>6} candidates ({row['synthetic_share']:.0%} synthetic): verification "
                f"{row['verification_ms_per_query']:8.1f} ms/query, {row['ms_per_candidate']:.3f} ms per candidate "
                f"(pre-score {row['prescore_ms_per_candidate']:.3f}, matching {row['matching_ms_per_candidate']:.3f}, "
                f"RANSAC {row['ransac_ms_per_candidate']:.3f}); reading descriptors "
                f"{row['reading_ms_per_candidate']:.3f} ms per candidate, "
                f"{row['ms_per_candidate_with_reading']:.3f} with verification; "
                f"query local features {row['query_local_features_ms']:.1f} ms; "
                f"{row['with_min_inliers_per_query']:.1f} per query with MIN_INLIERS")
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        dtype = str(prescore_dtype(engine.verify_settings, engine.device)).removeprefix("torch.")
        self.stdout.write(f"peak resident memory {peak_mib:.0f} MiB; index {len(engine.index)} images, "
                          f"{engine.index.local.meta['total_keypoints']} local features; device {engine.device}, "
                          f"pre-score in {dtype}")
        out = out or config.reports_dir / "benchmark_fine.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"rows": rows, "method": method, "peak_rss_mib": peak_mib,
                                   "index": str(engine.index.path), "collection_size": len(engine.index),
                                   "device": str(engine.device), "prescore_dtype": dtype,
                                   "settings": {"local": str(config.local_settings()),
                                                "verify": str(config.verify_settings())}}, indent=2))
        self.stdout.write(f"wrote {out}")
