"""Fit the confidence of verified matches on an instance benchmark's true and false pairs."""
from pathlib import Path

import numpy as np

from ...engine.confidence import fit_calibration
from ...engine.instance_benchmark import load_instance_benchmark
from ...engine.instance_evaluation import collect_pair_evidence, query_halves, verified_shares
from ...engine.methods import DEFAULT_METHOD
from ...engine.pipeline import reranked_and_verified
from ...engine.workflows import open_engine
from ..base import EngineCommand, StageBars


class Command(EngineCommand):
    help = ("Run an instance benchmark's queries (prepare_instance_benchmark) through a fine method, fit the "
            "confidence of verified matches by logistic regression on half of the queries, report how it "
            "separates true from false matches on the other half (beside the plain inlier threshold), then "
            "fit on all of them and save it (default: <data dir>/models/calibration.json, used by searches).")

    def add_arguments(self, parser):
        parser.add_argument("benchmark", type=Path, help="the benchmark folder")
        parser.add_argument("--method", default=DEFAULT_METHOD)
        parser.add_argument("--n-candidates", type=int, help="coarse candidates verified (default: the setting)")
        parser.add_argument("--seed", type=int, default=0, help="which half of the queries is held out")
        parser.add_argument("--out", type=Path, help="where to save the calibration")
        self.add_model_arguments(parser)

    def handle(self, *args, benchmark, method, n_candidates, seed, out, **options):
        config = self.config(options)
        engine = open_engine(config, options["index_dir"], options["model"])
        bench = load_instance_benchmark(benchmark)
        with StageBars(unit="query") as bars:
            pairs = collect_pair_evidence(engine, bench, method, n_candidates, progress=bars)
        fit_q, held_q = query_halves(pairs, seed)
        fit_rows = np.isin(pairs.query, fit_q)
        held = fit_calibration(pairs.evidence[fit_rows], pairs.same[fit_rows], f"{benchmark} (half, seed {seed})")
        def verified_by(calibration):  # the rule a search applies: min_inliers and min_confidence
            return reranked_and_verified(pairs.inliers, calibration.probability(pairs.evidence), config)[1]

        rules = {
            f"inliers >= {config.min_inliers} (no confidence)": pairs.inliers >= config.min_inliers,
            f"confidence >= {config.min_confidence} (fitted on the other half)": verified_by(held),
            # what searches judge with today (the packaged one until a deployment saves its own): how
            # a new fit compares with it, on the same held-out queries
            f"confidence >= {config.min_confidence} (the calibration in use)": verified_by(engine.calibration),
        }
        self.stdout.write(f"{len(pairs.same)} pairs with inliers ({int(pairs.same.sum())} true) from "
                          f"{len(pairs.families)} queries; held-out half:")
        for name, passing in rules.items():
            s = verified_shares(pairs, passing, held_q)
            self.stdout.write(
                f"  {name}: source verified for {s['source_verified']:.3f} of {s['instance_queries']} instance "
                f"queries, a wrong image verified for {s['wrong_verified']:.3f}; unrelated queries with a "
                f"verified image {s['unrelated_verified']:.3f} of {s['unrelated_queries']}")
        calibration = fit_calibration(pairs.evidence, pairs.same, f"{benchmark}, {method}, {len(pairs.families)} queries")
        out = out or Path(config.model_dir) / "calibration.json"
        calibration.save(out)
        self.stdout.write(self.style.SUCCESS(
            f"saved {out}: weights " + ", ".join(f"{w:.3f}" for w in calibration.weights) + f"; bias {calibration.bias:.3f}"))
