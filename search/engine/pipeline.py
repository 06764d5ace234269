"""The search itself: image -> global features -> coarse candidates from the
ball tree -> (fine stage) local features verified by RANSAC -> ranking.

``RetrievalEngine`` holds one loaded model, attention head and index (open one
with ``workflows.open_engine``) and has one ranking method, ``rank``: the site's
worker, the ``search`` command, ``evaluate``, ``sweep_candidates`` and
``benchmark_fine`` all go through it.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image

from .attention import TrainedAttention
from .confidence import EVIDENCE, Calibration, load_calibration, match_evidence
from .config import EngineConfig
from .errors import SearchIndexError
from .features import crop_boxes, embed_batch, image_classes, l2_normalise, query_class, variant_vectors
from .images import open_image, open_query_image
from .index import SearchIndex
from .instance_features import InstanceDescriber
from .local_features import AttentionExtractor, LocalFeatures, following
from .methods import FALLBACK_METHODS, METHODS, parse_method, parse_vote_variant
from .model import TrainedModel
from .progress import Progress, elapsed_ms, no_progress
from .verification import Candidates, Verification, prescore_rows, verify_candidates


@dataclass
class QueryFeatures:
    """What a query image is reduced to: its global vectors and, for the fine stage, its
    local features (reduced like the index's) and the global vectors of its crops (one row each,
    ``query_crops``). Computed once, ranked by any method."""
    vectors: dict[str, np.ndarray]
    local: LocalFeatures | None = None
    crops: dict[str, np.ndarray] | None = None
    timings_ms: dict = field(default_factory=dict)


@dataclass
class Ranking:
    """One method's answer to one query, before it is cut to k.

    ``positions`` are the coarse order (nearest first, as deep as asked), ``distances`` each one's
    distance to the query, expanded (``query_expansion``): for a coarse method that is the
    order's own; a fine method finds its candidates with the query as it is and its crops
    (nearest to any of them first), so that neither expansion nor what surrounds the object
    can cost it an instance, and uses the distances to the expanded query to judge and to fall
    back on.
    For a fine method the first ``n_candidates`` were verified, ``verifications`` holding one
    result each in that order, with its ``confidence`` (the calibrated probability of showing
    the same object) and whether it counts as ``verified`` (confident and with
    ``min_inliers``). ``order`` ranks all of ``positions``: the verified candidates and the best
    ``rerank_unsure`` unsure ones (of the query's class: ``RetrievalEngine.same_class``) by
    inliers (``RetrievalEngine.judge``), then the rest by distance (the fallback)."""
    method: str
    positions: np.ndarray
    distances: np.ndarray
    order: np.ndarray
    n_candidates: int
    verifications: list[Verification]
    evidence: np.ndarray  # (n_candidates, len(confidence.EVIDENCE)): what the confidence was judged on
    confidence: np.ndarray
    verified: np.ndarray
    timings_ms: dict
    turned: int = 0  # degrees the query was turned to give this ranking (query_turns)
    # whether the classifier's class for the query and the fallback's first candidates agreed
    # (fallback_agrees); with turns_in_doubt the query is then taken to stand upright
    class_agreed: bool = False
    # a sharded ranking's images (shards.ShardedEngine): positions index this list, not one index
    catalog: list | None = None

    @property
    def inliers(self) -> np.ndarray:
        return np.array([v.inliers for v in self.verifications], dtype=np.int64)

    @property
    def n_verified(self) -> int:
        return int(self.verified.sum())

    @property
    def ranked_positions(self) -> np.ndarray:
        return self.positions[self.order]


@dataclass
class SearchResult:
    rank: int
    image_id: str
    relpath: str
    path: str
    distance: float
    label: str | None
    stage: str = "coarse"  # "verified" (a confident match, scored by inliers) or "coarse" (fallback / coarse-only)
    inliers: int = 0
    confidence: float = 0.0  # calibrated probability that it shows the same object (fine methods)
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
                 attention: TrainedAttention | None = None, calibration: Calibration | None = None,
                 describer: InstanceDescriber | None = None, extractor: AttentionExtractor | None = None):
        self.model, self.index, self.device, self.config = model, index, device, config
        self.attention = attention
        if describer is not None and describer.name != index.describer_name:
            raise SearchIndexError(
                f"{index.path}: its instance variant was made by {index.describer_name}, not by "
                f"{describer.name}; reindex")
        self.describer = describer
        self.calibration = calibration or load_calibration(config.calibration_file)
        if extractor is None and attention is not None:
            extractor = AttentionExtractor(model, attention, config.local_settings(), device, config.local_global_level)
        # the query's local features are made as the index's were
        self.extractor = following(extractor, index.local.meta if index.local is not None else None)
        self.verify_settings = config.verify_settings()

    @property
    def methods(self) -> list[str]:
        fine = self.index.local is not None and self.extractor is not None
        variants = [v for v in self.index.variants if v not in ("instance", "hybrid") or self.describer is not None]
        return [m for m in METHODS if parse_method(m)[0] in variants and (fine or "+" not in m)]

    @property
    def default_method(self) -> str:
        """The default method, or the best this index offers (FALLBACK_METHODS): an index without the
        instance vectors or the local features has fewer."""
        return next((m for m in FALLBACK_METHODS if m in self.methods), self.methods[0])

    def _parse(self, method: str) -> tuple[str, bool]:
        variant, fine = parse_method(method)
        if fine:
            self._require_local(f"method {method}")
        return variant, fine

    def _require_local(self, what: str) -> None:
        if self.index.local is None or self.extractor is None:
            raise SearchIndexError(f"index {self.index.path} has no local features; {what} needs them")

    def _depth(self, depth: int | None, n_candidates: int, fine: bool) -> int:
        """How deep a ranking's coarse order goes: ``depth`` (default: the candidates), and for a fine
        method at least the candidates and the confidence pool it fits."""
        return max(depth or n_candidates, max(n_candidates, self.config.confidence_pool) if fine else 1)

    def query_features(self, image, local: bool, progress: Progress = no_progress, crops: bool = True) -> QueryFeatures:
        """Global vectors of a PIL image (or path); when ``local``, its local features and (with
        ``crops`` and ``query_crops``) the global vectors of its crops, for a fine method's candidates."""
        if not hasattr(image, "convert"):
            image = open_image(image)
        progress("global features", 0, 1)
        started = time.perf_counter()
        shared = local and self.extractor is not None and self.extractor.shares_global_pass(self.model)
        embedded = embed_batch(self.model, [image], self.device, self.describer, local_map=shared)
        # the hybrid is joined with the weight its index was built with
        query = QueryFeatures(variant_vectors(embedded.penultimate, embedded.logits, self.index.pca,
                                              embedded.instance, self.index.manifest.get("hybrid_weight")))
        query.timings_ms["global_features"] = elapsed_ms(started)
        if local:
            self._require_local("the fine stage")
            progress("local features", 0, 1)
            started = time.perf_counter()
            features = self.extractor.extract(image, self.config.local_query_min_side, embedded.local_map)
            query.local = self.index.local.reduce(features)
            query.timings_ms["local_features"] = elapsed_ms(started)
        if local and crops and self.config.query_crops > 0:
            started = time.perf_counter()
            query.crops = self.crop_vectors(image)
            query.timings_ms["crops"] = elapsed_ms(started)
        return query

    def crop_vectors(self, image) -> dict[str, np.ndarray]:
        """The global vectors of the query's ``query_crops`` x ``query_crops`` crops, one batch."""
        image = image.convert("RGB")
        boxes = crop_boxes(*image.size, self.config.query_crops, self.config.query_crop_share)
        return self.global_vectors([image.crop(box) for box in boxes])

    def global_vectors(self, images: list) -> dict[str, np.ndarray]:
        """The global vectors of ``images`` (RGB), one batch, one row each."""
        embedded = embed_batch(self.model, images, self.device, self.describer)
        return variant_vectors(embedded.penultimate, embedded.logits, self.index.pca, embedded.instance,
                               self.index.manifest.get("hybrid_weight"))

    def nearest_distances(self, vectors: np.ndarray, variant: str, exclude_ids=frozenset()) -> np.ndarray:
        """Each row's distance to its nearest image searched (inf: none)."""
        return self.index.nearest_distance_each(vectors, variant, exclude_ids)

    def nearer_turns(self, image, query: QueryFeatures, variant: str, exclude_ids=frozenset()) -> tuple[int, ...]:
        """The ``query_turns`` of ``image`` whose nearest image is nearer than the nearest of the
        query as sent: a photo on its side, stood upright, looks like its source,
        while an upright photo turned looks less like anything in a collection of upright pictures.
        One batch of global vectors, far cheaper than a turn's local features and verification,
        compared by ``turn_gate_variant`` where the index has it (else by ``variant``)."""
        angles = self.config.turn_angles
        gate = self.config.turn_gate_variant if self.config.turn_gate_variant in query.vectors else variant
        rgb = image.convert("RGB")
        turned = self.global_vectors_of([rgb.transpose(TURNS[a]) for a in angles], gate)
        rows = np.vstack([np.atleast_2d(query.vectors[gate]), turned])
        distances = self.nearest_distances(rows, gate, exclude_ids)
        return tuple(a for a, d in zip(angles, distances[1:]) if d < distances[0])

    def global_vectors_of(self, images: list, variant: str) -> np.ndarray:
        """``global_vectors(images)[variant]`` (``images`` RGB, as there); the instance variant from the
        describer's pass alone, where it is a network of its own (the hybrid and the classifier's
        variants need the classifier's pass as well)."""
        describer = self.describer
        if variant == "instance" and describer is not None and not describer.shares_network_with(self.model):
            return describer.describe(images)
        return self.global_vectors(images)[variant]

    def coarse_order(self, vectors: dict[str, np.ndarray], variant: str, n: int,
                     exclude_ids: frozenset[str] = frozenset(), expand: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Positions and distances of the ``n`` nearest images, skipping ``exclude_ids`` and the
        images removed from search (``remove_images``).

        With ``expand`` and ``query_expansion`` = e > 0 (average query expansion, Chum et al. 2007)
        the query vector is first averaged with its e nearest images (weighted by similarity **
        ``query_expansion_alpha`` when that is > 0) and searched again: distances are then to
        that expanded query. A fine method finds its candidates unexpanded (``rank``)."""
        vector = np.atleast_2d(vectors[variant])
        if expand and self.config.query_expansion > 0:
            first, distances = self.index.nearest(vector, variant, self.config.query_expansion, exclude_ids)
            ascending = np.argsort(first)  # stored rows read in file order
            first, distances = first[ascending], distances[ascending]
            vector = expand_query(vector, distances, self.index.row_vectors(variant, first),
                                  self.config.query_expansion_alpha)
        return self.index.nearest(vector, variant, n, exclude_ids)

    def expanded_distances(self, vectors: dict[str, np.ndarray], variant: str, positions: np.ndarray,
                           nearest: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """The distances of the candidates at ``positions`` to the query expanded with the first
        ``query_expansion`` of its own ``nearest`` (positions and distances, nearest first; when
        the candidates are those, their distances are the query's own without expansion): the
        class-level similarity a fine method judges and falls back on, while which images are
        candidates stays the query's own and its crops' (expansion cannot lose an instance there)."""
        if positions is nearest[0] and (self.config.query_expansion <= 0 or not len(positions)):
            return nearest[1]
        vector = np.atleast_2d(vectors[variant])
        if self.config.query_expansion > 0 and len(nearest[0]):
            first = slice(0, self.config.query_expansion)
            vector = expand_query(vector, nearest[1][first], self.index.row_vectors(variant, nearest[0][first]),
                                  self.config.query_expansion_alpha)
        return stored_distances(self.index, variant, positions, vector)

    def candidate_features(self, positions: np.ndarray) -> Candidates:
        """The local features of each indexed image at ``positions``, from the store: when they are
        more than the pre-score lets through, only the rows it compares at once, the rest of a
        candidate's descriptors when it is let through, its keypoints when it is fitted."""
        return self.index.local.candidates(positions, prescore_rows(self.verify_settings, len(positions)),
                                           self.config.local_read_threads)

    def verify(self, query: LocalFeatures, positions: np.ndarray, progress: Progress = no_progress,
               timings_ms: dict | None = None, candidates=None) -> list[Verification]:
        candidates = candidates if candidates is not None else self.candidate_features(positions)
        return verify_candidates(query.keypoints, query.descriptors, candidates,
                                 self.verify_settings, progress, timings_ms, self.device)

    def judge(self, evidence: np.ndarray, inliers: np.ndarray,
              same_class: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each verification's confidence (from its ``evidence``); whether it is re-ranked by inliers
        (verified, or one of the ``rerank_unsure`` unsure ones: ``unsure_reranked``, of the query's
        class with ``rerank_same_class`` where ``same_class`` is known) and whether it counts as
        verified (``min_inliers`` and ``min_confidence``)."""
        confidence = self.calibration.probability(evidence)
        of_class = same_class[:len(inliers)] if same_class is not None and self.config.rerank_same_class else None
        return (confidence, *reranked_and_verified(inliers, confidence, self.config, of_class))

    def final_order(self, inliers: np.ndarray, reranked: np.ndarray, verified: np.ndarray, distances: np.ndarray,
                    same_class: np.ndarray | None = None,
                    vote_distances: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
        """``fine_order``, and whether most of the fallback's first ``fallback_class_voters`` are of
        the query's class (``fallback_agrees``, where ``same_class`` is known, over every candidate;
        the fallback in the order of ``vote_distances`` where given: ``class_vote_variant``).
        With ``fallback_same_class`` the fallback then puts the candidates of the query's class first."""
        order = fine_order(inliers, reranked, verified, distances)
        if same_class is None:
            return order, False
        voting = None if vote_distances is None else fine_order(inliers, reranked, verified, vote_distances)
        by_class, agreed = class_first(order, int(np.count_nonzero(reranked)), same_class,
                                       self.config.fallback_class_voters, voting)
        return (by_class if self.config.fallback_same_class else order), agreed

    def vote_variant(self, variant: str, needed: bool, variants) -> str | None:
        """The variant whose order takes the class vote (``class_vote_variant``) where a class rule
        is ``needed``, it is not the method's own ``variant`` and the index has it (``variants``)."""
        chosen = parse_vote_variant(self.config.class_vote_variant)
        if not needed or not chosen or chosen == variant or chosen not in variants:
            return None
        return chosen

    def vote_distances(self, vectors: dict[str, np.ndarray], variant: str, positions: np.ndarray,
                       exclude_ids=frozenset()) -> np.ndarray:
        """The candidates' distances to the query's ``variant`` vector expanded with its own nearest
        images in that variant, as that variant's method orders its fallback."""
        nearest = (np.zeros(0, dtype=np.int64), np.zeros(0))
        if self.config.query_expansion > 0:
            nearest = self.index.nearest(np.atleast_2d(vectors[variant]), variant, self.config.query_expansion,
                                         exclude_ids)
        return self.expanded_distances(vectors, variant, positions, nearest)

    @property
    def knows_the_kinds(self) -> bool:
        """Whether the classifier was fine-tuned on the collection's labels: a label-free one's classes
        are ImageNet's thousand, not the collection's kinds, and the class rules are off for it (not
        measured)."""
        return not self.model.info.get("label_free")

    @property
    def class_rules_on(self) -> bool:
        """Whether a class rule is on (``rerank_same_class``, ``fallback_same_class``,
        ``turns_in_doubt`` with turns) and the classifier knows the collection's kinds."""
        config = self.config
        return bool(config.rerank_same_class or config.fallback_same_class
                    or (config.turns_in_doubt and config.turn_angles)) and self.knows_the_kinds

    def same_class(self, query: QueryFeatures, positions: np.ndarray) -> np.ndarray | None:
        """Whether each candidate at ``positions`` is of the query's class (``candidate_classes``)."""
        return self.of_query_class(query, self.candidate_classes(self.index.predicted_classes(positions),
                                                                 self.index.labels_at(positions)))

    def candidate_classes(self, predicted: np.ndarray | None, labels: np.ndarray) -> np.ndarray | None:
        """The candidates' classes for the class rules, from the classifier's ``predicted`` ones and
        their ``labels`` ("" for none): with ``class_from_labels`` a label the classifier knows wins
        (``features.image_classes``). None where the classes are unknown (an index without logits)."""
        if predicted is None or not self.config.class_from_labels:
            return predicted
        return image_classes(predicted, labels, self.model.classes)

    def of_query_class(self, query: QueryFeatures, classes: np.ndarray | None) -> np.ndarray | None:
        """Whether each of the candidates' ``classes`` is the query's (``features.query_class``, with
        ``query_class_from_crops`` from the query's crops too where it has them); None where no class rule is on
        (``rerank_same_class``, ``fallback_same_class``, ``turns_in_doubt`` with turns), the classifier
        does not know the collection's kinds, or the classes are unknown (an index without logits)."""
        if not self.class_rules_on or classes is None:
            return None
        config = self.config
        crops = query.crops.get("logits") if query.crops is not None and config.query_class_from_crops else None
        return classes == query_class(query.vectors["logits"], crops)

    def rank(self, query: QueryFeatures, method: str, n_candidates: int | None = None, depth: int | None = None,
             exclude_ids=frozenset(), progress: Progress = no_progress) -> Ranking:
        """The coarse order ``depth`` deep (default: the candidates), its first ``n_candidates``
        verified for a fine method (default: the ``n_candidates`` setting), and the final order."""
        variant, fine = self._parse(method)
        n_candidates = n_candidates or self.config.n_candidates
        depth = self._depth(depth, n_candidates, fine)
        self.index.refresh_deltas()  # images added since the last query (add_images)
        timings = {}
        started = time.perf_counter()
        exclude_ids = frozenset(exclude_ids)
        positions, distances = own = self.coarse_order(query.vectors, variant, depth, exclude_ids, expand=not fine)
        if fine:
            if query.crops is not None:
                positions, _ = self.index.nearest_to_query_or_crops(own, query.crops[variant], variant, depth,
                                                                    exclude_ids)
            distances = self.expanded_distances(query.vectors, variant, positions, own)
        timings["coarse"] = elapsed_ms(started)
        progress("coarse", len(positions), len(positions))
        verifications: list[Verification] = []
        order = np.arange(len(positions))
        n_verify = min(n_candidates, len(positions)) if fine else 0
        evidence = np.zeros((n_verify, len(EVIDENCE)))
        confidence, verified = np.zeros(n_verify), np.zeros(n_verify, dtype=bool)
        agreed = False
        if fine:
            if query.local is None:
                raise SearchIndexError(f"method {method} needs the query's local features")
            started = time.perf_counter()
            n_fit = fitted_count(n_verify, len(positions), self.config.confidence_pool)
            candidates = self.candidate_features(positions[:n_fit])
            verifications = self.verify(query.local, positions[:n_fit], progress, timings, candidates)
            evidence = match_evidence(verifications, query.local.keypoints, candidates.keypoints,
                                      distances[:n_fit], n_rows=n_verify)
            verifications = verifications[:n_verify]
            inliers = np.array([v.inliers for v in verifications], dtype=np.int64)
            same_class = self.same_class(query, positions)
            confidence, reranked, verified = self.judge(evidence, inliers, same_class)
            timings["verification"] = elapsed_ms(started)
            voting = self.vote_variant(variant, same_class is not None, self.index.variants)
            vote_distances = None if voting is None else self.vote_distances(query.vectors, voting, positions,
                                                                             exclude_ids)
            order, agreed = self.final_order(inliers, reranked, verified, distances, same_class, vote_distances)
        return Ranking(method, positions, distances, order, n_verify, verifications, evidence, confidence, verified,
                       timings, class_agreed=agreed)

    def rank_turning(self, image, query: QueryFeatures, method: str, n_candidates: int | None = None,
                     depth: int | None = None, exclude_ids=frozenset(), progress: Progress = no_progress,
                     turned: dict | None = None) -> Ranking:
        """``rank``; and when a fine method verified nothing, the query ``image`` turned by each of
        ``query_turns``, ``turn_candidates`` verified; of the turns that verify something, the one
        whose strongest match has most inliers gives the matches (``turned`` saying by how much),
        ahead of the query's own page (``matches_first``; ``turned_fallback``: its whole ranking).
        Not the first that verifies: a picture upside down often verifies too, with far fewer
        inliers than the turn that stands it upright. With ``turns_in_doubt`` only when the
        classifier's class for the query and the fallback's first candidates do not agree
        (``Ranking.class_agreed``); with ``turns_if_nearer`` only the turns that look more like
        something in the collection than the query as sent (``nearer_turns``). ``turned`` caches
        the turned queries' features across methods. The turns' time is in ``timings_ms['turns']``."""
        ranking = self.rank(query, method, n_candidates, depth, exclude_ids, progress)
        if not parse_method(method)[1] or ranking.n_verified or not self.config.turn_angles:
            return ranking
        if self.config.turns_in_doubt and ranking.class_agreed:  # the class is not in doubt
            return ranking
        started = time.perf_counter()
        turned = {} if turned is None else turned
        image = image if hasattr(image, "convert") else open_image(image)
        few = min(n_candidates or self.config.n_candidates, self.config.turn_candidates)
        angles = self.config.turn_angles
        if self.config.turns_if_nearer:
            angles = self.nearer_turns(image, query, self._parse(method)[0], frozenset(exclude_ids))
        strongest = 0
        for degrees in angles:
            if degrees not in turned:
                turned[degrees] = self.query_features(image.transpose(TURNS[degrees]), local=True, crops=False)
            again = self.rank(turned[degrees], method, few, depth, exclude_ids)
            best = int(again.inliers[again.verified].max()) if again.n_verified else 0
            if best > strongest:
                strongest, again.turned, found = best, degrees, again
        timings = ranking.timings_ms  # the query's own stages; the turned searches are in "turns"
        if strongest:
            ranking = found if self.config.turned_fallback else matches_first(found, ranking)
            ranking.timings_ms = timings
        timings["turns"] = elapsed_ms(started)
        return ranking

    def search(self, image, method: str | None = None, n_candidates: int | None = None,
               k: int | None = None, exclude_ids=(), progress: Progress = no_progress,
               stored_size: tuple[int, int] | None = None) -> SearchResponse:
        """The top k: coarse candidates, then (for ``+attention`` methods) verification and the
        coarse fallback; every stage reported through ``progress``. ``image``: a path (decoded no
        larger than a query needs) or a PIL image, decoded from a picture of ``stored_size``
        (default: its own), the size the results' query points are given in."""
        method = method or self.default_method
        _, fine = self._parse(method)
        k = k or self.config.top_k
        n_candidates = max(k, n_candidates or self.config.n_candidates) if fine else k
        if not hasattr(image, "convert"):
            image, stored_size = open_query_image(image, self.config.query_decode_side)
        stored_size = stored_size or image.size
        query = self.query_features(image, local=fine, progress=progress)
        ranking = self.rank_turning(image, query, method, n_candidates, exclude_ids=exclude_ids, progress=progress)
        results = []
        for rank, i in enumerate(ranking.order[:k], 1):
            result = self._result(rank, ranking, i)
            if i < ranking.n_candidates:
                v = ranking.verifications[i]
                result.inliers = int(v.inliers)
                result.confidence = round(float(ranking.confidence[i]), 3)
                if ranking.verified[i]:
                    result.stage = "verified"
                    # the points on the picture as it was sent, not as it was turned
                    points = unturn_points(v.query_points, ranking.turned, image.size)
                    points *= np.divide(stored_size, image.size)  # on the picture as it is stored
                    result.query_points = points.round(1).tolist()
                    result.result_points = v.candidate_points.round(1).tolist()
            results.append(result)
        timings = dict(query.timings_ms, **ranking.timings_ms)
        return SearchResponse(results, method, len(ranking.positions), ranking.n_verified, timings)

    def _result(self, rank: int, ranking: Ranking, i: int) -> SearchResult:
        """The ``i``-th of ``ranking``'s coarse order as a result at ``rank``."""
        index, position = self.index, ranking.positions[i]
        return SearchResult(rank, index.image_ids[position], index.relpaths[position],
                            str(index.path_of(position)), float(ranking.distances[i]), index.labels[position])


# query_turns: degrees counter-clockwise -> the exact (lossless) turn
TURNS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def unturn_points(points: np.ndarray, degrees: int, size: tuple[int, int]) -> np.ndarray:
    """(x, y) points on a picture of ``size`` (width, height) turned ``degrees`` counter-clockwise,
    put back on the picture as it was."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    width, height = size
    u, v = points[:, 0], points[:, 1]
    if degrees == 90:
        return np.stack([width - v, u], axis=1)
    if degrees == 180:
        return np.stack([width - u, height - v], axis=1)
    if degrees == 270:
        return np.stack([v, height - u], axis=1)
    return points


def fitted_count(n_verify: int, n_positions: int, confidence_pool: int) -> int:
    """How many coarse candidates a fine search fits: the ``n_verify`` it ranks, and at least
    ``confidence_pool`` (of the ``n_positions`` it has) for the query's floor of chance inliers."""
    return max(n_verify, min(confidence_pool, n_positions))


def expand_query(vector: np.ndarray, distances: np.ndarray, neighbours: np.ndarray, alpha: float) -> np.ndarray:
    """The query averaged with its nearest images (``neighbours``, at ``distances``), each weighted by
    its cosine similarity to the query to the power ``alpha`` (plainly when ``alpha`` <= 0)."""
    # unit vectors: cosine similarity = 1 - d^2 / 2
    weights = np.ones(len(distances)) if alpha <= 0 else np.clip(1 - np.asarray(distances) ** 2 / 2, 0, None) ** alpha
    return l2_normalise(np.atleast_2d(vector) + (weights[:, None] * neighbours).sum(0))


def reranked_and_verified(inliers: np.ndarray, confidence: np.ndarray, config: EngineConfig,
                          same_class: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Whether each candidate is re-ranked by inliers (verified, or one of the ``rerank_unsure``
    unsure ones, of those in the query's class where ``same_class`` is given) and whether it
    counts as verified (``min_inliers`` and ``min_confidence``)."""
    enough = np.asarray(inliers) >= config.min_inliers
    verified = enough & (confidence >= config.min_confidence)
    unsure = enough & (confidence >= config.rerank_confidence) & ~verified
    if same_class is not None:
        unsure &= same_class
    return verified | unsure_reranked(inliers, unsure, config.rerank_unsure), verified


def matches_first(turned: Ranking, upright: Ranking) -> Ranking:
    """The ``turned`` query's verified candidates (in its order), then the ``upright`` query's
    ranking without them. A turn that verifies something was right about those; but a turn can
    verify a lookalike of a query that stood upright, and that must not take away the rest of its
    page: the order of the query as sent, the one its class rules judged (RESULTS.md, "The turned
    query's matches, the upright query's page")."""
    head = turned.order[np.isin(turned.order, np.flatnonzero(turned.verified))]
    shown = _identities(turned, turned.positions[head])
    keep = np.flatnonzero(~np.isin(_identities(upright, upright.positions), shown))  # coarse order
    n_kept = int(np.count_nonzero(keep < upright.n_candidates))
    rest = upright.order[np.isin(upright.order, keep)]
    order = np.concatenate([np.arange(len(head)), len(head) + np.searchsorted(keep, rest)])
    fitted = keep[:n_kept]
    if turned.catalog is None:
        positions, catalog = np.concatenate([turned.positions[head], upright.positions[keep]]), None
    else:
        catalog = [turned.catalog[p] for p in turned.positions[head]] + [upright.catalog[p] for p in upright.positions[keep]]
        positions = np.arange(len(catalog))
    return Ranking(upright.method, positions, np.concatenate([turned.distances[head], upright.distances[keep]]),
                   order, len(head) + n_kept,
                   [turned.verifications[i] for i in head] + [upright.verifications[i] for i in fitted],
                   np.concatenate([turned.evidence[head], upright.evidence[fitted]]),
                   np.concatenate([turned.confidence[head], upright.confidence[fitted]]),
                   np.concatenate([turned.verified[head], upright.verified[fitted]]),
                   upright.timings_ms, turned=turned.turned, class_agreed=upright.class_agreed, catalog=catalog)


def _identities(ranking: Ranking, positions: np.ndarray) -> np.ndarray:
    """What names the images at ``positions`` across rankings: the index positions, or a sharded
    ranking's image ids."""
    if ranking.catalog is None:
        return np.asarray(positions)
    return np.array([ranking.catalog[p][0] for p in positions], dtype=object)


def fallback_agrees(fallback: np.ndarray, same_class: np.ndarray, voters: int) -> bool:
    """Whether most (more than half) of the first ``voters`` candidates of the ``fallback`` (indices
    in its order) are of the query's class (``same_class``): the classifier's class for the query
    and the classes of its nearest images by overall look agree. Where they do not (a query the
    classifier gets wrong, a photo turned on its side, a picture on a background), the fallback's
    order is the better guess (RESULTS.md, "The query's class first in the fallback")."""
    first = np.asarray(same_class, dtype=bool)[np.asarray(fallback)[:max(voters, 0)]]
    return len(first) > 0 and 2 * int(np.count_nonzero(first)) > len(first)


def class_first(order: np.ndarray, n_reranked: int, same_class: np.ndarray,
                voters: int | None, voting: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """``order`` (from ``fine_order``: its ``n_reranked`` re-ranked candidates lead) with the
    fallback's candidates of the query's class (``same_class``, over every candidate) put before
    the others, each part in its order, when most of the fallback's first ``voters`` are of that
    class (``fallback_agrees``; None: always, as the benchmark script scores it), the fallback
    taken in the order of ``voting`` where given (the same candidates, the same re-ranked ones
    first); and whether they were."""
    head, fallback = order[:n_reranked], order[n_reranked:]
    vote = fallback if voting is None else np.asarray(voting)[n_reranked:]
    if voters is not None and not fallback_agrees(vote, same_class, voters):
        return order, False
    of_class = np.asarray(same_class, dtype=bool)[fallback]
    return np.concatenate([head, fallback[of_class], fallback[~of_class]]), True


def unsure_reranked(inliers: np.ndarray, unsure: np.ndarray, limit: int) -> np.ndarray:
    """Which of the ``unsure`` candidates (given in coarse order) go ahead of the coarse order: the
    ``limit`` with most inliers, ties in coarse order. A query shows one object, so the best of the
    unsure matches is the likely one; on a class-level collection the others are mostly lookalikes
    of another kind (RESULTS.md, "Unsure matches")."""
    unsure = np.asarray(unsure, dtype=bool)
    chosen = np.zeros_like(unsure)
    candidates = np.flatnonzero(unsure)
    if limit > 0 and len(candidates):
        best = candidates[np.lexsort((candidates, -np.asarray(inliers)[candidates]))[:limit]]
        chosen[best] = True
    return chosen


def fine_order(inliers: np.ndarray, reranked: np.ndarray, verified: np.ndarray | None = None,
               fallback: np.ndarray | None = None) -> np.ndarray:
    """Candidates (given in coarse order) re-ranked: the ``verified`` ones first, then the other
    ``reranked`` ones, each group by inlier count, then the rest as the fallback. Ties and the
    fallback go by ``fallback`` (a fine method's distances to the expanded query: it may be longer
    than the verified candidates, which come first in it), else in coarse order."""
    inliers, reranked = np.asarray(inliers), np.asarray(reranked, dtype=bool)
    verified = reranked if verified is None else np.asarray(verified, dtype=bool) & reranked
    n = len(inliers) if fallback is None else len(fallback)
    key = np.arange(n) if fallback is None else np.asarray(fallback)

    def padded(values, fill):
        return np.concatenate([values, np.full(n - len(values), fill, dtype=values.dtype)])

    inliers, reranked, verified = padded(inliers, 0), padded(reranked, False), padded(verified, False)
    return np.lexsort((np.arange(n), key, -np.where(reranked, inliers, 0), ~reranked, ~verified))


def stored_distances(index: SearchIndex, variant: str, positions: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``euclidean_to`` the stored ``variant`` vectors of the images at ``positions``, in that order.
    The rows are read in file order, which spares a copy of all of them (at 4,000 hybrid rows,
    40 MB) to put them in the order asked; only the distances are put back."""
    positions = np.asarray(positions, dtype=np.int64)
    ascending = np.argsort(positions, kind="stable")
    distances = np.empty(len(positions), dtype=np.float32)
    distances[ascending] = euclidean_to(index.row_vectors(variant, positions[ascending]), vector)
    return distances


def euclidean_to(rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Euclidean distances of each of ``rows`` to one ``vector``, as the coarse backends give them.
    In torch, not NumPy: NumPy's BLAS threads spin on after a product and slowed the torch
    matching that follows by half on 2 cores (RESULTS.md, stop 23)."""
    rows = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    vector = torch.from_numpy(np.asarray(vector, dtype=np.float32).reshape(-1))
    # the rows' norms without a squared copy of them (4,000 hybrid rows: 40 MB of fresh pages)
    squared = torch.linalg.vector_norm(rows, dim=1).square_() - 2 * (rows @ vector) + vector @ vector
    return squared.clamp_(min=0).sqrt_().numpy()
