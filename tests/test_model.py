"""Training really runs, checkpoints reload, both backbones load real weights code."""
import json
import math

import pytest
import torch
import torchvision

from search.engine.backbones import build_backbone
from search.engine.errors import ModelError
from search.engine.images import open_image
from search.engine.model import eval_transform, load_classifier, metrics_path
from search.engine.training import stratified_split


def test_one_short_epoch_trains_and_saves(tiny_training, tiny_collection):
    path, result = tiny_training
    assert path.is_file()
    assert result.classes == ["africa", "beach", "buses", "dinosaurs"]
    assert len(result.history) == 1
    row = result.history[0]
    assert math.isfinite(row["train_loss"])
    # the reported accuracy is what the saved checkpoint really scores on the validation split
    model = load_classifier(path, "cpu")
    predictions = model.backbone(torch.stack(
        [eval_transform(model.backbone, model.image_size)(open_image(r.path)) for r in result.split.val]))
    truth = torch.tensor([result.classes.index(r.label) for r in result.split.val])
    assert row["val_accuracy"] == pytest.approx(float((predictions.argmax(1) == truth).float().mean()))
    info = json.loads(metrics_path(path).read_text())
    assert info["classes"] == result.classes and info["checksum"] == result.checksum
    assert info["n_train"] == 32 and info["n_val"] == 8
    assert set(info["train_ids"]).isdisjoint(info["val_ids"])
    assert info["settings"]["backbone"] == "efficientnet_lite0"


def test_split_is_stratified_and_seeded(tiny_collection):
    a = stratified_split(tiny_collection.labelled(), 0.2, seed=0)
    b = stratified_split(tiny_collection.labelled(), 0.2, seed=0)
    c = stratified_split(tiny_collection.labelled(), 0.2, seed=1)
    assert [r.relpath for r in a.val] == [r.relpath for r in b.val]
    assert [r.relpath for r in a.val] != [r.relpath for r in c.val]
    assert sorted(r.label for r in a.val) == ["africa"] * 2 + ["beach"] * 2 + ["buses"] * 2 + ["dinosaurs"] * 2


def _records(sizes: dict[str, int]):
    from pathlib import Path

    from search.engine.collection import ImageRecord

    return [ImageRecord(f"{label}-{i}", f"{label}/{i}.jpg", Path(f"/nowhere/{label}/{i}.jpg"), label)
            for label, n in sizes.items() for i in range(n)]


def test_a_collection_scikit_learn_splits_is_split_as_before(tiny_collection):
    """The validation pictures of every collection trained so far (all classes of two pictures or
    more, fewer classes than a fifth of the pictures) stay what they were."""
    from sklearn.model_selection import train_test_split

    records = _records({"a": 7, "b": 12, "c": 3})
    for seed in (0, 1):
        train, val = train_test_split(records, test_size=0.2, random_state=seed, stratify=[r.label for r in records])
        split = stratified_split(records, 0.2, seed)
        assert (split.train, split.val) == (train, val)


@pytest.mark.parametrize("sizes", [
    {f"product-{i}": 3 for i in range(100)},  # more classes than a fifth of the pictures
    {"a": 50, "b": 50, "c": 1},  # a folder of one photo
    {"a": 10} | {f"one-{i}": 1 for i in range(10)},  # more singles than room for them
    {"a": 2, "b": 2, "c": 1, "d": 1},
])
def test_small_classes_are_split_with_a_training_picture_each(sizes):
    """Collections labelled by folder or by product, which scikit-learn's stratified split refuses:
    every class keeps a picture to train on, validation gets its share where classes can spare it,
    and the same seed gives the same split."""
    from collections import Counter

    from sklearn.model_selection import train_test_split

    records = _records(sizes)
    with pytest.raises(ValueError):
        train_test_split(records, test_size=0.2, random_state=0, stratify=[r.label for r in records])
    split = stratified_split(records, 0.2, seed=0)
    train, val = Counter(r.label for r in split.train), Counter(r.label for r in split.val)
    assert set(train) == set(sizes) and train + val == Counter(sizes)
    # the whole part of each class's share, then one more for as many classes as can spare one, up to
    # the fifth of the pictures (scikit-learn's count) or all that can be spared
    spare = sum(n - 1 for n in sizes.values())
    whole = sum(math.floor(0.2 * n) for n in sizes.values())
    can_give_one_more = sum(1 for n in sizes.values() if math.floor(0.2 * n) < n - 1)
    assert len(split.val) == min(math.ceil(0.2 * len(records)), spare, whole + can_give_one_more)
    for label, n in sizes.items():
        assert math.floor(0.2 * n) <= val[label] <= min(math.floor(0.2 * n) + 1, n - 1), (label, val[label])
    position = {r.relpath: i for i, r in enumerate(records)}
    for part in (split.train, split.val):  # in the records' order
        assert [position[r.relpath] for r in part] == sorted(position[r.relpath] for r in part)
    again, other = stratified_split(records, 0.2, seed=0), stratified_split(records, 0.2, seed=1)
    assert again == split
    if len(split.val) < spare:  # a choice to make: another seed makes it otherwise
        assert other.val != split.val


