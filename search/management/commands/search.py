from pathlib import Path

from ...engine.methods import DEFAULT_METHOD, METHODS, is_fine
from ...engine.workflows import open_engine, open_sharded_engine
from ..base import EngineCommand


class Command(EngineCommand):
    help = ("Search the active index with an image; prints the top k with paths, coarse distances, "
            "inliers and stage (verified or coarse fallback).")

    def add_arguments(self, parser):
        parser.add_argument("image", type=Path)
        parser.add_argument("--method", choices=METHODS,
                            help=f"default: {DEFAULT_METHOD} (or the best the index offers)")
        parser.add_argument("-k", "--k", type=int, help="number of results (default: the RETRIEVAL_TOP_K setting)")
        parser.add_argument("--n-candidates", type=int, help="coarse candidates to verify (fine methods)")
        parser.add_argument("--sharded", action="store_true",
                            help="search the shards (split_index) in this process, as the sharded workers do")
        self.add_model_arguments(parser)

    def handle(self, *args, image, method, k, n_candidates, sharded, **options):
        config = self.config(options)
        if sharded:
            engine = open_sharded_engine(config)
        else:
            engine = open_engine(config, options["index_dir"], options["model"])
        response = engine.search(image, method, n_candidates, k)
        self.stdout.write(f"{'rank':>4}  {'distance':>8}  {'inliers':>7}  {'sure':>5}  {'stage':<8}  {'label':<12} path")
        for r in response.results:
            self.stdout.write(f"{r.rank:>4}  {r.distance:>8.4f}  {r.inliers:>7}  {r.confidence:>5.2f}  {r.stage:<8}  "
                              f"{str(r.label or '-'):<12} {r.path}")
        if is_fine(response.method) and response.n_verified == 0:
            self.stdout.write("no confident match: nothing was verified to show the same thing; "
                              "the results are the nearest by overall look")
        self.stdout.write(f"verified {response.n_verified} of {response.n_candidates} candidates; "
                          + ", ".join(f"{k} {v:.1f} ms" for k, v in response.timings_ms.items()))
