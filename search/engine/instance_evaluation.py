"""Instance-level evaluation on an ``InstanceBenchmark``: does each method find the one
image a query photo was taken of, and does it stay quiet on unrelated queries?

Per method and per transformation family: R@1, R@5, mAP@5 (one relevant image, so AP@5
is 1/rank within the first five), the coarse stage's recall at several depths (what
verification can rescue at that candidate count), the share of queries whose first
result is verified, and mean query time. For unrelated queries only the verified share
counts: every verified first result there is a false positive. Each row also names its queries
whose first result is verified but wrong (``false_verified``), so that a false positive can be
looked at rather than only counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import EngineError
from .images import open_image
from .instance_benchmark import InstanceBenchmark
from .methods import is_fine
from .pipeline import RetrievalEngine
from .progress import Progress, no_progress

RECALL_DEPTHS = (20, 100, 1000, 4000)
NOT_FOUND = np.iinfo(np.int64).max


@dataclass
class InstanceScore:
    method: str
    family: str  # a transformation family, "all" (every instance query) or "unrelated"
    n_queries: int
    recall_at_1: float | None  # None for unrelated queries, which have nothing to find
    recall_at_5: float | None
    map_at_5: float | None
    coarse_recall: dict[int, float]  # depth -> share of queries whose source the coarse stage ranks above it
    verified_at_1: float  # share of queries whose first result is verified
    query_ms: float
    n_candidates: int = 0
    skipped: list[str] = field(default_factory=list)
    # one entry per query whose first result is verified but not its source (every verified first
    # result of an unrelated query): query file, image, inliers, confidence, degrees turned
    false_verified: list[dict] = field(default_factory=list)


def rank_of(ranked_positions: np.ndarray, targets) -> int:
    """0-based rank of the first of ``targets`` (a position or several) in ``ranked_positions``;
    NOT_FOUND when none is there."""
    hits = np.flatnonzero(np.isin(np.asarray(ranked_positions), np.atleast_1d(targets)))
    return int(hits[0]) if len(hits) else NOT_FOUND


def _targets(query, position_of: dict) -> np.ndarray:
    """Index positions of a query's correct answers (none for an unrelated query)."""
    return np.array([position_of[a] for a in query.answers if a in position_of], dtype=np.int64)


def _summarise(method, family, rows, depths, n_candidates) -> InstanceScore:
    final = np.array([r["final"] for r in rows], dtype=np.int64)
    coarse = np.array([r["coarse"] for r in rows], dtype=np.int64)
    instance = family != "unrelated"
    ap5 = np.where(final < 5, 1.0 / (np.minimum(final, 4) + 1.0), 0.0)
    return InstanceScore(
        method, family, len(rows),
        float((final < 1).mean()) if instance else None,
        float((final < 5).mean()) if instance else None,
        float(ap5.mean()) if instance else None,
        {d: float((coarse < d).mean()) for d in depths} if instance else {},
        float(np.mean([r["verified"] for r in rows])), float(np.mean([r["ms"] for r in rows])), n_candidates,
        false_verified=[r["first"] for r in rows if r["verified"] and r["final"] != 0])


def _answerable(engine: RetrievalEngine, benchmark: InstanceBenchmark) -> tuple[dict, list, list[str]]:
    """Relative path -> index position, the queries whose source is in the index (and the unrelated
    ones), and the files of the others."""
    index = engine.index
    position_of = {p: i for i, p in enumerate(index.relpaths)}
    queries, skipped = [], []
    for q in benchmark.queries:
        if q.source is None or q.source in position_of:
            queries.append(q)
        else:
            skipped.append(q.file)
    if any(q.source for q in benchmark.queries) and not any(q.source for q in queries):
        raise EngineError(f"none of the benchmark's sources is in {index.path}: index {benchmark.collection_root}")
    return position_of, queries, skipped


