from ...engine.collection import scan_collection
from ...engine.index import load_index
from ...engine.workflows import index_collection, load_models
from ..base import EngineCommand, StageBars


class Command(EngineCommand):
    help = ("Extract global features of every image with the trained classifier, build one coarse backend per "
            "variant (a ball tree, or FAISS for large collections), extract attention local features, write a new "
            "build under the index root, and make it active. Images whose file is unchanged since the active build "
            "keep their global and local features (same model and extractor).")

    def add_arguments(self, parser):
        self.add_collection_arguments(parser)
        self.add_model_arguments(parser)
        parser.add_argument("--attention", help="attention head checkpoint (default: <data dir>/models/attention.pt)")
        parser.add_argument("--no-local", action="store_true", help="global features only (no fine stage)")

    def handle(self, *args, **options):
        config = self.config(options)
        models = load_models(config, options["model"], options["attention"], attention=not options["no_local"])
        collection = scan_collection(options["collection"] or config.collection_dir,
                                     options["labels"], tuple(options["exclude_label"]))
        with StageBars() as bars:
            build = index_collection(collection, models, config, options["index_dir"], progress=bars)
        index = load_index(build, expected_checksum=models.model.checksum)
        for relpath, reason in index.manifest["skipped"]:
            self.stderr.write(f"skipped {relpath}: {reason}")
        local, reused = index.manifest["local"], index.manifest["global"]["reused"]
        self.stdout.write(self.style.SUCCESS(
            f"indexed {len(index)} images into {build} (global features of {reused} reused from the previous "
            f"build; variants: "
            + ", ".join(f"{k} {v}-d ({index.backend_name(k)})" for k, v in index.manifest["variants"].items())
            + (f"; {local['total_keypoints']} local features, {local['dim']}-d, "
               f"{local['reused']} images reused from the previous build" if local else "; no local features")
            + "); now active"))