def _linked_folders(root, source, counts: dict[str, int]):
    """``root`` with a folder per label holding links to the first ``counts[label]`` pictures of the
    same folder of ``source``; links already there are kept."""
    for label, n in counts.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for picture in sorted((source / label).iterdir())[:n]:
            if not (root / label / picture.name).exists():
                (root / label / picture.name).symlink_to(picture.resolve())
    return root


def test_a_collection_of_single_pictures_trains_without_validation(tiny_collection_dir, engine_config, tmp_path):
    """One photo per product, a class each, fine-tuned when asked directly (the product keeps the
    ImageNet classifier for it: next test): nothing to validate on, and training says so instead of
    failing on the split or reporting an accuracy of nothing."""
    from search.engine.collection import scan_collection
    from search.engine.training import train_classifier

    root = _linked_folders(tmp_path / "products", tiny_collection_dir, {"africa": 1, "beach": 1, "buses": 1})
    result = train_classifier(scan_collection(root, "folders"), engine_config, tmp_path / "single.pt", epochs=1)
    assert (len(result.split.train), len(result.split.val)) == (3, 0)
    assert result.val_accuracy is None and result.info["n_val"] == 0
    assert result.summary == "fine-tuned on 3 classes, not validated (no class had a picture to spare for it)"


def test_one_picture_per_class_keeps_the_imagenet_classifier(tiny_collection_dir, engine_config, tmp_path):
    """Labels that group nothing (a catalogue labelled by product number) are not fine-tuned on: the
    ImageNet classifier is kept and the head learns its predictions, as without labels, and the
    summary says why, and more products than TRAIN_MAX_IMAGES are sampled instead of refused. One class
    of two is enough to fine-tune."""
    from search.engine.collection import scan_collection
    from search.engine.training import label_free_reason
    from search.engine.workflows import train_models

    root = _linked_folders(tmp_path / "products", tiny_collection_dir, {"africa": 1, "beach": 1, "buses": 1})
    products = scan_collection(root, "folders")
    assert label_free_reason(products) == "one picture in each class, nothing for the labels to group"
    trained = train_models(products, engine_config.replace(attention_epochs=1, train_max_images=2),
                           tmp_path / "m.pt", tmp_path / "a.pt")
    assert trained.training.label_free and len(trained.model.classes) == 1000
    assert (trained.model.info["n_sampled"], trained.model.info["n_available"]) == (2, 3)
    assert trained.model.info["label_free_reason"] == label_free_reason(products)
    assert trained.training.summary.startswith("the ImageNet classifier as it is (1000 classes): the collection "
                                               "had one picture in each class, nothing for the labels to group")
    assert trained.attention is not None and trained.attention.info["targets"] == "the classifier's predictions"
    _linked_folders(root, tiny_collection_dir, {"beach": 2})  # adds beach's second picture
    assert label_free_reason(scan_collection(root, "folders")) is None
    assert label_free_reason(scan_collection(root, "none")) == "no class labels to fine-tune on"


