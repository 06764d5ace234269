from ...engine.attention import load_attention
from ...engine.collection import scan_collection
from ...engine.index import build_index, load_index
from ...engine.local_features import AttentionExtractor
from ...engine.model import load_classifier, pick_device
from ..base import EngineCommand, StageBars


class Command(EngineCommand):
    help = ("Extract global features of every image with the trained classifier, build one ball tree per "
            "variant (logits, PCA, penultimate), extract attention local features (reusing those of "
            "unchanged images), write a new build under the index root, and make it active.")

    def add_arguments(self, parser):
        self.add_collection_arguments(parser)
        self.add_model_arguments(parser)
        parser.add_argument("--attention", help="attention head checkpoint (default: <data dir>/models/attention.pt)")
        parser.add_argument("--no-local", action="store_true", help="global features only (no fine stage)")

    def handle(self, *args, **options):
        config = self.config(options)
        device = pick_device(config.device)
        model = load_classifier(options["model"] or config.default_model_path, device)
        extractor = None
        if not options["no_local"]:
            attention = load_attention(options["attention"] or config.default_attention_path, model, device)
            extractor = AttentionExtractor(model, attention, config.local_settings(), device)
        collection = scan_collection(options["collection"] or config.collection_dir,
                                     options["labels"], tuple(options["exclude_label"]))
        bars = StageBars()
        index_root = options["index_dir"] or config.index_root
        build = build_index(collection, model, index_root, config, device, progress=bars,
                            local_extractor=extractor)
        bars.close()
        index = load_index(build, expected_checksum=model.checksum)
        for relpath, reason in index.manifest["skipped"]:
            self.stderr.write(f"skipped {relpath}: {reason}")
        local = index.manifest["local"]
        self.stdout.write(self.style.SUCCESS(
            f"indexed {len(index)} images into {build} (variants: "
            + ", ".join(f"{k} {v}-d" for k, v in index.manifest["variants"].items())
            + (f"; {local['total_keypoints']} local features, {local['dim']}-d, "
               f"{local['reused']} images reused from the previous build" if local else "; no local features")
            + "); now active"))
