#!/usr/bin/env python3
"""Do two classifiers fine-tuned on the same Corel-1k split classify its validation images better
together than apart? A benchmark script (not a test), for the class the search's class rules start
from. Each data dir holds models/classifier.pt made by ``train`` (its split in classifier.json);
dirs are grouped by split, and every pair within a split is scored by the mean of its two softmax
outputs. Lists the validation images each gets wrong. Results: RESULTS.md, "Stronger augmentation".

    python scripts/compare_classifier_ensembles.py /work/exp/s0-basic /work/exp/s0-trivial /work/exp/s1-basic ...
"""
import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from compare_probe_and_finetuned import CLASSES, COREL, outputs  # noqa: E402
from search.engine.collection import stable_id  # noqa: E402
from search.engine.model import load_classifier  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dirs", nargs="+", type=Path, help="data dirs holding models/classifier.pt")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    number_of = {stable_id(f"{i}.jpg"): i for i in range(1000)}
    by_split: dict[tuple, list] = {}
    for data_dir in args.data_dirs:
        model = load_classifier(data_dir / "models" / "classifier.pt")
        val = tuple(number_of[i] for i in model.info["val_ids"])
        network = model.backbone.eval()
        logits = outputs(network, [COREL / f"{i}.jpg" for i in val], model.image_size, network.forward)
        order = [model.classes.index(c) for c in CLASSES]  # columns in CLASSES' order
        by_split.setdefault(val, []).append((data_dir.name, torch.tensor(logits[:, order]).softmax(1).numpy()))
    for val, members in by_split.items():
        truth = np.array([i // 100 for i in val])

        def report(name: str, probabilities: np.ndarray) -> None:
            wrong = np.flatnonzero(probabilities.argmax(1) != truth)
            named = ", ".join(f"{val[w]}.jpg {CLASSES[truth[w]]}->{CLASSES[probabilities[w].argmax()]}" for w in wrong)
            print(f"  {name}: {1 - len(wrong) / len(val):.4f} ({len(wrong)} wrong: {named})")

        print(f"split of {members[0][0]} ({len(val)} validation images)")
        for name, probabilities in members:
            report(name, probabilities)
        for (a, pa), (b, pb) in itertools.combinations(members, 2):
            report(f"mean of {a} and {b}", (pa + pb) / 2)


if __name__ == "__main__":
    main()
