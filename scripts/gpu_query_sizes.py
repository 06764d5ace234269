"""Query local features on a GPU, photo by photo, when every photo has a size of its own (as
uploads do): the first query of each size against the same photos again, with cuDNN on and off
(process-wide; the extractor turns it off for itself since stop 29, so both should now agree).
For a machine with an NVIDIA GPU (an argument names another device); prints milliseconds. The ImageNet backbone and an untrained
attention head stand in for a trained pair (the time does not depend on the weights)."""
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.engine.attention import AttentionHead, TrainedAttention  # noqa: E402
from search.engine.config import EngineConfig  # noqa: E402
from search.engine.local_features import AttentionExtractor  # noqa: E402
from search.engine.model import imagenet_model  # noqa: E402


def photos(n: int, seed: int) -> list[Image.Image]:
    """Noise photos of ``n`` different sizes, portrait and landscape, 300-1,600 pixels a side."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(300, 1600, size=(n, 2))
    return [Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)) for w, h in sizes]


def timed(extractor: AttentionExtractor, images: list[Image.Image], min_side: int) -> list[float]:
    times = []
    for image in images:
        started = time.perf_counter()
        extractor.extract(image, min_side)  # its features come back to the CPU: the GPU is done
        times.append((time.perf_counter() - started) * 1000)
    return times


def main(device: str) -> None:
    config = EngineConfig()
    model = imagenet_model(config.backbone, config.image_size, device)
    torch.manual_seed(0)
    head = AttentionHead(model.backbone.local_dim, 10).to(device).eval()
    extractor = AttentionExtractor(model, TrainedAttention(head, "untrained", None, {}), config.local_settings(), device)
    timed(extractor, photos(1, seed=99), config.local_query_min_side)  # the CUDA context and first kernels
    for cudnn in (True, False):
        torch.backends.cudnn.enabled = cudnn
        images = photos(20, seed=int(cudnn))
        first, again = timed(extractor, images, config.local_query_min_side), timed(extractor, images, config.local_query_min_side)
        print(f"cuDNN {'on ' if cudnn else 'off'}: 20 new sizes, median {np.median(first):.1f} ms, max {max(first):.1f} ms, "
              f"mean {np.mean(first):.1f} ms; the same 20 again: median {np.median(again):.1f} ms, mean {np.mean(again):.1f} ms")
        print("  first pass, each:", " ".join(f"{t:.0f}" for t in first))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cuda")
