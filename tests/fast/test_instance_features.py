"""The instance and hybrid variants: the ImageNet describer on real images, and the hybrid's
weighted similarity."""
import numpy as np
import pytest

from search.engine.config import EngineConfig
from search.engine.features import hybrid_vectors, l2_normalise, variant_vectors
from search.engine.images import open_image
from search.engine.instance_features import instance_describer
from tests.conftest import corel_image


@pytest.fixture(scope="module")
def describer():
    return instance_describer(EngineConfig(image_size=224), "cpu")


def test_describer_is_the_untouched_imagenet_network_and_names_itself(describer):
    assert describer.name == "imagenet:efficientnet_lite0:224px:mean" and describer.dim == 1280
    assert not describer.backbone.training  # eval mode: BatchNorm keeps the ImageNet statistics


def test_the_describer_follows_the_classifier_backbone_not_the_setting():
    """A classifier trained with ``train --backbone efficientnet_lite1`` while the setting still
    says Lite0 gets its instance vectors from an ImageNet Lite1, the network its own was tuned
    from; an index without an instance variant gets none."""
    from types import SimpleNamespace

    from search.engine.instance_features import describer_for, same_body
    from search.engine.model import imagenet_model

    config = EngineConfig(image_size=224)
    assert config.backbone == "efficientnet_lite0"
    own = describer_for(SimpleNamespace(describer_name="x"), config, "cpu", "efficientnet_lite1")
    assert own.name == "imagenet:efficientnet_lite1:224px:mean"
    assert same_body(own.backbone, imagenet_model("efficientnet_lite1", 224, "cpu").backbone)
    assert describer_for(SimpleNamespace(describer_name=None), config, "cpu", "efficientnet_lite1") is None


def test_a_photo_and_its_crop_are_nearer_than_two_photos_of_one_class(describer):
    """Corel 300-399 are buses: a bus and a crop of itself must beat another bus."""
    bus, other_bus = open_image(corel_image(300)), open_image(corel_image(301))
    w, h = bus.size
    crop = bus.crop((w // 10, h // 10, w - w // 10, h - h // 10))
    vectors = describer.describe([bus, crop, other_bus])
    assert vectors.shape == (3, 1280) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.5, 1.0])
def test_hybrid_similarity_is_the_weighted_mean_of_the_two_cosines(weight):
    rng = np.random.default_rng(0)
    a, b = l2_normalise(rng.normal(size=(6, 8))), l2_normalise(rng.normal(size=(6, 5)))
    h = hybrid_vectors(a, b, weight)
    assert h.shape == (6, 13) and np.allclose(np.linalg.norm(h, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(h @ h.T, weight * (a @ a.T) + (1 - weight) * (b @ b.T), atol=1e-6)


def test_variant_vectors_add_instance_and_hybrid_only_with_instance_vectors(describer):
    images = [open_image(corel_image(n)) for n in (300, 301, 400)]
    instance = describer.describe(images)
    penultimate, logits = l2_normalise(np.eye(3, 8, dtype=np.float32) + 0.1), np.eye(3, 3, dtype=np.float32)
    assert set(variant_vectors(penultimate, logits, None)) == {"penultimate", "logits"}
    vectors = variant_vectors(penultimate, logits, None, instance, 0.5)
    assert vectors["instance"] is instance and vectors["hybrid"].shape == (3, 8 + 1280)


def _first_conv(backbone):
    import torch

    return next(m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d))


def test_one_resize_feeds_both_networks_when_they_take_the_same_input(describer):
    """embed_batch resizes each image once for the classifier and the describer (a phone photo's
    resize costs about what a network's pass does): the same instance vectors as describing anew,
    and a describer of another input size still resizes for itself."""
    import torch

    from search.engine.features import embed_batch
    from search.engine.model import imagenet_model

    images = [open_image(corel_image(n)) for n in (300, 401)]
    tuned = imagenet_model("efficientnet_lite0", 224, "cpu")
    with torch.no_grad():  # a body that is no longer ImageNet's, as fine-tuning leaves it
        _first_conv(tuned.backbone).weight.mul_(1.01)
    assert describer.takes_input_of(tuned) and not describer.shares_network_with(tuned)
    penultimate, logits, instance, _ = embed_batch(tuned, images, "cpu", describer)
    np.testing.assert_array_equal(instance, describer.describe(images))
    assert not np.allclose(penultimate, instance, atol=1e-4)
    other_size = imagenet_model("efficientnet_lite0", 256, "cpu")
    assert not describer.takes_input_of(other_size) and not describer.shares_network_with(other_size)
    _, _, apart, _ = embed_batch(other_size, images, "cpu", describer)
    np.testing.assert_array_equal(apart, describer.describe(images))
    assert embed_batch(tuned, images, "cpu")[2] is None


def test_the_imagenet_network_is_not_run_twice_for_the_starter(describer, tmp_path):
    """The starter (and the classifier of a collection without labels) is the describer's own
    network with another last layer: its pooled vector is the instance vector, so embed_batch
    does not run the describer, and the vectors are those the describer gives."""
    from search.engine.collection import scan_collection
    from search.engine.features import embed_batch
    from search.engine.model import load_classifier
    from search.engine.training import save_starter_classifier

    from tests.conftest import DATASETS

    config = EngineConfig(image_size=224, data_dir=tmp_path)
    collection = scan_collection(DATASETS / "corel1k" / "images", "none")
    starter = load_classifier(save_starter_classifier(collection, config, tmp_path / "starter.pt"), "cpu")
    assert describer.shares_network_with(starter)
    images = [open_image(corel_image(n)) for n in (300, 401)]
    calls = []
    hook = _first_conv(describer.backbone).register_forward_hook(lambda *_: calls.append(1))
    try:
        penultimate, _, instance, _ = embed_batch(starter, images, "cpu", describer)
    finally:
        hook.remove()
    assert calls == []
    np.testing.assert_array_equal(instance, penultimate)
    np.testing.assert_array_equal(instance, describer.describe(images))


def test_raw_logits_are_the_indexed_logits_before_normalising():
    """Benchmark scripts weigh a view's class by the softmax of ``raw_logits``: they must be the
    logits the engine indexes (L2-normalised there), image by image, RGB or not."""
    import torch

    from search.engine.backbones import build_backbone
    from search.engine.features import embed_batch, l2_normalise, raw_logits
    from search.engine.model import TrainedModel

    torch.manual_seed(0)  # a new ten-class last layer, as training starts from
    backbone = build_backbone("efficientnet_lite0", 10, pretrained=True).for_inference()
    model = TrainedModel(backbone, [str(i) for i in range(10)], 224, "ten classes", None, {})
    images = [open_image(corel_image(n)) for n in (300, 401)]
    raw = raw_logits(model, [images[0].convert("L"), images[1]])
    assert raw.shape == (2, 10)
    np.testing.assert_allclose(raw[1:], raw_logits(model, images[1:]), rtol=1e-4, atol=1e-4)
    _, indexed, _, _ = embed_batch(model, [images[0].convert("L").convert("RGB"), images[1]], "cpu")
    np.testing.assert_allclose(l2_normalise(raw), indexed, atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1, atol=0.05)  # the softmax keeps its scale