def _score_runs(engine: RetrievalEngine, benchmark: InstanceBenchmark, runs: list[tuple[str, int]], depths,
                progress: Progress) -> tuple[dict, list, list[str]]:
    """Each benchmark query's features once, ranked by every (method, n_candidates) run: one row
    per run and query (final and coarse rank of the source, verified first result, time)."""
    index = engine.index
    position_of, queries, skipped = _answerable(engine, benchmark)
    depth = min(len(index), max(max(depths), *(n for _, n in runs)))
    any_fine = any(is_fine(m) for m, _ in runs)
    rows = {run: [] for run in runs}
    for done, q in enumerate(queries, 1):
        image = open_image(benchmark.path_of(q))
        query, turned = engine.query_features(image, local=any_fine), {}
        target = _targets(q, position_of)
        for method, n_candidates in runs:
            ranking = engine.rank_turning(image, query, method, n_candidates, depth=depth, turned=turned)
            first = ranking.order[0]
            fitted = first < ranking.n_candidates  # verification ran on the first result (a candidate)
            verified = bool(fitted and ranking.verified[first])
            ms = query.timings_ms["global_features"] + sum(ranking.timings_ms.get(k, 0.0)
                                                           for k in ("coarse", "verification", "turns"))
            if is_fine(method):
                ms += query.timings_ms["local_features"] + query.timings_ms.get("crops", 0.0)
            rows[method, n_candidates].append({
                "family": q.family, "final": rank_of(ranking.ranked_positions, target),
                "coarse": rank_of(ranking.positions, target), "verified": verified, "ms": ms,
                "first": {"query": q.file, "image": index.relpaths[ranking.positions[first]],
                          "inliers": int(ranking.inliers[first]) if fitted else 0,
                          "confidence": round(float(ranking.confidence[first]), 3) if fitted else 0.0,
                          "turned": ranking.turned}})
        progress("instance queries", done, len(queries))
    families = [f for f in benchmark.families if any(q.family == f for q in queries)]
    return rows, families, skipped


def evaluate_instances(engine: RetrievalEngine, benchmark: InstanceBenchmark, methods, n_candidates: int | None = None,
                       depths=RECALL_DEPTHS, progress: Progress = no_progress) -> list[InstanceScore]:
    """Score ``methods`` on every query of ``benchmark`` against ``engine``'s index (which must
    hold the benchmark's collection): an "all" row, then one per family, per method."""
    methods = [m for m in methods if m in engine.methods]
    if not methods:
        raise EngineError(f"none of the methods can run on {engine.index.path} (it offers {', '.join(engine.methods)})")
    n_candidates = min(n_candidates or engine.config.n_candidates, len(engine.index))
    runs = [(m, n_candidates if is_fine(m) else 0) for m in methods]
    rows, families, skipped = _score_runs(engine, benchmark, runs, depths, progress)
    scores = []
    for method, n in runs:
        instance_rows = [r for r in rows[method, n] if r["family"] != "unrelated"]
        if instance_rows:  # a benchmark of unrelated queries alone has no "all" row
            scores.append(_summarise(method, "all", instance_rows, depths, n))
            scores[-1].skipped = skipped
        for family in families:
            scores.append(_summarise(method, family, [r for r in rows[method, n] if r["family"] == family], depths, n))
    return scores


def sweep_instances(engine: RetrievalEngine, benchmark: InstanceBenchmark, method: str, counts,
                    progress: Progress = no_progress) -> list[InstanceScore]:
    """The candidate-count sweep on an instance benchmark: per count, the instance queries' R@1,
    R@5 and coarse recall at that depth, and the unrelated queries' verified share."""
    counts = sorted({min(int(c), len(engine.index)) for c in counts})
    rows, _, skipped = _score_runs(engine, benchmark, [(method, c) for c in counts], counts, progress)
    scores = []
    for c in counts:
        for family, keep in (("all", lambda r: r["family"] != "unrelated"), ("unrelated", lambda r: r["family"] == "unrelated")):
            chosen = [r for r in rows[method, c] if keep(r)]
            if chosen:
                scores.append(_summarise(f"{method}@{c}", family, chosen, (c,), c))
    return scores


