from pathlib import Path

from ...engine import layout
from ...engine.drawing import draw_correspondences, save_png
from ...engine.errors import SearchIndexError
from ...engine.images import open_image
from ...engine.local_store import LocalStore
from ...engine.verification import verify_affine
from ...engine.workflows import load_models
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
        extractor = load_models(config, options["model"], options["attention"], attention=True).extractor
        a, b = open_image(image_a), open_image(image_b)
        features_a, features_b = extractor.extract(a), extractor.extract(b)
        try:  # descriptors as the index stores them (PCA-reduced), when an index is there
            store: LocalStore | None = LocalStore.open(
                layout.local_dir(layout.active_build(options["index_dir"] or config.index_root)))
        except SearchIndexError:
            store = None
        if store is not None and store.meta["extractor"] == extractor.checksum:
            features_a, features_b = store.reduce(features_a), store.reduce(features_b)
        v = verify_affine(features_a.keypoints, features_a.descriptors, features_b.keypoints,
                          features_b.descriptors, config.verify_settings())
        out = out or config.reports_dir / f"match-{image_a.stem}-{image_b.stem}.png"
        caption = f"{v.inliers} inliers of {v.matches} matches"
        save_png(draw_correspondences(a, b, v.query_points, v.candidate_points, caption=caption), out)
        # One pair has no floor of chance inliers and no coarse similarity: the confidence of a
        # verified match needs a search; this says only whether the pair would be considered.
        verdict = (f"at least MIN_INLIERS={config.min_inliers}" if v.inliers >= config.min_inliers
                   else f"fewer than MIN_INLIERS={config.min_inliers}")
        self.stdout.write(f"{caption} ({verdict}; {len(features_a)} and {len(features_b)} keypoints); wrote {out}")