def test_a_collection_with_a_folder_of_one_photo_trains_its_classifier_and_head(tiny_collection_dir, engine_config,
                                                                                  tmp_path):
    """Labelled by folder, one of them holding a single photo: the classifier and the attention head
    both train, the lone photo among the training pictures."""
    from search.engine.collection import scan_collection
    from search.engine.workflows import train_models

    root = _linked_folders(tmp_path / "folders", tiny_collection_dir, {"africa": 6, "beach": 6, "buses": 1})
    trained = train_models(scan_collection(root, "folders"), engine_config.replace(attention_epochs=2),
                           tmp_path / "m.pt", tmp_path / "a.pt", epochs=1)
    assert trained.model.classes == ["africa", "beach", "buses"]
    assert [r.label for r in trained.split.train].count("buses") == 1
    assert sorted(r.label for r in trained.split.val) in (["africa", "africa", "beach"], ["africa", "beach", "beach"])
    assert trained.attention.info["classes"] == ["africa", "beach", "buses"]
    assert 0 <= trained.training.val_accuracy <= 1


def test_training_takes_a_seeded_sample_that_keeps_every_class():
    """A large collection trains on at most TRAIN_MAX_IMAGES of its images: each class in its share,
    two at least, the same sample for the same seed."""
    from collections import Counter

    from search.engine.collection import scan_collection
    from search.engine.errors import CollectionError
    from search.engine.training import training_sample

    from .conftest import DATASETS

    records = scan_collection(DATASETS / "caltech101" / "images", "folders").labelled()
    counts = Counter(r.label for r in records)
    sample = training_sample(records, 1000, seed=0)
    assert len(sample) == 1000 and len({r.image_id for r in sample}) == 1000
    taken = Counter(r.label for r in sample)
    assert set(taken) == set(counts) and min(taken.values()) >= 2
    for label, n in counts.items():  # each class's share, within the rounding and the floor of two
        assert abs(taken[label] - 1000 * n / len(records)) <= 2, label
    positions = {r.image_id: i for i, r in enumerate(records)}
    assert [positions[r.image_id] for r in sample] == sorted(positions[r.image_id] for r in sample)
    assert training_sample(records, 1000, seed=0) == sample
    assert training_sample(records, 1000, seed=1) != sample
    assert training_sample(records, 0, seed=0) == records == training_sample(records, len(records), seed=0)
    # more classes than room for two of each: one of each, and a second where there is room
    small = training_sample(records, 150, seed=0)
    assert len(small) == 150 and set(Counter(r.label for r in small)) == set(counts)
    assert training_sample(records, 150, seed=1) != small
    with pytest.raises(CollectionError, match="one of each of 102 classes"):
        training_sample(records, 101, seed=0)


def test_a_capped_training_says_it_trained_on_a_sample(tiny_collection, engine_config, tmp_path):
    from search.engine.training import train_classifier

    path = tmp_path / "sampled.pt"
    result = train_classifier(tiny_collection, engine_config.replace(train_max_images=20), path, epochs=1)
    info = json.loads(metrics_path(path).read_text())
    assert info["n_train"] + info["n_val"] == 20 and (info["n_sampled"], info["n_available"]) == (20, 40)
    assert sorted(r.label for r in result.split.val) == ["africa", "beach", "buses", "dinosaurs"]
    assert result.summary.startswith("fine-tuned on 4 classes (trained on a sample of 20 of its 40 images), "
                                     "validation accuracy ")


def test_validation_pictures_are_held_as_the_network_sees_them():
    """The classifier's validation pictures are kept squashed to the network's input (a large photo
    costs what a small picture does), and the network gets exactly the input it got from the
    decoded picture."""
    import torchvision.transforms as T

    from search.engine.collection import ImageRecord
    from search.engine.images import load_resized

    from .conftest import DATASETS

    big = DATASETS / "caltech101" / "images" / "BACKGROUND_Google" / "image_0273.jpg"
    assert max(open_image(big).size) > 1152
    record = ImageRecord("x", big.name, big)
    (whole,), _ = load_resized([record], 288 * 4)
    (held,), _ = load_resized([record], 288 * 4, then=T.Resize((288, 288), antialias=True))
    assert held.size == (288, 288) and max(whole.size) == 1152
    transform = eval_transform(build_backbone("efficientnet_lite0", 2, pretrained=False), 288)
    assert torch.equal(transform(whole), transform(held))


