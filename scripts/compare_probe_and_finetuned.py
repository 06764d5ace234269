#!/usr/bin/env python3
"""Does a linear probe on the untouched ImageNet features classify a collection's validation images
as well as the fine-tuned classifier? A benchmark script (not a test), for the class the search's
class rules start from (Corel-1k).

For each data dir (a classifier trained on Corel-1k by ``train``, its split in ``classifier.json``):
the fine-tuned classifier's accuracy on its own validation images; a logistic regression (``C`` 1
and 10) fitted on the ImageNet backbone's L2-normalised pooled vectors (the index's ``instance``
vectors) of its training images, on the same validation images; and the mean of the two softmax
outputs. Lists every validation image one of them gets wrong. Results: RESULTS.md, "Labels before
guesses".

    python scripts/compare_probe_and_finetuned.py /work/exp/s0p0 /work/exp/s1p0 --cache /work/exp/imagenet288.npz
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.engine.backbones import build_backbone  # noqa: E402
from search.engine.collection import stable_id  # noqa: E402
from search.engine.model import eval_transform, load_classifier  # noqa: E402
from search.management.commands.make_labels import PRESETS  # noqa: E402

COREL = ROOT.parent / "shared" / "datasets" / "corel1k" / "images"
CLASSES = PRESETS["corel1k"]["class_names"]  # image N is of class N // 100


@torch.inference_mode()
def outputs(network, paths: list[Path], size: int, head) -> np.ndarray:
    transform = eval_transform(network, size)
    found = []
    for start in range(0, len(paths), 25):
        found.append(head(torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[start:start + 25]])))
    return torch.cat(found).numpy()


def imagenet_vectors(size: int, cache: Path | None) -> np.ndarray:
    """The ImageNet Lite0's pooled vector of each Corel-1k image (row = image number), L2-normalised."""
    if cache and cache.is_file():
        return np.load(cache)["vectors"]
    network = build_backbone("efficientnet_lite0", len(CLASSES), pretrained=True).eval()
    vectors = outputs(network, [COREL / f"{i}.jpg" for i in range(1000)], size, network.pooled)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    if cache:
        np.savez(cache, vectors=vectors)
    return vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dirs", nargs="+", type=Path, help="data dirs holding models/classifier.pt")
    parser.add_argument("--cache", type=Path, help="npz of the ImageNet vectors, written once")
    args = parser.parse_args()
    torch.set_num_threads(2)
    number_of = {stable_id(f"{i}.jpg"): i for i in range(1000)}  # the split names images by id
    for data_dir in args.data_dirs:
        model = load_classifier(data_dir / "models" / "classifier.pt")
        vectors = imagenet_vectors(model.image_size, args.cache)
        train = np.array([number_of[i] for i in model.info["train_ids"]])
        val = np.array([number_of[i] for i in model.info["val_ids"]])
        truth_train = np.array([model.classes.index(CLASSES[i // 100]) for i in train])
        truth_val = np.array([model.classes.index(CLASSES[i // 100]) for i in val])
        network = model.backbone.eval()
        fine_tuned = torch.tensor(outputs(network, [COREL / f"{i}.jpg" for i in val], model.image_size,
                                          network.forward)).softmax(1).numpy()
        line = [f"{data_dir}: fine-tuned {(fine_tuned.argmax(1) == truth_val).mean():.4f}"]
        wrong = fine_tuned.argmax(1) != truth_val
        for c in (1.0, 10.0):
            probe = LogisticRegression(C=c, max_iter=3000).fit(vectors[train], truth_train).predict_proba(vectors[val])
            mean = (fine_tuned + probe) / 2
            line.append(f"probe C={c:g} {(probe.argmax(1) == truth_val).mean():.4f}, "
                        f"mean {(mean.argmax(1) == truth_val).mean():.4f}")
            if c == 1.0:
                shown = (probe, mean)
                wrong |= (probe.argmax(1) != truth_val) | (mean.argmax(1) != truth_val)
        print("; ".join(line), flush=True)
        name = lambda p, row: f"{model.classes[p[row].argmax()]} {p[row].max():.2f}"  # noqa: E731
        for row in np.flatnonzero(wrong):
            print(f"  {val[row]}.jpg ({CLASSES[val[row] // 100]}): fine-tuned {name(fine_tuned, row)}, "
                  f"probe {name(shown[0], row)}, mean {name(shown[1], row)}")


if __name__ == "__main__":
    main()
