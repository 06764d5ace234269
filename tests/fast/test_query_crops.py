"""The query's crops (``query_crops``) and joining the searches made with them."""
import numpy as np
import pytest

from search.engine.config import EngineConfig
from search.engine.features import crop_boxes
from search.engine.index import nearest_to_any


@pytest.mark.parametrize("size", [(900, 600), (480, 640), (7, 5)])
def test_the_default_crops_hold_anything_within_40_percent_of_each_side(size):
    config = EngineConfig()
    width, height = size
    boxes = crop_boxes(width, height, config.query_crops, config.query_crop_share)
    assert len(boxes) == config.query_crops ** 2
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        assert right - left == round(width * config.query_crop_share)
    assert {b[0] for b in boxes} == {0, width - round(width * config.query_crop_share)}  # corner to corner
    # every region of 40 % of each side, wherever it lies, is wholly inside one of them
    w, h = int(width * 0.4), int(height * 0.4)
    xs, ys = np.arange(width - w + 1), np.arange(height - h + 1)
    held = np.zeros((len(ys), len(xs)), dtype=bool)
    for left, top, right, bottom in boxes:
        held |= np.outer((top <= ys) & (ys + h <= bottom), (left <= xs) & (xs + w <= right))
    assert held.all()


def test_no_crops_and_one_centred_crop():
    assert crop_boxes(100, 80, 0, 0.7) == []
    assert crop_boxes(100, 80, 1, 0.5) == [(25, 20, 75, 60)]


def test_the_searches_are_joined_into_exactly_the_nearest_to_any_of_their_vectors():
    rng = np.random.default_rng(0)
    stored = rng.normal(size=(500, 16))
    searched = rng.normal(size=(5, 16))
    to_each = np.linalg.norm(stored[None] - searched[:, None], axis=2)
    n = 40
    found = []
    for row in to_each:  # each search's own n nearest, as an index answers
        nearest = np.argsort(row, kind="stable")[:n]
        found.append((nearest, row[nearest].astype(np.float32)))
    positions, distances = nearest_to_any(found, n)
    expected = np.argsort(to_each.min(0), kind="stable")[:n]
    np.testing.assert_array_equal(positions, expected)
    np.testing.assert_allclose(distances, to_each.min(0)[expected], rtol=1e-6)
    assert len(set(positions.tolist())) == n


def test_equal_distances_go_to_the_earlier_search_and_fewer_answers_than_asked_stay_whole():
    first = (np.array([3, 1]), np.array([0.5, 0.7], dtype=np.float32))
    second = (np.array([2, 3]), np.array([0.5, 0.6], dtype=np.float32))
    positions, distances = nearest_to_any([first, second], 10)
    assert positions.tolist() == [3, 2, 1]
    np.testing.assert_allclose(distances, [0.5, 0.5, 0.7])
    positions, _ = nearest_to_any([first, (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))], 10)
    assert positions.tolist() == [3, 1]
