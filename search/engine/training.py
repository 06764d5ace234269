"""Transfer learning: fine-tune an ImageNet backbone on the collection's labels.

80/20 stratified split (seeded), standard augmentation, SGD with momentum
and a cosine schedule; per-epoch loss and validation accuracy. The saved
weights are the last epoch's; with ``average_last_epochs`` > 1 the average of
the last few epochs' weights (stochastic weight averaging, Izmailov et al.
2018) with BatchNorm statistics recomputed. The average's logits find better
neighbours, but it classified worse than its own last epoch in most trainings,
and the default method orders by the classifier's class (RESULTS.md, "The last
epoch's weights").
"""
from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from sklearn.model_selection import train_test_split
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .backbones import build_backbone
from .classifier_info import NO_CLASS_LABELS, describe_classifier
from .collection import Collection, ImageRecord
from .config import EngineConfig
from .errors import CollectionError
from .images import load_resized
from .model import eval_transform, pick_device, save_classifier, train_transform
from .progress import Progress, no_progress

STAGE = "train classifier"


@dataclass
class Split:
    train: list[ImageRecord]
    val: list[ImageRecord]


@dataclass
class TrainingResult:
    checksum: str
    classes: list[str]
    split: Split
    history: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # what was saved beside the classifier

    @property
    def label_free(self) -> bool:
        """No labels: the ImageNet classifier kept (``imagenet_classifier``)."""
        return bool(self.info.get("label_free"))

    @property
    def val_accuracy(self) -> float | None:
        """None: no validation pictures (every class too small to spare one)."""
        return self.history[-1]["val_accuracy"] if self.history else None

    @property
    def summary(self) -> str:
        """One line on what the classifier became, for logs and commands: the staff page's words."""
        return describe_classifier(self.info | {"classes": self.classes})


def label_free_reason(collection: Collection) -> str | None:
    """Why training keeps the ImageNet classifier, or None when the labels are worth fine-tuning on:
    two classes at least, one of them holding two pictures. One picture per class (a catalogue
    labelled by product number) groups nothing, so fine-tuning could only learn to tell apart
    pictures ImageNet's features already tell apart; measured, it cost the fine stage instance
    recall and took several times the label-free training's time and memory."""
    classes = collection.classes
    if len(classes) < 2:
        return NO_CLASS_LABELS
    if len(collection.labelled()) == len(classes):
        return "one picture in each class, nothing for the labels to group"
    return None


def typical_class_size(labels) -> int:
    """The size of the class of the median picture (``labels``: one per picture): classes weighed by
    their pictures, so a few loose pictures beside large classes do not make the classes look small."""
    sizes = sorted(Counter(labels).values())
    return sizes[int(np.searchsorted(np.cumsum(sizes), sum(sizes) / 2))] if sizes else 0


def probes_first(train: list[ImageRecord], config: EngineConfig) -> bool:
    """Whether the new last layer is fitted on the frozen features before fine-tuning: asked for
    (``PROBE_FIRST``), or the classes have too few training pictures for a random layer to learn
    them in the recipe's few steps (measured with 2, 4, 8, 16, 20 and 32 training pictures a class:
    fewer validation pictures right without it, far fewer up to 8; RESULTS.md "Small classes",
    "Classes of ten and twenty pictures", "Classes of forty pictures")."""
    return config.probe_first or typical_class_size(r.label for r in train) < config.probe_below_class_size


def positions_by_label(records: list[ImageRecord]) -> dict[str | None, list[int]]:
    """Each label's positions in ``records``, labels in order of first appearance."""
    members = defaultdict(list)
    for position, record in enumerate(records):
        members[record.label].append(position)
    return members


