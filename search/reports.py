"""Human-rated precision@10: the paper's Table 1 with people's judgements instead of labels.

A result counts as relevant when most of its ratings say so; a job's precision@10
is the share of relevant results among its rated results in the top 10 (unrated
results are left out and the coverage is reported beside it)."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from .models import Rating, SearchJob

TOP = 10


def job_precisions() -> list[dict]:
    votes = defaultdict(lambda: [0, 0])  # (job, image_id) -> [relevant, not relevant]
    for job_id, image_id, value in Rating.objects.values_list("job_id", "image_id", "value"):
        votes[(job_id, image_id)][0 if value == Rating.RELEVANT else 1] += 1
    job_ids = sorted({job_id for job_id, _ in votes})
    rows = []
    for job in SearchJob.objects.filter(pk__in=job_ids).order_by("pk"):
        top = [r["image_id"] for r in job.results if r["rank"] <= TOP]
        rated = [(votes[(job.pk, i)][0] > votes[(job.pk, i)][1]) for i in top if (job.pk, i) in votes]
        if not rated:
            continue
        rows.append({"job": job.pk, "key": job.key, "method": job.method, "query": Path(job.query_image.name).name,
                     "rated": len(rated), "relevant": sum(rated),
                     "precision_at_10": sum(rated) / len(rated)})
    return rows


def method_precisions(rows: list[dict]) -> list[dict]:
    by_method = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    return [{"method": method, "queries": len(group),
             "precision_at_10": sum(r["precision_at_10"] for r in group) / len(group),
             "rated": sum(r["rated"] for r in group)}
            for method, group in sorted(by_method.items())]


def label_precisions(reports_dir: Path) -> dict[str, float]:
    """precision@10 per method, named as the site names it, from the latest label-based
    ``evaluate`` report (instance-benchmark reports have no precision@10 and are passed over).
    evaluate names the site's model "fine-tuned"; the ImageNet baseline is not a site method."""
    for report in sorted(Path(reports_dir).glob("evaluate-*.json"), reverse=True):
        try:
            methods = json.loads(report.read_text()).get("methods", [])
        except (OSError, ValueError, AttributeError):
            continue
        figures = {m["method"].removeprefix("fine-tuned "): m["precision_at_10"] for m in methods
                   if "precision_at_10" in m and m.get("stage") != "baseline" and m.get("model", "fine-tuned") == "fine-tuned"}
        if figures:
            return figures
    return {}


def method_rows(rows: list[dict], reports_dir: Path) -> tuple[list[dict], list[dict]]:
    """Human-rated precision per method with the label-based figure beside it, and the methods
    that only have a label-based figure: what the report page and ``rating_report`` show."""
    labels = label_precisions(reports_dir)
    methods = method_precisions(rows)
    for m in methods:
        m["label_precision"] = labels.get(m["method"])
    rated = {m["method"] for m in methods}
    label_only = [{"method": m, "label_precision": p} for m, p in labels.items() if m not in rated]
    return methods, label_only
