"""The search itself: image -> global features -> coarse candidates -> ranked results.

``RetrievalEngine`` holds one loaded model and one index; build it once per
process (a worker, a command) and call ``search`` per query.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import EngineConfig
from .features import embed_batch, variant_vectors
from .images import open_image
from .index import SearchIndex, load_index
from .model import TrainedModel, load_classifier, pick_device


@dataclass
class SearchResult:
    rank: int
    image_id: str
    relpath: str
    path: str
    distance: float
    label: str | None
    stage: str = "coarse"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResponse:
    results: list[SearchResult]
    variant: str
    timings_ms: dict = field(default_factory=dict)


class RetrievalEngine:
    def __init__(self, model: TrainedModel, index: SearchIndex, device, config: EngineConfig):
        self.model, self.index, self.device, self.config = model, index, device, config

    @classmethod
    def open(cls, config: EngineConfig, model_path: Path | None = None,
             index_path: Path | None = None) -> "RetrievalEngine":
        device = pick_device(config.device)
        model = load_classifier(model_path or config.default_model_path, device)
        index = load_index(index_path or config.index_root, expected_checksum=model.checksum)
        return cls(model, index, device, config)

    def query_vectors(self, image) -> dict[str, np.ndarray]:
        """All global feature variants of one image (a path, a file object or a PIL image)."""
        if not hasattr(image, "convert"):
            image = open_image(image)
        penultimate, logits = embed_batch(self.model, [image], self.device)
        return variant_vectors(penultimate, logits, self.index.pca)

    def rank(self, vectors: dict[str, np.ndarray], variant: str, n: int,
             exclude_ids: frozenset[str] = frozenset()) -> tuple[np.ndarray, np.ndarray]:
        """Positions and distances of the ``n`` nearest images, skipping ``exclude_ids``."""
        positions, distances = self.index.coarse_candidates(vectors[variant], variant, n + len(exclude_ids))
        if exclude_ids:
            keep = np.array([self.index.image_ids[p] not in exclude_ids for p in positions], dtype=bool)
            positions, distances = positions[keep], distances[keep]
        return positions[:n], distances[:n]

    def search(self, image, variant: str = "penultimate", n_candidates: int | None = None,
               k: int | None = None, exclude_ids=()) -> SearchResponse:
        k = k or self.config.top_k
        n_candidates = max(k, n_candidates or self.config.n_candidates)
        started = time.perf_counter()
        vectors = self.query_vectors(image)
        embedded = time.perf_counter()
        positions, distances = self.rank(vectors, variant, n_candidates, frozenset(exclude_ids))
        searched = time.perf_counter()
        results = [self._result(rank, p, d) for rank, (p, d) in enumerate(zip(positions[:k], distances[:k]), 1)]
        return SearchResponse(results, variant, {
            "features": 1000 * (embedded - started), "coarse": 1000 * (searched - embedded)})

    def _result(self, rank: int, position: int, distance: float) -> SearchResult:
        index = self.index
        return SearchResult(rank, index.image_ids[position], index.relpaths[position],
                            str(index.path_of(position)), float(distance), index.labels[position])
