#!/usr/bin/env python3
"""Parts of the fine stage, measured on a real index (prints figures, asserts nothing): local
extraction per image and the pre-score of 4,000 candidates with torch on 1 and 2 threads;
the descriptor products in float32, bfloat16 and float16; padding a block of candidates.

    python scripts/benchmark_fine_parts.py --data-dir var --index-dir var/index
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from search.engine import verification  # noqa: E402
from search.engine.config import EngineConfig  # noqa: E402
from search.engine.images import open_image  # noqa: E402
from search.engine.workflows import open_engine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("var"))
    parser.add_argument("--index-dir", type=Path, help="default: <data dir>/index")
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args()
    engine = open_engine(EngineConfig(data_dir=args.data_dir), args.index_dir or args.data_dir / "index")
    n = len(engine.index)
    paths = [engine.index.path_of(p) for p in range(0, n, max(1, n // args.images))][: args.images]
    images = [open_image(p) for p in paths]
    query = engine.query_features(paths[0], local=True)
    descriptors = list(engine.candidate_features(np.arange(min(n, 4000))).descriptors)
    descriptors = (descriptors * (4000 // len(descriptors) + 1))[:4000]
    settings = engine.verify_settings
    for threads in (2, 1, 2):
        torch.set_num_threads(threads)
        started = time.perf_counter()
        for image in images:
            engine.extractor.extract(image)
        extract_ms = (time.perf_counter() - started) / len(images) * 1000
        started = time.perf_counter()
        for _ in range(3):
            verification.prescore(query.local.keypoints, query.local.descriptors, descriptors, settings)
        prescore_ms = (time.perf_counter() - started) / 3 * 1000
        print(f"torch threads {threads}: local features {extract_ms:.1f} ms/image, "
              f"pre-score of 4,000 candidates {prescore_ms:.0f} ms")
    torch.set_num_threads(2)
    block = settings.block_size * 4
    q = torch.from_numpy(query.local.descriptors[: settings.prescore_keypoints].astype(np.float32))
    padded, _ = verification._pad(descriptors[:block], q.shape[1])
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        a, b = q.to(dtype), padded.to(dtype)
        torch.einsum("qd,cmd->cqm", a, b)
        started = time.perf_counter()
        for _ in range(5):
            torch.einsum("qd,cmd->cqm", a, b).topk(2, dim=2)
        print(f"{dtype}: similarity + top-2 of {block} candidates "
              f"{(time.perf_counter() - started) / 5 * 1000:.1f} ms")
    started = time.perf_counter()
    for _ in range(5):
        verification._pad(descriptors[:block], q.shape[1])
    print(f"padding {block} candidates {(time.perf_counter() - started) / 5 * 1000:.1f} ms")


if __name__ == "__main__":
    main()
