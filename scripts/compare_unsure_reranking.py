"""Which unsure matches should go ahead of the coarse order? A benchmark script (not a test).

A fine method puts its verified candidates (``min_inliers`` and ``min_confidence``) first. A true
match is often found but not sure, so candidates with ``min_inliers`` and at least
``rerank_confidence`` also go ahead of the coarse order: until stop 25 all of them, now only the
``rerank_unsure`` with most inliers. This script ranks each query once with hybrid+attention
(caching what re-ordering needs in ``--cache``) and re-orders offline by each rule:

- ``coarse``: nothing re-ranked (the coarse order of the candidates, expanded as the fallback is);
- ``verified``: only the verified ones;
- ``all >= t``: every unsure candidate with confidence >= t (the rule before, t = 0.01);
- ``best m``: the verified ones, then the m unsure ones with most inliers (now: m = 1);
- ``best 1 >= t``: that one only from confidence t; ``best 1 x r``: only when its inliers are r times
  any other candidate's; ``best 1 in m``: only when it is among the first m of the fallback order,
  ``... or >= t`` or at least t sure (RESULTS.md, stop 36); ``best 1 if the query's class``: only
  when the classifier predicts the query's class for it (argmax of the stored logits, and of the
  query's); ``best 1 of the query's class``: the one with most inliers among those it predicts so;
  ``... other at p``: and the best of all, when of another class, at place p (stop 40);
  ``..., its class first``: the fallback too puts the candidates of the query's class first,
  ``... if m agree`` only when most of the fallback's first m are of that class (stop 41); ``... or
  p >= t`` also when the classifier gives the query's class a softmax probability of at least t;
  ``(flip)``: the query's class from the mean of its own and its mirror image's logits (stop 44);
  ``default, fallback / vote / both by v``: the default rule (``..., then its class if 10 agree``)
  with the fallback ordered by the distances of the query's ``v`` vector (``pca``, ``penultimate``,
  ``logits``: the classifier's own features) instead of the hybrid's to the expanded query, the
  vote of the fallback's first ten taken in that order, or both (stop 48).

Prints R@1 / R@5 per family on an instance benchmark, or P@10 for labelled queries (Corel-1k's
validation queries with ``--corel``; a list file with ``--queries``), also with the labels that
``--same`` joins (Caltech-101's ``Faces_easy`` are crops of the photos in ``Faces``).
Results: RESULTS.md, "Unsure matches".

    python scripts/compare_unsure_reranking.py --corel --cache /work/data/unsure-corel.pkl
    python scripts/compare_unsure_reranking.py --index-dir /work/data/caltech-index \\
        --queries ../shared/datasets/caltech101/test.txt --limit 250 --same Faces_easy=Faces \\
        --cache /work/data/unsure-caltech.pkl
    python scripts/compare_unsure_reranking.py --index-dir /work/data/caltech-index \\
        --benchmark /work/data/instance-benchmark --cache /work/data/unsure-instance.pkl

Reads <data dir> from RETRIEVAL_DATA_DIR like the commands.
"""
from __future__ import annotations

import argparse
import pickle
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.engine.collection import read_list_file, seeded_sample, stable_id  # noqa: E402
from search.engine.config import EngineConfig  # noqa: E402
from search.engine.evaluation import precision_at_k  # noqa: E402
from search.engine.images import open_image  # noqa: E402
from search.engine.instance_benchmark import load_instance_benchmark  # noqa: E402
from search.engine.instance_evaluation import _answerable as answerable  # noqa: E402
from search.engine.instance_evaluation import _targets as answer_positions  # noqa: E402
from search.engine.instance_evaluation import rank_of  # noqa: E402
from search.engine.features import predicted_classes, raw_logits  # noqa: E402
from search.engine.pipeline import class_first, fallback_agrees, fine_order, reranked_and_verified, stored_distances  # noqa: E402
from search.engine.workflows import open_engine  # noqa: E402

METHOD = "hybrid+attention"


def queries_of(engine, args) -> list[tuple[Path, frozenset, str, object]]:
    """(image, ids to exclude, family or "class", the answers' positions or the label) per query."""
    index = engine.index
    if args.benchmark:
        benchmark = load_instance_benchmark(args.benchmark)
        position_of, queries, _ = answerable(engine, benchmark)
        return [(benchmark.path_of(q), frozenset(), q.family, answer_positions(q, position_of)) for q in queries]
    if args.corel:
        ids = list(engine.model.info["val_ids"])
    else:
        ids = seeded_sample([stable_id(p) for p in read_list_file(args.queries)], args.limit)
    found = [index.positions[i] for i in ids if i in index.positions and index.labels[index.positions[i]]]
    return [(index.path_of(p), frozenset([index.image_ids[p]]), "class", index.labels[p]) for p in found]


