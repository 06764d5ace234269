"""Label-based evaluation, the automatic version of the paper's Table 1:
precision@10, mAP (and R-precision, which reads 1.0 on small classes where
P@10 cannot) and mean query time for each of the six methods (three
global variants, each alone and followed by the attention fine stage).

Relevance is "same class as the query"; the query itself is excluded from
its own results; unlabelled collection images are never relevant. A fine
method's ranking is its verified candidates by inliers, then the rest of
the coarse ranking, so its mAP covers the whole collection as well.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import EngineError
from .images import open_image
from .methods import is_fine, parse_method
from .pipeline import RetrievalEngine
from .progress import Progress, elapsed_ms, no_progress


def precision_at_k(relevant: np.ndarray, k: int) -> float:
    """Fraction of the first ``k`` results that are relevant (``relevant`` is in rank order)."""
    return float(np.asarray(relevant[:k], dtype=bool).sum()) / k


def r_precision(relevant: np.ndarray, n_relevant: int) -> float:
    """Precision at the rank of the query's class size: P@10 on a class of three can reach 0.2 at
    best, so on collections of small classes this is the figure that can read 1.0."""
    if n_relevant <= 0:
        return 0.0
    return precision_at_k(relevant, n_relevant)


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
    mean_verified: float = 0.0  # fine methods: candidates per query that reached min_inliers
    n_candidates: int = 0
    # where ``query_ms`` goes: the mean of each stage it sums (global features, coarse; a fine method's
    # local features, crops, verification and quarter turns), so a device's figure can be read apart
    stage_ms: dict[str, float] = field(default_factory=dict)
    # precision at R, R the query's class size less the query (1.0 when every class member comes first)
    r_precision: float = 0.0
    # The queries that lost places in their first ``k``, worst first: where a P@10 goes, so a change
    # can be judged by the pictures it mends or breaks rather than by one mean.
    misses: list[dict] = field(default_factory=list)


def evaluate_methods(engine: RetrievalEngine, query_ids: Iterable[str], methods: Iterable[str],
                     model_label: str = "fine-tuned", k: int = 10, n_candidates: int | None = None,
                     progress: Progress = no_progress) -> list[MethodScore]:
    """Run every query through each method and score it against the labels.

    Each query's features are computed once; each method then ranks the whole
    collection (for mAP), its fine stage verifying the first ``n_candidates``.
    A method's query time is global features + its ranking (+ local features)."""
    index = engine.index
    labels = np.array([label if label is not None else "" for label in index.labels], dtype=object)
    queries = [index.positions[q] for q in query_ids if q in index.positions and index.labels[index.positions[q]]]
    if not queries:
        raise EngineError("no labelled queries found in the index to evaluate")
    methods = [m for m in methods if m in engine.methods]
    n_candidates = min(n_candidates or engine.config.n_candidates, len(index) - 1)
    any_fine = any(is_fine(m) for m in methods)
    class_sizes = {c: int((labels == c).sum()) for c in set(labels) if c}
    stats = {m: {"p": [], "r": [], "ap": [], "ms": [], "verified": [], "stages": [], "misses": []} for m in methods}
    stage = f"evaluating {model_label}"
    for done, position in enumerate(queries, 1):
        query_label = index.labels[position]
        image = open_image(index.path_of(position))
        query, turned = engine.query_features(image, local=any_fine), {}
        for method in methods:
            ranking = engine.rank_turning(image, query, method, n_candidates, depth=len(index) - 1,
                                          exclude_ids={index.image_ids[position]}, turned=turned)
            relevant = labels[ranking.ranked_positions] == query_label
            stats[method]["p"].append(precision_at_k(relevant, k))
            others = class_sizes[query_label] - 1  # the query's class, less the query
            lost = min(k, others) - int(relevant[:k].sum())
            if lost > 0:
                stats[method]["misses"].append(
                    query_miss(index, position, ranking.ranked_positions[:k], relevant[:k], lost))
            stats[method]["ap"].append(average_precision(relevant, others))
            stats[method]["r"].append(r_precision(relevant, others))
            stages = {"global_features": query.timings_ms["global_features"], "coarse": ranking.timings_ms["coarse"]}
            if is_fine(method):
                stages |= {"local_features": query.timings_ms["local_features"],
                           "crops": query.timings_ms.get("crops", 0.0),
                           "verification": ranking.timings_ms["verification"],
                           "turns": ranking.timings_ms.get("turns", 0.0)}
                stats[method]["verified"].append(ranking.n_verified)
            stats[method]["ms"].append(sum(stages.values()))
            stats[method]["stages"].append(stages)
        progress(stage, done, len(queries))
    scores = []
    for method in methods:
        variant, fine = parse_method(method)
        s = stats[method]
        scores.append(MethodScore(
            f"{model_label} {method}", model_label, variant, "fine" if fine else "coarse",
            float(np.mean(s["p"])), float(np.mean(s["ap"])), float(np.mean(s["ms"])), len(queries),
            float(np.mean(s["verified"])) if fine else 0.0, n_candidates if fine else 0,
            {stage: float(np.mean([q[stage] for q in s["stages"]])) for stage in s["stages"][0]},
            float(np.mean(s["r"])), sorted(s["misses"], key=lambda miss: (-miss["wrong"], miss["query"]))))
    return scores