def training_sample(records: list[ImageRecord], max_images: int, seed: int) -> list[ImageRecord]:
    """At most ``max_images`` of ``records`` (all of them for 0), seeded, in their order. Each label
    keeps its share of the collection, and one image at least (two where there is room: one to
    train on, one to validate). Memory and time of training then stop growing with the collection;
    the index still holds every image."""
    if max_images <= 0 or len(records) <= max_images:
        return list(records)
    members = positions_by_label(records)
    labelled = [label for label in members if label is not None]
    if len(labelled) > max_images:
        raise CollectionError(f"training on at most {max_images} images (TRAIN_MAX_IMAGES) cannot keep one of "
                              f"each of {len(labelled)} classes: raise it")
    rng = np.random.default_rng(seed)
    ties = np.random.default_rng([seed, 1])  # apart, so that rng's draws stay those of earlier samples
    # a record's place in its label's shuffled order, as a fraction of the label's size: the
    # smallest keys take every label in proportion; each label's first is taken first of all, then
    # each label's second (in a seeded order, where not all seconds fit)
    keys = np.empty(len(records))
    for label, positions in members.items():
        shuffled = np.asarray(positions)[rng.permutation(len(positions))]
        keys[shuffled] = (np.arange(len(shuffled)) + 0.5) / len(shuffled)
        if label is not None:
            keys[shuffled[:2]] = -3.0 + np.arange(len(shuffled[:2])) + ties.random(len(shuffled[:2]))
    chosen = np.sort(np.argsort(keys, kind="stable")[:max_images])
    return [records[i] for i in chosen]


def stratified_split(records: list[ImageRecord], val_fraction: float, seed: int) -> Split:
    """``val_fraction`` of each class held out for validation, seeded. Collections labelled by
    folder or by product often have classes of one or two pictures, or more classes than a fifth
    of their images: scikit-learn's stratified split refuses those, so they are split by
    ``small_classes_split``, which keeps every class in training. Collections it takes are split by
    it as before (the same validation pictures for the same seed)."""
    labels = [r.label for r in records]
    counts = Counter(labels)
    if len(counts) < 2:
        raise CollectionError(f"training needs at least 2 classes, found {len(counts)}")
    n_val = math.ceil(val_fraction * len(records))  # as train_test_split counts its test share
    if min(counts.values()) >= 2 and len(counts) <= min(n_val, len(records) - n_val):
        train, val = train_test_split(records, test_size=val_fraction, random_state=seed, stratify=labels)
        return Split(list(train), list(val))
    return small_classes_split(records, val_fraction, seed)


def small_classes_split(records: list[ImageRecord], val_fraction: float, seed: int) -> Split:
    """A stratified split that never takes a class's last training picture: a class of one trains
    and is not validated. Each class gives the whole part of its share to validation; the places
    left of ``ceil(val_fraction * n)`` go to the classes with the largest fractions of one over,
    ties drawn by ``seed``. Both lists keep the records' order."""
    rng = np.random.default_rng(seed)
    groups = [np.asarray(positions) for positions in positions_by_label(records).values()]
    sizes = np.array([len(g) for g in groups])
    shares = val_fraction * sizes
    spare = sizes - 1  # every class keeps one picture to train on
    taken = np.minimum(np.floor(shares).astype(int), spare)
    wanted = min(math.ceil(val_fraction * len(records)), int(spare.sum())) - int(taken.sum())
    if wanted > 0:
        room = np.flatnonzero(taken < spare)
        order = np.lexsort((rng.random(len(room)), -(shares[room] - taken[room])))
        taken[room[order[:wanted]]] += 1
    held = np.zeros(len(records), dtype=bool)
    for group, n in zip(groups, taken):
        held[rng.permutation(group)[:n]] = True
    return Split([r for r, h in zip(records, held) if not h], [r for r, h in zip(records, held) if h])


class _ImageDataset(Dataset):
    def __init__(self, images, targets, transform):
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.targets[i]


def _loader(records, images, class_index, transform, batch_size, shuffle, seed):
    kept = [(img, class_index[r.label]) for r, img in zip(records, images) if img is not None]
    dataset = _ImageDataset([k[0] for k in kept], [k[1] for k in kept], transform)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0)


