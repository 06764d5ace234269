"""Fast tier: descriptor matching, the affine fit, the fine order and the evaluation
metrics on synthetic data whose answer is known."""
from dataclasses import replace

import numpy as np
import pytest

from search.engine.config import EngineConfig
from search.engine.evaluation import average_precision, precision_at_k, r_precision
from search.engine.pipeline import euclidean_to, fine_order, stored_distances, unsure_reranked
from search.engine.verification import Candidates, fit_affine, match_block, prescore, spread_rows, verify_candidates

SETTINGS = EngineConfig().verify_settings()


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_matching_finds_the_same_descriptors_in_a_shuffled_candidate():
    rng = np.random.default_rng(0)
    query = unit(rng.normal(size=(50, 40)))
    permutation = rng.permutation(50)
    noisy = unit(query[permutation] + rng.normal(scale=0.01, size=(50, 40)))
    unrelated = unit(rng.normal(size=(60, 40)))
    same, other = match_block(query, [noisy, unrelated], SETTINGS)
    assert len(same) == 50
    np.testing.assert_array_equal(permutation[same[:, 1]], same[:, 0])
    assert len(other) < 5  # random 40-d unit vectors are far apart (distance ~ sqrt(2))


def test_mutual_check_drops_a_candidate_descriptor_claimed_twice():
    query = unit(np.array([[1, 0, 0], [0.99, 0.14, 0], [0, 0, 1]], dtype=np.float32))
    candidate = unit(np.array([[1, 0.05, 0], [0, 0.1, 1], [0, 1, 0]], dtype=np.float32))
    loose = replace(SETTINGS, mutual=False, ratio=1.0)
    assert sorted(map(tuple, match_block(query, [candidate], loose)[0])) == [(0, 0), (1, 0), (2, 1)]
    strict = replace(loose, mutual=True)
    assert sorted(map(tuple, match_block(query, [candidate], strict)[0])) == [(0, 0), (2, 1)]


def test_affine_fit_recovers_a_known_transform_and_rejects_outliers():
    rng = np.random.default_rng(1)
    points = rng.uniform(0, 400, size=(40, 2)).astype(np.float32)
    affine = np.array([[0.9, -0.2, 30], [0.25, 1.1, -12]], dtype=np.float32)
    moved = points @ affine[:, :2].T + affine[:, 2]
    moved[:10] = rng.uniform(0, 400, size=(10, 2))  # ten wrong matches
    result = fit_affine(points, moved, SETTINGS)
    assert result.inliers >= 30 and result.matches == 40
    np.testing.assert_allclose(result.affine, affine, atol=0.05 * np.abs(affine).max())
    assert fit_affine(points[:3], moved[:3], SETTINGS).inliers == 0  # too few to try


def test_verify_candidates_reports_each_block():
    rng = np.random.default_rng(2)
    query = unit(rng.normal(size=(20, 8)))
    keypoints = rng.uniform(0, 100, size=(20, 2)).astype(np.float32)
    candidates = Candidates.of([(keypoints + 5, query)] * 5)
    calls = []
    results = verify_candidates(keypoints, query, candidates, replace(SETTINGS, block_size=2),
                                progress=lambda *a: calls.append(a))
    assert [r.inliers for r in results] == [20] * 5
    assert calls == [("verifying", 0, 5), ("verifying", 2, 5), ("verifying", 4, 5), ("verifying", 5, 5)]


def test_fine_order_puts_verified_first_by_inliers_then_the_coarse_order():
    inliers = np.array([3, 20, 0, 9, 20, 7, 8])
    # verified (>= 8): 20 (pos 1), 20 (pos 4, tie kept in coarse order), 9 (pos 3), 8 (pos 6); then 0, 2, 5
    assert fine_order(inliers, inliers >= 8).tolist() == [1, 4, 3, 6, 0, 2, 5]
    assert fine_order(np.zeros(3, int), np.zeros(3, bool)).tolist() == [0, 1, 2]
    # only the re-ranked move (an unlikely 20 stays in the fallback); the verified (confident) ones lead
    reranked = (inliers >= 8) & (np.arange(7) != 4)
    assert fine_order(inliers, reranked).tolist() == [1, 3, 6, 0, 2, 4, 5]
    assert fine_order(inliers, reranked, np.arange(7) == 6).tolist() == [6, 1, 3, 0, 2, 4, 5]


