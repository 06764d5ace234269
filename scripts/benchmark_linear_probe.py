#!/usr/bin/env python3
"""How long does training's linear probe take on a collection of many small classes? A benchmark
script (not a test): ``PROBE_BELOW_CLASS_SIZE`` sends every collection whose typical class has fewer
than that many training pictures through ``training.linear_probe`` before fine-tuning, and its
cost was feared to grow with pictures x classes.

The data: the ImageNet EfficientNet-Lite0's pooled vectors (as training's probe sees them: the
picture squashed to ``--size`` square, not normalised) of all Caltech-101 pictures; its classes cut
into made-up classes of ``--group`` consecutive pictures (3 -> about 3,000 classes), the last fifth
of each (at least one) held out. For each grouping and each probe named by ``--probes``
(``training.linear_probe``; PyTorch's L-BFGS on the same objective, the candidate for fitting on
the device): the fit's seconds and the held-out accuracy. Results: RESULTS.md, "The probe's fit".

    python scripts/benchmark_linear_probe.py --cache /work/exp/caltech_pooled288.npz --group 40 10 3 \
        --probes sklearn torch100 torch300
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.engine import training  # noqa: E402
from search.engine.backbones import build_backbone  # noqa: E402
from search.engine.images import read_resized  # noqa: E402
from search.engine.model import eval_batch  # noqa: E402

CALTECH = ROOT.parent / "shared" / "datasets" / "caltech101" / "images"


def caltech_paths() -> list[Path]:
    return sorted(p for p in CALTECH.glob("*/*.jpg"))


@torch.inference_mode()
def pooled_vectors(paths: list[Path], size: int, cache: Path | None) -> np.ndarray:
    if cache and cache.is_file():
        return np.load(cache)["vectors"]
    network = build_backbone("efficientnet_lite0", 2, pretrained=True).eval()
    found = []
    for start in range(0, len(paths), 32):
        images = [read_resized(p, size, square=True) for p in paths[start:start + 32]]
        found.append(network.pooled(eval_batch(network, size, images, "cpu")))
        print(f"\r{start + len(images)}/{len(paths)} pictures", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    vectors = torch.cat(found).numpy()
    if cache:
        np.savez(cache, vectors=vectors)
    return vectors


def grouped_split(paths: list[Path], group: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Made-up labels 0 ... n - 1 (``group`` consecutive pictures of one Caltech folder), which rows
    train, and n."""
    labels, train = np.empty(len(paths), dtype=np.int64), np.zeros(len(paths), dtype=bool)
    folders: dict[str, list[int]] = {}
    for row, path in enumerate(paths):
        folders.setdefault(path.parent.name, []).append(row)
    label = 0
    for rows in folders.values():
        for start in range(0, len(rows), group):
            members = rows[start:start + group]
            if len(members) < 2 and start:  # a folder's last lone picture joins the group before it
                labels[members], train[members] = label - 1, True
                continue
            held_out = max(1, round(len(members) * 0.2)) if len(members) > 1 else 0
            labels[members] = label
            train[members[:len(members) - held_out]] = True
            label += 1
    return labels, train, label


def torch_probe(features: np.ndarray, targets: np.ndarray, n_classes: int, max_iter: int,
                inverse_regularisation: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The same objective as scikit-learn's (mean log loss + |W|^2 / (2 C n)), in float32 by
    PyTorch's full-batch L-BFGS, at most ``max_iter`` iterations."""
    x, y = torch.from_numpy(features), torch.from_numpy(targets)
    layer = torch.nn.Linear(x.shape[1], n_classes)
    torch.nn.init.zeros_(layer.weight), torch.nn.init.zeros_(layer.bias)
    penalty = 1.0 / (2 * inverse_regularisation * len(x))
    optimiser = torch.optim.LBFGS(layer.parameters(), max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(x), y) + penalty * layer.weight.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return layer.weight.detach().numpy(), layer.bias.detach().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="npz of the pooled vectors, written once")
    parser.add_argument("--size", type=int, default=288)
    parser.add_argument("--group", type=int, nargs="+", default=[40, 10, 3])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--probes", nargs="+", default=["sklearn"],
                        help="sklearn (training.linear_probe) and/or torchN (PyTorch L-BFGS, N iterations)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = caltech_paths()
    vectors = pooled_vectors(paths, args.size, args.cache)
    for group in args.group:
        labels, train, n_classes = grouped_split(paths, group)
        for probe in args.probes:
            started = time.perf_counter()
            if probe == "sklearn":
                weight, bias = training.linear_probe(vectors[train], labels[train], n_classes)
            else:
                weight, bias = torch_probe(vectors[train], labels[train], n_classes, int(probe[5:]))
            seconds = time.perf_counter() - started
            predicted = (vectors[~train] @ weight.T + bias).argmax(1)
            accuracy = (predicted == labels[~train]).mean()
            print(f"groups of {group}: {n_classes} classes, {train.sum()} training vectors, "
                  f"{(~train).sum()} held out; {probe} {seconds:.1f} s, held-out accuracy {accuracy:.4f}",
                  flush=True)


if __name__ == "__main__":
    main()
