from django.core.management.base import BaseCommand

from ...conf import engine_config
from ...reports import job_precisions, method_rows


class Command(BaseCommand):
    help = "Human-rated precision@10 per method and per query image (beside evaluate's label-based figures)."

    def handle(self, *args, **options):
        rows = job_precisions()
        if not rows:
            self.stdout.write("no ratings yet")
            return
        methods, _ = method_rows(rows, engine_config().reports_dir)
        self.stdout.write(f"{'method':<24} {'queries':>7} {'rated':>5} {'P@10 (rated)':>12} {'P@10 (labels)':>13}")
        for m in methods:
            label = m["label_precision"]
            self.stdout.write(f"{m['method']:<24} {m['queries']:>7} {m['rated']:>5} {m['precision_at_10']:>12.3f} "
                              f"{'-' if label is None else f'{label:.3f}':>13}")
        self.stdout.write("")
        self.stdout.write(f"{'job':>5} {'method':<24} {'query':<30} {'rated':>5} {'P@10':>6}")
        for r in rows:
            self.stdout.write(f"{r['job']:>5} {r['method']:<24} {r['query'][:30]:<30} {r['rated']:>5} "
                              f"{r['precision_at_10']:>6.3f}")