def test_only_the_unsure_candidate_with_most_inliers_goes_ahead_of_the_coarse_order():
    inliers = np.array([12, 30, 9, 30, 15, 40])
    unsure = np.array([True, True, True, True, True, False])  # the 40 is not unsure (verified, or unlikely)
    # the most inliers wins; of two 30s the nearer in coarse order
    assert np.flatnonzero(unsure_reranked(inliers, unsure, 1)).tolist() == [1]
    assert np.flatnonzero(unsure_reranked(inliers, unsure, 3)).tolist() == [1, 3, 4]
    assert not unsure_reranked(inliers, unsure, 0).any()
    assert not unsure_reranked(inliers, np.zeros(6, bool), 2).any()
    # in the final order: the verified first, then the one unsure candidate, then the coarse order
    verified = np.arange(6) == 5
    reranked = verified | unsure_reranked(inliers, unsure, 1)
    assert fine_order(inliers, reranked, verified).tolist() == [5, 1, 0, 2, 3, 4]


def test_the_unsure_candidate_put_first_is_of_the_query_class_and_the_verified_ones_need_not_be():
    from search.engine.config import EngineConfig
    from search.engine.features import predicted_classes
    from search.engine.pipeline import reranked_and_verified

    config = EngineConfig(min_inliers=8, min_confidence=0.5, rerank_confidence=0.01, rerank_unsure=1)
    inliers = np.array([40, 30, 20, 9, 5])
    confidence = np.array([0.9, 0.3, 0.2, 0.1, 0.3])  # the 40 verified; 30, 20 and 9 unsure; 5 too few
    # stored logits are L2-normalised: the class is still their argmax
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.0, 1.0]])
    query_class = predicted_classes(np.array([0.2, 3.0]))[0]
    same_class = predicted_classes(logits) == query_class
    assert same_class.tolist() == [True, False, True, True, True]
    reranked, verified = reranked_and_verified(inliers, confidence, config)
    assert np.flatnonzero(reranked).tolist() == [0, 1] and np.flatnonzero(verified).tolist() == [0]
    # the 30 is of another class: the 20, the best of the query's class, goes first in its place
    reranked, verified = reranked_and_verified(inliers, confidence, config, same_class)
    assert np.flatnonzero(reranked).tolist() == [0, 2] and np.flatnonzero(verified).tolist() == [0]
    # a verified candidate of another class stays verified
    reranked, verified = reranked_and_verified(inliers, confidence, config, ~same_class)
    assert np.flatnonzero(reranked).tolist() == [0, 1] and verified.tolist() == [True] + [False] * 4


def test_fine_order_falls_back_on_the_expanded_distances_past_the_verified_candidates():
    # five candidates in the query's own coarse order, three of them verified; seven deep in all
    inliers = np.array([3, 20, 0, 9, 1])
    expanded = np.array([0.9, 0.5, 0.2, 0.6, 0.4, 0.1, 0.8])  # to the expanded query: not in coarse order
    order = fine_order(inliers, inliers >= 8, None, expanded)
    # verified by inliers (1, 3), then every other candidate by its expanded distance, the unverified tail too
    assert order.tolist() == [1, 3, 5, 2, 4, 6, 0]
    # ties among the verified go by the expanded distance
    assert fine_order(np.array([20, 20]), np.array([True, True]), None, np.array([0.7, 0.3])).tolist() == [1, 0]


