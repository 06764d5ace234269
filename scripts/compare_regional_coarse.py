"""Would regional query vectors order the coarse candidates better? A benchmark script (not a test).

The coarse stage's hybrid vector describes the whole query; a photo of a painting on a wall or
of a product on a table is mostly something else. This re-scores the coarse top ``--depth`` of
each query with regional vectors pooled from the query's own last feature maps (R-MAC-like
regions: 3 x 3 windows of 6 x 6 and of 4 x 4 cells of the 9 x 9 map at 288 px, both networks of
the hybrid variant, no extra forward pass), and prints the source's coarse recall at 1 / 20 /
100 / 1,000 per scoring (instance benchmark) or the hybrid variant's P@10 (Corel-1k's
validation queries, ``corel``). Scorings: ``full`` (the coarse order as it is), ``max`` (the
best of the full and regional similarities), ``mean_full_max`` (the mean of the full one and
the best regional one), ``full+0.5max``, ``attended`` (the query's maps pooled under the
attention head's scores: ``attended_vector``), ``mean_full_attended``, and from crops of the
query put through the networks as pictures of their own (``--crops share:n``, n x n crops each
``share`` of each side): ``crops_max`` (the best of the full and crop similarities, what the
engine's ``query_crops`` does), ``crops_mean`` and ``crops_rrf`` (reciprocal-rank fusion of the
full and best-crop orders). Results: RESULTS.md, "Regional query vectors", "The query pooled
under its attention" and "Candidates found by crops of the query".

    python scripts/compare_regional_coarse.py --index-dir /work/data/caltech-index \
        --benchmark /work/data/instance-benchmark
    python scripts/compare_regional_coarse.py --corel     # the active index (Corel-1k)

Reads <data dir> from RETRIEVAL_DATA_DIR like the commands.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.engine.config import EngineConfig  # noqa: E402
from search.engine.evaluation import precision_at_k  # noqa: E402
from search.engine.features import hybrid_vectors, l2_normalise  # noqa: E402
from search.engine.images import open_image  # noqa: E402
from search.engine.instance_benchmark import load_instance_benchmark  # noqa: E402
from search.engine.instance_evaluation import NOT_FOUND, rank_of  # noqa: E402
from search.engine.model import eval_transform  # noqa: E402
from search.engine.workflows import open_engine  # noqa: E402

SCORINGS = ("full", "max", "mean_full_max", "full+0.5max", "attended", "mean_full_attended",
            "crops_max", "crops_mean", "crops_rrf")
CROP_GRIDS = ((0.6, 3),)  # (share of each side, n x n evenly spread crops): ``--crops``


def windows(cells: int, sizes=(6, 4)) -> list[tuple[int, int, int]]:
    """(row, column, size) of 3 x 3 evenly spread square windows of each size on a cells x cells map."""
    out = []
    for size in sizes:
        size = min(size, cells)
        starts = sorted(set(np.linspace(0, cells - size, 3).round().astype(int)))
        out += [(y, x, size) for y in starts for x in starts]
    return out


@torch.no_grad()
def regional_vectors(engine, image) -> np.ndarray:
    """The query's regional hybrid vectors, one row per window."""
    parts = []
    for backbone in (engine.model.backbone, engine.describer.backbone):
        fmap = backbone.feature_map(eval_transform(backbone, engine.model.image_size)(image)[None])[0]
        pooled = [fmap[:, y:y + s, x:x + s].mean((1, 2)) for y, x, s in windows(fmap.shape[1])]
        parts.append(l2_normalise(torch.stack(pooled).numpy()))
    return hybrid_vectors(parts[0], parts[1], engine.index.manifest["hybrid_weight"])


@torch.no_grad()
def attended_vector(engine, image) -> np.ndarray:
    """The query's hybrid vector with both networks' last maps pooled under the attention head's
    scores (taken on the classifier's stride-16 map of the same input, averaged to the last map's
    cells) instead of evenly: the query side only, the collection's vectors as they are."""
    parts, weights = [], None
    for backbone in (engine.model.backbone, engine.describer.backbone):
        batch = eval_transform(backbone, engine.model.image_size)(image)[None]
        fmap = backbone.feature_map(batch)[0]
        if weights is None:
            scores = engine.attention.head.scores(backbone.local_map(batch))
            weights = F.adaptive_avg_pool2d(scores, fmap.shape[1:])[0, 0]
        pooled = (fmap * weights).sum((1, 2)) / weights.sum()
        parts.append(l2_normalise(pooled[None].numpy()))
    return hybrid_vectors(parts[0], parts[1], engine.index.manifest["hybrid_weight"])


