#!/usr/bin/env python3
"""What adding images to a live index costs (issue 12's targets): on a copy of a real index, add
N images (a seeded sample of another folder) with add_images, time it until they are searchable,
check that one of them is found first by a search on an engine opened before the addition, time a
query with the delta beside the build, then fold the delta in with a rebuild and time that.
Prints figures; asserts nothing. Run it with nothing else on the machine.

    RETRIEVAL_DATA_DIR=/work/data python scripts/benchmark_add.py \\
        --images ../shared/datasets/caltech101/images --count 10 --count 1000
"""
import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "retrieval_site.settings")

import django  # noqa: E402

django.setup()

from search.conf import engine_config  # noqa: E402
from search.engine import layout  # noqa: E402
from search.engine.collection import scan_collection  # noqa: E402
from search.engine.images import is_image_name  # noqa: E402
from search.engine.index import load_index  # noqa: E402
from search.engine.workflows import add_to_index, index_collection, load_models, open_engine  # noqa: E402


def timed_query(engine, image, method: str, repeat: int = 5) -> float:
    engine.search(image, method)  # warm
    started = time.perf_counter()
    for _ in range(repeat):
        engine.search(image, method)
    return (time.perf_counter() - started) / repeat * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=Path, required=True, help="folder to draw the added images from")
    parser.add_argument("--count", type=int, action="append", required=True)
    parser.add_argument("--method", default="hybrid+attention")
    args = parser.parse_args()
    config = engine_config()
    source = load_index(config.index_root)
    full = source.manifest["build_seconds"]
    print(f"index {source.path.name}: {len(source)} images; its build took {full:.1f} s "
          f"(global reused {source.manifest['global']['reused']})")
    pool = sorted(p for p in args.images.rglob("*") if p.is_file() and is_image_name(p))
    models = load_models(config)
    collection = scan_collection(source.collection_root, "folders")
    for count in args.count:
        picked = random.Random(count).sample(pool, count)
        with tempfile.TemporaryDirectory(dir=config.data_dir) as scratch:
            root = Path(scratch) / "index"
            shutil.copytree(source.path, root / "builds" / source.path.name, symlinks=True)
            layout.point_active(root, root / "builds" / source.path.name)
            engine = open_engine(config, root)
            query = picked[0]
            before_ms = timed_query(engine, source.path_of(0), args.method)
            started = time.perf_counter()
            result = add_to_index(picked, config, root, models=models)
            added_s = time.perf_counter() - started
            response = engine.search(query, args.method)  # the engine opened before the addition
            found = response.results[0].image_id == result.added[0].image_id
            after_ms = timed_query(engine, source.path_of(0), args.method)
            started = time.perf_counter()
            merged = load_index(index_collection(collection, models, config, root))
            merge_s = time.perf_counter() - started
            print(f"add {count} ({count / len(source):.1%} of the index): {len(result.added)} added, "
                  f"{len(result.skipped)} skipped, {len(result.already)} already there, in {added_s:.1f} s "
                  f"({added_s / max(1, len(result.added)) * 1000:.0f} ms per image; {added_s / full:.1%} of the "
                  f"full build); first added image found first by an engine opened before: {found} "
                  f"({response.results[0].stage}); query {before_ms:.0f} ms before, {after_ms:.0f} ms with the "
                  f"delta; merge by rebuild {merge_s:.1f} s (global {merged.manifest['global']}, "
                  f"local extracted {merged.manifest['local']['extracted'] if merged.manifest['local'] else '-'})",
                  flush=True)


if __name__ == "__main__":
    main()
