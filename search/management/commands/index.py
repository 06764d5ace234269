from tqdm import tqdm

from ...engine.collection import scan_collection
from ...engine.index import build_index, load_index
from ...engine.model import load_classifier, pick_device
from ..base import EngineCommand


class Command(EngineCommand):
    help = ("Extract global features of every image with the trained classifier, build one ball tree per "
            "variant (logits, PCA, penultimate) into a new build under the index root, and make it active.")

    def add_arguments(self, parser):
        self.add_collection_arguments(parser)
        self.add_model_arguments(parser)

    def handle(self, *args, **options):
        config = self.config(options)
        device = pick_device(config.device)
        model = load_classifier(options["model"] or config.default_model_path, device)
        collection = scan_collection(options["collection"] or config.collection_dir,
                                     options["labels"], tuple(options["exclude_label"]))
        bar = tqdm(total=len(collection), desc="indexing", unit="img")

        def progress(done, total):
            bar.update(done - bar.n)

        index_root = options["index_dir"] or config.index_root
        build = build_index(collection, model, index_root, config, device, progress=progress)
        bar.close()
        index = load_index(build, expected_checksum=model.checksum)
        for relpath, reason in index.manifest["skipped"]:
            self.stderr.write(f"skipped {relpath}: {reason}")
        self.stdout.write(self.style.SUCCESS(
            f"indexed {len(index)} images into {build} (variants: "
            + ", ".join(f"{k} {v}-d" for k, v in index.manifest["variants"].items()) + "); now active"))
