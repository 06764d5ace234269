#!/usr/bin/env python3
"""Would the query's crops give the classifier a better class for the query? A benchmark script
(not a test).

A fine method already puts the query's ``query_crops`` x ``query_crops`` crops through the
classifier to find candidates (``RetrievalEngine.crop_vectors``), and the class rules take the
query's class from the classifier (``RetrievalEngine.of_query_class``): on Corel-1k what the
default method loses is that class. This scores the classifier of <data dir> on its own
validation images (``classifier.json``'s split, found in ``--collection``) with the class
from the mean softmax of several views of each image: the whole picture (the engine now), its
mirror image, the crops, and their combinations. Prints the accuracy of each and the images whose
class any view changes. Results: RESULTS.md, "The query's class from its crops".

    RETRIEVAL_DATA_DIR=/work/data python scripts/compare_query_class_views.py \
        --collection ../shared/datasets/corel1k/images --labels /work/data/corel1k-labels.csv
    RETRIEVAL_DATA_DIR=/work/data-caltech python scripts/compare_query_class_views.py \
        --collection ../shared/datasets/caltech101/images --labels folders --limit 1000

Reads <data dir> from RETRIEVAL_DATA_DIR like the commands.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.engine.collection import scan_collection, seeded_sample  # noqa: E402
from search.engine.config import EngineConfig  # noqa: E402
from search.engine.features import crop_boxes, raw_logits  # noqa: E402
from search.engine.images import open_image  # noqa: E402
from search.engine.model import load_classifier  # noqa: E402


def view_logits(model, config: EngineConfig, image) -> np.ndarray:
    """The classifier's logits for the whole picture, its mirror image and each crop, one batch."""
    image = image.convert("RGB")
    boxes = crop_boxes(*image.size, config.query_crops, config.query_crop_share)
    return raw_logits(model, [image, ImageOps.mirror(image)] + [image.crop(box) for box in boxes])


def rules(n_crops: int) -> dict[str, list[int]]:
    crops = list(range(2, 2 + n_crops))
    return {"whole (now)": [0], "whole + mirror": [0, 1], "whole + crops": [0] + crops,
            "crops alone": crops, "whole + mirror + crops": [0, 1] + crops,
            "whole x2 + crops": [0, 0] + crops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", type=Path, required=True, help="the folder the classifier was trained on")
    parser.add_argument("--labels", required=True, help="'folders' or a path,label CSV, as train's")
    parser.add_argument("--limit", type=int, default=0, help="a seeded sample of the validation images")
    parser.add_argument("--save", type=Path, help="an npz of every view's logits and the truth, for a later look")
    args = parser.parse_args()
    config = EngineConfig.from_env()
    model = load_classifier(config.default_model_path)
    classes = model.classes
    records = {r.image_id: r for r in scan_collection(args.collection, args.labels).records}
    ids = seeded_sample([i for i in model.info["val_ids"] if i in records], args.limit)
    chosen = [records[i] for i in ids if records[i].label in classes]
    truth = np.array([classes.index(r.label) for r in chosen])
    logits = []
    for done, record in enumerate(chosen, 1):
        logits.append(view_logits(model, config, open_image(record.path)))
        if done % 100 == 0:
            print(f"{done} images", file=sys.stderr, flush=True)
    logits = np.stack(logits)  # (images, views, classes)
    if args.save:
        np.savez(args.save, logits=logits, truth=truth, relpaths=np.array([r.relpath for r in chosen]))
    probabilities = torch.from_numpy(logits).softmax(2).numpy()
    unit = logits / np.linalg.norm(logits, axis=2, keepdims=True)  # as the index and the query keep them
    found = {}
    for name, views in rules(logits.shape[1] - 2).items():
        found[name] = probabilities[:, views].mean(1).argmax(1)
        if name == "whole + crops":  # what the engine has without a softmax: the unit logits' mean
            found["whole + crops (unit logits)"] = unit[:, views].mean(1).argmax(1)
    for name in found:
        print(f"{name:<24} accuracy {np.mean(found[name] == truth):.4f}  "
              f"({np.count_nonzero(found[name] != truth)} wrong of {len(truth)})")
    now = found["whole (now)"]
    for k in np.flatnonzero(np.any([v != now for v in found.values()], axis=0)):
        p = probabilities[k, 0]
        print(f"{chosen[k].relpath}: truth {classes[truth[k]]}, whole {classes[now[k]]} "
              f"({p.max():.2f}); " + ", ".join(f"{name}: {classes[v[k]]}" for name, v in found.items()
                                                  if v[k] != now[k]))
    print(f"{len(truth)} validation images, {logits.shape[1] - 2} crops")


if __name__ == "__main__":
    main()
