"""The ratings report's label-based column: evaluate's figures under the site's method names."""
import json


def test_label_precisions_take_the_latest_label_based_report_under_site_names(tmp_path):
    from search.reports import label_precisions

    assert label_precisions(tmp_path) == {}
    (tmp_path / "evaluate-20260101T000000.json").write_text(json.dumps({"methods": [
        {"method": "fine-tuned hybrid+attention", "model": "fine-tuned", "stage": "fine", "precision_at_10": 0.97},
        {"method": "fine-tuned logits", "model": "fine-tuned", "stage": "coarse", "precision_at_10": 0.98},
        {"method": "ImageNet penultimate", "model": "imagenet", "stage": "baseline", "precision_at_10": 0.96}]}))
    # a later instance-benchmark report (no precision@10) and a damaged file are passed over
    (tmp_path / "evaluate-20260102T000000.json").write_text(json.dumps({"context": {}, "methods": [
        {"method": "fine-tuned hybrid+attention", "family": "all", "recall_at_1": 0.94}]}))
    (tmp_path / "evaluate-20260103T000000.json").write_text("{not json")
    assert label_precisions(tmp_path) == {"hybrid+attention": 0.97, "logits": 0.98}
