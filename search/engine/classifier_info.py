"""What a saved classifier is, from the JSON beside it, for processes that load no model.

Training writes the JSON (``model.save_classifier``); the site's pages and the training logs
describe the classifier from it in the same words (``describe_classifier``).
"""
from __future__ import annotations

from pathlib import Path

from .layout import read_json_when_changed


# why a classifier was kept from ImageNet when its JSON does not say (saved before reasons were)
NO_CLASS_LABELS = "no class labels to fine-tune on"


def read_classifier_info(model_path: Path) -> dict:
    """The JSON beside ``model_path``; empty when there is none or it cannot be read. Re-read only
    when the file changes: every page view asks, and a collection's ids make it large."""
    try:
        info = read_json_when_changed(Path(model_path).with_suffix(".json"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def describe_classifier(info: dict) -> str:
    """One line on what the classifier is: staff decide from it whether to retrain."""
    if not info:
        return "none yet (train one)"
    if info.get("starter"):
        return "the ImageNet starter, not fine-tuned yet (a retrain fine-tunes it)"
    sample = _sample_note(info)
    if info.get("label_free"):
        reason = info.get("label_free_reason", NO_CLASS_LABELS)
        return (f"the ImageNet classifier as it is ({len(info.get('classes', []))} classes): the collection had "
                f"{reason}, so the attention head learned its predictions{sample}")
    accuracy = info.get("val_accuracy")
    if isinstance(accuracy, (int, float)):
        validation = f", validation accuracy {accuracy:.4f}"
    elif info.get("n_val") == 0:
        validation = ", not validated (no class had a picture to spare for it)"
    else:
        validation = ""
    return f"fine-tuned on {len(info.get('classes', []))} classes{sample}{validation}"


def _sample_note(info: dict) -> str:
    used, available = info.get("n_sampled"), info.get("n_available")
    if not isinstance(used, int) or not isinstance(available, int) or used >= available:
        return ""
    return f" (trained on a sample of {used:,} of its {available:,} images)"
