"""A query turned to find a match (query_turns): its matching points go back onto the picture as
it was sent, checked against PIL's own turns."""
import numpy as np
import pytest
from PIL import Image

from search.engine.config import EngineConfig
from search.engine.pipeline import TURNS, unturn_points


@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
def test_points_on_a_turned_picture_go_back_where_they_were(degrees):
    picture = np.zeros((30, 40), dtype=np.uint8)  # 40 wide, 30 high
    marks = [(5, 7), (39, 0), (0, 29), (22, 13)]
    for n, (x, y) in enumerate(marks, 1):
        picture[y, x] = n * 50
    image = Image.fromarray(picture)
    turned = np.asarray(image.transpose(TURNS[degrees]) if degrees else image)
    found = []
    for n in range(1, len(marks) + 1):
        v, u = np.argwhere(turned == n * 50)[0]
        found.append((u + 0.5, v + 0.5))  # pixel centres
    back = unturn_points(np.array(found), degrees, image.size)
    np.testing.assert_allclose(back, np.array(marks) + 0.5)


def test_turn_angles_are_quarter_turns_only():
    assert EngineConfig(query_turns="90, 270").turn_angles == (90, 270)
    assert EngineConfig().turn_angles == (90, 270, 180)  # the default
    assert EngineConfig(query_turns="").turn_angles == ()
    with pytest.raises(ValueError, match="90, 180 and 270 only"):
        EngineConfig(query_turns="45").turn_angles


def _ranking(positions, order, verified, inliers, n_fitted, catalog=None):
    from search.engine.confidence import EVIDENCE
    from search.engine.pipeline import Ranking
    from search.engine.verification import Verification

    n = len(positions)
    confidence = np.where(verified, 0.9, 0.0)
    return Ranking("hybrid+attention", np.asarray(positions), np.linspace(0.1, 1.0, n), np.asarray(order), n_fitted,
                   [Verification(inliers=i) for i in inliers], np.zeros((n_fitted, len(EVIDENCE))), confidence,
                   np.asarray(verified, dtype=bool), {}, catalog=catalog)


@pytest.mark.parametrize("sharded", [False, True])
def test_a_turn_puts_its_matches_first_and_keeps_the_upright_querys_page(sharded):
    """``matches_first``: the turned query's verified candidates lead, in its order; the rest is the
    upright query's order without them, each candidate with its own verification."""
    from search.engine.pipeline import matches_first

    # turned: positions 5, 2, 9 fitted (only 2 verified, 40 inliers), 7 past them
    turned = _ranking([5, 2, 9, 7], [1, 0, 2, 3], [False, True, False], [3, 40, 5], 3)
    turned.turned = 90
    # upright: positions 2, 4, 5, 8 fitted (none verified), 9 past them; its page 8, 2, 4, 5, 9
    upright = _ranking([2, 4, 5, 8, 9], [3, 0, 1, 2, 4], [False] * 4, [6, 7, 8, 9], 4)
    upright.class_agreed = True
    if sharded:  # a sharded ranking's positions index its own catalog of (image id, path, label)
        turned.catalog = [(f"id{p}", f"{p}.jpg", None) for p in turned.positions]
        turned.positions = np.arange(4)
        upright.catalog = [(f"id{p}", f"{p}.jpg", None) for p in upright.positions]
        upright.positions = np.arange(5)
    merged = matches_first(turned, upright)
    shown = (merged.ranked_positions if not sharded
             else [int(merged.catalog[p][0][2:]) for p in merged.ranked_positions])
    assert list(shown) == [2, 8, 4, 5, 9]
    fitted = merged.order[merged.order < merged.n_candidates]
    assert [merged.verifications[i].inliers for i in fitted] == [40, 9, 7, 8]
    assert list(merged.verified[fitted]) == [True, False, False, False] and merged.n_verified == 1
    assert merged.turned == 90 and merged.class_agreed
    assert len(merged.evidence) == len(merged.confidence) == merged.n_candidates == 4
