"""The confidence of a verified match: its evidence, the calibration's probability, fitting and files."""
import json

import numpy as np
import pytest

from search.engine.confidence import (DEFAULT_CALIBRATION, EVIDENCE, Calibration, fit_calibration,
                                      load_calibration, match_evidence)
from search.engine.errors import EngineError
from search.engine.verification import Verification


def grid(n, scale=1.0):
    xs, ys = np.meshgrid(np.arange(n), np.arange(n))
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32) * scale


def test_evidence_of_a_spread_out_match_a_line_and_an_unverified_candidate():
    query_keypoints = grid(10, 10.0)  # 100 points over 90x90 px
    affine = np.array([[2.0, 0, 5], [0, 0.5, 3]])  # anisotropy 4
    spread_out = Verification(50, 100, affine, query_keypoints[::2], query_keypoints[::2] * [2, 0.5])
    on_a_line = Verification(20, 40, np.array([[1.0, 0, 0], [0, 1.0, 0]]),
                             np.stack([np.arange(20.0), np.zeros(20)], 1), np.stack([np.arange(20.0), np.zeros(20)], 1))
    candidate_keypoints = [query_keypoints * [2, 0.5], query_keypoints, query_keypoints]
    rows = match_evidence([spread_out, on_a_line, Verification(3, 3)], query_keypoints, candidate_keypoints,
                          np.array([0.0, 1.0, np.sqrt(2)]))
    assert rows.shape == (3, len(EVIDENCE))
    log_inliers, share, query_cov, cand_cov, aniso, similarity, excess = rows[0]
    assert log_inliers == pytest.approx(np.log(50)) and share == 0.5
    assert 0.9 < query_cov <= 1.0 and 0.9 < cand_cov <= 1.0
    assert aniso == pytest.approx(np.log(4)) and similarity == 1.0
    assert rows[1, 2] == 0 and rows[1, 3] == 0 and rows[1, 5] == pytest.approx(0.5)  # collinear: no coverage
    assert (rows[2, :5] == 0).all() and rows[2, 5] == pytest.approx(0.0) and rows[2, 6] == 0  # no affine: no evidence
    # fewer than FLOOR_RANK fitted candidates: the floor is the weakest of them (20 inliers)
    assert excess == pytest.approx(np.log(51 / 21)) and rows[1, 6] == 0


def test_inlier_excess_is_measured_from_the_queries_floor_of_chance_inliers():
    from search.engine.confidence import FLOOR_RANK

    keypoints = grid(10, 10.0)
    counts = [120, 90, *range(30, 30 - FLOOR_RANK, -1)]  # two true matches above a floor of chance ones
    verifications = [Verification(n, 2 * n, np.array([[1.0, 0, 0], [0, 1.0, 0]]), keypoints[:n % 100], keypoints[:n % 100])
                     for n in counts]
    rows = match_evidence(verifications, keypoints, [keypoints] * len(counts), np.zeros(len(counts)))
    floor = sorted(counts, reverse=True)[FLOOR_RANK - 1]
    np.testing.assert_allclose(rows[:, 6], np.log((np.array(counts) + 1) / (floor + 1)))
    assert rows[0, 6] > 1.3 and rows[-1, 6] < 0
    # rows for the first three only (the ones a search ranks): the same rows, the floor still
    # taken over every candidate fitted
    first = match_evidence(verifications, keypoints, [keypoints] * len(counts), np.zeros(len(counts)), n_rows=3)
    np.testing.assert_array_equal(first, rows[:3])


def test_probability_rises_with_evidence_and_is_zero_without_inliers(tmp_path):
    calibration = Calibration((2.0, 0, 0, 0, -1.0, 0, 0), -5.0, "by hand")
    evidence = np.zeros((3, len(EVIDENCE)))
    evidence[0, 0], evidence[1, 0], evidence[2, :] = np.log(100), np.log(10), 0
    evidence[1, 4] = 3.0
    p = calibration.probability(evidence)
    assert p[0] == pytest.approx(1 / (1 + np.exp(-(2 * np.log(100) - 5))))
    assert p[0] > 0.9 and p[1] < 0.5 and p[2] == 0
    calibration.save(tmp_path / "c.json")
    assert load_calibration(tmp_path / "c.json") == calibration
    data = json.loads((tmp_path / "c.json").read_text())
    data["evidence"] = data["evidence"][:-1]
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(EngineError, match="other evidence"):
        load_calibration(tmp_path / "c.json")
    with pytest.raises(EngineError, match="cannot read"):
        load_calibration(tmp_path / "missing.json")


def test_fitting_separates_true_from_false_pairs_and_needs_both():
    rng = np.random.default_rng(0)
    true = np.column_stack([np.log(rng.integers(20, 200, 200)), rng.uniform(0.3, 0.9, 200), rng.uniform(0.3, 1, 200),
                            rng.uniform(0.3, 1, 200), rng.uniform(0, 0.5, 200), rng.uniform(0.6, 0.9, 200),
                            rng.uniform(0.5, 2, 200)])
    false = np.column_stack([np.log(rng.integers(3, 15, 400)), rng.uniform(0.05, 0.3, 400), rng.uniform(0, 0.4, 400),
                             rng.uniform(0, 0.4, 400), rng.uniform(0.3, 2, 400), rng.uniform(0.3, 0.8, 400),
                             rng.uniform(-1, 0.3, 400)])
    evidence, same = np.vstack([true, false]), np.r_[np.ones(200, bool), np.zeros(400, bool)]
    calibration = fit_calibration(evidence, same, "synthetic")
    p = calibration.probability(evidence)
    assert (p[same] > 0.5).mean() > 0.95 and (p[~same] < 0.5).mean() > 0.95
    with pytest.raises(EngineError, match="one kind"):
        fit_calibration(false, np.zeros(400, bool))


def test_the_packaged_calibration_loads():
    calibration = load_calibration(DEFAULT_CALIBRATION)
    assert len(calibration.weights) == len(EVIDENCE) and calibration.fitted_on
