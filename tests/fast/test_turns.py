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
    assert EngineConfig().turn_angles == ()
    with pytest.raises(ValueError, match="90, 180 and 270 only"):
        EngineConfig(query_turns="45").turn_angles
