from pathlib import Path

from ...engine.attention import load_attention
from ...engine.drawing import draw_correspondences, save_png
from ...engine.errors import SearchIndexError
from ...engine.images import open_image
from ...engine.index import load_index
from ...engine.local_features import AttentionExtractor
from ...engine.local_store import LocalStore
from ...engine.model import load_classifier, pick_device
from ...engine.verification import verify_affine
from ..base import EngineCommand


class Command(EngineCommand):
    help = ("Verify IMAGE_A against IMAGE_B with attention local features and RANSAC, and write a "
            "side-by-side PNG with the inlier correspondences drawn.")

    def add_arguments(self, parser):
        parser.add_argument("image_a", type=Path)
        parser.add_argument("image_b", type=Path)
        parser.add_argument("--out", type=Path, help="PNG to write (default: <data dir>/reports/match-A-B.png)")
        parser.add_argument("--attention", type=Path, help="attention head (default: <data dir>/models/attention.pt)")
        self.add_model_arguments(parser)

    def handle(self, *args, image_a, image_b, out, **options):
        config = self.config(options)
        device = pick_device(config.device)
        model = load_classifier(options["model"] or config.default_model_path, device)
        attention = load_attention(options["attention"] or config.default_attention_path, model, device)
        extractor = AttentionExtractor(model, attention, config.local_settings(), device)
        a, b = open_image(image_a), open_image(image_b)
        features_a, features_b = extractor.extract(a), extractor.extract(b)
        try:  # descriptors as the index stores them (PCA-reduced), when an index is there
            store: LocalStore | None = load_index(options["index_dir"] or config.index_root).local
        except SearchIndexError:
            store = None
        if store is not None and store.meta["extractor"] == extractor.checksum:
            features_a, features_b = store.reduce(features_a), store.reduce(features_b)
        v = verify_affine(features_a.keypoints, features_a.descriptors, features_b.keypoints,
                          features_b.descriptors, config.verify_settings())
        out = out or config.reports_dir / f"match-{image_a.stem}-{image_b.stem}.png"
        caption = f"{v.inliers} inliers of {v.matches} matches"
        save_png(draw_correspondences(a, b, v.query_points, v.candidate_points, caption=caption), out)
        verdict = "verified" if v.inliers >= config.min_inliers else "not verified"
        self.stdout.write(f"{caption} ({verdict}; {len(features_a)} and {len(features_b)} keypoints); wrote {out}")
