"""The paper's six methods by name: a global feature variant, alone or followed by
the attention fine stage. A leaf module (no torch, no NumPy), so the web process can
list and validate methods without loading the models."""
from __future__ import annotations

from .errors import EngineError

VARIANTS = ("logits", "pca", "penultimate")
FINE_SUFFIX = "+attention"
# The paper's Table 1: each global variant alone, and followed by the fine stage.
METHODS = VARIANTS + tuple(v + FINE_SUFFIX for v in VARIANTS)
DEFAULT_METHOD = "penultimate" + FINE_SUFFIX


def parse_method(method: str) -> tuple[str, bool]:
    """``"pca+attention"`` -> (``"pca"``, True)."""
    if method not in METHODS:
        raise EngineError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return method.removesuffix(FINE_SUFFIX), method.endswith(FINE_SUFFIX)


def is_fine(method: str) -> bool:
    return parse_method(method)[1]


def method_label(method: str, pca_dim: int) -> str:
    """What a person reads for a method, with the configured PCA size."""
    variant, fine = parse_method(method)
    name = {"logits": "logits", "pca": f"PCA-{pca_dim}", "penultimate": "penultimate"}[variant]
    if not fine:
        return f"{name} (coarse only)"
    return f"{name} + attention verification" + (" (best)" if method == DEFAULT_METHOD else "")
