"""Label-based evaluation, the automatic version of the paper's Table 1:
precision@10, mAP and mean query time per method.

Relevance is "same class as the query"; the query itself is excluded from
its own results; unlabelled collection images are never relevant.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .errors import EngineError
from .images import open_image
from .pipeline import RetrievalEngine


def precision_at_k(relevant: np.ndarray, k: int) -> float:
    """Fraction of the first ``k`` results that are relevant (``relevant`` is in rank order)."""
    return float(np.asarray(relevant[:k], dtype=bool).sum()) / k


def average_precision(relevant: np.ndarray, n_relevant: int | None = None) -> float:
    """Mean of precision@rank over the ranks of the relevant results.

    ``n_relevant`` is the number of relevant items in the whole collection;
    relevant items missing from the ranking count as precision 0.
    """
    relevant = np.asarray(relevant, dtype=bool)
    total = int(relevant.sum()) if n_relevant is None else int(n_relevant)
    if total == 0:
        return 0.0
    hits = np.cumsum(relevant)
    ranks = np.arange(1, len(relevant) + 1)
    return float((hits[relevant] / ranks[relevant]).sum()) / total


@dataclass
class MethodScore:
    method: str
    model: str
    variant: str
    stage: str
    precision_at_10: float
    mean_ap: float
    query_ms: float
    n_queries: int


def evaluate_coarse(engine: RetrievalEngine, query_ids: Iterable[str], variants: Iterable[str],
                    model_label: str = "fine-tuned", k: int = 10,
                    progress: Callable[[int, int], None] | None = None) -> list[MethodScore]:
    """Run every query through each coarse variant and score it against the labels."""
    index = engine.index
    position_of = {image_id: p for p, image_id in enumerate(index.image_ids)}
    labels = np.array([label if label is not None else "" for label in index.labels], dtype=object)
    queries = [position_of[q] for q in query_ids if q in position_of and index.labels[position_of[q]]]
    if not queries:
        raise EngineError("no labelled queries found in the index to evaluate")
    variants = [v for v in variants if v in index.variants]
    class_sizes = {c: int((labels == c).sum()) for c in set(labels) if c}
    precisions = {v: [] for v in variants}
    aps = {v: [] for v in variants}
    times = {v: [] for v in variants}
    for done, position in enumerate(queries, 1):
        query_id, query_label = index.image_ids[position], index.labels[position]
        started = time.perf_counter()
        vectors = engine.query_vectors(open_image(index.path_of(position)))
        feature_ms = 1000 * (time.perf_counter() - started)
        for variant in variants:
            started = time.perf_counter()
            engine.rank(vectors, variant, k, frozenset({query_id}))
            times[variant].append(feature_ms + 1000 * (time.perf_counter() - started))
            ranked, _ = engine.rank(vectors, variant, len(index) - 1, frozenset({query_id}))
            relevant = labels[ranked] == query_label
            precisions[variant].append(precision_at_k(relevant, k))
            aps[variant].append(average_precision(relevant, class_sizes[query_label] - 1))
        if progress:
            progress(done, len(queries))
    return [MethodScore(f"{model_label} {variant}", model_label, variant, "coarse",
                        float(np.mean(precisions[variant])), float(np.mean(aps[variant])),
                        float(np.mean(times[variant])), len(queries))
            for variant in variants]


def format_table(scores: list[MethodScore]) -> str:
    header = f"{'method':<28} {'P@10':>7} {'mAP':>7} {'query ms':>9} {'queries':>8}"
    lines = [header, "-" * len(header)]
    for s in scores:
        lines.append(f"{s.method:<28} {s.precision_at_10:>7.4f} {s.mean_ap:>7.4f} "
                     f"{s.query_ms:>9.1f} {s.n_queries:>8d}")
    return "\n".join(lines)


def write_report(path: Path, scores: list[MethodScore], context: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"context": context, "methods": [asdict(s) for s in scores]}, indent=2))
