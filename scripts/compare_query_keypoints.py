"""Would more local features on the query side alone do what more on both sides does? A benchmark
script (not a test).

An index's local features are fixed when it is built (``LOCAL_MAX_KEYPOINTS``, ``LOCAL_SCALES``);
more of them cost index time, disk and memory per image. The query's are made at search time, so
they can differ at no cost to the collection. This opens an index as it is and scores the default
method with each ``--query-settings`` for the query's local features only (keypoints:scales; the
index's own among them checks ``evaluate``'s figure), on an instance benchmark (``--benchmark``)
or class-level queries (``--queries``, ``--limit`` as ``evaluate``'s). Results: RESULTS.md, "More
local features for the query alone".

    python scripts/compare_query_keypoints.py --benchmark /work/data/instance-benchmark \
        --query-settings 300:0.5,0.7071,1.0 600:0.5,0.7071,1.0 600:0.5,0.7071,1.0,1.4142

Reads <data dir> from RETRIEVAL_DATA_DIR like the commands.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.engine.collection import read_list_file, seeded_sample, stable_id  # noqa: E402
from search.engine.config import EngineConfig  # noqa: E402
from search.engine.evaluation import evaluate_methods, format_table  # noqa: E402
from search.engine.instance_benchmark import load_instance_benchmark  # noqa: E402
from search.engine.instance_evaluation import evaluate_instances, format_instance_table  # noqa: E402
from search.engine.methods import DEFAULT_METHOD  # noqa: E402
from search.engine.workflows import open_engine  # noqa: E402


def query_settings(spec: str, base):
    """``keypoints:scales`` (e.g. ``600:0.5,1.0``) as ``base`` (a LocalSettings) with those two changed."""
    keypoints, _, scales = spec.partition(":")
    return replace(base, max_keypoints=int(keypoints),
                   scales=tuple(float(s) for s in scales.split(",")) if scales else base.scales)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index-dir", type=Path)
    parser.add_argument("--benchmark", type=Path, help="an instance benchmark (prepare_instance_benchmark)")
    parser.add_argument("--queries", type=Path, help="class-level queries: a list file of collection images")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--method", default=DEFAULT_METHOD)
    parser.add_argument("--n-candidates", type=int, default=4000)
    parser.add_argument("--query-settings", nargs="+", required=True, metavar="KEYPOINTS:SCALES")
    args = parser.parse_args()
    if (args.benchmark is None) == (args.queries is None):
        parser.error("give one of --benchmark and --queries")

    config = EngineConfig.from_env()
    engine = open_engine(config, args.index_dir)  # its extractor follows the build's own settings
    indexed = engine.extractor
    benchmark = load_instance_benchmark(args.benchmark) if args.benchmark else None
    query_ids = None if benchmark else seeded_sample([stable_id(p) for p in read_list_file(args.queries)], args.limit)
    for spec in args.query_settings:
        engine.extractor = replace(indexed, settings=query_settings(spec, indexed.settings))
        label = f"query {spec}"
        if benchmark:
            scores = evaluate_instances(engine, benchmark, [args.method], args.n_candidates)
            for score in scores:
                score.method = label
            print(format_instance_table(scores), flush=True)
        else:
            print(format_table(evaluate_methods(engine, query_ids, [args.method], label,
                                               n_candidates=args.n_candidates)), flush=True)


if __name__ == "__main__":
    main()