def test_class_first_puts_the_fallbacks_candidates_of_the_querys_class_first_when_they_agree():
    from search.engine.pipeline import class_first

    inliers = np.array([3, 20, 0, 9, 1])
    expanded = np.array([0.9, 0.5, 0.2, 0.6, 0.4, 0.1, 0.8])
    first = np.array([True, False, False, True, True, False, True])
    order = fine_order(inliers, inliers >= 8, None, expanded)
    assert order.tolist() == [1, 3, 5, 2, 4, 6, 0]
    # verified (1, 3) keep their place whatever their class; then the fallback's chosen ones by
    # distance (4, 6, 0), then the others by distance (5, 2): 3 of its first 5 agree
    by_class, agreed = class_first(order, 2, first, 5)
    assert by_class.tolist() == [1, 3, 4, 6, 0, 5, 2] and agreed
    assert class_first(order, 2, np.ones(7, bool), 5)[0].tolist() == [1, 3, 5, 2, 4, 6, 0]
    # the fallback's first two (5, 2) are of other classes: no vote, the order as it was
    kept, agreed = class_first(order, 2, first, 2)
    assert kept.tolist() == order.tolist() and not agreed
    assert class_first(order, 2, first, None)[0].tolist() == [1, 3, 4, 6, 0, 5, 2]  # always


def test_class_first_may_take_the_vote_in_another_order_of_the_same_fallback():
    """``voting`` (the fallback ordered by another variant: ``class_vote_variant``) decides whether
    the query's class goes first; what goes first, and in which order, is still ``order``'s."""
    from search.engine.pipeline import class_first

    inliers = np.array([3, 20, 0, 9, 1])
    expanded = np.array([0.9, 0.5, 0.2, 0.6, 0.4, 0.1, 0.8])
    first = np.array([True, False, False, True, True, False, True])
    order = fine_order(inliers, inliers >= 8, None, expanded)  # [1, 3, 5, 2, 4, 6, 0]
    assert not class_first(order, 2, first, 2)[1]  # its own first two (5, 2) are of other classes
    other = fine_order(inliers, inliers >= 8, None, np.array([0.3, 0.5, 0.9, 0.6, 0.2, 0.8, 0.1]))
    assert other.tolist() == [1, 3, 6, 4, 0, 5, 2]  # the same head; 6, 4 of the class lead its fallback
    by_class, agreed = class_first(order, 2, first, 2, other)
    assert agreed and by_class.tolist() == [1, 3, 4, 6, 0, 5, 2]  # order's order within each part
    kept, agreed = class_first(np.array([1, 3, 4, 6, 5, 2, 0]), 2, first, 2, order)
    assert not agreed and kept.tolist() == [1, 3, 4, 6, 5, 2, 0]  # voting's fallback begins 5, 2: as it was


def test_the_fallback_agrees_with_the_querys_class_when_most_of_its_first_ones_are_of_it():
    from search.engine.pipeline import fallback_agrees

    same_class = np.array([True, False, True, True, False, False, True])
    assert fallback_agrees(np.array([0, 2, 1, 4]), same_class, 3)  # 0, 2 of the class, 1 not: 2 of 3
    assert not fallback_agrees(np.array([0, 1, 4, 2]), same_class, 3)  # 1 of 3
    assert not fallback_agrees(np.array([0, 1, 2, 4]), same_class, 4)  # 2 of 4 is not most
    assert fallback_agrees(np.array([6]), same_class, 10)  # fewer candidates than voters: those there
    assert not fallback_agrees(np.array([], dtype=int), same_class, 10)
    assert not fallback_agrees(np.array([0, 2, 3]), same_class, 0)  # nobody votes


def test_euclidean_to_gives_the_distances_a_brute_force_search_gives():
    rng = np.random.default_rng(3)
    rows, vector = unit(rng.normal(size=(50, 16))).astype(np.float32), unit(rng.normal(size=(1, 16)))
    assert np.allclose(euclidean_to(rows, vector), np.linalg.norm(rows - vector, axis=1), atol=1e-5)


def test_stored_distances_read_rows_in_file_order_and_answer_in_the_order_asked():
    rng = np.random.default_rng(4)
    stored, vector = unit(rng.normal(size=(30, 8))).astype(np.float32), unit(rng.normal(size=(1, 8)))

    class Index:
        def row_vectors(self, variant, positions):
            assert variant == "hybrid" and (np.diff(positions) >= 0).all()
            return stored[positions]

    positions = np.array([17, 3, 29, 0, 3, 12])  # coarse order: any order, a repeat
    found = stored_distances(Index(), "hybrid", positions, vector)
    assert np.allclose(found, np.linalg.norm(stored[positions] - vector, axis=1), atol=1e-5)


