"""Geometric verification: match local descriptors, fit a 2-D affine transform
with RANSAC, score a candidate by its inlier count.

Matching is batched: the query's descriptors are compared with a block of
candidates at once in one padded matrix product (no Python loop per
descriptor); only RANSAC itself, OpenCV's C++ code, runs once per candidate
that has enough matches to fit a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from .config import EngineConfig, VerifySettings
from .progress import Progress, no_progress

RANSAC_METHODS = {"ransac": cv2.RANSAC, "usac_magsac": cv2.USAC_MAGSAC, "usac_accurate": cv2.USAC_ACCURATE}


def default_settings() -> VerifySettings:
    return EngineConfig().verify_settings()


@dataclass
class Verification:
    inliers: int = 0
    matches: int = 0
    affine: np.ndarray | None = None  # 2x3, maps query points onto candidate points
    query_points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    candidate_points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))


def _pad(descriptor_sets: list[np.ndarray], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max((len(d) for d in descriptor_sets), default=0)
    padded = torch.zeros(len(descriptor_sets), max(longest, 1), dim)
    valid = torch.zeros(len(descriptor_sets), max(longest, 1), dtype=torch.bool)
    for i, d in enumerate(descriptor_sets):
        if len(d):
            padded[i, :len(d)] = torch.from_numpy(np.asarray(d, dtype=np.float32))
            valid[i, :len(d)] = True
    return padded, valid


def match_block(query: np.ndarray, candidates: list[np.ndarray], settings: VerifySettings) -> list[np.ndarray]:
    """Tentative matches of ``query`` (Q, d) against each candidate (M_i, d): a list of (K_i, 2) index pairs.

    Descriptors are unit vectors, so squared distance = 2 - 2 * similarity.
    Candidates are zero-padded to one length: a padded slot has similarity 0
    (distance sqrt(2)), so it is never kept as a best match (``valid`` is
    checked) and as a second-best it only makes the ratio test pass, as an
    absent second neighbour does.
    """
    if len(query) == 0 or not candidates:
        return [np.zeros((0, 2), np.int64) for _ in candidates]
    q = torch.from_numpy(np.asarray(query, dtype=np.float32))
    padded, valid = _pad(candidates, q.shape[1])
    similarity = torch.einsum("qd,cmd->cqm", q, padded)  # (C, Q, M)
    k = min(2, similarity.shape[2])
    top, nearest = similarity.topk(k, dim=2)  # (C, Q, k)
    best = nearest[..., 0]  # (C, Q)
    distance = torch.sqrt(torch.clamp(2 - 2 * top, min=0))
    keep = torch.gather(valid, 1, best) & (distance[..., 0] <= settings.max_distance)
    if k == 2:
        keep &= distance[..., 0] < settings.ratio * distance[..., 1]
    if settings.mutual:
        # mutual: no other query descriptor is closer to this candidate descriptor
        column_best = similarity.amax(dim=1)  # (C, M)
        keep &= top[..., 0] >= torch.gather(column_best, 1, best)
    pairs = []
    for c in range(len(candidates)):
        query_idx = torch.nonzero(keep[c]).flatten()
        pairs.append(torch.stack([query_idx, best[c, query_idx]], dim=1).numpy())
    return pairs


def fit_affine(query_points: np.ndarray, candidate_points: np.ndarray, settings: VerifySettings) -> Verification:
    """RANSAC affine fit on matched point pairs; the inlier count is the score."""
    matches = len(query_points)
    if matches < max(3, settings.min_matches):
        return Verification(0, matches)
    affine, mask = cv2.estimateAffine2D(
        query_points.astype(np.float32), candidate_points.astype(np.float32),
        method=RANSAC_METHODS[settings.method], ransacReprojThreshold=settings.reprojection_px,
        maxIters=settings.max_iters, confidence=settings.confidence, refineIters=10)
    if affine is None or mask is None:
        return Verification(0, matches)
    inlier = mask.ravel().astype(bool)
    return Verification(int(inlier.sum()), matches, affine,
                        query_points[inlier].astype(np.float32), candidate_points[inlier].astype(np.float32))


def verify_candidates(query_keypoints: np.ndarray, query_descriptors: np.ndarray,
                      candidates: list[tuple[np.ndarray, np.ndarray]],
                      settings: VerifySettings | None = None,
                      progress: Progress = no_progress) -> list[Verification]:
    """Verify each (keypoints, descriptors) candidate against the query, in blocks;
    ``progress("verifying", done, total)`` after each block."""
    settings = settings or default_settings()
    results: list[Verification] = []
    progress("verifying", 0, len(candidates))
    for start in range(0, len(candidates), settings.block_size):
        block = candidates[start:start + settings.block_size]
        pairs = match_block(query_descriptors, [descriptors for _, descriptors in block], settings)
        for (keypoints, _), pair in zip(block, pairs):
            results.append(fit_affine(query_keypoints[pair[:, 0]], keypoints[pair[:, 1]], settings))
        progress("verifying", len(results), len(candidates))
    return results


def verify_affine(query_keypoints, query_descriptors, keypoints, descriptors,
                  settings: VerifySettings | None = None) -> Verification:
    """One pair: the query against one image."""
    return verify_candidates(query_keypoints, query_descriptors, [(keypoints, descriptors)], settings)[0]
