"""How sure a verified match is: a probability that the candidate shows the same object as
the query, from the evidence of its verification, by logistic regression fitted on the true
and false pairs of an instance benchmark (``calibrate``).

An inlier count alone is not that: a class-level collection gives 8-20 inliers between
different objects of one kind (repeated texture, a grid of stride-16 keypoints and a 12 px
threshold), and a degenerate affine (squashed to a line or a point) collects inliers too.
So the evidence is the inliers together with what makes them believable: the share of
tentative matches they are, how much of the query and of the candidate they cover, whether
the affine is a plausible view change (anisotropy), the coarse similarity, and how far they
stand above the query's floor of chance inliers.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import EngineError
from .verification import Verification

EVIDENCE = ("log_inliers", "inlier_share", "query_coverage", "candidate_coverage", "log_anisotropy",
            "coarse_similarity", "inlier_excess")
# The query's own level of chance inliers: the inlier count of its FLOOR_RANK-th best fitted
# candidate. Chance inliers vary tenfold between queries (textured, repetitive images collect
# more), so how far a candidate stands above that floor says more than its raw count; the tenth
# leaves room for nine true matches (several photos of one object) above it.
FLOOR_RANK = 10
# The calibration fitted on the public instance benchmark (RESULTS.md), used until a deployment
# fits its own with ``calibrate`` (written next to the models).
DEFAULT_CALIBRATION = Path(__file__).with_name("calibration.json")


def _spread(points: np.ndarray) -> float:
    """Square root of the covariance determinant: an area-like size of a point cloud,
    zero when the points lie on a line."""
    if len(points) < 3:
        return 0.0
    return float(np.sqrt(max(np.linalg.det(np.cov(np.asarray(points, dtype=np.float64).T)), 0.0)))


def match_evidence(verifications: list[Verification], query_keypoints: np.ndarray,
                   candidate_keypoints: Sequence[np.ndarray], distances: np.ndarray,
                   n_rows: int | None = None) -> np.ndarray:
    """One row of ``EVIDENCE`` per verification (candidates in coarse order, with their keypoints
    and their coarse distances between unit vectors), for the first ``n_rows`` only (default: all):
    the others count only towards the query's floor. Coverage is the inliers' spread over that
    of all the image's keypoints, so it does not depend on the image's resolution (a phone photo
    is ten times a collection thumbnail). Unverified candidates (no affine) get zero inliers."""
    n_rows = len(verifications) if n_rows is None else n_rows
    rows = candidate_evidence(verifications[:n_rows], query_keypoints, candidate_keypoints)
    inliers = np.array([v.inliers if v.affine is not None else 0 for v in verifications], dtype=np.float64)
    return query_evidence(rows, inliers, distances)


def candidate_evidence(verifications: list[Verification], query_keypoints: np.ndarray,
                       candidate_keypoints: Sequence[np.ndarray]) -> np.ndarray:
    """The evidence each verification gives on its own (the columns up to ``log_anisotropy``; the
    others are zero until ``query_evidence``): a shard judges its candidates this far. Only the
    fitted candidates' keypoints are read (``local_store.LazyRows``)."""
    query_spread = max(_spread(query_keypoints), 1e-6)
    rows = np.zeros((len(verifications), len(EVIDENCE)), dtype=np.float64)
    for i, v in enumerate(verifications):  # one small step per fitted candidate (a few hundred at most)
        if v.affine is None or v.inliers == 0:
            continue
        singular = np.linalg.svd(np.asarray(v.affine, dtype=np.float64)[:, :2], compute_uv=False)
        rows[i, :5] = (np.log(v.inliers), v.inliers / max(v.matches, 1),
                       min(_spread(v.query_points) / query_spread, 1.0),
                       min(_spread(v.candidate_points) / max(_spread(candidate_keypoints[i]), 1e-6), 1.0),
                       np.log(max(singular[0], 1e-9) / max(singular[1], 1e-9)))
    return rows


def query_evidence(rows: np.ndarray, inliers: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """``rows`` (from ``candidate_evidence``) completed with what depends on the query's whole list
    of candidates: the coarse similarity, and the inliers' excess over the query's floor of chance
    inliers (over every candidate fitted, so over every shard's). ``inliers``: of every candidate fitted, 0
    where no affine; ``rows`` may cover only the first of them."""
    rows = np.array(rows, dtype=np.float64)
    inliers = np.asarray(inliers, dtype=np.float64)
    rows[:, 5] = 1.0 - np.asarray(distances[:len(rows)], dtype=np.float64) ** 2 / 2
    fitted = np.sort(inliers[inliers > 0])[::-1]
    floor = fitted[min(FLOOR_RANK, len(fitted)) - 1] if len(fitted) else 0.0
    own = inliers[:len(rows)]
    rows[:, 6] = np.where(own > 0, np.log((own + 1) / (floor + 1)), 0.0)
    return rows


@dataclass(frozen=True)
class Calibration:
    weights: tuple[float, ...]  # one per EVIDENCE entry
    bias: float
    fitted_on: str = ""  # what the pairs came from, for the record

    def probability(self, evidence: np.ndarray) -> np.ndarray:
        """P(same object) for each row of evidence; zero where there are no inliers."""
        evidence = np.atleast_2d(evidence)
        logit = evidence @ np.asarray(self.weights) + self.bias
        return np.where(evidence[:, 0] > 0, 1.0 / (1.0 + np.exp(-logit)), 0.0)

    def save(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"evidence": list(EVIDENCE), **asdict(self)}, indent=1))


def load_calibration(path: Path | None = None) -> Calibration:
    path = Path(path or DEFAULT_CALIBRATION)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot read the confidence calibration {path}: {exc}") from exc
    if data.get("evidence") != list(EVIDENCE):
        raise EngineError(f"{path} was fitted on other evidence ({data.get('evidence')}); run calibrate again")
    return Calibration(tuple(data["weights"]), float(data["bias"]), data.get("fitted_on", ""))


def fit_calibration(evidence: np.ndarray, same: np.ndarray, fitted_on: str = "") -> Calibration:
    """Logistic regression of ``same`` (true pairs) on the evidence of pairs with inliers."""
    from sklearn.linear_model import LogisticRegression

    evidence, same = np.asarray(evidence), np.asarray(same, dtype=bool)
    keep = evidence[:, 0] > 0
    if same[keep].all() or not same[keep].any():
        raise EngineError("calibration needs verified true pairs and verified false pairs; the benchmark has one kind")
    model = LogisticRegression(C=1.0, max_iter=1000).fit(evidence[keep], same[keep])
    return Calibration(tuple(float(w) for w in model.coef_[0]), float(model.intercept_[0]), fitted_on)
