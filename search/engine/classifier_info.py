"""What a saved classifier is, from the JSON beside it, for processes that load no model.

Training writes the JSON (``model.save_classifier``); the site's pages and the training logs
describe the classifier from it in the same words (``describe_classifier``).
"""
from __future__ import annotations

import json
from pathlib import Path

_cache: dict[Path, tuple[tuple, dict]] = {}


def read_classifier_info(model_path: Path) -> dict:
    """The JSON beside ``model_path``; empty when there is none or it cannot be read. Re-read only
    when the file changes: every page view asks, and a collection's ids make it large."""
    file = Path(model_path).with_suffix(".json")
    try:
        stat = file.stat()
    except OSError:
        return {}
    key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    cached = _cache.get(file)
    if cached is None or cached[0] != key:
        try:
            info = json.loads(file.read_text())
        except (OSError, ValueError):
            return {}
        cached = _cache[file] = (key, info if isinstance(info, dict) else {})
    return cached[1]


def describe_classifier(info: dict) -> str:
    """One line on what the classifier is: staff decide from it whether to retrain."""
    if not info:
        return "none yet (train one)"
    if info.get("starter"):
        return "the ImageNet starter, not fine-tuned yet (a retrain fine-tunes it)"
    sample = _sample_note(info)
    if info.get("label_free"):
        return (f"the ImageNet classifier as it is ({len(info.get('classes', []))} classes): the collection had "
                f"no class labels to fine-tune on, so the attention head learned its predictions{sample}")
    accuracy = info.get("val_accuracy")
    return (f"fine-tuned on {len(info.get('classes', []))} classes{sample}"
            + (f", validation accuracy {accuracy:.4f}" if isinstance(accuracy, (int, float)) else ""))


def _sample_note(info: dict) -> str:
    used, available = info.get("n_sampled"), info.get("n_available")
    if not isinstance(used, int) or not isinstance(available, int) or used >= available:
        return ""
    return f" (trained on a sample of {used:,} of its {available:,} images)"
