"""The paper's six methods by name: a global feature variant, alone or followed by
the attention fine stage. A leaf module (no torch, no NumPy), so the web process can
list and validate methods without loading the models."""
from __future__ import annotations

from .errors import EngineError

# The paper's three global variants, and two for finding the same object (instance_features.py):
# the untouched ImageNet backbone's pooled vector, and a hybrid of it with the fine-tuned one.
VARIANTS = ("logits", "pca", "penultimate", "instance", "hybrid")
FINE_SUFFIX = "+attention"
# The paper's Table 1 (each global variant alone, and followed by the fine stage), and the same
# for the two instance-level variants.
METHODS = VARIANTS + tuple(v + FINE_SUFFIX for v in VARIANTS)
# The default finds the same object and the same class best of all on both kinds of benchmark
# (RESULTS.md); an index without what it needs falls back along FALLBACK_METHODS.
DEFAULT_METHOD = "hybrid" + FINE_SUFFIX
FALLBACK_METHODS = (DEFAULT_METHOD, "penultimate" + FINE_SUFFIX, "hybrid", "penultimate")


def parse_method(method: str) -> tuple[str, bool]:
    """``"pca+attention"`` -> (``"pca"``, True)."""
    if method not in METHODS:
        raise EngineError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return method.removesuffix(FINE_SUFFIX), method.endswith(FINE_SUFFIX)


def parse_vote_variant(name: str) -> str | None:
    """``class_vote_variant``: a variant's name, or None for off (empty, ``off`` or ``none``), so a
    misspelt name is an error rather than a vote silently left in the fallback's own order."""
    name = name.strip().lower()
    if name in ("", "off", "none"):
        return None
    if name not in VARIANTS:
        raise EngineError(f"class_vote_variant takes one of {', '.join(VARIANTS)} or off, not {name!r}")
    return name


def is_fine(method: str) -> bool:
    return parse_method(method)[1]


def method_label(method: str, pca_dim: int) -> str:
    """What a person reads for a method: what it finds in plain words, then the paper's name
    (kept in the API, ``evaluate`` and the reports)."""
    variant, fine = parse_method(method)
    finds = {"logits": "the same category (class scores only)",
             "pca": f"the same kind of picture, compact ({pca_dim} numbers per image)",
             "penultimate": "the same kind of picture (network trained on this collection)",
             "instance": "the same object (general-purpose network)",
             "hybrid": "the same object or the same kind of picture"}[variant]
    how = "checked point by point" if fine else "overall look only, not checked point by point"
    text = f"Finds {finds}; {how} [{method}]"
    return f"Recommended. {text}" if method == DEFAULT_METHOD else text