def test_checkpoint_reloads_to_the_same_predictions(tiny_training, tiny_model):
    path, _ = tiny_training
    again = load_classifier(path, "cpu")
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(tiny_model.backbone(images), again.backbone(images), atol=1e-5)
    assert again.checksum == tiny_model.checksum


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_lite_imagenet_weights_are_really_trained(variant):
    """Each variant's registry weights classify a real photo sensibly, through the engine's
    backbone with the ImageNet head kept."""
    from .conftest import corel_image

    backbone = build_backbone(f"efficientnet_{variant}", 1000, imagenet_head=True).eval()
    # Corel 300-399 are buses: ImageNet has school bus (779) and trolleybus (874).
    x = eval_transform(backbone, 224)(open_image(corel_image(300))).unsqueeze(0)
    with torch.no_grad():
        probabilities = backbone(x).softmax(1)[0]
    top5 = probabilities.topk(5).indices.tolist()
    assert {779, 874, 654, 705} & set(top5), top5  # school bus, trolleybus, minibus, passenger car
    assert float(probabilities.max()) > 0.3
    untrained = build_backbone(f"efficientnet_{variant}", 1000, pretrained=False).eval()
    with torch.no_grad():
        assert float(untrained(x).softmax(1).max()) < 0.05


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_lite_local_map_is_the_last_map_at_stride_16(variant):
    """Local descriptors come from the end of each variant's stride-16 stage (DELF's conv4): the
    map has ``local_dim`` channels at a 16th of the input, the next block halves it again, and
    the rest of the network from there gives the pooled vector of a whole pass."""
    backbone = build_backbone(f"efficientnet_{variant}", 3).eval()
    images = torch.randn(1, 3, 224, 288)
    with torch.no_grad():
        local = backbone.local_map(images)
        assert local.shape == (1, backbone.local_dim, 14, 18)
        after = backbone.net._blocks[backbone.local_block + 1](local)
        assert after.shape[2:] == (7, 9)
        pooled, local_again = backbone.pooled_and_local(images)
        assert torch.equal(local_again, local)
        assert torch.allclose(pooled, backbone.pooled(images), atol=1e-5)
    assert backbone.name == f"efficientnet_{variant}" and backbone.feature_dim == 1280


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="run the 'train' command"):
        load_classifier(tmp_path / "nope.pt")


def test_resnet18_loads_a_torchvision_state_dict(tmp_path):
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    backbone = build_backbone("resnet18", 10, pretrained=True, weights_path=str(weights))
    assert backbone.feature_dim == 512
    with torch.no_grad():
        pooled = backbone.eval().pooled(torch.randn(1, 3, 224, 224))
    assert pooled.shape == (1, 512)
    assert backbone(torch.randn(1, 3, 224, 224)).shape == (1, 10)


def test_the_imagenet_head_is_kept_only_when_asked(tmp_path):
    weights = tmp_path / "resnet18.pth"
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, weights)
    kept = build_backbone("resnet18", 1000, pretrained=True, weights_path=str(weights), imagenet_head=True)
    assert torch.equal(kept.classifier.weight, state["fc.weight"]) and torch.equal(kept.classifier.bias, state["fc.bias"])
    new = build_backbone("resnet18", 1000, pretrained=True, weights_path=str(weights))
    assert not torch.equal(new.classifier.weight, state["fc.weight"])
    with pytest.raises(ModelError, match="1,000 classes"):
        build_backbone("resnet18", 10, pretrained=True, weights_path=str(weights), imagenet_head=True)