def collect(engine, args) -> dict:
    """One hybrid+attention ranking per query, cut to the candidates verified."""
    index = engine.index
    n = min(engine.config.n_candidates, len(index) - 1)
    rows = []
    for done, (path, exclude, kind, truth) in enumerate(queries_of(engine, args), 1):
        image = open_image(path)
        query = engine.query_features(image, local=True)
        ranking = engine.rank(query, METHOD, n, depth=n, exclude_ids=exclude)
        logits, mirrored = raw_logits(engine.model, [image, ImageOps.mirror(image)], engine.device)
        rows.append({"kind": kind, "truth": truth, "positions": ranking.positions, "distances": ranking.distances,
                     "inliers": ranking.inliers, "confidence": ranking.confidence,
                     "query_class": int(predicted_classes(query.vectors["logits"])[0]),
                     "logits": logits, "mirrored_logits": mirrored,
                     "variant_distances": {v: stored_distances(index, v, ranking.positions, query.vectors[v])
                                           for v in ("pca", "penultimate", "logits") if v in index.variants}})
        if done % 50 == 0:
            print(f"{done} queries ranked", file=sys.stderr, flush=True)
    everything = np.arange(len(index))  # each image's class as the engine's rules take it
    predicted = engine.candidate_classes(index.predicted_classes(everything), index.labels_at(everything))
    return {"labels": np.array([label or "" for label in index.labels], dtype=object), "rows": rows,
            "predicted": predicted}


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def rules(config: EngineConfig) -> dict:
    """Rule name -> function(inliers, confidence, distances, agree) -> (re-ranked, verified); the
    candidates in coarse order, ``distances`` theirs to the expanded query (the fallback's), ``agree``
    whether the classifier predicts the query's class for each."""
    def judged(inliers, confidence):
        enough = inliers >= config.min_inliers
        verified = enough & (confidence >= config.min_confidence)
        return enough, verified

    def threshold(t):
        def rule(inliers, confidence, distances, agree):
            enough, verified = judged(inliers, confidence)
            return verified | (enough & (confidence >= t)), verified
        return rule

    def best(m, t=0.0):
        return lambda inliers, confidence, distances, agree: reranked_and_verified(
            inliers, confidence, replace(config, rerank_unsure=m, rerank_confidence=max(t, config.rerank_confidence)))

    def best_if(keep):
        """The best unsure one only where ``keep(inliers, confidence, distances, it, verified)``."""
        def rule(inliers, confidence, distances, agree):
            reranked, verified = reranked_and_verified(inliers, confidence, config)
            unsure = np.flatnonzero(reranked & ~verified)
            if len(unsure) and not keep(inliers, confidence, distances, unsure[0], verified, agree):
                reranked = verified.copy()
            return reranked, verified
        return rule

    def standing_out(ratio):
        """... its inliers at least ``ratio`` times those of every other candidate not verified (a
        lookalike of another kind rarely stands alone above the rest)."""
        def keep(inliers, confidence, distances, it, verified, agree):
            others = np.delete(inliers, np.append(np.flatnonzero(verified), it))
            return inliers[it] >= ratio * (others.max() if len(others) else 0)
        return best_if(keep)

    def near_or_sure(m, t=np.inf):
        """... it among the first ``m`` of the fallback order (class-level alike), or at least ``t`` sure."""
        def keep(inliers, confidence, distances, it, verified, agree):
            return np.sum(distances < distances[it]) < m or confidence[it] >= t
        return best_if(keep)

    def same_class(t=np.inf):
        """... the classifier predicting the query's class for it, or it at least ``t`` sure (a lookalike
        of another kind is mostly predicted as that kind; a photo of an object mostly as the object's)."""
        def keep(inliers, confidence, distances, it, verified, agree):
            return agree[it] or confidence[it] >= t
        return best_if(keep)

    def best_of_class(t=np.inf):
        """The best unsure one among those the classifier puts in the query's class (or at least
        ``t`` sure): a lookalike of another kind is passed over, not only when it comes first."""
        return lambda inliers, confidence, distances, agree: reranked_and_verified(
            inliers, confidence, config, agree | (confidence >= t))

    def other_class_at(place):
        """The best unsure one of the query's class first; the best of all, when of another class,
        kept on the first page at ``place`` (0-based) rather than left in the fallback order."""
        of_class = best_of_class()

        def rule(inliers, confidence, distances, agree):
            reranked, verified = of_class(inliers, confidence, distances, agree)
            best = np.flatnonzero(reranked_and_verified(inliers, confidence, config)[0] & ~verified)
            return reranked, verified, ((best[0], place) if len(best) and not agree[best[0]] else None)
        return rule

    def class_first_fallback(rule, voters=None, sure=None, mirrored=False):
        """``rule``, and in the fallback the candidates the classifier puts in the query's class first
        (each part in the fallback's order); with ``voters``, only when most of the fallback's first
        ``voters`` are of that class (the engine's ``fallback_same_class``; ``pipeline.class_first``),
        or (with ``sure``) the classifier's probability for the query's class is at least that; with
        ``mirrored``, the query's class from the mean of its and its mirror image's logits."""
        def ranked(inliers, confidence, distances, agree):
            return (*rule(inliers, confidence, distances, agree)[:2], None, voters)
        ranked.sure, ranked.mirrored = sure, mirrored
        return ranked

    def by_class_variant(rule, variant, fallback=True, gate=True):
        """``rule`` (a ``class_first_fallback`` one), with the fallback ordered by the distances of
        the query's ``variant`` vector (the classifier's own features: which images are of its kind)
        instead of the hybrid's to the expanded query, and/or the vote of its first ones taken in
        that order (``gate``)."""
        def ranked(inliers, confidence, distances, agree):
            return rule(inliers, confidence, distances, agree)
        ranked.sure, ranked.mirrored = rule.sure, rule.mirrored
        ranked.class_variant, ranked.class_fallback, ranked.class_gate = variant, fallback, gate
        return ranked

    none = lambda i, c, d, a: (np.zeros(len(i), bool), np.zeros(len(i), bool))  # noqa: E731
    found = {"coarse": none, "verified": threshold(np.inf)}
    found |= {f"all >= {t}": threshold(t) for t in (0.01, 0.02, 0.05, 0.1, 0.2)}
    found |= {f"best {m}": best(m) for m in (1, 2, 3)}
    found |= {f"best 1 >= {t}": best(1, t) for t in (0.05, 0.1, 0.2)}
    found |= {f"best 1 x{r}": standing_out(r) for r in (1.25, 1.5, 2.0)}
    found |= {f"best 1 in {m}": near_or_sure(m) for m in (10, 100, 1000)}
    found |= {f"best 1 in {m} or >= {t}": near_or_sure(m, t) for m in (20, 100) for t in (0.05, 0.1)}
    found |= {"best 1 if the query's class": same_class()}
    found |= {f"best 1 if its class or >= {t}": same_class(t) for t in (0.05, 0.1)}
    found |= {"best 1 of the query's class": best_of_class()}
    found |= {f"best 1 of its class or >= {t}": best_of_class(t) for t in (0.05, 0.1)}
    found |= {f"best 1 of its class, other at {p + 1}": other_class_at(p) for p in (1, 4, 9)}
    found |= {"coarse, its class first": class_first_fallback(none),
              "best 1 of its class, then its class": class_first_fallback(best_of_class())}
    found |= {f"..., then its class if {m} agree": class_first_fallback(best_of_class(), m) for m in (5, 10, 20, 50)}
    found |= {f"...10 agree or p >= {t}": class_first_fallback(best_of_class(), 10, sure=t)
              for t in (0.5, 0.8, 0.9, 0.95, 0.99)}
    found |= {"...10 agree (flip)": class_first_fallback(best_of_class(), 10, mirrored=True)}
    found |= {f"...10 agree or p >= {t} (flip)": class_first_fallback(best_of_class(), 10, sure=t, mirrored=True)
              for t in (0.9, 0.95)}
    default = class_first_fallback(best_of_class(), 10)
    for variant in ("pca", "penultimate", "logits"):
        found |= {f"default, fallback by {variant}": by_class_variant(default, variant, gate=False),
                  f"default, vote by {variant}": by_class_variant(default, variant, fallback=False),
                  f"default, both by {variant}": by_class_variant(default, variant)}
    return found