def format_instance_table(scores: list[InstanceScore], families: bool = True) -> str:
    depths = sorted({d for s in scores for d in s.coarse_recall})
    header = (f"{'method':<26} {'family':<12} {'n':>4} {'R@1':>6} {'R@5':>6} {'mAP@5':>6} "
              + " ".join(f"{'cR@' + str(d):>7}" for d in depths) + f" {'verif@1':>7} {'ms':>7}")
    lines = [header, "-" * len(header)]
    for s in scores:
        if not families and s.family not in ("all", "unrelated"):
            continue
        def fmt(x):
            return f"{'-':>6}" if x is None else f"{x:>6.3f}"
        lines.append(f"{s.method:<26} {s.family:<12} {s.n_queries:>4d} {fmt(s.recall_at_1)} {fmt(s.recall_at_5)} "
                     f"{fmt(s.map_at_5)} " + " ".join(f"{s.coarse_recall[d]:>7.3f}" if d in s.coarse_recall
                                                      else f"{'-':>7}" for d in depths)
                     + f" {s.verified_at_1:>7.3f} {s.query_ms:>7.1f}")
    wrong = [(s.method, f) for s in scores if s.family in ("all", "unrelated") for f in s.false_verified]
    if wrong:
        lines += ["", "verified first results that are wrong (method: query -> image, inliers, confidence):"]
        lines += [f"  {method}: {f['query']} -> {f['image']}, {f['inliers']}, {f['confidence']:.3f}"
                  + (f", turned {f['turned']}" if f["turned"] else "") for method, f in wrong]
    return "\n".join(lines)


@dataclass
class PairEvidence:
    """The verification evidence of every (query, candidate) pair with inliers, from a benchmark:
    what the confidence is fitted and checked on."""
    evidence: np.ndarray  # (P, len(EVIDENCE))
    inliers: np.ndarray  # (P,)
    same: np.ndarray  # (P,) the candidate is one of the query's answers (its source or a duplicate)
    query: np.ndarray  # (P,) index of the pair's query in ``families``
    families: list[str]  # one per query ("unrelated" for unrelated queries)


def collect_pair_evidence(engine: RetrievalEngine, benchmark: InstanceBenchmark, method: str,
                          n_candidates: int | None = None, progress: Progress = no_progress) -> PairEvidence:
    if not is_fine(method):
        raise EngineError(f"the confidence comes from verification; {method} has none")
    position_of, queries, _ = _answerable(engine, benchmark)
    parts, families = [], []
    for number, q in enumerate(queries):
        query = engine.query_features(benchmark.path_of(q), local=True)
        ranking = engine.rank(query, method, n_candidates)
        rows = np.flatnonzero(ranking.evidence[:, 0] > 0)
        same = np.isin(ranking.positions[rows], _targets(q, position_of))
        parts.append((ranking.evidence[rows], ranking.inliers[rows], same,
                      np.full(len(rows), number)))
        families.append(q.family)
        progress("pairs", number + 1, len(queries))
    evidence, inliers, same, query = (np.concatenate([p[i] for p in parts]) for i in range(4))
    return PairEvidence(evidence, inliers, same.astype(bool), query, families)


def query_halves(pairs: PairEvidence, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's queries split in two seeded halves (sorted indices into ``pairs.families``):
    a confidence fitted on one half is judged on the other."""
    order = np.random.default_rng(seed).permutation(len(pairs.families))
    return np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])


def verified_shares(pairs: PairEvidence, verified: np.ndarray, queries: np.ndarray) -> dict:
    """For the given queries, with ``verified`` marking the pairs that pass: the share of instance
    queries whose source passes (found), the share with a passing wrong image (false), and of
    unrelated queries the share with any passing image (every one a false positive)."""
    families = np.array(pairs.families)
    unrelated = families[queries] == "unrelated"
    def share(mask_of_pairs, among):
        hit = np.zeros(len(families), bool)
        hit[pairs.query[mask_of_pairs]] = True
        return float(hit[among].mean()) if len(among) else float("nan")
    instance_q, unrelated_q = queries[~unrelated], queries[unrelated]
    return {"instance_queries": len(instance_q), "unrelated_queries": len(unrelated_q),
            "source_verified": share(verified & pairs.same, instance_q),
            "wrong_verified": share(verified & ~pairs.same, instance_q),
            "unrelated_verified": share(verified, unrelated_q)}