def train_classifier(collection: Collection, config: EngineConfig, out_path,
                     split: Split | None = None, epochs: int | None = None,
                     progress: Progress = no_progress) -> TrainingResult:
    """Fine-tune ``config.backbone`` on the labelled images of ``collection`` and save it at ``out_path``."""
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    labelled = collection.labelled()
    if not labelled:
        raise CollectionError(f"{collection.root}: no labelled images to train on")
    available = len(labelled)
    if split is None:
        labelled = training_sample(labelled, config.train_max_images, config.seed)
        split = stratified_split(labelled, config.val_fraction, config.seed)
    else:
        available = len(split.train) + len(split.val)  # given lists are used whole
    classes = sorted({r.label for r in split.train})
    class_index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({r.label for r in split.val} - set(classes))
    if unknown:
        raise CollectionError(f"validation classes absent from training: {unknown}")

    device = pick_device(config.device)
    backbone = build_backbone(config.backbone, len(classes), pretrained=True, weights_path=config.pretrained_weights)
    backbone.to(device)
    augment = train_transform(backbone, config.image_size, config.train_augment)  # a misspelt name fails here
    # Training crops are cut from images decoded once and squashed to a
    # square, because the index squashes whole images to image_size x
    # image_size: crops cut from unsquashed 3:2 pictures taught the model
    # proportions it never sees at search time. Validation sees images as
    # the index will, shrunk only when very large, and is held as squashed by
    # ``eval_transform`` (which then leaves it as it is): a large photo costs
    # no more memory than a small picture.
    train_images, skipped_train = load_resized(split.train, int(config.image_size * 1.15), square=True)
    val_images, skipped_val = load_resized(split.val, config.image_size * 4,
                                           then=T.Resize((config.image_size, config.image_size), antialias=True))
    train_loader = _loader(split.train, train_images, class_index,
                           augment, config.batch_size, True, config.seed)
    val_loader = _loader(split.val, val_images, class_index,
                         eval_transform(backbone, config.image_size), config.batch_size, False, config.seed)
    if len(train_loader.dataset) == 0:
        raise CollectionError("no readable training images")

    probe_accuracy = None
    probed_first = probes_first(split.train, config)
    if probed_first:
        fit_head_on_frozen_features(backbone, _loader(split.train, train_images, class_index,
                                                      eval_transform(backbone, config.image_size),
                                                      config.batch_size, False, config.seed), device)
        probe_accuracy = evaluate_accuracy(backbone, val_loader, device)
        tqdm.write(f"linear probe on the ImageNet features: val accuracy {accuracy_text(probe_accuracy)}")

    epochs = epochs or config.epochs
    head = list(backbone.head_parameters())
    head_ids = {id(p) for p in head}
    optimizer = torch.optim.SGD([
        {"params": [p for p in backbone.parameters() if id(p) not in head_ids], "lr": config.learning_rate},
        {"params": head, "lr": config.learning_rate * config.head_lr_multiplier},
    ], lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay)
    steps = epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    history = []
    averaged = WeightAverage(first_averaged_epoch(epochs, config.average_last_epochs))
    started = time.monotonic()
    progress(STAGE, 0, epochs)
    for epoch in range(1, epochs + 1):
        backbone.train()
        total_loss, seen = 0.0, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{epochs}", unit="batch")
        for images, targets in bar:
            images, targets = images.to(device), targets.to(device)
            loss = loss_fn(backbone(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(targets)
            seen += len(targets)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        val_accuracy = evaluate_accuracy(backbone, val_loader, device)
        row = {"epoch": epoch, "train_loss": total_loss / seen, "val_accuracy": val_accuracy,
               "elapsed_s": round(time.monotonic() - started, 1)}
        history.append(row)
        tqdm.write(f"epoch {epoch}: train loss {row['train_loss']:.4f}, val accuracy {accuracy_text(val_accuracy)}")
        progress(STAGE, epoch, epochs)
        averaged.add(epoch, backbone)

    if averaged.count > 1:
        averaged.apply(backbone, train_loader, device)
        val_accuracy = evaluate_accuracy(backbone, val_loader, device)
        history.append({"epoch": f"average of {averaged.epochs[0]}-{averaged.epochs[-1]}",
                        "train_loss": None, "val_accuracy": val_accuracy,
                        "elapsed_s": round(time.monotonic() - started, 1)})
        tqdm.write(f"weights averaged over epochs {averaged.epochs}: val accuracy {accuracy_text(val_accuracy)}")

    info = {
        "history": history,
        "val_accuracy": history[-1]["val_accuracy"],
        "train_ids": [r.image_id for r in split.train],
        "val_ids": [r.image_id for r in split.val],
        "n_train": len(train_loader.dataset),
        "n_val": len(val_loader.dataset),
        "n_sampled": len(split.train) + len(split.val),
        "n_available": available,
        "collection_root": str(collection.root),
        "settings": {k: getattr(config, k) for k in (
            "backbone", "image_size", "batch_size", "learning_rate", "head_lr_multiplier", "momentum",
            "weight_decay", "val_fraction", "seed", "average_last_epochs", "train_max_images",
            "probe_first", "probe_below_class_size", "train_augment")} | {"epochs": epochs},
        "averaged_epochs": averaged.epochs if averaged.count > 1 else [],
        "probed_first": probed_first,
        "probe_val_accuracy": probe_accuracy,  # the fitted head's, before fine-tuning (probed_first)
        "skipped": skipped_train + skipped_val,
    }
    checksum = save_classifier(out_path, backbone.cpu(), classes, config.image_size, info)
    return TrainingResult(checksum, classes, split, history, skipped_train + skipped_val, info=info)


@torch.no_grad()
def fit_head_on_frozen_features(backbone, loader, device, inverse_regularisation: float = 1.0) -> None:
    """The new last layer fitted first by logistic regression on the untouched ImageNet features,
    then everything fine-tuned (LP-FT, Kumar et al. 2022): a random head sends large, random
    gradients into the pretrained body in the first steps and distorts the features it was chosen
    for; a fitted one asks the body only for what the classes need."""
    backbone.eval()
    features, targets = [], []
    for images, batch_targets in tqdm(loader, desc="linear probe features", unit="batch", leave=False):
        features.append(backbone.pooled(images.to(device)).cpu())
        targets.append(batch_targets)
    weight, bias = linear_probe(torch.cat(features).numpy(), torch.cat(targets).numpy(),
                                backbone.classifier.out_features, inverse_regularisation)
    backbone.classifier.weight.copy_(torch.from_numpy(weight))
    backbone.classifier.bias.copy_(torch.from_numpy(bias))


def linear_probe(features: np.ndarray, targets: np.ndarray, n_classes: int,
                 inverse_regularisation: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A softmax layer's weight and bias for ``n_classes`` fitted by logistic regression on
    ``features`` (rows) and their ``targets`` (class indices); a class with no row gets zeros."""
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(C=inverse_regularisation, max_iter=3000).fit(features, targets)
    weight = np.zeros((n_classes, features.shape[1]), dtype=np.float32)
    bias = np.zeros(n_classes, dtype=np.float32)
    if len(probe.classes_) == 2:  # sklearn fits one row for two classes: as a softmax, +-half of it
        weight[probe.classes_] = np.stack([-probe.coef_[0], probe.coef_[0]]) / 2
        bias[probe.classes_] = np.array([-probe.intercept_[0], probe.intercept_[0]]) / 2
    else:
        weight[probe.classes_], bias[probe.classes_] = probe.coef_, probe.intercept_
    return weight, bias


def first_averaged_epoch(epochs: int, average_last: int) -> int:
    """The first epoch whose weights are averaged: of the last ``average_last``, only those in the
    second half of the run. A short run's early epochs are far from its last (Caltech-101, 3
    epochs: 0.88, 0.94, 0.94 validation accuracy; the mean of all three 0.935, RESULTS.md), so
    a 3-epoch run keeps its last epoch's weights and the default 6 averages 4-6."""
    return epochs - min(average_last, epochs // 2) + 1


class WeightAverage:
    """Running mean of a model's floating-point weights over the epochs from ``first_epoch`` on."""

    def __init__(self, first_epoch: int):
        self.first_epoch = first_epoch
        self.epochs: list[int] = []
        self.mean: dict[str, torch.Tensor] = {}

    @property
    def count(self) -> int:
        return len(self.epochs)

    @torch.no_grad()
    def add(self, epoch: int, model: torch.nn.Module) -> None:
        if epoch < self.first_epoch:
            return
        self.epochs.append(epoch)
        for name, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            if name not in self.mean:
                self.mean[name] = value.detach().clone()
            else:
                self.mean[name] += (value.detach() - self.mean[name]) / self.count

    @torch.no_grad()
    def apply(self, model: torch.nn.Module, train_loader, device) -> None:
        """Load the mean weights, then recompute BatchNorm statistics with one pass over the
        training data: averaged weights do not fit any epoch's running statistics."""
        state = model.state_dict()
        state.update({name: mean.to(state[name].dtype) for name, mean in self.mean.items()})
        model.load_state_dict(state)
        update_bn(tqdm(train_loader, desc="batchnorm statistics", unit="batch", leave=False), model, device)
        model.eval()


@torch.no_grad()
def evaluate_accuracy(backbone, loader, device) -> float | None:
    """None when ``loader`` holds no pictures."""
    backbone.eval()
    correct, total = 0, 0
    for images, targets in loader:
        predictions = backbone(images.to(device)).argmax(1).cpu()
        correct += int((predictions == targets).sum())
        total += len(targets)
    return correct / total if total else None


def accuracy_text(accuracy: float | None) -> str:
    return "none (no validation pictures)" if accuracy is None else f"{accuracy:.4f}"


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet classes in the order of the pretrained heads, made unique (ImageNet names
    two classes "crane" and two "maillot")."""
    from torchvision.models import ResNet18_Weights

    names = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    return [name if names.count(name) == 1 else f"{name} ({i})" for i, name in enumerate(names)]


def imagenet_classifier(collection: Collection, config: EngineConfig, out_path,
                        reason: str = NO_CLASS_LABELS) -> TrainingResult:
    """For a collection without labels worth fine-tuning on (``label_free_reason``): the ImageNet
    classifier kept whole. Its 1,000 classes still give the attention head image-level labels to
    learn from (its own predictions on the collection) and the logits variant a meaning. The split
    (for the head's validation) is random."""
    classes = imagenet_class_names()
    backbone = build_backbone(config.backbone, len(classes), pretrained=True,
                              weights_path=config.pretrained_weights, imagenet_head=True)
    # sampled as if unlabelled: labels play no part here, and a catalogue of more products than
    # TRAIN_MAX_IMAGES cannot keep one picture of each
    chosen = {r.image_id for r in training_sample([replace(r, label=None) for r in collection.records],
                                                   config.train_max_images, config.seed)}
    records = [r for r in collection.records if r.image_id in chosen]
    train, val = ((records, []) if len(records) < 2 else
                  train_test_split(records, test_size=config.val_fraction, random_state=config.seed))
    split = Split(list(train), list(val))
    info = {
        "label_free": True,
        "note": f"{reason}: the ImageNet classifier, not fine-tuned",
        "label_free_reason": reason,
        "val_accuracy": None,
        "train_ids": [r.image_id for r in split.train],
        "val_ids": [r.image_id for r in split.val],
        "n_train": len(split.train),
        "n_val": len(split.val),
        "n_sampled": len(records),
        "n_available": len(collection.records),
        "collection_root": str(collection.root),
        "settings": {k: getattr(config, k) for k in ("backbone", "image_size", "val_fraction", "seed",
                                                      "train_max_images")},
    }
    checksum = save_classifier(out_path, backbone, classes, config.image_size, info)
    return TrainingResult(checksum, classes, split, info=info)


def save_starter_classifier(collection: Collection, config: EngineConfig, out_path) -> Path:
    """The ImageNet backbone, not fine-tuned, saved as the classifier so a collection can be indexed
    and searched within minutes while the real training runs (``info["starter"]``). Its new last
    layer is untrained: the logits variant means nothing and is not indexed."""
    classes = collection.classes or ["unlabelled"]
    torch.manual_seed(config.seed)
    backbone = build_backbone(config.backbone, len(classes), pretrained=True, weights_path=config.pretrained_weights)
    save_classifier(out_path, backbone, classes, config.image_size,
                    {"starter": True, "note": "ImageNet weights, not fine-tuned yet: train to replace it"})
    return Path(out_path)
