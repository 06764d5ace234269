"""The instance and hybrid coarse variants: global descriptors for finding the same object, not
only the same class.

Fine-tuning on a collection's class labels teaches the classifier's features to forget what
tells two buses apart, which is what an instance search needs (RESULTS.md: the fine-tuned
penultimate vector finds a photo's source image less often than the untouched ImageNet network
does). So the ``instance`` variant is the backbone's pooled vector with its ImageNet weights,
frozen. The ``hybrid`` variant joins both: its cosine similarity is a weighted mean of the
fine-tuned penultimate's and the instance vector's, so the collection's classes still count.
(GeM pooling, PCA-whitening learned on the collection and aggregated attention-weighted local
descriptors were measured too and not kept: RESULTS.md.)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .backbones import Backbone
from .config import EngineConfig
from .features import l2_normalise
from .model import eval_batch, imagenet_model


@dataclass
class InstanceDescriber:
    """Instance descriptors (L2-normalised) of images, by the ImageNet backbone."""
    backbone: Backbone
    image_size: int
    device: object = "cpu"
    _shares: dict = field(default_factory=dict, repr=False, compare=False)  # per classifier, once

    @property
    def name(self) -> str:
        """What the descriptors depend on: an index built with another describer must be rebuilt."""
        return f"imagenet:{self.backbone.name}:{self.image_size}px:mean"

    @property
    def dim(self) -> int:
        return self.backbone.feature_dim

    def describe(self, images: list[Image.Image]) -> np.ndarray:
        return self.describe_input(eval_batch(self.backbone, self.image_size, images, self.device))

    @torch.no_grad()
    def describe_input(self, batch: torch.Tensor) -> np.ndarray:
        """Descriptors of images already resized and normalised for this backbone."""
        return l2_normalise(self.backbone.pooled(batch).float().cpu().numpy())

    def takes_input_of(self, model) -> bool:
        """Whether ``model``'s input tensor is this describer's too (same size and normalisation)."""
        theirs = model.backbone
        return (model.image_size == self.image_size and tuple(theirs.mean) == tuple(self.backbone.mean)
                and tuple(theirs.std) == tuple(self.backbone.std))

    def shares_network_with(self, model) -> bool:
        """Whether ``model``'s pooled vector is this describer's: the ImageNet starter and the classifier
        of a collection without labels keep the ImageNet network whole, so a second pass would give
        the same vector again. Compared weight by weight, once per classifier."""
        key = model.checksum or id(model.backbone)
        if key not in self._shares:
            self._shares[key] = self.takes_input_of(model) and same_body(model.backbone, self.backbone)
        return self._shares[key]


@torch.no_grad()
def same_body(a: Backbone, b: Backbone) -> bool:
    """Whether two backbones hold the same weights everywhere but their last (classifying) layer."""
    if a.name != b.name:
        return False
    ours = {k: v for k, v in a.state_dict().items() if not k.startswith("classifier.")}
    theirs = {k: v for k, v in b.state_dict().items() if not k.startswith("classifier.")}
    return ours.keys() == theirs.keys() and all(
        ours[k].shape == theirs[k].shape and torch.equal(ours[k], theirs[k]) for k in ours)


def describer_for(index, config: EngineConfig, device, backbone: str) -> InstanceDescriber | None:
    """The instance describer an index's instance variant needs (None: it has none); ``backbone``:
    the classifier's."""
    return instance_describer(config, device, backbone) if index.describer_name else None


def instance_describer(config: EngineConfig, device, backbone: str | None = None) -> InstanceDescriber:
    """``backbone`` (default: the configured one) with its ImageNet weights (never fine-tuned). The
    classifier's own backbone, so that a model trained with another than the setting's still gets
    its instance vectors from its own kind of network, and shares its input."""
    backbone = backbone or config.backbone
    model = imagenet_model(backbone, config.image_size, device, config.imagenet_weights(backbone))
    return InstanceDescriber(model.backbone, config.image_size, device)
