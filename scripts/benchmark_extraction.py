#!/usr/bin/env python3
"""Local-feature extraction time per image (ImageNet EfficientNet-Lite0, a random attention head:
the speed does not depend on the weights), to compare torch thread settings and processes
sharing the cores. Prints one line; asserts nothing.

    python scripts/benchmark_extraction.py alone
    python scripts/benchmark_extraction.py search & OMP_NUM_THREADS=1 python scripts/benchmark_extraction.py reindex; wait
"""
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
    label = sys.argv[1] if len(sys.argv) > 1 else "run"
    folder = ROOT.parent / "shared" / "datasets" / "corel1k" / "images"
    model = imagenet_model("efficientnet_lite0", 224, "cpu")
    extractor = AttentionExtractor(model, TrainedAttention(AttentionHead(model.backbone.local_dim, 10).eval(),
                                                           "random", None, {}), EngineConfig().local_settings())
    images = [open_image(p) for p in sorted(folder.glob("*.jpg"))[:40]]
    for image in images[:3]:
        extractor.extract(image)  # warm-up
    started = time.perf_counter()
    for image in images:
        extractor.extract(image)
    print(f"{label}: {(time.perf_counter() - started) / len(images) * 1000:.1f} ms per image", flush=True)


if __name__ == "__main__":
    main()
