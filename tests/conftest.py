"""Shared fixtures: real Corel-1k images, a classifier really trained for one
short epoch on a small subset, and an index really built from it."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("RETRIEVAL_DATASETS", REPO.parent / "shared" / "datasets"))
COREL = DATASETS / "corel1k" / "images"
COREL_CLASSES = ["africa", "beach", "buildings", "buses", "dinosaurs",
                 "elephants", "flowers", "horses", "mountains", "food"]
# Four Corel classes, ten images each: enough for a stratified split and a
# 32-d PCA, small enough to train on in seconds.
TINY_CLASSES = {"africa": 0, "beach": 1, "buses": 3, "dinosaurs": 4}
TINY_PER_CLASS = 10


def corel_image(number: int) -> Path:
    return COREL / f"{number}.jpg"


@contextmanager
def configured(engine, **changes):
    """``engine`` with ``changes`` to its settings for the block (session fixtures are shared)."""
    saved = engine.config
    engine.config = saved.replace(**changes)
    try:
        yield engine
    finally:
        engine.config = saved


def pasted_on_food(picture: Path):
    """A photo of food (900 x 600) with ``picture`` pasted at a fifth of its width near its top-left
    corner, wholly inside the top-left one of the default 2 x 2 query crops (a picture on a table)."""
    from PIL import Image

    photo = Image.open(corel_image(950)).convert("RGB").resize((900, 600))
    pasted = Image.open(picture).convert("RGB")
    pasted.thumbnail((180, 180))
    photo.paste(pasted, (40, 40))
    return photo


@pytest.fixture(scope="session")
def engine_config(tmp_path_factory):
    from search.engine.config import EngineConfig

    # the tiny model trains from a random last layer, as the tests' expectations of it were made
    # (its eight a class would probe first by default: test_small_classes_fit_the_head_first)
    return EngineConfig(data_dir=tmp_path_factory.mktemp("data"), device="cpu", epochs=1, batch_size=16,
                        probe_below_class_size=0)


@pytest.fixture(scope="session")
def tiny_collection_dir(tmp_path_factory) -> Path:
    """Class sub-folders of symlinks to real Corel images (the dataset stays read-only)."""
    root = tmp_path_factory.mktemp("tiny-corel")
    for name, number in TINY_CLASSES.items():
        (root / name).mkdir()
        for i in range(TINY_PER_CLASS):
            source = corel_image(number * 100 + i)
            (root / name / source.name).symlink_to(source)
    return root


@pytest.fixture(scope="session")
def tiny_collection(tiny_collection_dir):
    from search.engine.collection import scan_collection

    return scan_collection(tiny_collection_dir, "folders")


@pytest.fixture(scope="session")
def tiny_models(tiny_collection, engine_config):
    """Classifier (one short epoch) and attention head (12 epochs), trained as `train` does."""
    from search.engine.workflows import train_models

    return train_models(tiny_collection, engine_config.replace(attention_epochs=12), epochs=1)


@pytest.fixture(scope="session")
def tiny_training(tiny_models, engine_config):
    return engine_config.default_model_path, tiny_models.training


@pytest.fixture(scope="session")
def tiny_model(tiny_models):
    return tiny_models.model


@pytest.fixture(scope="session")
def tiny_attention(tiny_models):
    return tiny_models.attention


@pytest.fixture(scope="session")
def tiny_extractor(tiny_models):
    return tiny_models.extractor


@pytest.fixture(scope="session")
def tiny_index_build(tiny_collection, tiny_model, engine_config):
    """Global features only, under the session's index root."""
    from search.engine.index import build_index

    return build_index(tiny_collection, tiny_model, engine_config.index_root, engine_config, "cpu")


@pytest.fixture(scope="session")
def tiny_engine(tiny_index_build, tiny_model, engine_config):
    from search.engine.index import load_index
    from search.engine.pipeline import RetrievalEngine

    index = load_index(engine_config.index_root, expected_checksum=tiny_model.checksum)
    return RetrievalEngine(tiny_model, index, "cpu", engine_config)


@pytest.fixture(scope="session")
def tiny_fine_engine(tiny_collection, tiny_models, engine_config, tmp_path_factory):
    """The tiny collection indexed with local features, in its own index root."""
    from search.engine.workflows import engine_for, index_collection

    build = index_collection(tiny_collection, tiny_models, engine_config, tmp_path_factory.mktemp("fine-index"))
    return engine_for(tiny_models, build, engine_config)
