"""The search itself: image -> global features -> coarse candidates from the
ball tree -> (fine stage) local features verified by RANSAC -> top k.

``RetrievalEngine`` holds one loaded model, attention head and index; build
it once per process (a worker, a command) and call ``search`` per query.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .attention import TrainedAttention, load_attention
from .config import EngineConfig
from .errors import EngineError, SearchIndexError
from .features import VARIANTS, embed_batch, l2_normalise, variant_vectors
from .images import open_image
from .index import SearchIndex, load_index
from .local_features import AttentionExtractor, LocalFeatures
from .model import TrainedModel, load_classifier, pick_device
from .verification import verify_candidates

FINE_SUFFIX = "+attention"
# The paper's Table 1: each global variant alone, and followed by the fine stage.
METHODS = tuple(VARIANTS) + tuple(v + FINE_SUFFIX for v in VARIANTS)
DEFAULT_METHOD = "penultimate" + FINE_SUFFIX


def parse_method(method: str) -> tuple[str, bool]:
    """``"pca+attention"`` -> (``"pca"``, True)."""
    if method not in METHODS:
        raise EngineError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return method.removesuffix(FINE_SUFFIX), method.endswith(FINE_SUFFIX)


@dataclass
class SearchResult:
    rank: int
    image_id: str
    relpath: str
    path: str
    distance: float
    label: str | None
    stage: str = "coarse"  # "verified" (scored by inliers) or "coarse" (fallback / coarse-only)
    inliers: int = 0
    # inlier correspondences, (query x, y) -> (result x, y), in original pixels
    query_points: list = field(default_factory=list)
    result_points: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResponse:
    results: list[SearchResult]
    method: str
    n_candidates: int = 0
    n_verified: int = 0
    timings_ms: dict = field(default_factory=dict)


class RetrievalEngine:
    def __init__(self, model: TrainedModel, index: SearchIndex, device, config: EngineConfig,
                 attention: TrainedAttention | None = None):
        self.model, self.index, self.device, self.config = model, index, device, config
        self.attention = attention
        self.extractor = (AttentionExtractor(model, attention, config.local_settings(), device)
                          if attention is not None else None)
        self.verify_settings = config.verify_settings()

    @classmethod
    def open(cls, config: EngineConfig, model_path: Path | None = None, index_path: Path | None = None,
             attention_path: Path | None = None) -> "RetrievalEngine":
        device = pick_device(config.device)
        model = load_classifier(model_path or config.default_model_path, device)
        index = load_index(index_path or config.index_root, expected_checksum=model.checksum)
        attention = None
        if index.local is not None:
            attention = load_attention(attention_path or config.default_attention_path, model, device)
        engine = cls(model, index, device, config, attention)
        if engine.extractor is not None and index.local.meta["extractor"] != engine.extractor.checksum:
            raise SearchIndexError(
                f"{index.path}: local features were extracted with other settings or another attention "
                "head than the loaded ones; reindex")
        return engine

    @property
    def methods(self) -> list[str]:
        fine = self.index.local is not None and self.extractor is not None
        return [m for m in METHODS if parse_method(m)[0] in self.index.variants and (fine or "+" not in m)]

    def query_vectors(self, image) -> dict[str, np.ndarray]:
        """All global feature variants of one PIL image."""
        penultimate, logits = embed_batch(self.model, [image], self.device)
        return variant_vectors(penultimate, logits, self.index.pca)

    def query_local(self, image) -> LocalFeatures:
        return self.index.local.reduce(self.extractor.extract(image))

    def rank(self, vectors: dict[str, np.ndarray], variant: str, n: int,
             exclude_ids: frozenset[str] = frozenset()) -> tuple[np.ndarray, np.ndarray]:
        """Positions and distances of the ``n`` nearest images, skipping ``exclude_ids``.

        With ``query_expansion`` = e > 0 (average query expansion, Chum et al. 2007) the
        query vector is first averaged with its e nearest images and searched again:
        distances are then to that expanded query."""
        vector = np.atleast_2d(vectors[variant])
        expand = self.config.query_expansion
        if expand > 0:
            first, _ = self._nearest(vector, variant, expand, exclude_ids)
            vector = l2_normalise(vector + np.asarray(self.index.vectors[variant][np.sort(first)]).sum(0))
        return self._nearest(vector, variant, n, exclude_ids)

    def _nearest(self, vector: np.ndarray, variant: str, n: int,
                 exclude_ids: frozenset[str]) -> tuple[np.ndarray, np.ndarray]:
        positions, distances = self.index.coarse_candidates(vector, variant, n + len(exclude_ids))
        if exclude_ids:
            keep = np.array([self.index.image_ids[p] not in exclude_ids for p in positions], dtype=bool)
            positions, distances = positions[keep], distances[keep]
        return positions[:n], distances[:n]

    def verify(self, query: LocalFeatures, positions: np.ndarray):
        store = self.index.local
        candidates = [store.features(int(p)) for p in positions]
        return verify_candidates(query.keypoints, query.descriptors,
                                 [(c.keypoints, c.descriptors) for c in candidates], self.verify_settings)

    @property
    def default_method(self) -> str:
        """Penultimate features + attention, or penultimate alone on an index without local features."""
        return DEFAULT_METHOD if DEFAULT_METHOD in self.methods else "penultimate"

    def search(self, image, method: str | None = None, n_candidates: int | None = None,
               k: int | None = None, exclude_ids=(), progress=None) -> SearchResponse:
        """Coarse candidates, then (for ``+attention`` methods) verification and the coarse fallback."""
        if not hasattr(image, "convert"):
            image = open_image(image)
        method = method or self.default_method
        variant, fine = parse_method(method)
        if fine and self.index.local is None:
            raise SearchIndexError(f"index {self.index.path} has no local features; method {method} needs them")
        k = k or self.config.top_k
        n_candidates = max(k, n_candidates or self.config.n_candidates) if fine else k
        timings = {}
        started = time.perf_counter()
        vectors = self.query_vectors(image)
        timings["global_features"] = _ms(started)
        started = time.perf_counter()
        positions, distances = self.rank(vectors, variant, n_candidates, frozenset(exclude_ids))
        timings["coarse"] = _ms(started)
        if progress:
            progress("coarse", len(positions), len(positions))
        if not fine:
            results = [self._result(rank, p, d) for rank, (p, d) in enumerate(zip(positions, distances), 1)]
            return SearchResponse(results, method, len(positions), 0, timings)

        started = time.perf_counter()
        query = self.query_local(image)
        timings["local_features"] = _ms(started)
        started = time.perf_counter()
        verifications = self.verify(query, positions)
        timings["verification"] = _ms(started)
        inliers = np.array([v.inliers for v in verifications])
        verified = inliers >= self.config.min_inliers
        order = fine_order(inliers, self.config.min_inliers)[:k]
        results = []
        for rank, i in enumerate(order, 1):
            result = self._result(rank, positions[i], distances[i])
            v = verifications[i]
            result.inliers = int(v.inliers)
            if verified[i]:
                result.stage = "verified"
                result.query_points = v.query_points.round(1).tolist()
                result.result_points = v.candidate_points.round(1).tolist()
            results.append(result)
        return SearchResponse(results, method, len(positions), int(verified.sum()), timings)

    def _result(self, rank: int, position: int, distance: float) -> SearchResult:
        index = self.index
        return SearchResult(rank, index.image_ids[position], index.relpaths[position],
                            str(index.path_of(position)), float(distance), index.labels[position])


def fine_order(inliers: np.ndarray, min_inliers: int) -> np.ndarray:
    """Candidates (given in coarse order) re-ranked: verified ones first by inlier count,
    ties kept in coarse order, then the unverified ones as the coarse fallback."""
    inliers = np.asarray(inliers)
    verified = inliers >= min_inliers
    return np.lexsort((np.arange(len(inliers)), -np.where(verified, inliers, 0), ~verified))


def _ms(started: float) -> float:
    return 1000 * (time.perf_counter() - started)