def test_precision_and_ap_by_hand():
    ranking = np.array([1, 0, 1, 0, 0, 1, 0, 0, 0, 0], dtype=bool)
    assert precision_at_k(ranking, 10) == pytest.approx(0.3)
    assert precision_at_k(ranking, 3) == pytest.approx(2 / 3)
    # relevant at ranks 1, 3, 6: (1/1 + 2/3 + 3/6) / 3
    assert average_precision(ranking) == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    # a fourth relevant item never retrieved counts as precision 0
    assert average_precision(ranking, n_relevant=4) == pytest.approx((1 + 2 / 3 + 0.5) / 4)
    assert average_precision(np.zeros(5, dtype=bool)) == 0.0
    # R-precision: precision at the class size; a class of three found first reads 1.0 where P@10 reads 0.2
    found_first = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    assert precision_at_k(found_first, 10) == pytest.approx(0.2)
    assert r_precision(found_first, 2) == 1.0
    assert r_precision(ranking, 4) == pytest.approx(0.5)  # ranks 1 and 3 of the first four
    assert r_precision(ranking, 0) == 0.0


def test_synthetic_candidates_are_variations_of_the_real_ones():
    from search.management.commands.benchmark_fine import synthetic_candidates

    rng = np.random.default_rng(3)
    pairs = [(rng.uniform(0, 300, size=(30, 2)).astype(np.float32), unit(rng.normal(size=(30, 8))))
             for _ in range(3)]
    real = Candidates.of(pairs)
    out = synthetic_candidates(real, 7, Candidates.of(pairs))
    assert len(out) == 7 and len(out.keypoints) == 7 and out.heads is None
    assert all(out.descriptors[i] is real.descriptors[i] and out.keypoints[i] is real.keypoints[i] for i in range(3))
    for i in range(3, 7):
        keypoints, descriptors = out.keypoints[i], out.descriptors[i]
        source_keypoints, source_descriptors = pairs[i % 3]
        rows = [int(np.flatnonzero((source_descriptors == d).all(1))[0]) for d in descriptors]
        assert sorted(rows) == list(range(30)) and rows != list(range(30))  # same rows, another order
        fitted = fit_affine(source_keypoints[rows], keypoints, SETTINGS)
        assert fitted.inliers == 30  # the keypoints moved by one similarity transform
    # read with heads, the variations have theirs: their own first rows
    headed = synthetic_candidates(Candidates(real.descriptors, real.keypoints, [d[:10] for d in real.descriptors]),
                                  7, Candidates.of(pairs))
    assert [len(h) for h in headed.heads] == [10] * 7
    assert all(np.array_equal(headed.heads[i], headed.descriptors[i][:10]) for i in range(3, 7))


def test_prescore_sends_only_the_best_candidates_to_ransac():
    rng = np.random.default_rng(4)
    query = unit(rng.normal(size=(60, 16)))
    keypoints = rng.uniform(0, 300, size=(60, 2)).astype(np.float32)
    unrelated = [(rng.uniform(0, 300, size=(60, 2)).astype(np.float32), unit(rng.normal(size=(60, 16))))
                 for _ in range(30)]
    # two true candidates: the query's descriptors (slightly noisy), keypoints moved rigidly
    true = [(keypoints + 7, unit(query + rng.normal(scale=0.02, size=query.shape))) for _ in range(2)]
    candidates = Candidates.of(unrelated[:11] + true[:1] + unrelated[11:] + true[1:])
    full = verify_candidates(keypoints, query, candidates, SETTINGS)
    calls = []
    limited = replace(SETTINGS, verify_top=4, prescore_keypoints=20)
    pruned = verify_candidates(keypoints, query, candidates, limited, progress=lambda *a: calls.append(a))
    assert [r.inliers for r in full][11] == 60 and full[-1].inliers == 60
    assert pruned[11].inliers == 60 and pruned[-1].inliers == 60  # the true ones are pre-scored in
    assert sum(r.matches > 0 for r in pruned) <= 4  # at most 4 matched in full
    assert calls[0] == ("pre-scoring", 0, 32) and calls[-1] == ("verifying", 4, 4)
    # with room for every candidate, the pre-score changes nothing
    roomy = verify_candidates(keypoints, query, candidates, replace(limited, verify_top=32))
    assert [r.inliers for r in roomy] == [r.inliers for r in full]