def crop_vectors(engine, image, grids=CROP_GRIDS) -> np.ndarray:
    """Hybrid vectors of crops of the query, each put through both networks as a picture of its own
    (the engine's ``crop_vectors`` for each grid): unlike ``regional_vectors`` a crop's features see
    nothing outside it."""
    saved = engine.config
    try:
        parts = []
        for share, n in grids:
            engine.config = saved.replace(query_crops=n, query_crop_share=share)
            parts.append(engine.crop_vectors(image)["hybrid"])
    finally:
        engine.config = saved
    return np.vstack(parts)


def fused_ranks(*scores: np.ndarray, k: float = 60.0) -> np.ndarray:
    """Reciprocal-rank fusion of several scorings of the same candidates (higher is better)."""
    total = np.zeros(len(scores[0]))
    for score in scores:
        ranks = np.empty(len(score))
        ranks[np.argsort(-score, kind="stable")] = np.arange(len(score))
        total += 1.0 / (k + ranks)
    return total


def orders(engine, image, depth: int, exclude=frozenset(), grids=CROP_GRIDS) -> dict[str, np.ndarray]:
    query = engine.query_features(image, local=False)
    positions, distances = engine.coarse_order(query.vectors, "hybrid", depth, exclude)
    full = 1 - distances ** 2 / 2
    best = (regional_vectors(engine, image) @ engine.index.row_vectors("hybrid", positions).T).max(0)
    attended = (attended_vector(engine, image) @ engine.index.row_vectors("hybrid", positions).T)[0]
    crops = (crop_vectors(engine, image, grids) @ engine.index.row_vectors("hybrid", positions).T).max(0)
    scores = {"full": full, "max": np.maximum(full, best), "mean_full_max": (full + best) / 2,
              "full+0.5max": full + 0.5 * best, "attended": attended, "mean_full_attended": (full + attended) / 2,
              "crops_max": np.maximum(full, crops), "crops_mean": (full + crops) / 2,
              "crops_rrf": fused_ranks(full, crops)}
    return {name: positions[np.argsort(-score, kind="stable")] for name, score in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index-dir", type=Path)
    parser.add_argument("--benchmark", type=Path)
    parser.add_argument("--corel", action="store_true", help="Corel-1k validation queries, P@10")
    parser.add_argument("--depth", type=int, default=4000)
    parser.add_argument("--crops", default="0.6:3", help="share:n,... crops of the query for the crops_* scorings")
    args = parser.parse_args()
    grids = tuple((float(share), int(n)) for share, n in (item.split(":") for item in args.crops.split(",")))
    engine = open_engine(EngineConfig.from_env(), args.index_dir)
    index = engine.index
    if args.corel:
        labels = np.array([label or "" for label in index.labels])
        p10 = {name: [] for name in SCORINGS}
        for image_id in engine.model.info["val_ids"]:
            position = index.positions[image_id]
            found = orders(engine, open_image(index.path_of(position)), 100, frozenset([image_id]), grids)
            for name, order in found.items():
                p10[name].append(precision_at_k(labels[order] == labels[position], 10))
        print("Corel-1k hybrid P@10:", {name: round(float(np.mean(v)), 4) for name, v in p10.items()})
        return
    benchmark = load_instance_benchmark(args.benchmark)
    position_of = {p: i for i, p in enumerate(index.relpaths)}
    rows = []
    for query in benchmark.queries:
        if query.source is None or query.source not in position_of:
            continue
        targets = [position_of[a] for a in query.answers if a in position_of]
        found = orders(engine, open_image(benchmark.path_of(query)), args.depth, grids=grids)
        rows.append({"family": query.family, **{name: rank_of(order, targets) for name, order in found.items()}})
    families = sorted({r["family"] for r in rows})
    for name in SCORINGS:
        for depth in (1, 20, 100, 1000):
            share = lambda chosen: np.mean([r[name] < depth and r[name] != NOT_FOUND for r in chosen])
            print(f"{name:<14} cR@{depth:<5} all {share(rows):.3f}  "
                  + " ".join(f"{f}:{share([r for r in rows if r['family'] == f]):.2f}" for f in families))


if __name__ == "__main__":
    main()