def query_class_and_probability(row: dict, mirrored: bool) -> tuple[int, float]:
    logits = (row["logits"] + row["mirrored_logits"]) / 2 if mirrored else row["logits"]
    p = softmax(logits)
    return int(p.argmax()), float(p.max())


def ordered(row: dict, rule, predicted: np.ndarray) -> np.ndarray:
    query_class, p = row["query_class"], 0.0
    if getattr(rule, "sure", None) is not None or getattr(rule, "mirrored", False):
        query_class, p = query_class_and_probability(row, rule.mirrored)
    of_class = predicted[row["positions"]] == query_class
    agree = of_class[:len(row["inliers"])]
    reranked, verified, *placed = rule(row["inliers"], row["confidence"], row["distances"], agree)
    variant = getattr(rule, "class_variant", None)
    fallback = row["variant_distances"][variant] if variant and rule.class_fallback else row["distances"]
    order = fine_order(row["inliers"], reranked, verified, fallback)
    if len(placed) > 1:  # (candidate or None, voters): the fallback's candidates of the query's class first
        voters = None if rule.sure is not None and p >= rule.sure else placed[1]
        n_reranked = int(np.count_nonzero(reranked))
        if variant and rule.class_gate and voters is not None:  # the vote in the variant's order
            by_variant = order if rule.class_fallback else fine_order(row["inliers"], reranked, verified,
                                                                      row["variant_distances"][variant])
            voters = None if fallback_agrees(by_variant[n_reranked:], of_class, voters) else 0
        order = class_first(order, n_reranked, of_class, voters)[0]
    if placed and placed[0] is not None:  # (candidate, place): moved there in the final order
        candidate, place = placed[0]
        rest = order[order != candidate]
        order = np.concatenate([rest[:place], [candidate], rest[place:]])
    return row["positions"][order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index-dir", type=Path, help="the index searched (default: the active one)")
    parser.add_argument("--benchmark", type=Path, help="an instance benchmark (prepare_instance_benchmark)")
    parser.add_argument("--corel", action="store_true", help="the classifier's validation queries, P@10")
    parser.add_argument("--queries", type=Path, help="a list file of labelled collection images, P@10")
    parser.add_argument("--limit", type=int, default=0, help="a seeded sample of --queries, as evaluate's")
    parser.add_argument("--same", action="append", default=[], help="LABEL=OTHER: count as one class")
    parser.add_argument("--cache", type=Path, help="rankings saved here, and read from here when it exists")
    args = parser.parse_args()
    config = EngineConfig.from_env()
    if args.cache and args.cache.exists():
        data = pickle.loads(args.cache.read_bytes())
    else:
        data = collect(open_engine(config, args.index_dir), args)
        if args.cache:
            args.cache.write_bytes(pickle.dumps(data))
    rows, labels, predicted = data["rows"], data["labels"], data["predicted"]
    joined = dict(pair.split("=", 1) for pair in args.same)
    join = np.vectorize(lambda label: joined.get(label, label), otypes=[object])
    for name, rule in rules(config).items():
        if getattr(rule, "class_variant", None) and "variant_distances" not in rows[0]:
            continue  # a cache written before stop 48 holds no distances in the other variants
        if rows[0]["kind"] == "class":
            p10 = [precision_at_k(labels[ordered(r, rule, predicted)] == r["truth"], 10) for r in rows]
            line = f"P@10 {np.mean(p10):.4f}"
            if joined:
                p10 = [precision_at_k(join(labels[ordered(r, rule, predicted)[:10]]) == join(r["truth"]), 10)
                       for r in rows]
                line += f"   with {', '.join(args.same)}: {np.mean(p10):.4f}"
        else:
            rows_i = [r for r in rows if len(r["truth"])]
            final = np.array([rank_of(ordered(r, rule, predicted), r["truth"]) for r in rows_i])
            families = sorted({r["kind"] for r in rows_i})
            line = " ".join(f"R@{k} {np.mean(final < k):.3f}" for k in (1, 5, 10)) + "  " + " ".join(
                f"{f}:{np.mean([k < 1 for k, r in zip(final, rows_i) if r['kind'] == f]):.2f}" for f in families)
        print(f"{name:<32} {line}")
    print(f"{len(rows)} queries")


if __name__ == "__main__":
    main()
