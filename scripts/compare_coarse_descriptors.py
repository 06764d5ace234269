"""Which global descriptor should the coarse stage use? A benchmark script (not a test): computes
candidate descriptors once for a sample of the instance benchmark's collection, the benchmark's
queries and Corel-1k, then prints instance recall (R@1, coarse recall at 20/100/1,000) beside
Corel-1k P@10 / mAP for each, with and without alpha query expansion.

Candidates, from the fine-tuned classifier ("ft") and the same backbone with its ImageNet
weights ("in"): mean pooling of the last map (the penultimate vector), GeM (p = 3) and max
pooling of it, the mean of the L2-normalised stride-16 local descriptors, their attention-weighted
mean (DELG-style aggregation; fine-tuned head only), each raw and PCA-whitened on its collection
(Radenovic et al.; several dimensions and shrinkages), and weighted joins of the ImageNet vector
with the fine-tuned penultimate, its PCA (the paper's pca variant) or the logits. Results:
RESULTS.md, "Coarse descriptors" (stop 11) and "The hybrid's class part" (stop 26, --joins-only).

    python scripts/compare_coarse_descriptors.py --data-dir /work/data [--sample 3000]

Needs a trained model in <data dir>/models and the benchmark from ``prepare_instance_benchmark``
in <data dir>/instance-benchmark. Features are cached under <data dir>/reports/coarse-descriptors.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.engine.attention import load_attention  # noqa: E402
from search.engine.collection import scan_collection, stable_id  # noqa: E402
from search.engine.features import fit_pca, hybrid_vectors  # noqa: E402
from search.engine.images import open_image  # noqa: E402
from search.engine.instance_benchmark import load_instance_benchmark  # noqa: E402
from search.engine.model import eval_transform, imagenet_model, load_classifier  # noqa: E402


def l2(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def descriptors(backbone, batch, head=None) -> dict[str, torch.Tensor]:
    """Every candidate pooling of one EfficientNet-Lite0 forward pass."""
    n = backbone.net
    x = n._swish(n._bn0(n._conv_stem(batch)))
    out = {}
    for i, block in enumerate(n._blocks):
        x = block(x)
        if i == backbone.local_block:
            unit = F.normalize(x, dim=1)
            out["mean16"] = unit.mean((2, 3))
            if head is not None:
                a = head.scores(x)
                out["att16"] = (a * unit).sum((2, 3)) / a.sum((2, 3)).clamp(min=1e-6)
    x = n._swish(n._bn1(n._conv_head(x)))
    out["pen"] = x.mean((2, 3))
    out["gem"] = x.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3)
    out["max"] = x.amax((2, 3))
    return out


@torch.no_grad()
def extract(paths: list[Path], out: Path, data_dir: Path) -> dict[str, np.ndarray]:
    if out.is_file():
        return dict(np.load(out))
    ft = load_classifier(data_dir / "models" / "classifier.pt")
    head = load_attention(data_dir / "models" / "attention.pt", ft).head
    imagenet = imagenet_model(ft.name, ft.image_size, "cpu")
    transform = eval_transform(ft.backbone, ft.image_size)
    parts: dict[str, list] = {}
    started = time.monotonic()
    for start in range(0, len(paths), 32):
        batch = torch.stack([transform(open_image(p)) for p in paths[start:start + 32]])
        for tag, model, h in (("ft", ft, head), ("in", imagenet, None)):
            for name, v in descriptors(model.backbone, batch, h).items():
                parts.setdefault(f"{tag}_{name}", []).append(v.numpy())
        print(f"{out.stem}: {min(start + 32, len(paths))}/{len(paths)} images, {time.monotonic() - started:.0f} s",
              file=sys.stderr)
    feats = {k: np.concatenate(v) for k, v in parts.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **feats)
    return feats


def whiten(collection: np.ndarray, queries: np.ndarray, dim: int, shrinkage: float):
    """PCA-whitening learned on the collection (axes it does not span dropped)."""
    mean = collection.mean(0)
    _, s, axes = np.linalg.svd(collection - mean, full_matrices=False)
    var = s ** 2 / len(collection)
    keep = int((var > var[0] * 1e-9).sum())
    keep = min(keep, dim) if dim else keep
    projection = axes[:keep].T / np.sqrt(var[:keep] + shrinkage * var[0])
    return l2((collection - mean) @ projection), l2((queries - mean) @ projection)


def add_classifier_views(col: dict, qry: dict, cor: dict, data_dir: Path, pca_dim: int) -> None:
    """The paper's other two variants of the fine-tuned penultimate vector, as the index makes them
    (features.variant_vectors): the classifier's logits, and the PCA fitted on each collection's
    unit penultimate vectors (the Caltech-101 sample for the instance queries, Corel-1k for its own)."""
    classifier = load_classifier(data_dir / "models" / "classifier.pt").backbone.eval()
    for feats in (col, qry, cor):
        with torch.no_grad():
            feats["ft_logits"] = classifier.classify(torch.from_numpy(feats["ft_pen"])).numpy()
    for collection, others in ((col, (qry,)), (cor, ())):
        pca = fit_pca(l2(collection["ft_pen"]), pca_dim)
        for feats in (collection, *others):
            feats["ft_pca"] = pca.transform(l2(feats["ft_pen"])).astype(np.float32)


def expand(queries, collection, n=3, alpha=3.0, exclude=None):
    s = queries @ collection.T
    if exclude is not None:
        s[np.arange(len(exclude)), exclude] = -9
    top = np.argsort(-s, 1)[:, :n]
    w = np.clip(np.take_along_axis(s, top, 1), 0, None) ** alpha
    return l2(queries + (w[..., None] * collection[top]).sum(1))


def instance_scores(collection, queries, answers, qe):
    q = expand(queries, collection) if qe else queries
    s = q @ collection.T
    true = np.where(answers, s, -9).max(1)
    rank = (np.where(answers, -9, s) > true[:, None]).sum(1)
    return {"R@1": (rank < 1).mean(), **{f"cR@{d}": (rank < d).mean() for d in (20, 100, 1000)}}


def class_scores(collection, labels, query_rows, qe):
    q = collection[query_rows]
    if qe:
        q = expand(q, collection, exclude=query_rows)
    s = q @ collection.T
    s[np.arange(len(query_rows)), query_rows] = -9
    order = np.argsort(-s, 1)[:, :len(collection) - 1]
    relevant = labels[order] == labels[query_rows][:, None]
    n_relevant = (labels[None, :] == labels[query_rows][:, None]).sum(1) - 1
    ap = ((np.cumsum(relevant, 1) / np.arange(1, order.shape[1] + 1)) * relevant).sum(1) / n_relevant
    return {"P@10": relevant[:, :10].mean(), "mAP": ap.mean()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--sample", type=int, default=3000, help="collection images (all answers + a seeded sample)")
    parser.add_argument("--pca-dim", type=int, default=32, help="the pca variant's width (the product's PCA_DIM)")
    parser.add_argument("--joins-only", action="store_true",
                        help="print only the plain descriptors and the weighted joins (no whitening rows)")
    parser.add_argument("--corel", type=Path, default=Path(__file__).resolve().parents[2] / "shared/datasets/corel1k/images")
    args = parser.parse_args()
    cache = args.data_dir / "reports" / "coarse-descriptors"
    bench = load_instance_benchmark(args.data_dir / "instance-benchmark")
    records = scan_collection(bench.collection_root).records
    queries = [q for q in bench.queries if q.source]
    needed = sorted({a for q in queries for a in q.answers})
    rest = sorted(r.relpath for r in records if r.relpath not in set(needed))
    random.Random(0).shuffle(rest)
    sample = needed + sorted(rest[:max(0, args.sample - len(needed))])
    position = {p: i for i, p in enumerate(sample)}
    answers = np.zeros((len(queries), len(sample)), bool)
    for row, q in enumerate(queries):
        answers[row, [position[a] for a in q.answers]] = True
    col = extract([bench.collection_root / p for p in sample], cache / f"collection-{len(sample)}.npz", args.data_dir)
    qry = extract([bench.path_of(q) for q in queries], cache / "queries.npz", args.data_dir)
    corel_records = scan_collection(args.corel).records
    cor = extract([r.path for r in corel_records], cache / "corel.npz", args.data_dir)
    labels = np.array([int(Path(r.relpath).stem) // 100 for r in corel_records])
    val = set(json.loads((args.data_dir / "models" / "classifier.json").read_text())["val_ids"])
    query_rows = np.array([i for i, r in enumerate(corel_records) if stable_id(r.relpath) in val])

    def row(name, c, q, k):
        for qe in (False, True):
            inst, cls = instance_scores(c, q, answers, qe), class_scores(k, labels, query_rows, qe)
            print(f"{name:<26} {'alpha QE 3' if qe else 'no QE':<10} " + " ".join(
                f"{m} {v:.3f}" for m, v in inst.items()) + f" | Corel P@10 {cls['P@10']:.4f} mAP {cls['mAP']:.4f}",
                flush=True)

    add_classifier_views(col, qry, cor, args.data_dir, args.pca_dim)
    print(f"{len(queries)} instance queries, collection sample {len(sample)}; Corel-1k {len(query_rows)} queries")
    for name in sorted(col):
        c, q, k = l2(col[name]), l2(qry[name]), l2(cor[name])
        row(name, c, q, k)
        if args.joins_only:
            continue
        for dim, shrinkage in ((0, 0.0), (512, 0.0), (256, 0.0), (0, 0.01), (0, 0.1)):
            if dim and dim >= c.shape[1]:
                continue
            wc, wq = whiten(c, q, dim, shrinkage)
            wk, _ = whiten(k, k[:1], dim, shrinkage)
            row(f"{name} white {dim or 'all'}/{shrinkage:g}", wc, wq, wk)
    pairs = [("ft_pen", "in_pen"), ("ft_pca", "in_pen"), ("ft_logits", "in_pen")]
    if not args.joins_only:
        pairs += [("ft_pen", "in_gem"), ("ft_pen", "ft_att16")]
    for a, b in pairs:
        for w in (0.3, 0.5, 0.7):  # joined as the index joins its hybrid variant
            join = lambda feats: hybrid_vectors(l2(feats[a]), l2(feats[b]), w)
            row(f"{a}+{b} {w:g}", join(col), join(qry), join(cor))


if __name__ == "__main__":
    main()
