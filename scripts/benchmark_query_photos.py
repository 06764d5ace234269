"""The query side on photos from a phone: decoding, global features and local features of
12-megapixel JPEGs (Corel-1k's extra queries, real photos of its classes, enlarged to 4,032 pixels
a side with a little noise so that they compress like a camera's), and of the same photos as they
are (615-1,366 pixels a side). Runs on the index under RETRIEVAL_DATA_DIR (it needs local
features); prints the median milliseconds of each stage.

    RETRIEVAL_DATA_DIR=/work/data python scripts/benchmark_query_photos.py [--repeat 3]

It decodes a query as the search worker does (``open_query_image``; where a checkout has no such
function, with ``open_image``), so the same script times an older checkout too."""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.engine import images  # noqa: E402
from search.engine.config import EngineConfig  # noqa: E402
from search.engine.workflows import open_engine  # noqa: E402


def photos(folder: Path, source: Path) -> dict[str, list[Path]]:
    """The extra queries as they are, and enlarged to 4,032 pixels on the longer side."""
    made = {"as they are": sorted(source.glob("*.jpg")), "12 megapixels": []}
    rng = np.random.default_rng(0)
    for path in made["as they are"]:
        image = Image.open(path).convert("RGB")
        scale = 4032 / max(image.size)
        big = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        noisy = np.asarray(big, dtype=np.int16) + rng.integers(-4, 5, size=(big.height, big.width, 3))
        out = folder / f"{path.stem}-phone.jpg"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out, quality=90)
        made["12 megapixels"].append(out)
    return made


def decode(config: EngineConfig, path: Path):
    if hasattr(images, "open_query_image"):
        return images.open_query_image(path, config.query_decode_side)[0]
    return images.open_image(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="times each photo is described")
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[2]
                        / "shared/datasets/corel1k/extra-queries")
    args = parser.parse_args()
    config = EngineConfig.from_env()
    engine = open_engine(config)
    print(f"index {engine.index.path}; torch threads {torch.get_num_threads()}; "
          f"reduced decode: {'yes' if hasattr(images, 'open_query_image') else 'no (this checkout has none)'}")
    with tempfile.TemporaryDirectory() as folder:
        sets = photos(Path(folder), args.source)
        engine.query_features(decode(config, sets["as they are"][0]), local=True)  # warm-up
        for name, paths in sets.items():
            stages = {"decode": [], "global": [], "local": [], "all": []}
            for _ in range(args.repeat):
                for path in paths:
                    started = time.perf_counter()
                    image = decode(config, path)
                    decoded = (time.perf_counter() - started) * 1000
                    query = engine.query_features(image, local=True)
                    stages["decode"].append(decoded)
                    stages["global"].append(query.timings_ms["global_features"])
                    stages["local"].append(query.timings_ms["local_features"])
                    stages["all"].append((time.perf_counter() - started) * 1000)
            size = Image.open(paths[0]).size
            print(f"{name} ({len(paths)} photos, the first {size[0]}x{size[1]}), median ms: "
                  + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in stages.items()))


if __name__ == "__main__":
    main()