def test_only_the_candidates_fitted_have_their_keypoints_read():
    rng = np.random.default_rng(8)
    query = unit(rng.normal(size=(40, 16)))
    keypoints = rng.uniform(0, 300, size=(40, 2)).astype(np.float32)
    true = (keypoints * 1.1 + 3, unit(query + rng.normal(scale=0.02, size=query.shape)))
    pairs = [(rng.uniform(0, 300, size=(40, 2)).astype(np.float32), unit(rng.normal(size=(40, 16))))
             for _ in range(9)]
    pairs[6] = true

    class Recorded(list):
        def __init__(self, rows):
            super().__init__(rows)
            self.asked = []

        def __getitem__(self, i):
            self.asked.append(i)
            return list.__getitem__(self, i)

    candidates = Candidates([d for _, d in pairs], Recorded(k for k, _ in pairs))
    results = verify_candidates(keypoints, query, candidates, replace(SETTINGS, verify_top=3, prescore_keypoints=20))
    asked = set(candidates.keypoints.asked)
    assert results[6].inliers == 40
    assert 6 in asked and len(asked) <= 3  # pre-scored out, or too few matches to fit: never read
    assert all(results[i].inliers == 0 for i in set(range(9)) - asked)


def test_spread_rows_take_the_strongest_of_every_cell_in_turn():
    rng = np.random.default_rng(6)
    keypoints = rng.uniform(0, 400, size=(300, 2))
    keypoints[:150] = rng.uniform(0, 50, size=(150, 2))  # the strongest half crowds one corner
    rows = spread_rows(keypoints, 100, 4)
    assert len(rows) == 100 and len(set(rows)) == 100 and (np.diff(rows) > 0).all()
    assert (rows < 150).sum() < 15  # the corner is one cell of 16, not all 100
    cells = np.minimum((keypoints - keypoints.min(0)) / np.ptp(keypoints, axis=0) * 4, 3).astype(int)
    chosen_cells = {tuple(c) for c in cells[rows]}
    assert len(chosen_cells) == len({tuple(c) for c in cells})  # every occupied cell gives some
    for cell in chosen_cells:  # and within a cell, the strongest first
        members = np.flatnonzero((cells == cell).all(1))
        taken = np.intersect1d(members, rows)
        np.testing.assert_array_equal(taken, members[:len(taken)])
    np.testing.assert_array_equal(spread_rows(keypoints, 100, 0), np.arange(100))  # no grid: the strongest
    np.testing.assert_array_equal(spread_rows(keypoints[:40], 100, 4), np.arange(40))  # fewer than asked: all


