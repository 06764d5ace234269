"""Global features: one batched forward pass gives the penultimate vector and
the logits; the PCA reduction is fitted on the collection. With an
``InstanceDescriber`` the same batches also give the instance vectors, from
which ``variant_vectors`` makes the instance and hybrid variants.

Normalisation (chosen on Corel-1k, RESULTS.md): the penultimate vector is
L2-normalised, so Euclidean distance in the ball tree ranks like cosine
similarity; the PCA is fitted on those normalised vectors and its output is
L2-normalised again; logits are L2-normalised too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

import numpy as np
import torch
from sklearn.decomposition import PCA

from .collection import ImageRecord
from .errors import ImageError
from .images import open_image
from .model import TrainedModel, eval_batch
from .progress import Progress, no_progress


@dataclass
class GlobalFeatures:
    records: list[ImageRecord]
    penultimate: np.ndarray  # (N, D) float32, L2-normalised
    logits: np.ndarray  # (N, C) float32, L2-normalised
    skipped: list[tuple[str, str]] = field(default_factory=list)
    instance: np.ndarray | None = None  # (N, D') instance vectors, L2-normalised, when a describer was given


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def predicted_classes(logits: np.ndarray) -> np.ndarray:
    """The classifier's class of each row of (stored, L2-normalised) logits: scaling keeps the argmax."""
    return np.atleast_2d(logits).argmax(1)


def query_class(logits: np.ndarray, crop_logits: np.ndarray | None = None) -> int:
    """The classifier's class for a query from its (unit) logits, and with ``crop_logits`` (one
    row per crop) for the mean of its own row and its crops' rows: each view one vote's weight."""
    rows = np.atleast_2d(logits)
    if crop_logits is not None and len(crop_logits):
        rows = np.vstack([rows, np.atleast_2d(crop_logits)])
    return int(rows.mean(0).argmax())


def given_classes(labels: np.ndarray, classes) -> np.ndarray:
    """The position in the classifier's ``classes`` of each of ``labels`` (strings, "" where an image
    has none), -1 for a label the classifier does not know or none."""
    names = np.asarray(classes, dtype=str)
    labels = np.asarray(labels, dtype=str)
    if len(names) == 0 or len(labels) == 0:
        return np.full(len(labels), -1, dtype=np.int64)
    order = np.argsort(names)
    at = np.minimum(np.searchsorted(names[order], labels), len(names) - 1)
    return np.where((names[order][at] == labels) & (labels != ""), order[at], -1).astype(np.int64)


def image_classes(predicted: np.ndarray, labels: np.ndarray, classes) -> np.ndarray:
    """Each collection image's class for the class rules: the label a person gave it where the
    classifier knows that label, else the classifier's guess (``predicted``). The classifier gets a
    few images of its own collection wrong, and a wrong class sends such an image ahead of the
    query's kind in other searches."""
    given = given_classes(labels, classes)
    return np.where(given >= 0, given, np.asarray(predicted))


class Embedded(NamedTuple):
    penultimate: np.ndarray  # (N, D) L2-normalised
    logits: np.ndarray  # (N, C) L2-normalised
    instance: np.ndarray | None  # (N, D') with a describer
    local_map: torch.Tensor | None  # the stride-16 map of the same input, when asked for


@torch.no_grad()
def embed_batch(model: TrainedModel, images: list, device, describer=None, local_map: bool = False) -> Embedded:
    """Penultimate vectors and logits, both L2-normalised, for a list of PIL images; with a
    ``describer`` its instance vectors too; with ``local_map`` the classifier's stride-16 map of
    the same input, taken on the same pass. Each image is resized once when both networks take
    the same input: on a 12-megapixel photo one resize costs about what a network's pass does
    (RESULTS.md, "Photos from a phone")."""
    batch = eval_batch(model.backbone, model.image_size, images, device)
    if local_map:
        pooled, stride16 = model.backbone.pooled_and_local(batch)
    else:
        pooled, stride16 = model.backbone.pooled(batch), None
    logits = model.backbone.classify(pooled)
    penultimate = l2_normalise(pooled.float().cpu().numpy())
    instance = None
    if describer is not None:
        if describer.shares_network_with(model):  # the starter, or a collection without labels
            instance = penultimate.copy()
        elif describer.takes_input_of(model):
            instance = describer.describe_input(batch)
        else:
            instance = describer.describe(images)
    return Embedded(penultimate, l2_normalise(logits.float().cpu().numpy()), instance, stride16)


