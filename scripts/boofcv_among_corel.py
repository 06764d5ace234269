"""boofcv-scene's 24 pictures (8 scenes, 3 photos each) joined to Corel-1k and searched with the
trained model of a data directory: how many of the 24 find their two siblings as their top 2, per
method. The slow test (`tests/test_targets_slow.py`) asserts this for a freshly fine-tuned model;
this script measures it for any model already trained, for example one trained without labels:

    python scripts/boofcv_among_corel.py --data-dir /work/data-free

With ``--opencv`` the scene halves of the OpenCV pairs (``graf3.png``, ``box_in_scene.png``) join
the collection too, and their other halves (``graf1.png``: the same wall from another angle;
``box.png``: the box alone, found in a cluttered scene) are searched as photos from outside it:
where each one's partner ranks, and how sure the match is.

The joined collection is indexed into a build that is not made active (the Corel images' features
are reused from the active build when they are there).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.engine.collection import scan_collection  # noqa: E402
from search.engine.config import EngineConfig  # noqa: E402
from search.engine.workflows import engine_for, index_collection, load_models  # noqa: E402

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
METHODS = ("logits", "logits+attention", "penultimate", "penultimate+attention", "hybrid+attention")
OPENCV_PAIRS = {"graf1.png": "graf3.png", "box.png": "box_in_scene.png"}  # query -> the collection's picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="holds models/classifier.pt and attention.pt")
    parser.add_argument("--datasets", type=Path, default=DATASETS)
    parser.add_argument("--opencv", action="store_true", help="join and search the OpenCV pairs too")
    args = parser.parse_args()
    corel, boofcv = args.datasets / "corel1k" / "images", args.datasets / "boofcv-scene"
    config = EngineConfig(data_dir=args.data_dir, device="cpu")
    models = load_models(config, attention=True)
    # one folder per collection, so that a run without --opencv never searches the pairs' halves
    folder = args.data_dir / ("boofcv-opencv-among-corel" if args.opencv else "boofcv-among-corel")
    scenes = sorted(boofcv.glob("image*.jpg"))
    opencv = args.datasets / "opencv-pairs"
    if not folder.exists():
        (folder / "boofcv").mkdir(parents=True)
        for path in corel.glob("*.jpg"):
            (folder / path.name).symlink_to(path)
        for path in scenes:
            (folder / "boofcv" / path.name).symlink_to(path)
        if args.opencv:
            (folder / "opencv").mkdir()
            for name in OPENCV_PAIRS.values():
                (folder / "opencv" / name).symlink_to(opencv / name)
    engine = engine_for(models, index_collection(scan_collection(folder), models, config, activate=False), config)
    group = {f"boofcv/{p.name}": int(p.stem.removeprefix("image")) // 3 for p in scenes}
    hits = dict.fromkeys(METHODS, 0)
    for relpath, scene in group.items():
        query_id = engine.index.image_ids[engine.index.relpaths.index(relpath)]
        for method in METHODS:
            response = engine.search(folder / relpath, method, n_candidates=100, k=2, exclude_ids={query_id})
            hits[method] += [group.get(r.relpath) for r in response.results] == [scene, scene]
    print(f"top-2 sibling hits of {len(group)}:", hits)
    if args.opencv:
        for query, partner in OPENCV_PAIRS.items():
            for method in METHODS:
                results = engine.search(opencv / query, method, n_candidates=100, k=10).results
                found = [r for r in results if r.relpath == f"opencv/{partner}"]
                where = (f"rank {found[0].rank}, {found[0].stage}, {found[0].inliers} inliers, confidence "
                         f"{found[0].confidence:.2f}") if found else "not in the top 10"
                print(f"{query} -> {partner} by {method}: {where}")


if __name__ == "__main__":
    main()