def test_a_spread_prescore_finds_a_picture_whose_query_is_strongest_on_its_background():
    """A photo of a picture in a room: its strongest descriptors lie on the room (which other
    collection images share), the picture's on the rest of the photo."""
    rng = np.random.default_rng(7)
    query = unit(rng.normal(size=(80, 40)))
    keypoints = np.concatenate([rng.uniform(0, 60, size=(30, 2)),  # the room: the 30 strongest, one corner
                                rng.uniform(60, 400, size=(50, 2))]).astype(np.float32)
    picture = (keypoints[30:] * 0.8 + 5, unit(query[30:] + rng.normal(scale=0.02, size=(50, 40))))
    rooms = [(rng.uniform(0, 300, size=(60, 2)).astype(np.float32),
              unit(np.concatenate([query[:30] + rng.normal(scale=0.02, size=(30, 40)), rng.normal(size=(30, 40))])))
             for _ in range(20)]
    candidates = Candidates.of(rooms[:13] + [picture] + rooms[13:])
    strongest = replace(SETTINGS, verify_top=5, prescore_keypoints=30, prescore_grid=0)
    assert verify_candidates(keypoints, query, candidates, strongest)[13].inliers == 0  # never fitted
    spread = verify_candidates(keypoints, query, candidates, replace(strongest, prescore_grid=4))
    assert spread[13].inliers >= 40


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device on this machine")
def test_matching_on_cuda_gives_the_cpu_answer():
    rng = np.random.default_rng(5)
    query = unit(rng.normal(size=(80, 40)))
    keypoints = rng.uniform(0, 300, size=(80, 2)).astype(np.float32)
    candidates = Candidates.of((rng.uniform(0, 300, size=(70, 2)).astype(np.float32),
                                unit(np.concatenate([query[:30] + rng.normal(scale=0.05, size=(30, 40)),
                                                     rng.normal(size=(40, 40))]))) for _ in range(50))
    # float32 products: bfloat16 ones round each similarity, and the two devices may sum in another order
    settings = replace(SETTINGS, verify_top=20, prescore_keypoints=40, prescore_dtype="float32")
    cpu = verify_candidates(keypoints, query, candidates, settings)
    gpu = verify_candidates(keypoints, query, candidates, settings, device="cuda")
    assert [(r.inliers, r.matches) for r in gpu] == [(r.inliers, r.matches) for r in cpu]


def test_a_bfloat16_prescore_ranks_the_true_candidates_first_as_float32_does():
    rng = np.random.default_rng(9)
    query = unit(rng.normal(size=(100, 40)))
    keypoints = rng.uniform(0, 300, size=(100, 2)).astype(np.float32)
    unrelated = [unit(rng.normal(size=(120, 40))).astype(np.float16) for _ in range(60)]
    true = [unit(np.concatenate([query[:50] + rng.normal(scale=0.03, size=(50, 40)), rng.normal(size=(70, 40))]))
            .astype(np.float16) for _ in range(3)]
    candidates = unrelated[:20] + true[:1] + unrelated[20:40] + true[1:2] + unrelated[40:] + true[2:]
    settings = replace(SETTINGS, prescore_keypoints=100, prescore_grid=0)
    exact = prescore(keypoints, query, candidates, replace(settings, prescore_dtype="float32"))
    fast = prescore(keypoints, query, candidates, replace(settings, prescore_dtype="bfloat16"))
    true_positions = [20, 41, 62]
    assert sorted(np.argsort(-exact)[:3]) == sorted(np.argsort(-fast)[:3]) == true_positions
    assert np.abs(fast - exact).max() <= 3  # a borderline match or two may flip
    with pytest.raises(ValueError, match="prescore_dtype"):
        EngineConfig(prescore_dtype="float16").verify_settings()


def test_the_prescore_multiplies_in_bfloat16_only_where_the_cpu_has_it(monkeypatch):
    """``auto`` (the default) follows the hardware probe; this machine's answer cannot be changed,
    so the probe stands in for the two kinds of CPU."""
    import torch

    from search.engine import verification

    assert SETTINGS.prescore_dtype == "auto"
    monkeypatch.setattr(verification, "_cpu_has_bfloat16", lambda: False)
    assert verification.prescore_dtype(SETTINGS, "cpu") == torch.float32
    monkeypatch.setattr(verification, "_cpu_has_bfloat16", lambda: True)
    assert verification.prescore_dtype(SETTINGS, "cpu") == torch.bfloat16
    assert verification.prescore_dtype(replace(SETTINGS, prescore_dtype="float32"), "cpu") == torch.float32
    assert EngineConfig(prescore_dtype="bfloat16").verify_settings().prescore_dtype == "bfloat16"


