"""A collection without labels: the ImageNet classifier is kept, the attention head learns its
predictions, and searches are verified point by point as with a fine-tuned model."""
import json

import pytest
import torch
from PIL import Image

from search.engine.collection import scan_collection
from search.engine.images import open_image
from search.engine.model import eval_batch, metrics_path
from search.engine.training import label_free_reason
from search.engine.workflows import engine_for, index_collection, model_label, train_models

from .conftest import corel_image

# Corel-1k numbers: buses, dinosaurs, elephants, horses; one flat folder, no labels
NUMBERS = [first + i for first in (300, 400, 500, 700) for i in range(10)]


@pytest.fixture(scope="module")
def unlabelled_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("unlabelled")
    for number in NUMBERS:
        (root / f"{number}.jpg").symlink_to(corel_image(number))
    return root


@pytest.fixture(scope="module")
def label_free(unlabelled_dir, engine_config, tmp_path_factory):
    config = engine_config.replace(data_dir=tmp_path_factory.mktemp("label-free-data"), attention_epochs=12)
    collection = scan_collection(unlabelled_dir, "folders")
    models = train_models(collection, config)
    build = index_collection(collection, models, config)
    return collection, config, models, engine_for(models, build, config)


def test_labels_none_ignores_the_folders(tiny_collection_dir):
    assert label_free_reason(scan_collection(tiny_collection_dir, "folders")) is None
    unlabelled = scan_collection(tiny_collection_dir, "none")
    assert unlabelled.classes == [] and label_free_reason(unlabelled) is not None


def test_without_labels_the_imagenet_classifier_is_kept(label_free):
    collection, config, models, _ = label_free
    training, model = models.training, models.model
    assert training.label_free and label_free_reason(collection) is not None
    assert len(model.classes) == 1000 and "school bus" in model.classes
    assert "no class labels" in training.summary and model_label(model) == "ImageNet, no labels"
    info = json.loads(metrics_path(config.default_model_path).read_text())
    assert info["label_free"] and info["n_train"] == 32 and info["n_val"] == 8
    # its logits are ImageNet's: a Corel bus is a bus, an elephant an elephant
    images = [open_image(corel_image(n)) for n in (301, 501)]
    with torch.no_grad():
        top5 = model.backbone(eval_batch(model.backbone, model.image_size, images, "cpu")).topk(5).indices
    assert {"school bus", "trolleybus", "minibus", "passenger car"} & {model.classes[i] for i in top5[0]}
    assert {"African elephant", "tusker", "Indian elephant"} & {model.classes[i] for i in top5[1]}


def test_the_head_learns_the_classifiers_predictions(label_free):
    _, _, models, _ = label_free
    info = models.attention.info
    assert info["targets"] == "the classifier's predictions"
    history = info["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"], history


def test_a_photo_of_a_collection_image_is_found_verified(label_free, tmp_path):
    """A rotated, cropped and shrunk copy of one image finds it first, verified; a picture of none
    of the collection's things verifies nothing."""
    _, _, _, engine = label_free
    assert "logits" in engine.index.variants  # ImageNet's 1,000 logits mean something here
    source = open_image(corel_image(705))
    w, h = source.size
    photo = source.rotate(12, resample=Image.Resampling.BICUBIC, expand=False).crop(
        (w // 10, h // 10, w - w // 8, h - h // 8))
    photo = photo.resize((photo.width * 3 // 4, photo.height * 3 // 4))
    path = tmp_path / "photo.jpg"
    photo.save(path, quality=80)
    response = engine.search(path, "hybrid+attention", k=5)
    first = response.results[0]
    assert engine.index.path_of(engine.index.image_ids.index(first.image_id)).name == "705.jpg"
    assert first.stage == "verified", first
    unrelated = engine.search(corel_image(950), "hybrid+attention", k=5)
    assert all(r.stage != "verified" for r in unrelated.results)