def query_miss(index, position: int, top_positions, relevant, lost: int) -> dict:
    """One query's lost places: the top places its class's other images could have filled and did
    not (a class of three fills two of ten, so a query that finds both loses none), and the classes
    of the highest-ranked results that took them."""
    taken = [index.labels[p] or "(unlabelled)" for p, hit in zip(top_positions, relevant) if not hit][:lost]
    return {"query": index.image_ids[position], "path": index.relpaths[position], "label": index.labels[position],
            "wrong": len(taken), "taken_by": {label: taken.count(label) for label in sorted(set(taken))}}


def evaluate_coarse(engine: RetrievalEngine, query_ids, variants, model_label="fine-tuned", k=10,
                    progress: Progress = no_progress):
    """The coarse methods only (no local features needed)."""
    return evaluate_methods(engine, query_ids, list(variants), model_label, k, progress=progress)


def format_table(scores: list[MethodScore]) -> str:
    header = (f"{'method':<34} {'P@10':>7} {'mAP':>7} {'R-prec':>7} {'query ms':>9} {'queries':>8} "
              f"{'verified/query':>15}")
    lines = [header, "-" * len(header)]
    for s in scores:
        verified = f"{s.mean_verified:.1f} of {s.n_candidates}" if s.stage == "fine" else "-"
        lines.append(f"{s.method:<34} {s.precision_at_10:>7.4f} {s.mean_ap:>7.4f} {s.r_precision:>7.4f} "
                     f"{s.query_ms:>9.1f} {s.n_queries:>8d} {verified:>15}")
    return "\n".join(lines)


def format_misses(scores: list[MethodScore], worst: int = 5) -> str:
    """Where each method's lost top-ten places are: how many queries lost any, and the worst few."""
    lines = []
    for score in scores:
        lost = sum(miss["wrong"] for miss in score.misses)
        lines.append(f"{score.method}: {lost} places lost in {len(score.misses)} of {score.n_queries} queries")
        for miss in score.misses[:worst]:
            taken = ", ".join(f"{label} {n}" for label, n in miss["taken_by"].items())
            lines.append(f"  {miss['path']} ({miss['label']}): {miss['wrong']} wrong ({taken})")
    return "\n".join(lines)


def write_report(path: Path, scores: list[MethodScore], context: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"context": context, "methods": [asdict(s) for s in scores]}, indent=2))


@dataclass
class SweepPoint:
    n_candidates: int
    mean_top_inliers: float  # mean verification score of the returned top k
    mean_verified: float  # candidates per query that reached min_inliers
    query_ms: float  # whole query: features, coarse, local features, verification
    fine_ms: float  # local features + verification alone
    n_queries: int


def sweep_candidates(engine: RetrievalEngine, query_ids: Iterable[str], method: str,
                     candidate_counts: Iterable[int], k: int = 10,
                     progress: Progress = no_progress) -> list[SweepPoint]:
    """The paper's Table 2 / Figure 3: how the candidate count trades verification score for time."""
    variant, fine = parse_method(method)
    if not fine:
        raise EngineError(f"sweep_candidates needs a fine method (one ending in +attention), not {method!r}")
    index = engine.index
    queries = [index.positions[q] for q in query_ids if q in index.positions]
    if not queries:
        raise EngineError("none of the query ids is in the index")
    counts = sorted({min(int(n), len(index) - 1) for n in candidate_counts})
    points = []
    total = len(counts) * len(queries)
    for c, n in enumerate(counts):
        top_inliers, verified, query_ms, fine_ms = [], [], [], []
        for q, position in enumerate(queries, 1):
            image = open_image(index.path_of(position))
            started = time.perf_counter()
            response = engine.search(image, method, n_candidates=n, k=k,
                                     exclude_ids={index.image_ids[position]})
            query_ms.append(elapsed_ms(started))
            fine_ms.append(response.timings_ms["local_features"] + response.timings_ms["verification"])
            top_inliers.append(np.mean([r.inliers for r in response.results]))
            verified.append(response.n_verified)
            progress("sweeping", c * len(queries) + q, total)
        points.append(SweepPoint(n, float(np.mean(top_inliers)), float(np.mean(verified)),
                                 float(np.mean(query_ms)), float(np.mean(fine_ms)), len(queries)))
    return points


def format_sweep(points: list[SweepPoint]) -> str:
    header = f"{'candidates':>10} {'top-k inliers':>14} {'verified':>9} {'query ms':>9} {'fine ms':>8} {'queries':>8}"
    lines = [header, "-" * len(header)]
    for p in points:
        lines.append(f"{p.n_candidates:>10d} {p.mean_top_inliers:>14.1f} {p.mean_verified:>9.1f} "
                     f"{p.query_ms:>9.1f} {p.fine_ms:>8.1f} {p.n_queries:>8d}")
    return "\n".join(lines)


def plot_sweep(points: list[SweepPoint], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, left = plt.subplots(figsize=(7, 4))
    counts = [p.n_candidates for p in points]
    left.plot(counts, [p.mean_top_inliers for p in points], "o-", color="tab:blue")
    left.set_xlabel("coarse candidates verified")
    left.set_ylabel("mean inliers of the top 10", color="tab:blue")
    left.set_xscale("log")
    right = left.twinx()
    right.plot(counts, [p.query_ms for p in points], "s--", color="tab:red")
    right.set_ylabel("mean query time (ms)", color="tab:red")
    left.set_title(title or "verification score and time against candidate count")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
