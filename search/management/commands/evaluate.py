import tempfile
from datetime import datetime, timezone
from pathlib import Path

from django.core.management.base import CommandError

from ...engine.evaluation import evaluate_methods, format_misses, format_table, write_report
from ...engine.index import build_index, load_index
from ...engine.instance_benchmark import load_instance_benchmark
from ...engine.instance_evaluation import evaluate_instances, format_instance_table
from ...engine.methods import METHODS
from ...engine.model import imagenet_model
from ...engine.pipeline import RetrievalEngine
from ...engine.workflows import model_label, open_engine
from ..base import EngineCommand, StageBars


class Command(EngineCommand):
    help = ("Run labelled queries through each method (the paper's Table 1: logits, PCA, penultimate, each "
            "alone and with the attention fine stage; and the instance and hybrid variants) and report "
            "precision@10, mAP and mean query time, beside the ImageNet backbone with no fine-tuning (coarse).")

    def add_arguments(self, parser):
        self.add_query_arguments(parser)
        parser.add_argument("--methods", default=",".join(METHODS),
                            help="comma-separated methods (default: all, as far as the index supports them)")
        parser.add_argument("--n-candidates", type=int, help="coarse candidates verified by the fine methods")
        parser.add_argument("--no-baseline", action="store_true",
                            help="skip the ImageNet (no fine-tuning) baseline")
        parser.add_argument("--instance", type=Path, metavar="DIR",
                            help="score an instance benchmark (made by prepare_instance_benchmark) instead of "
                                 "label-based queries: R@1, R@5, mAP@5 and coarse recall, per family")
        parser.add_argument("--out", type=Path, help="JSON report (default: <data dir>/reports/evaluate-<time>.json)")
        self.add_model_arguments(parser)

    def run(self, engine, query_ids, methods, label, n_candidates):
        with StageBars(unit="query") as bars:
            return evaluate_methods(engine, query_ids, methods, label, n_candidates=n_candidates, progress=bars)

    def run_instances(self, engine, benchmark, methods, label, n_candidates):
        with StageBars(unit="query") as bars:
            scores = evaluate_instances(engine, benchmark, methods, n_candidates, progress=bars)
        for score in scores:
            score.method = f"{label} {score.method}"
        return scores

    def baseline_engine(self, engine, config, tmp):
        """The same collection indexed with the ImageNet backbone, no fine-tuning (coarse variants)."""
        baseline = imagenet_model(engine.model.name, engine.model.image_size, engine.device,
                                  config.resnet18_weights if engine.model.name == "resnet18" else None)
        with StageBars() as bars:
            build = build_index(engine.index.collection(), baseline, Path(tmp), config,
                                engine.device, variants=("pca", "penultimate"), progress=bars)
        return RetrievalEngine(baseline, load_index(build, coarse_settings=config.coarse_settings()), engine.device,
                               config)

    def handle(self, *args, queries, methods, n_candidates, no_baseline, instance, out, **options):
        config = self.config(options)
        engine = open_engine(config, options["index_dir"], options["model"])
        methods = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise CommandError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        label = model_label(engine.model)
        if instance:
            benchmark = load_instance_benchmark(instance)
            scores = self.run_instances(engine, benchmark, methods, label, n_candidates)
            run_baseline = lambda baseline: self.run_instances(baseline, benchmark, ["pca", "penultimate"],
                                                               "imagenet", None)
            table = format_instance_table
        else:
            query_ids = self.query_ids(options | {"queries": queries}, engine)
            scores = self.run(engine, query_ids, methods, label, n_candidates)
            run_baseline = lambda baseline: self.run(baseline, query_ids, ["pca", "penultimate"], "imagenet", None)
            table = format_table
        if not no_baseline:
            with tempfile.TemporaryDirectory(prefix="baseline-index-") as tmp:
                scores += run_baseline(self.baseline_engine(engine, config, tmp))
        self.stdout.write(table(scores))
        if not instance:
            self.stdout.write(format_misses(scores))
        out = out or config.reports_dir / f"evaluate-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.json"
        write_report(out, scores, {"instance_benchmark": str(instance) if instance else None,
            "index": str(engine.index.path), "collection_size": len(engine.index),
            "model": str(engine.model.path), "backbone": engine.model.name, "queries": queries,
            "val_accuracy": engine.model.info.get("val_accuracy"), "device": str(engine.device),
            "settings": engine.config.as_record()})
        self.stdout.write(f"report written to {out}")
