import tempfile
from datetime import datetime, timezone
from pathlib import Path

from django.core.management.base import CommandError
from tqdm import tqdm

from ...engine.collection import read_list_file, stable_id
from ...engine.evaluation import evaluate_coarse, format_table, write_report
from ...engine.features import VARIANTS
from ...engine.index import build_index, indexed_collection, load_index
from ...engine.model import imagenet_model
from ...engine.pipeline import RetrievalEngine
from ..base import EngineCommand


class Command(EngineCommand):
    help = ("Run labelled queries through each coarse method (logits, PCA, penultimate) and report "
            "precision@10, mAP and mean query time, beside the ImageNet backbone with no fine-tuning.")

    def add_arguments(self, parser):
        parser.add_argument("--queries", default="val",
                            help="'val' (the classifier's validation split, default), 'all' (leave-one-out "
                                 "over the collection) or a file of relative paths")
        parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated coarse variants")
        parser.add_argument("--no-baseline", action="store_true",
                            help="skip the ImageNet (no fine-tuning) baseline")
        parser.add_argument("--out", type=Path, help="JSON report (default: <data dir>/reports/evaluate-<time>.json)")
        self.add_model_arguments(parser)

    def query_ids(self, spec, engine):
        if spec == "val":
            ids = engine.model.info.get("val_ids")
            if not ids:
                raise CommandError("the classifier records no validation split; use --queries all or a file")
            return ids
        if spec == "all":
            return list(engine.index.image_ids)
        return [stable_id(p) for p in read_list_file(Path(spec))]

    def run(self, engine, query_ids, variants, label):
        bar = tqdm(desc=f"evaluating {label}", unit="query")

        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        scores = evaluate_coarse(engine, query_ids, variants, label, progress=progress)
        bar.close()
        return scores

    def handle(self, *args, queries, variants, no_baseline, out, **options):
        config = self.config(options)
        engine = RetrievalEngine.open(config, options["model"], options["index_dir"])
        query_ids = self.query_ids(queries, engine)
        variants = [v.strip() for v in variants.split(",") if v.strip()]
        scores = self.run(engine, query_ids, variants, "fine-tuned")
        if not no_baseline:
            baseline = imagenet_model(engine.model.name, engine.model.image_size, engine.device,
                                      config.resnet18_weights if engine.model.name == "resnet18" else None)
            with tempfile.TemporaryDirectory(prefix="baseline-index-") as tmp:
                bar = tqdm(desc="indexing with ImageNet weights", unit="img")
                build = build_index(indexed_collection(engine.index), baseline, Path(tmp), config,
                                    engine.device, variants=("pca", "penultimate"),
                                    progress=lambda d, t: (setattr(bar, "total", t), bar.update(d - bar.n)))
                bar.close()
                baseline_engine = RetrievalEngine(baseline, load_index(build), engine.device, config)
                scores += self.run(baseline_engine, query_ids, [v for v in variants if v != "logits"],
                                   "imagenet")
        self.stdout.write(format_table(scores))
        out = out or config.reports_dir / f"evaluate-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.json"
        write_report(out, scores, {
            "index": str(engine.index.path), "collection_size": len(engine.index),
            "model": str(engine.model.path), "backbone": engine.model.name, "queries": queries,
            "val_accuracy": engine.model.info.get("val_accuracy"), "device": str(engine.device)})
        self.stdout.write(f"report written to {out}")
