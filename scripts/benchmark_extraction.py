#!/usr/bin/env python3
"""Local-feature extraction time per image (an ImageNet backbone, EfficientNet-Lite0 unless
``--backbone`` says otherwise, a random attention head: the speed does not depend on the weights),
to compare torch thread settings, processes sharing the cores, and backbones. Prints one line;
asserts nothing.

    python scripts/benchmark_extraction.py alone
    python scripts/benchmark_extraction.py search & OMP_NUM_THREADS=1 python scripts/benchmark_extraction.py reindex; wait
    python scripts/benchmark_extraction.py lite2 --backbone efficientnet_lite2
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.engine.attention import AttentionHead, TrainedAttention  # noqa: E402
from search.engine.config import EngineConfig  # noqa: E402
from search.engine.images import open_image  # noqa: E402
from search.engine.local_features import AttentionExtractor  # noqa: E402
from search.engine.model import imagenet_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("label", nargs="?", default="run", help="what the printed line starts with")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    args = parser.parse_args()
    folder = ROOT.parent / "shared" / "datasets" / "corel1k" / "images"
    model = imagenet_model(args.backbone, 224, "cpu")
    extractor = AttentionExtractor(model, TrainedAttention(AttentionHead(model.backbone.local_dim, 10).eval(),
                                                           "random", None, {}), EngineConfig().local_settings())
    images = [open_image(p) for p in sorted(folder.glob("*.jpg"))[:40]]
    for image in images[:3]:
        extractor.extract(image)  # warm-up
    started = time.perf_counter()
    for image in images:
        extractor.extract(image)
    print(f"{args.label}: {(time.perf_counter() - started) / len(images) * 1000:.1f} ms per image", flush=True)


if __name__ == "__main__":
    main()
