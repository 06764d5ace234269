import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from django.core.management.base import CommandError

from ...engine.images import open_image
from ...engine.workflows import open_engine
from ...engine.verification import RANSAC_METHODS, Candidates, verify_candidates
from ..base import EngineCommand


class Command(EngineCommand):
    help = ("Compare the affine estimators (OpenCV RANSAC and the USAC variants) on an instance-level set: "
            "every image against every other, with the active model, attention head and descriptor PCA. "
            "Images are grouped by --group-size consecutive files in sorted order (boofcv-scene: 3). "
            "Prints inliers of true and unrelated pairs, how many of each pass the verification threshold, "
            "and the time per pair. Prints figures; asserts nothing.")

    def add_arguments(self, parser):
        parser.add_argument("folder", type=Path, help="instance-level images, e.g. ../shared/datasets/boofcv-scene")
        parser.add_argument("--group-size", type=int, default=3)
        parser.add_argument("--methods", default=",".join(RANSAC_METHODS))
        parser.add_argument("--repeats", type=int, default=3, help="timing repeats per method")
        parser.add_argument("--out", type=Path, help="JSON to write (default: <data dir>/reports/estimators.json)")
        self.add_model_arguments(parser)

    def handle(self, *args, folder, group_size, methods, repeats, out, **options):
        config = self.config(options)
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if len(paths) < 2 * group_size:
            raise CommandError(f"{folder}: need at least two groups of {group_size} images")
        engine = open_engine(config, options["index_dir"], options["model"])
        if engine.extractor is None:
            raise CommandError("the active index has no local features; index with the attention head first")
        features = [engine.query_features(open_image(p), local=True).local for p in paths]
        candidates = Candidates.of((f.keypoints, f.descriptors) for f in features)
        groups = np.arange(len(paths)) // group_size
        same = groups[:, None] == groups[None, :]
        off_diagonal = ~np.eye(len(paths), dtype=bool)
        rows = []
        for method in [m.strip() for m in methods.split(",") if m.strip()]:
            if method not in RANSAC_METHODS:
                raise CommandError(f"unknown method {method!r}; choose from {', '.join(RANSAC_METHODS)}")
            settings = replace(engine.verify_settings, method=method)
            inliers = np.zeros((len(paths), len(paths)), int)
            elapsed = []
            for _ in range(repeats):
                started = time.perf_counter()
                for i, query in enumerate(features):
                    results = verify_candidates(query.keypoints, query.descriptors, candidates, settings)
                    inliers[i] = [r.inliers for r in results]
                elapsed.append(time.perf_counter() - started)
            true, unrelated = inliers[same & off_diagonal], inliers[~same]
            row = {"method": method, "true_pairs": int(true.size), "unrelated_pairs": int(unrelated.size),
                   "true_median_inliers": float(np.median(true)), "true_min_inliers": int(true.min()),
                   "unrelated_max_inliers": int(unrelated.max()),
                   "true_verified": int((true >= config.min_inliers).sum()),
                   "unrelated_verified": int((unrelated >= config.min_inliers).sum()),
                   "ms_per_pair": 1000 * min(elapsed) / len(paths) ** 2}
            rows.append(row)
            self.stdout.write(
                f"{method:>14}: true pairs median {row['true_median_inliers']:.0f} inliers (min "
                f"{row['true_min_inliers']}), {row['true_verified']}/{row['true_pairs']} verified; unrelated max "
                f"{row['unrelated_max_inliers']}, {row['unrelated_verified']}/{row['unrelated_pairs']} verified; "
                f"{row['ms_per_pair']:.3f} ms per pair (matching included, best of {repeats})")
        out = out or config.reports_dir / "estimators.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"folder": str(folder), "images": len(paths), "min_inliers": config.min_inliers,
                                   "rows": rows}, indent=2))
        self.stdout.write(f"wrote {out}")