def test_the_prescore_compares_only_each_candidates_strongest_descriptors_when_asked():
    """Stores keep a candidate's descriptors strongest first; a capped pre-score reads only the
    first rows, and the candidates it lets through are still matched with all of theirs."""
    rng = np.random.default_rng(11)
    query = unit(rng.normal(size=(50, 24)))
    keypoints = rng.uniform(0, 300, size=(50, 2)).astype(np.float32)
    noise = [unit(rng.normal(size=(40, 24))) for _ in range(3)]
    # the query's 50 descriptors as a candidate's 50 strongest, or after 40 others
    strong = (np.concatenate([keypoints + 5, rng.uniform(0, 300, size=(40, 2))]).astype(np.float32),
              np.concatenate([unit(query + rng.normal(scale=0.02, size=query.shape)), noise[0]]))
    weak = (np.concatenate([rng.uniform(0, 300, size=(40, 2)), keypoints + 5]).astype(np.float32),
            np.concatenate([noise[1], unit(query + rng.normal(scale=0.02, size=query.shape))]))
    settings = replace(SETTINGS, prescore_keypoints=50, prescore_grid=0, prescore_candidate_keypoints=0)
    all_rows = prescore(keypoints, query, [strong[1], weak[1]], settings)
    strongest = prescore(keypoints, query, [strong[1], weak[1]], replace(settings, prescore_candidate_keypoints=50))
    assert all_rows[0] >= 45 and all_rows[1] >= 45
    assert strongest[0] == all_rows[0] and strongest[1] <= 10  # 40 of its 50 matches lie past its 50 strongest
    unrelated = [(rng.uniform(0, 300, size=(90, 2)).astype(np.float32), unit(rng.normal(size=(90, 24))))
                 for _ in range(10)]
    capped = replace(settings, verify_top=2, prescore_candidate_keypoints=60)
    results = verify_candidates(keypoints, query, Candidates.of(unrelated[:4] + [weak] + unrelated[4:]), capped)
    assert results[4].inliers == 50  # pre-scored on 20 of its matches, then matched on all 50
    with pytest.raises(ValueError, match="prescore_candidate_keypoints"):
        EngineConfig(prescore_candidate_keypoints=-1).verify_settings()


def test_a_labelled_image_is_of_its_labels_class_and_an_unlabelled_one_of_the_classifiers():
    from search.engine.features import given_classes, image_classes

    classes = ["beach", "africa", "buses"]  # the classifier's order need not be sorted
    labels = np.array(["africa", "", "buses", "dinosaurs", "beach", "africa"])
    predicted = np.array([2, 0, 2, 1, 1, 0])
    assert given_classes(labels, classes).tolist() == [1, -1, 2, -1, 0, 1]
    # unlabelled (1) and a label the classifier never learnt (3): the classifier's guess stays
    assert image_classes(predicted, labels, classes).tolist() == [1, 0, 2, 1, 0, 1]
    assert given_classes(np.array([], dtype=str), classes).tolist() == []
    assert given_classes(labels, []).tolist() == [-1] * 6


def test_the_index_gives_each_candidates_label_by_position(tmp_path):
    from search.engine.index import SearchIndex

    def index_of(labels):
        return SearchIndex(tmp_path, {}, [f"id{i}" for i in range(len(labels))],
                           [f"{i}.jpg" for i in range(len(labels))], labels, tmp_path, {}, None)

    index = index_of(["cat", None, "dog", "cat", ""])
    assert index.labels_at([3, 1, 2, 0, 4, 2]).tolist() == ["cat", "", "dog", "cat", "", "dog"]
    names, codes = index.label_codes
    assert codes.dtype == np.int32 and sorted(names.tolist()) == ["", "cat", "dog"]
    assert index.labels_at(np.array([], dtype=np.int64)).tolist() == []
    assert index_of([]).labels_at([]).tolist() == []


def test_the_querys_class_is_the_mean_vote_of_the_query_and_its_crops():
    from search.engine.features import l2_normalise, query_class

    whole = l2_normalise(np.array([[2.0, 1.8, 0.0]]))  # class 0, narrowly
    crops = l2_normalise(np.array([[1.0, 3.0, 0.0], [0.5, 2.0, 0.1], [2.0, 2.1, 0.0], [0.0, 0.0, 3.0]]))
    assert query_class(whole) == 0
    assert query_class(whole, crops) == 1  # three of the four crops lean to class 1
    assert query_class(whole, crops[3:]) == 2  # one view each: the crop's stronger lead wins
    assert query_class(whole[0], np.empty((0, 3))) == 0  # no crops: the query's own class