def test_resnet18_missing_or_wrong_weights_are_named(tmp_path):
    with pytest.raises(ModelError, match=r"ResNet18 ImageNet weights not found at .*absent\.pth.*RETRIEVAL_RESNET18_WEIGHTS"):
        build_backbone("resnet18", 10, pretrained=True, weights_path=str(tmp_path / "absent.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ModelError, match="not a torchvision resnet18 state dict"):
        build_backbone("resnet18", 10, pretrained=True, weights_path=str(wrong))


def test_unknown_backbone_is_refused():
    with pytest.raises(ModelError, match="unknown backbone 'vgg'"):
        build_backbone("vgg", 3)


def test_only_the_second_half_of_a_run_is_averaged():
    from search.engine.training import first_averaged_epoch

    assert first_averaged_epoch(6, 3) == 4  # AVERAGE_LAST_EPOCHS=3: epochs 4-6
    assert first_averaged_epoch(3, 3) == 3  # a short run keeps its last epoch's weights
    assert first_averaged_epoch(4, 3) == 3
    assert first_averaged_epoch(10, 3) == 8
    assert first_averaged_epoch(6, 1) == 6
    assert first_averaged_epoch(1, 3) == 2  # nothing averaged


def test_weight_average_is_the_mean_and_recomputes_batchnorm_statistics():
    from search.engine.training import WeightAverage

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    average = WeightAverage(first_epoch=2)
    snapshots = []
    for epoch in (1, 2, 3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        average.add(epoch, model)
    assert average.epochs == [2, 3]
    data = torch.randn(16, 3, 8, 8)
    average.apply(model, [(data[:8], None), (data[8:], None)], "cpu")
    state = model.state_dict()
    expected = (snapshots[1]["0.weight"] + snapshots[2]["0.weight"]) / 2
    assert torch.allclose(state["0.weight"], expected, atol=1e-6)
    assert not torch.allclose(state["0.weight"], snapshots[2]["0.weight"])
    # BatchNorm statistics are those of the averaged convolution's output on the data
    with torch.no_grad():
        conv_out = model[0](data)
    assert torch.allclose(state["1.running_mean"], conv_out.mean((0, 2, 3)), atol=1e-5)
    assert model[1].momentum == 0.1 and not model.training


def test_training_saves_the_average_of_the_last_epochs(tiny_collection, engine_config, tmp_path):
    from search.engine.training import train_classifier

    config = engine_config.replace(average_last_epochs=2)
    path = tmp_path / "averaged.pt"
    result = train_classifier(tiny_collection, config, path, epochs=4)  # the second half: 3-4
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4, "average of 3-4"]
    info = json.loads(metrics_path(path).read_text())
    assert info["averaged_epochs"] == [3, 4] and info["settings"]["average_last_epochs"] == 2
    assert info["val_accuracy"] == result.history[-1]["val_accuracy"]


@pytest.mark.parametrize("n_classes", [2, 4])
def test_the_probe_head_answers_as_its_logistic_regression(tiny_collection, n_classes):
    """The layer fitted on the frozen features must give the regression's probabilities (with two
    classes sklearn keeps one row, spread here over two) before fine-tuning starts from it."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from search.engine.training import fit_head_on_frozen_features

    classes = sorted(tiny_collection.classes)[:n_classes]
    records = [r for r in tiny_collection.labelled() if r.label in classes]
    backbone = build_backbone("efficientnet_lite0", n_classes, pretrained=True)
    transform = eval_transform(backbone, 224)
    images = torch.stack([transform(open_image(r.path).convert("RGB")) for r in records])
    targets = torch.tensor([classes.index(r.label) for r in records])
    fit_head_on_frozen_features(backbone, [(images[:16], targets[:16]), (images[16:], targets[16:])], "cpu")
    backbone.eval()
    with torch.no_grad():
        pooled = backbone.pooled(images)
        probabilities = backbone.classify(pooled).softmax(1).numpy()
    expected = LogisticRegression(C=1.0, max_iter=3000).fit(pooled.numpy(), targets.numpy())
    assert np.allclose(probabilities, expected.predict_proba(pooled.numpy()), atol=1e-4)
    assert (probabilities.argmax(1) == targets.numpy()).mean() >= 0.9  # different Corel classes


def test_training_can_fit_the_head_first(tiny_collection, engine_config, tmp_path):
    from search.engine.training import train_classifier

    path = tmp_path / "probe-first.pt"
    result = train_classifier(tiny_collection, engine_config.replace(probe_first=True), path, epochs=1)
    info = json.loads(metrics_path(path).read_text())
    assert info["settings"]["probe_first"] is True
    assert result.val_accuracy >= 0.75  # four distinct Corel classes; a random head gets 0.25


def test_small_classes_fit_the_head_first(tiny_collection_dir, tiny_collection, tiny_training, engine_config,
                                          tmp_path):
    """Two or three training pictures a class, and the tiny collection's eight: by default the new
    last layer is fitted on the frozen features before fine-tuning (a random one learns them poorly
    in the recipe's few steps), unless PROBE_BELOW_CLASS_SIZE is 0 (as the tests' tiny model is
    trained) or at most the class size."""
    from search.engine.collection import scan_collection
    from search.engine.config import EngineConfig
    from search.engine.training import probes_first, stratified_split, train_classifier

    root = _linked_folders(tmp_path / "kinds", tiny_collection_dir,
                           {"africa": 3, "beach": 3, "buses": 3, "dinosaurs": 3})
    kinds = scan_collection(root, "folders")
    default_rule = engine_config.replace(probe_below_class_size=EngineConfig.probe_below_class_size)
    probed = train_classifier(kinds, default_rule, tmp_path / "probed.pt", epochs=1)
    assert probed.info["probed_first"] and probed.info["probe_val_accuracy"] is not None
    assert probed.val_accuracy >= 2 / 3  # four distinct Corel classes, three validation pictures
    never = train_classifier(kinds, engine_config.replace(probe_below_class_size=0), tmp_path / "never.pt", epochs=1)
    assert not never.info["probed_first"] and never.info["probe_val_accuracy"] is None
    assert not tiny_training[1].info["probed_first"]
    train = stratified_split(tiny_collection.labelled(), engine_config.val_fraction, engine_config.seed).train
    assert probes_first(train, default_rule)  # eight training pictures a class
    assert probes_first(train, engine_config.replace(probe_below_class_size=9))
    assert not probes_first(train, engine_config.replace(probe_below_class_size=8))


def _randomise_batchnorm(backbone):
    """Statistics and affine terms far from the defaults, so a wrong fold cannot pass unnoticed."""
    generator = torch.Generator().manual_seed(0)
    for module in backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.2)
    return backbone.eval()


@pytest.mark.parametrize("name,pretrained", [("efficientnet_lite0", True), ("efficientnet_lite2", True),
                                             ("resnet18", False)])
def test_inference_copy_folds_batchnorm_and_gives_the_same_outputs(name, pretrained):
    """Loaded models run with BatchNorm folded into the convolutions (channels-last weights); on a
    real photo at odd sizes (the local-feature pyramid's levels) every output the engine uses
    stays what the unfolded network gives, and the original is left trainable."""
    from .conftest import corel_image

    backbone = build_backbone(name, 3, pretrained=pretrained)
    if not pretrained:
        _randomise_batchnorm(backbone)
    backbone.eval()
    folded = backbone.for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    photo = eval_transform(backbone, 224)(open_image(corel_image(300))).unsqueeze(0)
    with torch.no_grad():
        for size in [(224, 224), (181, 272), (256, 383)]:
            images = torch.nn.functional.interpolate(photo, size=size, mode="bilinear")
            expected, got = backbone.local_map(images), folded.local_map(images)
            assert got.shape == expected.shape
            assert torch.allclose(got, expected, atol=1e-4 * float(expected.abs().max()))
            assert torch.allclose(folded.pooled(images), backbone.pooled(images), atol=1e-4)
            assert torch.allclose(folded(images), backbone(images), atol=1e-4)
    # a wrong fold (BatchNorm dropped, not folded) is told apart at that tolerance
    broken = backbone.for_inference()
    for parent, conv_name, _ in broken.conv_batchnorm_pairs()[:1]:
        getattr(parent, conv_name).bias.data.add_(1.0)
    with torch.no_grad():
        assert not torch.allclose(broken.pooled(photo), backbone.pooled(photo), atol=1e-4)


def test_training_augmentation_is_a_setting_and_a_misspelt_one_is_refused(tiny_collection, engine_config):
    from PIL import Image

    from search.engine.backbones import build_backbone
    from search.engine.errors import EngineError
    from search.engine.model import train_transform
    from search.engine.training import train_classifier

    backbone = build_backbone("efficientnet_lite0", 4, pretrained=False)
    picture = Image.open(next(tiny_collection.root.rglob("*.jpg"))).convert("RGB")
    torch.manual_seed(0)
    for augment in ("basic", "trivial"):
        tensor = train_transform(backbone, 64, augment)(picture)
        assert tensor.shape == (3, 64, 64) and torch.isfinite(tensor).all()
    names = [type(t).__name__ for t in train_transform(backbone, 64, "trivial").transforms]
    assert "TrivialAugmentWide" in names and "TrivialAugmentWide" not in [
        type(t).__name__ for t in train_transform(backbone, 64, "basic").transforms]
    with pytest.raises(EngineError, match="train_augment takes one of basic, trivial, not 'trivia'"):
        train_classifier(tiny_collection, engine_config.replace(train_augment="trivia"), "unused.pt", epochs=1)
