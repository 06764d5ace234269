#!/usr/bin/env python3
"""What the quarter turns' gate (``RetrievalEngine.nearer_turns``) costs and decides, compared by
the hybrid variant (both networks over the three turns) and by ``TURN_GATE_VARIANT``'s default,
the instance one (the ImageNet network alone): on the classifier's validation images, each sent
upright and turned a quarter (PIL's ROTATE_90, which the 270 turn stands up), itself hidden from
the search. Prints the gate's median time, how often both pick the same turns, how many turns each
lets through and how often the turn that stands a sideways picture up is among them. Asserts
nothing; run it with nothing else on the machine.

    RETRIEVAL_DATA_DIR=/work/data python scripts/benchmark_turn_gate.py --queries 100
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.engine.allocator import keep_freed_memory  # noqa: E402
from search.engine.config import EngineConfig  # noqa: E402
from search.engine.images import open_image  # noqa: E402
from search.engine.workflows import open_engine  # noqa: E402

GATES = ("hybrid", "instance")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=100, help="the first N validation images")
    args = parser.parse_args()
    config = EngineConfig.from_env()
    keep_freed_memory(config.malloc_threshold_mb)
    engine = open_engine(config)
    index = engine.index
    found = {False: [], True: []}  # sideways -> one dict per query
    for image_id in list(engine.model.info["val_ids"])[:args.queries]:
        upright = open_image(index.path_of(index.positions[image_id])).convert("RGB")
        for sideways, image in ((False, upright), (True, upright.transpose(Image.Transpose.ROTATE_90))):
            query = engine.query_features(image, local=False)
            row = {}
            for gate in GATES:
                engine.config = config.replace(turn_gate_variant=gate)
                started = time.perf_counter()
                row[gate] = engine.nearer_turns(image, query, "hybrid", frozenset([image_id]))
                row[gate + " ms"] = (time.perf_counter() - started) * 1000
            found[sideways].append(row)
    for sideways, rows in found.items():
        print(f"{'sideways' if sideways else 'upright'} ({len(rows)} queries), by {' / by '.join(GATES)}:")
        print("  gate ms (median): " + " / ".join(f"{np.median([r[g + ' ms'] for r in rows]):.0f}" for g in GATES))
        print("  turns let through per query: " + " / ".join(f"{np.mean([len(r[g]) for r in rows]):.2f}" for g in GATES))
        print("  the standing-up turn (270) among them: "
              + " / ".join(f"{np.mean([270 in r[g] for r in rows]):.2f}" for g in GATES))
        print(f"  the same turns by both: {np.mean([r[GATES[0]] == r[GATES[1]] for r in rows]):.2f}")


if __name__ == "__main__":
    main()
