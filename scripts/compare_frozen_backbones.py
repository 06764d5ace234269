#!/usr/bin/env python3
"""How far an EfficientNet-Lite backbone's ImageNet features go before any fine-tuning: a benchmark
script (not a test), to choose which backbones are worth training a collection on.

For each backbone: the pooled 1280-d vector of every image (squashed to ``--size`` square), its
leave-one-out P@10 by cosine similarity, and a linear probe's accuracy (logistic regression,
stratified k-fold) on the labels. Corel-1k: all 1,000 images, label = id // 100, 5 folds;
Caltech-101: the images of its ``test.txt`` but ``BACKGROUND_Google``, label = folder, 3 folds.
Results: RESULTS.md, "A larger backbone".

    python scripts/compare_frozen_backbones.py corel1k lite0 lite1 lite2
    python scripts/compare_frozen_backbones.py caltech101 lite0 lite2
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.engine.backbones import Backbone, build_backbone  # noqa: E402
from search.engine.model import eval_transform  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"


def collection(name: str) -> tuple[list[Path], np.ndarray, int]:
    if name == "corel1k":
        return [DATASETS / "corel1k" / "images" / f"{i}.jpg" for i in range(1000)], np.arange(1000) // 100, 5
    root = DATASETS / "caltech101"
    relpaths = [line.strip() for line in (root / "test.txt").read_text().splitlines()
                if line.strip() and not line.startswith("BACKGROUND")]
    return [root / "images" / p for p in relpaths], np.array([p.split("/")[0] for p in relpaths]), 3


@torch.inference_mode()
def pooled_vectors(backbone: Backbone, paths: list[Path], size: int) -> np.ndarray:
    transform = eval_transform(backbone, size)
    vectors = []
    for start in range(0, len(paths), 25):
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[start:start + 25]])
        vectors.append(backbone.pooled(batch))
    found = torch.cat(vectors).numpy()
    return found / np.linalg.norm(found, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("collection", choices=["corel1k", "caltech101"])
    parser.add_argument("variants", nargs="+", choices=["lite0", "lite1", "lite2"])
    parser.add_argument("--size", type=int, default=288)
    args = parser.parse_args()
    torch.set_num_threads(2)
    paths, labels, folds = collection(args.collection)
    for variant in args.variants:
        started = time.perf_counter()
        vectors = pooled_vectors(build_backbone(f"efficientnet_{variant}", 1).eval(), paths, args.size)
        seconds = time.perf_counter() - started
        similarity = vectors @ vectors.T
        np.fill_diagonal(similarity, -np.inf)
        top = np.argsort(-similarity, axis=1)[:, :10]
        p10 = (labels[top] == labels[:, None]).mean()
        probe = cross_val_score(LogisticRegression(C=1.0, max_iter=3000), vectors, labels,
                                cv=StratifiedKFold(folds, shuffle=True, random_state=0)).mean()
        print(f"{args.collection} {variant} {args.size}px: {len(paths)} images, P@10 {p10:.4f}, "
              f"linear probe {probe:.4f}, extraction {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
