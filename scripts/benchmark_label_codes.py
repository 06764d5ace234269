#!/usr/bin/env python3
"""How long the first search after an index is loaded waits for the labels' codes
(``SearchIndex.label_codes``, which the class rules read), at a million images. A benchmark
script (not a test): synthetic labels (``--classes`` kinds of 30 characters, 5 % unlabelled),
the index's one-pass numbering against a sort of the strings (``np.unique``, the way before),
and one look-up of 4,000 candidates' labels. Results: RESULTS.md, "The labels' codes at a
million images".

    python scripts/benchmark_label_codes.py --images 1000000
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.engine.index import SearchIndex  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    draw = random.Random(0)
    labels = [None if draw.random() < 0.05 else f"kind_{draw.randrange(args.classes):05d}_of_the_collection"
              for _ in range(args.images)]
    with tempfile.TemporaryDirectory() as folder:
        ids = [str(i) for i in range(args.images)]
        index = SearchIndex(Path(folder), {}, ids, ids, labels, Path(folder), {}, None)
        one_pass, sorted_ = [], []
        for _ in range(args.repeats):
            index.__dict__.pop("label_codes", None)
            started = time.perf_counter()
            names, codes = index.label_codes
            one_pass.append(time.perf_counter() - started)
            started = time.perf_counter()
            np.unique(np.array([label or "" for label in labels], dtype=object), return_inverse=True)
            sorted_.append(time.perf_counter() - started)
        tracemalloc.start()
        index.__dict__.pop("label_codes", None)
        index.label_codes
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        positions = np.random.default_rng(0).integers(0, args.images, 4000)
        started = time.perf_counter()
        for _ in range(100):
            index.labels_at(positions)
        lookup_ms = (time.perf_counter() - started) * 10
    print(f"{args.images:,} images, {len(names)} distinct labels: codes {codes.nbytes / 1e6:.1f} MB, "
          f"building them peaks at {peak / 1e6:.1f} MB")
    print(f"one pass (the index): median {np.median(one_pass):.2f} s; sorting the strings: "
          f"median {np.median(sorted_):.2f} s; {np.median(sorted_) / np.median(one_pass):.1f}x")
    print(f"4,000 candidates' labels: {lookup_ms:.3f} ms")


if __name__ == "__main__":
    main()
