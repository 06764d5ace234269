"""Every tunable of the engine, in one dataclass.

Defaults live here and only here; Django settings (and the tests) build an
``EngineConfig`` from environment variables named ``RETRIEVAL_<FIELD>``, so a
deployment changes behaviour without touching code.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

REPO_ROOT = Path(__file__).resolve().parents[2]


def _default_data_dir() -> Path:
    return REPO_ROOT / "var"


@dataclass(frozen=True)
class EngineConfig:
    # Where trained models, indexes and reports go.
    data_dir: Path = field(default_factory=_default_data_dir)
    # The demo collection (read-only, never copied into the repository).
    collection_dir: Path = field(
        default_factory=lambda: REPO_ROOT.parent / "shared" / "datasets" / "corel1k" / "images")

    # Classifier.
    backbone: str = "efficientnet_lite0"
    resnet18_weights: str = ""  # path to a torchvision resnet18 state dict; empty: torch cache
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    image_size: int = 224
    batch_size: int = 32
    epochs: int = 6
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 0
    num_threads: int = 0  # torch CPU threads; 0 leaves torch's default

    # Global features and the coarse search.
    pca_dim: int = 32
    n_candidates: int = 4000
    top_k: int = 10
    leaf_size: int = 40

    @property
    def model_dir(self) -> Path:
        return Path(self.data_dir) / "models"

    @property
    def index_root(self) -> Path:
        return Path(self.data_dir) / "index"

    @property
    def reports_dir(self) -> Path:
        return Path(self.data_dir) / "reports"

    @property
    def default_model_path(self) -> Path:
        return self.model_dir / "classifier.pt"

    def replace(self, **changes) -> "EngineConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, prefix: str = "RETRIEVAL_") -> "EngineConfig":
        """Build a config from ``RETRIEVAL_<FIELD>`` variables, cast to each field's type."""
        changes = {}
        defaults = cls()
        for f in dataclasses.fields(cls):
            raw = environ.get(prefix + f.name.upper())
            if raw is None or raw == "":
                continue
            kind = type(getattr(defaults, f.name))
            try:
                changes[f.name] = Path(raw).expanduser() if issubclass(kind, Path) else kind(raw)
            except ValueError as exc:
                raise ValueError(f"{prefix}{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from exc
        return cls(**changes)
