from pathlib import Path

from ...engine.features import VARIANTS
from ...engine.pipeline import RetrievalEngine
from ..base import EngineCommand


class Command(EngineCommand):
    help = "Search the active index with an image; prints the top k with paths and distances."

    def add_arguments(self, parser):
        parser.add_argument("image", type=Path)
        parser.add_argument("--variant", choices=VARIANTS, default="penultimate")
        parser.add_argument("-k", "--k", type=int, help="number of results (default: the RETRIEVAL_TOP_K setting)")
        parser.add_argument("--n-candidates", type=int)
        self.add_model_arguments(parser)

    def handle(self, *args, image, variant, k, n_candidates, **options):
        config = self.config(options)
        engine = RetrievalEngine.open(config, options["model"], options["index_dir"])
        response = engine.search(image, variant, n_candidates, k)
        self.stdout.write(f"{'rank':>4}  {'distance':>8}  {'label':<12} path")
        for r in response.results:
            self.stdout.write(f"{r.rank:>4}  {r.distance:>8.4f}  {str(r.label or '-'):<12} {r.path}")
        t = response.timings_ms
        self.stdout.write(f"features {t['features']:.1f} ms, coarse search {t['coarse']:.1f} ms")
