"""Geometric verification: match local descriptors, fit a 2-D affine transform
with RANSAC, score a candidate by its inlier count.

Matching is batched: the query's descriptors are compared with a block of
candidates at once in one padded matrix product (no Python loop per
descriptor); only RANSAC itself, OpenCV's C++ code, runs once per candidate
that has enough matches to fit a model.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from .config import EngineConfig, VerifySettings
from .progress import Progress, elapsed_ms, no_progress

# the pre-score's products: bfloat16 runs them faster where the device has instructions for it,
# and several times slower where it is emulated (RESULTS.md); matching in full stays float32
PRESCORE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
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


@dataclass
class Candidates:
    """The candidates' local features as verification reads them, by position in the list: their
    descriptors and keypoints, which a store may read only when asked (``local_store.LazyRows``):
    of 4,000 candidates only the few hundred the pre-score lets through need all their
    descriptors, and only those fitted need keypoints. ``heads``: each candidate's first
    (strongest) descriptors, read at once, all that the pre-score compares (None: it takes them
    from ``descriptors``)."""
    descriptors: Sequence[np.ndarray]  # (M_i, d), float16 or float32
    keypoints: Sequence[np.ndarray]  # (M_i, 2)
    heads: Sequence[np.ndarray] | None = None  # (min(M_i, prescore_candidate_keypoints), d)

    @classmethod
    def of(cls, pairs) -> "Candidates":
        """From (keypoints, descriptors) pairs held in memory."""
        pairs = list(pairs)
        return cls([d for _, d in pairs], [k for k, _ in pairs])

    def __len__(self) -> int:
        return len(self.descriptors)

    @property
    def prescored(self) -> Sequence[np.ndarray]:
        """What the pre-score compares: the heads when they were read apart, else the descriptors."""
        return self.heads if self.heads is not None else self.descriptors


def _pad(descriptor_sets: list[np.ndarray], dim: int, dtype=torch.float32,
         device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """One zero-padded (C, M, dim) tensor of ``dtype`` and its (C, M) validity mask on ``device``,
    filled by one scatter of all the rows (no Python step per candidate beyond reading its
    length). The rows go to the device as they are stored (float16: half the bytes of float32)
    and are padded there."""
    lengths = np.fromiter((len(d) for d in descriptor_sets), dtype=np.int64, count=len(descriptor_sets))
    longest = max(int(lengths.max(initial=0)), 1)
    padded = torch.zeros(len(descriptor_sets), longest, dim, dtype=dtype, device=device)
    valid = torch.zeros(len(descriptor_sets), longest, dtype=torch.bool, device=device)
    if lengths.sum():
        rows = torch.from_numpy(np.concatenate(descriptor_sets)).to(device).to(dtype)  # converted once
        owner = np.repeat(np.arange(len(lengths)), lengths)
        slot = np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        owner, slot = torch.from_numpy(owner).to(device), torch.from_numpy(slot).to(device)
        padded[owner, slot] = rows
        valid[owner, slot] = True
    return padded, valid


def _tentative(query: np.ndarray, candidates: list[np.ndarray], settings: VerifySettings,
               device="cpu", dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """For each candidate and query descriptor: whether it has a tentative match (``keep``,
    (C, Q)) and which candidate descriptor that is (``best``, (C, Q)).

    Descriptors are unit vectors, so squared distance = 2 - 2 * similarity.
    Candidates are zero-padded to one length: a padded slot has similarity 0
    (distance sqrt(2)), so it is never kept as a best match (``valid`` is
    checked) and as a second-best it only makes the ratio test pass, as an
    absent second neighbour does. The products run on ``device`` in ``dtype``; the answer
    comes back on the CPU.
    """
    q = torch.from_numpy(np.asarray(query, dtype=np.float32)).to(device=device, dtype=dtype)
    padded, valid = _pad(candidates, q.shape[1], dtype, device)
    similarity = torch.matmul(q, padded.mT)  # (C, Q, M)
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
    return keep.cpu(), best.cpu()


def match_block(query: np.ndarray, candidates: list[np.ndarray], settings: VerifySettings,
                device="cpu") -> list[np.ndarray]:
    """Tentative matches of ``query`` (Q, d) against each candidate (M_i, d): a list of (K_i, 2) index pairs."""
    if len(query) == 0 or not candidates:
        return [np.zeros((0, 2), np.int64) for _ in candidates]
    keep, best = _tentative(query, candidates, settings, device)
    pairs = []
    for c in range(len(candidates)):
        query_idx = torch.nonzero(keep[c]).flatten()
        pairs.append(torch.stack([query_idx, best[c, query_idx]], dim=1).numpy())
    return pairs


def spread_rows(keypoints: np.ndarray, n: int, grid: int) -> np.ndarray:
    """``n`` of the query's keypoints (given best first), taken in turn from each cell of a ``grid``
    x ``grid`` division of their extent: the strongest of every cell, then the second strongest,
    and so on (``grid`` 0 or 1: the ``n`` strongest). Why: the strongest descriptors of a photo
    of a painting on a wall or a product on a table can all lie on the background, and then the
    pre-score cannot see the picture it was taken of (RESULTS.md)."""
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    if grid <= 1 or len(keypoints) <= n:
        return np.arange(min(n, len(keypoints)))
    low, extent = keypoints.min(0), np.ptp(keypoints, axis=0)
    cell_xy = np.minimum((keypoints - low) / np.maximum(extent, 1e-9) * grid, grid - 1).astype(np.int64)
    cells = cell_xy[:, 1] * grid + cell_xy[:, 0]
    by_cell = np.argsort(cells, kind="stable")  # within a cell, still best first
    sorted_cells = cells[by_cell]
    first_of_cell = np.flatnonzero(np.r_[True, sorted_cells[1:] != sorted_cells[:-1]])
    turn = np.empty(len(cells), dtype=np.int64)
    turn[by_cell] = np.arange(len(cells)) - np.repeat(first_of_cell, np.diff(np.r_[first_of_cell, len(cells)]))
    return np.sort(np.lexsort((np.arange(len(cells)), turn))[:n])


def has_bfloat16(device) -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware: a CUDA GPU from Ampere on, a CPU with
    AVX512-BF16 or AMX. Elsewhere torch emulates it, far slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return _cpu_has_bfloat16()


@functools.cache
def _cpu_has_bfloat16() -> bool:
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


def prescore_dtype(settings: VerifySettings, device="cpu") -> torch.dtype:
    """The pre-score's dtype on ``device``: the setting's, ``auto`` resolved by ``has_bfloat16``."""
    if settings.prescore_dtype == "auto":
        return torch.bfloat16 if has_bfloat16(device) else torch.float32
    return PRESCORE_DTYPES[settings.prescore_dtype]


def prescore(query_keypoints: np.ndarray, query: np.ndarray, candidates: Sequence[np.ndarray],
             settings: VerifySettings, device="cpu") -> np.ndarray:
    """A cheap score per candidate: how many of ``prescore_keypoints`` of the query's descriptors
    (spread over the query by ``spread_rows``) have a tentative match among its
    ``prescore_candidate_keypoints`` strongest (stores keep them strongest first). Computed in
    large blocks, with no geometry."""
    query = np.asarray(query)[spread_rows(query_keypoints, settings.prescore_keypoints, settings.prescore_grid)]
    counts = np.zeros(len(candidates), dtype=np.int64)
    if len(query) == 0:
        return counts
    block, dtype = settings.block_size * 4, prescore_dtype(settings, device)
    strongest = settings.prescore_candidate_keypoints or None
    for start in range(0, len(candidates), block):
        descriptor_sets = [candidates[i][:strongest] for i in range(start, min(start + block, len(candidates)))]
        keep, _ = _tentative(query, descriptor_sets, settings, device, dtype)
        counts[start:start + block] = keep.sum(dim=1).numpy()
    return counts


def prescore_rows(settings: VerifySettings, n_candidates: int) -> int:
    """How many of each candidate's descriptors a store reads at once for ``n_candidates``: the
    rows the pre-score compares when there will be one, else 0 (all of them)."""
    will_prescore = bool(settings.verify_top) and n_candidates > settings.verify_top
    return settings.prescore_candidate_keypoints if will_prescore else 0


def can_fit(matches: int, settings: VerifySettings) -> bool:
    """Whether that many tentative matches are worth a RANSAC fit (an affine needs three)."""
    return matches >= max(3, settings.min_matches)


def fit_affine(query_points: np.ndarray, candidate_points: np.ndarray, settings: VerifySettings) -> Verification:
    """RANSAC affine fit on matched point pairs; the inlier count is the score."""
    matches = len(query_points)
    if not can_fit(matches, settings):
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


def verify_candidates(query_keypoints: np.ndarray, query_descriptors: np.ndarray, candidates: Candidates,
                      settings: VerifySettings | None = None,
                      progress: Progress = no_progress, timings_ms: dict | None = None,
                      device="cpu") -> list[Verification]:
    """Verify each candidate against the query, in blocks (descriptor products on ``device``: a
    GPU when the engine has one; RANSAC on the CPU). A candidate's keypoints are read only if it
    is fitted.

    With more than ``verify_top`` candidates (0: no limit), all are pre-scored first and
    only the ``verify_top`` best are matched in full and fitted; the others keep zero
    inliers (unverified). ``progress`` gets ``("pre-scoring" | "verifying", done, total)``;
    ``timings_ms``, when given, gets the milliseconds spent pre-scoring, matching and in
    RANSAC added to it."""
    settings = settings or default_settings()
    results = [Verification() for _ in range(len(candidates))]
    spent = {"prescore": 0.0, "matching": 0.0, "ransac": 0.0}
    chosen = np.arange(len(candidates))
    if settings.verify_top and len(candidates) > settings.verify_top:
        progress("pre-scoring", 0, len(candidates))
        started = time.perf_counter()
        scores = prescore(query_keypoints, query_descriptors, candidates.prescored, settings, device)
        chosen = np.sort(np.argsort(-scores, kind="stable")[: settings.verify_top])
        spent["prescore"] += elapsed_ms(started)
        progress("pre-scoring", len(candidates), len(candidates))
    progress("verifying", 0, len(chosen))
    for start in range(0, len(chosen), settings.block_size):
        block = chosen[start:start + settings.block_size]
        started = time.perf_counter()
        pairs = match_block(query_descriptors, [candidates.descriptors[i] for i in block], settings, device)
        spent["matching"] += elapsed_ms(started)
        started = time.perf_counter()
        for i, pair in zip(block, pairs):
            if can_fit(len(pair), settings):  # else its keypoints are not even read
                results[i] = fit_affine(query_keypoints[pair[:, 0]], candidates.keypoints[i][pair[:, 1]], settings)
            else:
                results[i] = Verification(0, len(pair))
        spent["ransac"] += elapsed_ms(started)
        progress("verifying", min(start + settings.block_size, len(chosen)), len(chosen))
    if timings_ms is not None:
        for name, ms in spent.items():
            timings_ms[name] = timings_ms.get(name, 0.0) + ms
    return results


def verify_affine(query_keypoints, query_descriptors, keypoints, descriptors,
                  settings: VerifySettings | None = None) -> Verification:
    """One pair: the query against one image."""
    return verify_candidates(query_keypoints, query_descriptors, Candidates([descriptors], [keypoints]), settings)[0]