@torch.inference_mode()
def raw_logits(model: TrainedModel, images: list, device="cpu") -> np.ndarray:
    """The classifier's logits before normalising, for a list of PIL images (views of one picture,
    say): the index keeps them L2-normalised, which loses the softmax's scale that benchmark
    scripts weigh a class by."""
    batch = eval_batch(model.backbone, model.image_size, [image.convert("RGB") for image in images], device)
    return model.backbone.classify(model.backbone.pooled(batch)).float().cpu().numpy()


def _batches(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def extract_global_features(model: TrainedModel, records: list[ImageRecord], device,
                            batch_size: int = 32, progress: Progress = no_progress,
                            describer=None) -> GlobalFeatures:
    """Embed every readable image of ``records`` (and describe it, with a ``describer``);
    unreadable ones are reported in ``skipped``."""
    model.backbone.eval()
    kept, skipped, pooled_parts, logit_parts, instance_parts = [], [], [], [], []
    done = 0
    for chunk in _batches(records, batch_size):
        images = []
        for record in chunk:
            try:
                images.append(open_image(record.path))
                kept.append(record)
            except ImageError as exc:
                skipped.append((record.relpath, str(exc)))
        if images:
            pooled, logits, instance, _ = embed_batch(model, images, device, describer)
            pooled_parts.append(pooled)
            logit_parts.append(logits)
            if describer is not None:
                instance_parts.append(instance)
        done += len(chunk)
        progress("global features", done, len(records))
    dim = model.backbone.feature_dim
    n_logits = model.backbone.num_classes
    penultimate = np.concatenate(pooled_parts) if pooled_parts else np.zeros((0, dim), np.float32)
    logits = np.concatenate(logit_parts) if logit_parts else np.zeros((0, n_logits), np.float32)
    instance = None
    if describer is not None:
        instance = np.concatenate(instance_parts) if instance_parts else np.zeros((0, describer.dim), np.float32)
    return GlobalFeatures(kept, penultimate, logits, skipped, instance)


def fit_pca(penultimate: np.ndarray, dim: int, seed: int = 0) -> PCA:
    n_components = min(dim, penultimate.shape[0], penultimate.shape[1])
    return PCA(n_components=n_components, random_state=seed).fit(penultimate)


def crop_boxes(width: int, height: int, n: int, share: float) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of n x n evenly spread crops, each ``share`` of the width and the
    height, covering the picture from corner to corner (none when ``n`` is 0)."""
    w, h = max(1, round(width * share)), max(1, round(height * share))
    xs = np.linspace(0, width - w, n).round().astype(int) if n > 1 else np.array([(width - w) // 2])
    ys = np.linspace(0, height - h, n).round().astype(int) if n > 1 else np.array([(height - h) // 2])
    return [(int(x), int(y), int(x) + w, int(y) + h) for y in ys for x in xs] if n > 0 else []


def hybrid_vectors(penultimate: np.ndarray, instance: np.ndarray, weight: float) -> np.ndarray:
    """Unit vectors whose dot product is ``weight`` * the penultimate cosine + (1 - ``weight``) *
    the instance cosine (both inputs unit rows)."""
    return l2_normalise(np.hstack([np.sqrt(weight) * penultimate, np.sqrt(1.0 - weight) * instance]))


def hybrid_parts(penultimate_dim: int, instance_dim: int, weight: float) -> dict[str, tuple[int, int, float]]:
    """Where each part sits in a hybrid vector (``hybrid_vectors``) and how it is scaled there:
    variant -> (first column, end column, factor)."""
    return {"penultimate": (0, penultimate_dim, float(np.sqrt(weight))),
            "instance": (penultimate_dim, penultimate_dim + instance_dim, float(np.sqrt(1.0 - weight)))}


def variant_vectors(penultimate: np.ndarray, logits: np.ndarray, pca: PCA | None,
                    instance: np.ndarray | None = None, hybrid_weight: float | None = None) -> dict[str, np.ndarray]:
    """The paper's three global feature variants from one forward pass's outputs, and with the
    instance vectors the instance variant (and the hybrid one, given its weight)."""
    vectors = {"penultimate": penultimate, "logits": logits}
    if pca is not None:
        vectors["pca"] = l2_normalise(pca.transform(penultimate))
    if instance is not None:
        vectors["instance"] = instance
        if hybrid_weight is not None:
            vectors["hybrid"] = hybrid_vectors(penultimate, instance, hybrid_weight)
    return vectors
