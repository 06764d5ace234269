"""The instance benchmark's generator (deterministic, every family, ground truth) and its
metrics, on real Corel images; no model needed."""
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.engine.errors import EngineError
from search.engine.instance_benchmark import (FAMILIES, GROUND_TRUTH, build_instance_benchmark, duplicates_of,
                                              load_instance_benchmark, transform)
from search.engine.instance_evaluation import NOT_FOUND, _summarise, rank_of
from tests.conftest import corel_image


@pytest.fixture
def folders(tmp_path):
    """A 12-image 'collection' (buses, dinosaurs) and 6 outside images (flowers) as links."""
    collection, outside = tmp_path / "collection", tmp_path / "outside"
    collection.mkdir()
    outside.mkdir()
    for number in [*range(300, 306), *range(400, 406)]:
        (collection / f"{number}.jpg").symlink_to(corel_image(number))
    for number in range(600, 606):
        (outside / f"{number}.jpg").symlink_to(corel_image(number))
    return collection, outside


def test_every_family_once_with_ground_truth_and_unrelated_queries(folders, tmp_path):
    collection, outside = folders
    bench = build_instance_benchmark(collection, tmp_path / "bench", outside, per_family=1, n_unrelated=3, seed=7)
    families = [q.family for q in bench.queries]
    assert families == [*FAMILIES, "unrelated", "unrelated", "unrelated"]
    sources = [q.source for q in bench.queries if q.source]
    assert len(set(sources)) == len(FAMILIES) and all((collection / s).is_file() for s in sources)
    assert all(q.source is None and q.params["from"].startswith(str(outside.resolve()))
               for q in bench.queries if q.family == "unrelated")
    for q in bench.queries:
        with Image.open(bench.path_of(q)) as image:
            assert image.format == "JPEG" and min(image.size) >= 16
    by_family = {q.family: q for q in bench.queries}
    source_size = lambda q: Image.open(collection / q.source).size
    query_size = lambda q: Image.open(bench.path_of(q)).size
    crop, scale = by_family["crop"], by_family["scale"]
    assert all(a < b for a, b in zip(query_size(crop), source_size(crop)))
    assert all(round(b * scale.params["factor"]) == a for a, b in zip(query_size(scale), source_size(scale)))
    assert 0.4 <= by_family["background"].params["covers"] <= 0.7
    assert 30 <= by_family["jpeg"].params["quality"] <= 70
    assert load_instance_benchmark(tmp_path / "bench").queries == bench.queries


def test_same_seed_same_queries_other_seed_others(folders, tmp_path):
    collection, outside = folders
    a = build_instance_benchmark(collection, tmp_path / "a", outside, per_family=1, n_unrelated=2, seed=3)
    b = build_instance_benchmark(collection, tmp_path / "b", outside, per_family=1, n_unrelated=2, seed=3)
    c = build_instance_benchmark(collection, tmp_path / "c", outside, per_family=1, n_unrelated=2, seed=4)
    assert a.queries == b.queries and a.queries != c.queries
    for q in a.queries:
        assert (tmp_path / "a" / q.file).read_bytes() == (tmp_path / "b" / q.file).read_bytes()
    assert json.loads((tmp_path / "a" / GROUND_TRUTH).read_text())["seed"] == 3


def test_right_angle_rotation_swaps_the_sides():
    image = Image.open(corel_image(300)).convert("RGB")
    for seed in range(40):
        rotated, params = transform(image, "rotation", random.Random(seed))
        if params["degrees"] in (90, 270):
            assert rotated.size == image.size[::-1]
            return
    pytest.fail("no right-angle rotation in 40 seeds")


def test_too_small_folders_and_unknown_family_are_clear_errors(folders, tmp_path):
    collection, outside = folders
    with pytest.raises(EngineError, match="fewer than the 18 queries"):
        build_instance_benchmark(collection, tmp_path / "x", outside, per_family=2)
    with pytest.raises(EngineError, match="fewer than 7 unrelated"):
        build_instance_benchmark(collection, tmp_path / "x", outside, per_family=1, n_unrelated=7)
    with pytest.raises(EngineError, match="unknown transformation family"):
        transform(Image.new("RGB", (32, 32)), "sepia", random.Random(0))
    with pytest.raises(EngineError, match="not an instance benchmark"):
        load_instance_benchmark(tmp_path)


def test_a_duplicate_photo_in_another_folder_is_a_second_answer(tmp_path):
    """Caltech-101's Faces_easy holds crops of the photos in Faces under the same names."""
    relpaths = {"Faces/image_0001.jpg", "Faces_easy/image_0001.jpg", "Faces/image_0002.jpg", "cats/image_0001.jpg"}
    assert duplicates_of("Faces/image_0001.jpg", relpaths) == ["Faces_easy/image_0001.jpg"]
    assert duplicates_of("Faces_easy/image_0001.jpg", relpaths) == ["Faces/image_0001.jpg"]
    assert duplicates_of("Faces/image_0002.jpg", relpaths) == []
    assert duplicates_of("cats/image_0001.jpg", relpaths) == []
    # a pair seen by eye (KNOWN_DUPLICATES): each answers for the other, where the collection holds it
    leopards = {"Leopards/image_0063.jpg", "Leopards/image_0163.jpg"}
    assert duplicates_of("Leopards/image_0163.jpg", leopards) == ["Leopards/image_0063.jpg"]
    assert duplicates_of("Leopards/image_0063.jpg", leopards) == ["Leopards/image_0163.jpg"]
    assert duplicates_of("Leopards/image_0163.jpg", {"Leopards/image_0163.jpg"}) == []
    collection, outside = tmp_path / "caltech", tmp_path / "outside"
    for folder in ("Faces", "Faces_easy"):
        (collection / folder).mkdir(parents=True)
        for number in range(5):
            (collection / folder / f"image_{number:04d}.jpg").symlink_to(corel_image(number + (0 if folder == "Faces" else 5)))
    outside.mkdir()
    (outside / "x.jpg").symlink_to(corel_image(600))
    bench = build_instance_benchmark(collection, tmp_path / "bench", outside, per_family=1, n_unrelated=1,
                                     families=("crop", "blur"))
    for q in bench.queries[:2]:
        folder, name = q.source.split("/")
        assert q.answers == [q.source, f"{'Faces_easy' if folder == 'Faces' else 'Faces'}/{name}"]
    assert bench.queries[2].answers == []
    assert load_instance_benchmark(tmp_path / "bench").queries == bench.queries


def test_an_outside_picture_the_collection_holds_is_no_unrelated_query(tmp_path):
    """Corel-1k's 455.jpg is Caltech-101's stegosaurus/image_0038.jpg mirrored: where the collection
    holds that image, a verified result is right, so 455 is left out; the other drawn queries stay."""
    collection, outside = tmp_path / "caltech", tmp_path / "corel"
    (collection / "stegosaurus").mkdir(parents=True)
    (collection / "stegosaurus" / "image_0038.jpg").symlink_to(corel_image(455))
    (collection / "stegosaurus" / "image_0039.jpg").symlink_to(corel_image(456))
    outside.mkdir()
    for number in (455, 600, 601, 602):
        (outside / f"{number}.jpg").symlink_to(corel_image(number))
    bench = build_instance_benchmark(collection, tmp_path / "bench", outside, per_family=1, n_unrelated=4,
                                     families=("crop",))
    froms = sorted(Path(q.params["from"]).name for q in bench.queries if q.family == "unrelated")
    assert froms == ["600.jpg", "601.jpg", "602.jpg"]
    assert [Path(c["from"]).name for c in bench.left_out] == ["455.jpg"]
    assert bench.left_out[0]["copy_of"] == "stegosaurus/image_0038.jpg"
    assert load_instance_benchmark(tmp_path / "bench").left_out == bench.left_out
    # a collection without that image keeps 455 as an unrelated query
    (collection / "stegosaurus" / "image_0038.jpg").unlink()
    kept = build_instance_benchmark(collection, tmp_path / "kept", outside, per_family=1, n_unrelated=4,
                                    families=("crop",))
    assert kept.left_out == [] and sum(q.family == "unrelated" for q in kept.queries) == 4


def test_rank_and_recall_metrics():
    assert rank_of(np.array([5, 3, 9]), 9) == 2 and rank_of(np.array([5, 3]), 7) == NOT_FOUND
    assert rank_of(np.array([5, 3, 9]), np.array([9, 3])) == 1 and rank_of(np.array([5]), np.array([], int)) == NOT_FOUND
    rows = [{"final": 0, "coarse": 10, "verified": True, "ms": 10.0},
            {"final": 2, "coarse": 150, "verified": False, "ms": 20.0},
            {"final": 7, "coarse": 5000, "verified": False, "ms": 30.0},
            {"final": NOT_FOUND, "coarse": NOT_FOUND, "verified": True, "ms": 40.0}]
    for number, row in enumerate(rows):  # what each query's first result was
        row["first"] = {"query": f"q{number}", "image": f"i{number}", "inliers": 9, "confidence": 0.6, "turned": 0}
    score = _summarise("m", "all", rows, (20, 100, 1000, 4000), 4000)
    assert score.recall_at_1 == 0.25 and score.recall_at_5 == 0.5
    assert score.map_at_5 == pytest.approx((1 + 1 / 3) / 4)
    assert score.coarse_recall == {20: 0.25, 100: 0.25, 1000: 0.5, 4000: 0.5}
    assert score.verified_at_1 == 0.5 and score.query_ms == 25.0
    assert [f["query"] for f in score.false_verified] == ["q3"]  # verified, but not the source
    unrelated = _summarise("m", "unrelated", rows[:2], (20,), 4000)
    assert unrelated.recall_at_1 is None and unrelated.coarse_recall == {} and unrelated.verified_at_1 == 0.5
    assert [f["query"] for f in unrelated.false_verified] == []  # final 0: the first result was the answer
